"""The evaluation suite on tiny real components: mimics, config, metrics, and the runner end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cloak.errors import ConfigError
from cloak.optim import PGDConfig
from cloak.testbed.judge import Judge, JudgeConfig, JudgeNet, most_first
from eval import data
from eval import metrics as M
from eval.config import builtin_configs, load_config
from eval.mimics import FinetuneConfig, finetune, generate, img2img
from eval.summary import summarise


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads made these tests
    about 35 times slower (OpenMP threads waiting on each other)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------- mimics


def test_finetune_changes_a_copy_of_the_unet_and_not_the_callers(tiny_components):
    before_unet, before_text = _state(tiny_components.unet), _state(tiny_components.text_encoder)
    cfg = FinetuneConfig(steps=3, lr=1e-3, batch_size=2, train_text_encoder=True)
    tuned = finetune(tiny_components, _images(), cfg, torch.Generator().manual_seed(0))
    assert tuned.unet is not tiny_components.unet and tuned.text_encoder is not tiny_components.text_encoder
    for name, value in _state(tiny_components.unet).items():
        assert torch.equal(value, before_unet[name]), name
    for name, value in _state(tiny_components.text_encoder).items():
        assert torch.equal(value, before_text[name]), name
    changed = [k for k, v in _state(tuned.unet).items() if not torch.equal(v, before_unet[k])]
    assert len(changed) > 0.5 * len(before_unet)
    assert any(not torch.equal(v, before_text[k]) for k, v in _state(tuned.text_encoder).items())
    assert not any(p.requires_grad for p in tuned.unet.parameters()) and not tuned.unet.training


def test_finetune_is_deterministic_under_a_seed(tiny_components):
    cfg = FinetuneConfig(steps=2, lr=1e-3)
    a = finetune(tiny_components, _images(), cfg, torch.Generator().manual_seed(3))
    b = finetune(tiny_components, _images(), cfg, torch.Generator().manual_seed(3))
    for (k, va), vb in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_gradient_checkpointing_gives_the_same_fine_tune(tiny_components):
    base = FinetuneConfig(steps=2, lr=1e-3, train_text_encoder=True)
    ckpt = FinetuneConfig(steps=2, lr=1e-3, train_text_encoder=True, gradient_checkpointing=True)
    a = finetune(tiny_components, _images(), base, torch.Generator().manual_seed(3))
    b = finetune(tiny_components, _images(), ckpt, torch.Generator().manual_seed(3))
    for (k, va), vb in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert not b.unet.is_gradient_checkpointing


def test_lora_trains_only_adapter_parameters(tiny_components):
    before = _state(tiny_components.unet)
    cfg = FinetuneConfig(method="lora", steps=3, lr=1e-2)
    tuned = finetune(tiny_components, _images(), cfg, torch.Generator().manual_seed(0))
    after = _state(tuned.unet)
    lora = [k for k in after if "lora_" in k]
    assert lora and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in lora)
    assert all(k.split(".lora_")[0] for k in lora)
    base_keys = [k for k in after if "lora_" not in k]
    for k in base_keys:  # peft renames a wrapped layer's weight to <layer>.base_layer.weight
        original = k.replace(".base_layer", "")
        assert torch.equal(after[k], before[original]), k
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if "lora_B" in k)
    assert tuned.text_encoder is tiny_components.text_encoder


def test_prior_preservation_generates_class_images_and_trains(tiny_components):
    cfg = FinetuneConfig(steps=2, lr=1e-3, prior_preservation=True, num_class_images=2, class_inference_steps=2)
    seen = []
    tuned = finetune(
        tiny_components,
        _images(2),
        cfg,
        torch.Generator().manual_seed(0),
        progress=lambda i, n, loss: seen.append((i, n, loss)),
    )
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)] and all(math.isfinite(s[2]) for s in seen)
    assert not torch.equal(next(tuned.unet.parameters()), next(tiny_components.unet.parameters()))


def test_finetune_refuses_wrong_images(tiny_components):
    with pytest.raises(ConfigError, match=r"must be 32x32 px"):
        finetune(tiny_components, torch.rand(2, 3, 16, 16), FinetuneConfig(steps=1), torch.Generator())
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        finetune(tiny_components, torch.rand(2, 3, 32, 32) * 2, FinetuneConfig(steps=1), torch.Generator())
    with pytest.raises(ConfigError, match="`method` must be one of dreambooth, lora"):
        FinetuneConfig(method="textual_inversion")


def test_generate_is_deterministic_under_a_seed(tiny_components):
    a = generate(tiny_components, "a painting", 3, 2, 5.0, torch.Generator().manual_seed(1), batch_size=2)
    b = generate(tiny_components, "a painting", 3, 2, 5.0, torch.Generator().manual_seed(1), batch_size=3)
    c = generate(tiny_components, "a painting", 3, 2, 5.0, torch.Generator().manual_seed(2))
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().mean() > 1e-3


def test_img2img_strength_zero_is_the_vae_round_trip_and_more_strength_moves_further(tiny_components):
    from cloak.units import from_vae, to_vae

    x = _images(2)
    out0 = img2img(tiny_components, x, "a painting", 0.0, num_inference_steps=4)
    vae = tiny_components.vae
    with torch.no_grad():
        recon = from_vae(vae.decode(vae.encode(to_vae(x)).latent_dist.mean).sample)
    assert torch.allclose(out0, recon, atol=1e-5)
    ref = img2img(tiny_components, x, "a painting", 0.25, 4, generator=torch.Generator().manual_seed(0))
    far = img2img(tiny_components, x, "a painting", 1.0, 4, generator=torch.Generator().manual_seed(0))
    assert (ref - recon).abs().mean() < (far - recon).abs().mean()
    with pytest.raises(ConfigError, match=r"`strength` must be in \[0, 1\], got 1.5"):
        img2img(tiny_components, x, "a painting", 1.5)


# ------------------------------------------------------------------------------------------------- metrics


def test_frechet_distance_of_identical_sets_is_zero_and_grows_with_a_shift():
    f = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert M.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(f, f + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)  # ||mu_a - mu_b||^2, same covariance


@pytest.mark.parametrize(("n", "m", "d"), [(40, 30, 8), (5, 7, 64), (3, 50, 16)])
def test_frechet_distance_agrees_with_the_matrix_square_root_formula(n, m, d):
    def reference(a, b):  # the textbook D x D form: Tr((S_a S_b)^(1/2)) via eigh of S_a^(1/2) S_b S_a^(1/2)
        a, b = a.numpy(), b.numpy()
        cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        w, v = np.linalg.eigh(cov_a)
        sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr)

    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = 0.5 + 1.5 * torch.randn(m, d, generator=g, dtype=torch.float64)
    assert M.frechet_distance(a, b) == pytest.approx(reference(a, b), rel=1e-6, abs=1e-8)


def test_style_similarity_and_clip_score_known_values():
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert M.style_similarity(torch.tensor([[2.0, 0.0]]), ref) == pytest.approx(1.0)
    assert M.style_similarity(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), ref) == pytest.approx(-0.5)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert M.clip_score(img, torch.tensor([[1.0, 0.0], [0.0, -1.0]])) == pytest.approx(50.0)


def test_judge_success_counts_the_artists_style():
    judge = Judge(
        JudgeNet(JudgeConfig(style_names=("a", "b"), widths=(4,), resolution=32)), JudgeConfig(("a", "b"), (4,), 32)
    )
    x = _images(6)
    pred = judge.predict(x)
    assert M.judge_success(judge, x, "a") == pytest.approx(float((pred == 0).float().mean()))
    assert M.judge_success(judge, x, "a") + M.judge_success(judge, x, "b") == pytest.approx(1.0)
    named = judge.name_counts(x)  # what the runner records as judged_as: most first, no zero counts
    expected = {"a": int((pred == 0).sum()), "b": int((pred == 1).sum())}
    assert named == {k: v for k, v in expected.items() if v} and sum(named.values()) == 6
    assert list(named.values()) == sorted(named.values(), reverse=True)
    assert M.judged_share(named, "a", judge.style_names) == M.judge_success(judge, x, "a")
    assert list(most_first({"b": 2, "c": 5, "a": 2})) == ["c", "a", "b"]  # ties by name
    with pytest.raises(ConfigError, match="does not know the style 'c'"):
        M.judge_success(judge, x, "c")


def test_sharpness_and_visibility():
    flat = torch.full((2, 3, 32, 32), 0.5)
    assert M.sharpness(flat) == 0.0
    assert M.sharpness(_images(2)) > M.sharpness(torch.nn.functional.avg_pool2d(_images(2), 3, 1, 1))
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 104
    vis = M.visibility([a, a], [a, b])
    assert vis["linf"] == 4 and vis["psnr"] == pytest.approx(10 * math.log10(255**2 / (16 / 768)))
    assert vis["lpips"] is None and vis["ssim"] < 1
    # PSNR and SSIM describe the same images, the changed ones: an unchanged one does not pull SSIM toward 1
    assert vis["ssim"] == pytest.approx(M.visibility([a], [b])["ssim"])


def test_visibility_measures_lpips_when_given_a_model():
    from cloak.models import load_lpips

    model = load_lpips("cpu", pretrained=False)  # random backbone: a stand-in, distances mean nothing
    a = np.full((32, 32, 3), 100, np.uint8)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    same, differ = M.visibility([a], [a], model), M.visibility([a], [noisy], model)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6) and differ["lpips"] > 0
    assert same["psnr"] is None and same["linf"] == 0


def test_fit_square_resizes_the_short_side_and_centre_crops():
    from eval.data import fit_square

    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, 40:] = 255  # black left half, white right half
    out = fit_square(rgb, 32)  # 40x80 -> 32x64 -> the centre 32 columns: 16 black, then 16 white
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, :13].max() < 20 and out[:, 19:].min() > 235


def test_protection_figures():
    assert M.protection_effect(0.9, 0.3) == pytest.approx(0.6)
    assert M.retained_fraction(0.3, 0.6) == pytest.approx(0.5)
    assert M.retained_fraction(0.3, 0.0) is None
    assert M.worst_case({"none": 0.6, "jpeg": 0.1, "blur": 0.4}) == ("jpeg", 0.1)
    assert M.seed_spread([0.5, 0.8, 0.6]) == pytest.approx(0.3)


def test_kept_interval_resamples_paired_seeds_and_lets_the_attacker_pick_again():
    # Two seeds, resampled: (0, 0) keeps 0.5 / 1, (1, 1) keeps 0.5 / 0.5, mixed draws 0.5 / 0.75.
    clean, protected = [1.0, 1.0], {"none": [0.0, 0.5], "jpeg": [0.5, 0.5]}
    assert M.kept_interval(clean, protected) == pytest.approx((0.5, 1.0))
    # No seed noise: the interval is the point
    assert M.kept_interval([0.8] * 4, {"none": [0.4] * 4, "blur": [0.6] * 4}) == pytest.approx((0.5, 0.5))
    # The attacker picks the worst attack in every draw: adding a weaker attack changes nothing
    weaker = {**protected, "noise": [0.1, 0.2]}
    assert M.kept_interval(clean, weaker) == pytest.approx((0.5, 1.0))
    # A draw with no unattacked effect (both seeds the second: clean 0 <= protected 0.5) keeps nothing
    low, high = M.kept_interval([1.0, 0.0], {"none": [0.5, 0.5], "jpeg": [0.75, 0.5]})
    assert low == 0.0 and high == pytest.approx(0.5)
    assert M.kept_interval([1.0], {"none": [0.5], "jpeg": [0.7]}) is None
    assert M.kept_interval(clean, {"jpeg": [0.5, 0.5]}) is None  # no unattacked score
    with pytest.raises(ConfigError, match="one score per seed"):
        M.kept_interval(clean, {"none": [0.5], "jpeg": [0.5, 0.5]})
    # An attack that costs the clean mimic too (a cleaning of its generations): the worst case is measured against
    # the clean mimic at its best. Blur lifts the clean mimic of seed 1 from 0.6 to 0.8: (0, 0) keeps 0.4 / 0.8
    # (the clean mimic is best unfiltered), (1, 1) 0.4 / 0.4 (against 0.2 / 0.4 without it), mixed draws 0.3 / 0.6.
    clean, protected = [1.0, 0.6], {"none": [0.2, 0.2], "blur": [0.6, 0.4]}
    assert M.kept_interval(clean, protected, clean_attacked={"blur": [0.8, 0.8]}) == pytest.approx((0.5, 1.0))
    assert M.kept_interval(clean, protected) == pytest.approx((0.5, 0.5))
    with pytest.raises(ConfigError, match="one score per seed"):
        M.kept_interval(clean, protected, clean_attacked={"blur": [0.8]})


def test_summary_effect_retained_worst_case_and_spread():
    def row(defence, attack, seed, score, judged_as=None, output_scores=None):
        return {
            "artist": "x",
            "defence": defence,
            "attack": attack,
            "mimic": "db",
            "seed": seed,
            "status": "ok",
            "score": score,
            "method": None if defence == "clean" else "encoder",
            "eps": None,
            "vis_psnr": 35.0,
            "judged_as": judged_as,
            "output_scores": output_scores,
        }

    rows = [
        row("clean", "none", 0, 0.9),
        row("clean", "none", 1, 0.7),
        row("enc", "none", 0, 0.2, {"x": 3, "y": 1}),
        row("enc", "none", 1, 0.2, {"x": 3, "z": 1}),
        row("enc", "jpeg", 0, 0.5),
        row("enc", "jpeg", 1, 0.5),
    ]
    s = summarise(rows)
    (d,) = s["defences"]
    assert (
        d["effect"] == pytest.approx(0.6) and d["worst_attack"] == "jpeg" and d["worst_effect"] == pytest.approx(0.3)
    )
    assert d["clean_spread"] == pytest.approx(0.2) and d["above_noise"] is True
    assert d["lower_on"] == "2/2"  # seed for seed, the protected mimic scored lower
    assert d["effect_range"] == pytest.approx([0.5, 0.7])  # seed 1: 0.7 - 0.2, seed 0: 0.9 - 0.2
    assert d["kept"] == pytest.approx(0.5)  # the worst case (jpeg) leaves 0.3 of the unattacked 0.6
    # Resampling the two seeds: both seed 0 (clean 0.9) keeps 0.4 of 0.7, both seed 1 keeps 0.2 of 0.5
    assert d["kept_ci"] == pytest.approx([0.2 / 0.5, 0.4 / 0.7])
    # Paired by seed: a third seed whose clean score is low widens the spread past the effect, yet the protected
    # mimic is still lower on 2 of the 3 seeds, and equal on the third.
    (wide,) = summarise([*rows, row("clean", "none", 2, 0.2), row("enc", "none", 2, 0.2)])["defences"]
    assert wide["above_noise"] is False and wide["lower_on"] == "2/3"
    assert wide["kept_ci"] == pytest.approx(d["kept_ci"])  # seed 2 has no jpeg cell: the interval uses seeds 0, 1
    (unpurified,) = summarise(rows[:4])["defences"]  # no purification: nothing measured to keep
    assert unpurified["effect"] == pytest.approx(0.6) and unpurified["kept"] is None
    assert unpurified["kept_ci"] is None
    jpeg = next(c for c in s["conditions"] if c["attack"] == "jpeg")
    assert jpeg["retained"] == pytest.approx(0.5)
    from eval.report import markdown_scores, markdown_summary

    assert "| 0.5 | 0.4 to 0.571 | 0.2 |" in markdown_summary(s)
    table = markdown_scores(s).splitlines()
    assert "| defence | none | jpeg |" in table
    assert "| clean | 0.8 |  |" in table and "| enc | 0.2 | 0.5 |" in table
    kept = table[table.index("| defence | jpeg |") :]  # the share kept, per purification: jpeg leaves 0.3 of 0.6
    assert kept[2] == "| enc | 0.5 |" and len(kept) == 3  # the clean images have no effect to keep
    # the judge's namings, pooled over seeds (6 of 8 named x), in conditions and in their own table
    unprotected = next(c for c in s["conditions"] if c["defence"] == "enc" and c["attack"] == "none")
    assert unprotected["judged_as"] == {"x": 0.75, "y": 0.125, "z": 0.125} and jpeg["judged_as"] is None
    assert "| enc | none | x 0.75, y 0.12, z 0.12 |" in table  # ties by name
    assert not any(line.startswith("| clean | none |") for line in table)  # no namings recorded: no row
    assert "output_kept" not in d and "output_kept" not in markdown_summary(s)  # no output attack scored

    # The attacker also cleans the generations: blur gives the protected mimic 0.4 (against 0.2), the clean one
    # 0.7 (against 0.8, so it keeps its raw 0.8): 0.4 of the unpurified effect of 0.6 is left.
    cleaned = [
        row("clean", "none", 0, 0.9, output_scores={"blur": 0.8, "jpeg": 0.5}),
        row("clean", "none", 1, 0.7, output_scores={"blur": 0.6, "jpeg": 0.5}),
        row("enc", "none", 0, 0.2, output_scores={"blur": 0.5, "jpeg": 0.1}),
        row("enc", "none", 1, 0.2, output_scores={"blur": 0.3, "jpeg": 0.1}),
    ]
    out = summarise(cleaned)
    (d,) = out["defences"]
    assert d["output_attack"] == "blur" and d["output_effect"] == pytest.approx(0.4)
    assert d["output_kept"] == pytest.approx(0.4 / 0.6)
    # seed by seed blur leaves 0.4 of 0.7 and 0.4 of 0.5: resampling the two seeds spans those
    assert d["output_kept_ci"] == pytest.approx([0.4 / 0.7, 0.4 / 0.5])
    assert out["conditions"][0]["output_scores"] == pytest.approx({"blur": 0.7, "jpeg": 0.5})  # clean
    assert "| enc | none | 0.2 | 0.4 | 0.1 |" in markdown_scores(out).splitlines()
    assert "| blur | 0.667 | 0.571 to 0.8 |" in markdown_summary(out)
    # a cleaning that helps nobody leaves the attacker unpurified: the output case is the plain effect
    (plain,) = summarise([{**r, "output_scores": {"jpeg": r["output_scores"]["jpeg"]}} for r in cleaned])["defences"]
    assert plain["output_attack"] == "none" and plain["output_kept"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------- config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


MINIMAL = """
model = "m"
[[artists]]
style = "marbling"
[[mimics]]
kind = "dreambooth"
"""


def test_builtin_configs_parse():
    assert {"quick", "paper-style", "paper-face"} <= set(builtin_configs())
    quick = load_config("quick")
    assert quick.model == "testbed" and len(quick.defences) >= 3 and len(quick.attacks) >= 5
    assert {m.kind for m in quick.mimics} >= {"dreambooth", "lora"} and len(quick.seeds) >= 2
    face = load_config("paper-face")
    db = next(m for m in face.mimics if m.kind == "dreambooth").finetune
    assert db.prior_preservation and db.train_text_encoder and db.lr == 5e-7 and db.steps == 1000


@pytest.mark.parametrize("name", builtin_configs())
def test_every_builtin_config_loads_and_plans_cells(name):
    from eval.runner import plan

    config = load_config(name)
    assert config.name == name and len(plan(config)) >= 2


def test_every_cloak_eval_command_in_the_docs_names_a_builtin_config():
    # A figure's command must run as written: no config renamed or removed from under the README, the results or the
    # config headers (CONFIG and NAME are the README's placeholders).
    import re

    root = Path(__file__).parent.parent
    names = set(builtin_configs())
    files = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "eval" / "configs").glob("*.toml")]
    cited = {(f.name, m) for f in files for m in re.findall(r"cloak eval ([\w.\-/]+)", f.read_text(encoding="utf-8"))}
    assert len({m for _, m in cited}) > 50  # the scan finds the commands
    assert sorted((f, m) for f, m in cited if m not in names | {"CONFIG", "NAME"}) == []


def test_cli_help_points_to_the_builtin_configs_and_an_unknown_name_lists_them():
    from typer.testing import CliRunner

    from cloak.cli import app

    text = " ".join(CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "eval/configs" in text
    with pytest.raises(ConfigError, match="built-in name") as info:
        load_config("no-such-grid")
    for name in builtin_configs():
        assert name in str(info.value), name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL.replace('kind = "dreambooth"', 'kind = "dreambooth"\nlr = "fast"'),
            r"\[\[mimics\]\] #1: `lr` must be a number, got 'fast'",
        ),
        (
            MINIMAL.replace('kind = "dreambooth"', 'kind = "dreambooth"\nlearning_rate = 1'),
            "unknown key `learning_rate`",
        ),
        (
            MINIMAL.replace('kind = "dreambooth"', 'kind = "textual"'),
            "`kind` must be one of dreambooth, lora, img2img",
        ),
        (
            MINIMAL.replace('style = "marbling"', 'style = "baroque"'),
            r"\[\[artists\]\] #1: `style` must be a testbed style",
        ),
        (
            MINIMAL + "[[defences]]\nmethod = 'encoder'\neps = 0.03\n",
            r"\[\[defences\]\] #1: `eps` must be in \(0, 255\]",
        ),
        (MINIMAL + "[[defences]]\nmethod = 'encoder'\n", "the key `eps`"),
        (MINIMAL + "[[defences]]\nmethod = 'nope'\neps = 8\n", "unknown method 'nope'"),
        ("attacks = ['jpeg:quality=500']\n" + MINIMAL, "`attacks`"),
        ("attacks = ['sharpen']\n" + MINIMAL, "unknown attack 'sharpen'"),
        ("output_attacks = ['sharpen']\n" + MINIMAL, "`output_attacks`: unknown attack 'sharpen'"),
        ("output_attacks = ['blur', 'blur']\n" + MINIMAL, "`output_attacks` must be distinct"),
        ("output_attacks = ['none']\n" + MINIMAL, "`output_attacks`: unknown attack 'none'"),  # always scored
        (MINIMAL.replace('model = "m"', 'model = "m"\nseeds = [1, 1]'), "`seeds` must be distinct"),
        (MINIMAL.replace('model = "m"\n', ""), "the key `model` is missing"),
        (MINIMAL + "[generation]\nn = 0\n", r"\[generation\]: `n` must be >= 1"),
        (
            MINIMAL + "[[defences]]\nname = 'g'\nprecomputed = 'x'\neps = 8\n",
            "takes only `name` and `fraction`, got also eps",
        ),
        # Checked when the config loads, not after the cells before them have run:
        ("attacks = ['diffpure:t=5']\n" + MINIMAL, r"`attacks`: .*`t` must be"),
        ("attacks = ['gridpure:foo=1']\n" + MINIMAL, r"`attacks`: .*foo"),
        (MINIMAL + "[[mimics]]\nkind = 'img2img'\nstrength = []\n", "a non-empty list"),
        (MINIMAL.replace('model = "m"', 'model = "m"\nseeds = [10000000000000000]'), "`seeds` must be distinct"),
        (MINIMAL.replace('model = "m"', 'model = ""'), "`model` must name a model"),
        (MINIMAL.replace('kind = "dreambooth"', 'kind = "dreambooth"\nlr = inf'), "`lr` must be a finite number"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_write(tmp_path, text))
    assert "grid.toml" in str(info.value)


def test_smooth_defence_and_fingerprints_of_unset_later_options(tmp_path):
    import dataclasses

    from eval.data import fingerprint

    text = MINIMAL + (
        "[[defences]]\npreset = 'default'\nname = 'ours'\n"
        "[[defences]]\npreset = 'default'\nname = 'soft'\nsmooth = 0.7\n"
    )
    ours, soft = load_config(_write(tmp_path, text)).defences
    assert ours.smooth is None and soft.smooth == 0.7 and soft.cloak_config().smooth == 0.7
    # cells cached before `smooth` existed keep their fingerprint; setting it makes a different cell
    from eval.config import _LATER_OPTIONS

    before = {k: v for k, v in dataclasses.asdict(ours).items() if k not in _LATER_OPTIONS}
    assert fingerprint({"defence": ours}) == fingerprint({"defence": before})
    assert fingerprint({"defence": soft}) != fingerprint({"defence": dataclasses.replace(soft, smooth=None)})
    # likewise a grid's cells before `output_attacks` existed; naming some makes different cells
    from eval.runner import inputs_of

    plain = load_config(_write(tmp_path, text))
    cleaning = dataclasses.replace(plain, output_attacks=("blur",))
    assert "output_attacks" not in inputs_of(plain, "marbling", mimic="dreambooth")
    assert inputs_of(cleaning, "marbling", mimic="dreambooth")["output_attacks"] == ("blur",)
    assert inputs_of(cleaning, "marbling") == inputs_of(plain, "marbling")  # the image sets are the same


def test_defence_from_a_preset_or_baseline(tmp_path):
    text = MINIMAL + (
        "[[defences]]\npreset = 'photoguard'\n"
        "[[defences]]\npreset = 'mist'\neps = 8\n"
        "[[defences]]\npreset = 'default'\nname = 'ours'\n"
        "[[defences]]\npreset = 'default'\nname = 'ours-35db'\nmin_psnr = 35\n"
    )
    pg, mist, ours, floor = load_config(_write(tmp_path, text)).defences
    assert (pg.name, pg.method, pg.eps, pg.steps) == ("photoguard", "encoder", 7.7, 1000)
    assert pg.options == {"target": "grey"} and pg.preset == "photoguard"
    assert (pg.step_size, pg.schedule, pg.random_start) == (2.55, "linear", None)  # random start: the default
    assert pg.cloak_config().pgd() == PGDConfig(eps=7.7, steps=1000, step_size=2.55, schedule="linear")
    assert (ours.step_size, ours.schedule, ours.random_start) == (None, None, None)  # keyed as before
    assert (mist.name, mist.method, mist.eps, mist.steps) == ("mist-8", "mist", 8, 100)
    assert (ours.name, ours.method, ours.eps, ours.steps) == ("ours", "encoder", 8.0, 12)
    assert ours.options == {}
    assert ours.min_psnr is None and floor.min_psnr == 35 and floor.cloak_config().min_psnr == 35
    assert load_config("agreement").defences == ()
    assert {d.preset for d in load_config("baselines").defences} >= {"fast", "photoguard", "mist", "aspl", "sds"}
    assert {d.name: d.surrogate for d in load_config("transfer").defences}["mist-via-unet2"] == "runs/unet2"


def test_defence_unknown_preset_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"\[\[defences\]\] #1: unknown preset 'glaze'"):
        load_config(_write(tmp_path, MINIMAL + "[[defences]]\npreset = 'glaze'\n"))


def test_img2img_strength_list_expands_to_a_sweep(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL + "[[mimics]]\nkind = 'img2img'\nstrength = [0.2, 0.6]\n"))
    assert [(m.name, m.strength) for m in cfg.mimics[1:]] == [("img2img-0.2", 0.2), ("img2img-0.6", 0.6)]


# ------------------------------------------------------------------------------------------------- runner


@pytest.fixture
def micro_grid(tmp_path, tiny_model_dir):
    """A micro config: a folder artist, a precomputed defence, an encoder cloak, one attack, three mimics."""
    rng = np.random.default_rng(0)
    art, glazed = tmp_path / "art", tmp_path / "glazed" / "alice"
    art.mkdir()
    glazed.mkdir(parents=True)
    for i in range(5):
        rgb = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(art / f"p{i}.png")
        Image.fromarray(np.clip(rgb.astype(int) + 3, 0, 255).astype(np.uint8)).save(glazed / f"p{i}.png")
    judge_cfg = JudgeConfig(style_names=("a", "b"), widths=(4,), resolution=32)
    torch.manual_seed(0)
    Judge(JudgeNet(judge_cfg), judge_cfg).save(tmp_path / "judge")
    text = f"""
name = "micro"
model = "{tiny_model_dir}"
device = "cpu"
seeds = [0]
attacks = ["jpeg:quality=50"]
output_attacks = ["blur:sigma=1"]

[[artists]]
name = "alice"
folder = "art"
n_train = 3

[[defences]]
name = "glaze"
precomputed = "{tmp_path}/glazed/{{artist}}"

[[defences]]
method = "encoder"
eps = 8
steps = 2

[[mimics]]
kind = "dreambooth"
steps = 2
lr = 1e-3
batch_size = 2

[[mimics]]
kind = "lora"
steps = 2
lr = 1e-3

[[mimics]]
kind = "img2img"
strength = 0.5

[generation]
n = 2
num_inference_steps = 2
guidance_scale = 3.0

[metrics]
judge = "judge"
"""
    return _write(tmp_path, text.replace('judge = "judge"', f'judge = "{tmp_path}/judge"'))


def test_shared_caches_are_prepared_for_a_grid_with_img2img(micro_grid, tmp_path):
    # Under torchrun rank 0 prepares the caches every rank shares; an img2img mimic has no fine-tune settings.
    from eval.config import load_config
    from eval.runner import _Grid, plan

    config = load_config(micro_grid)
    grid = _Grid(config, tmp_path / "out", "cpu")
    grid.prepare_shared(plan(config))
    assert any((tmp_path / "out" / "images").rglob("*.png"))


def test_score_alone_is_the_score_measure_reports(micro_grid, tmp_path):
    # output_scores scores each cleaning with `score`, which must give what `measure` would: the judge's success for
    # an artist whose style it knows, the style similarity for a folder artist.
    import dataclasses

    from eval.runner import _Grid

    grid = _Grid(load_config(micro_grid), tmp_path / "out", "cpu")
    alice = grid.artists["alice"]
    images = data.to_batch(grid.artist_images("alice").train)
    for artist, name in ((alice, "style_similarity"), (dataclasses.replace(alice, style="a"), "success")):
        row = grid.measure(artist, images, ["a painting"] * images.shape[0])
        assert row["score_name"] == name
        assert grid.score(artist, images) == row["score"]


def test_runner_micro_grid_writes_everything_and_resumes(micro_grid, tmp_path):
    from eval.runner import CSV_COLUMNS, run

    out = tmp_path / "out"
    assert run(micro_grid, out, progress=False, log=lambda s: None) == 0
    for name in ("results.json", "results.csv", "run.json", "report.html", "summary.md", "plots/budget.svg"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert len(cells) == 3 + 2 * 2 * 3  # clean x 3 mimics + 2 defences x (none, jpeg) x 3 mimics
    assert all(c["status"] == "ok" for c in cells)
    assert all(c["score_name"] == "style_similarity" and -1 <= c["score"] <= 1 for c in cells)
    # the judge names every generation one of its styles, even for an artist it does not know
    assert all(set(c["judged_as"]) <= {"a", "b"} and sum(c["judged_as"].values()) == c["n_generated"] for c in cells)
    # and scores every cell's generations again after the attacker's cleaning of them
    assert all(list(c["output_scores"]) == ["blur:sigma=1"] for c in cells)
    assert all(-1 <= c["output_scores"]["blur:sigma=1"] <= 1 for c in cells)
    assert any(c["output_scores"]["blur:sigma=1"] != c["score"] for c in cells)
    glaze = next(c for c in cells if c["defence"] == "glaze" and c["attack"] == "none")
    assert glaze["vis_linf"] == 3.0 and glaze["method"] == "precomputed"
    enc = next(c for c in cells if c["defence"] == "encoder-8" and c["attack"] == "none")
    assert 0 < enc["vis_linf"] <= 8
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(cells) and tuple(table[0]) == CSV_COLUMNS
    assert json.loads(table[0]["judged_as"]) == cells[0]["judged_as"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["config"]["name"] == "micro" and run_info["seeds"] == [0] and "torch" in run_info["versions"]
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and report.count("<svg") == 3 and "glaze" in report
    assert "generations per cell" in report and "Versions: " in report and "torch" in report
    assert "0 of the cells were finished by an earlier run" in report
    training = report.split("<h2>Training images</h2>")[1].split("<h2>Generations</h2>")[0]
    assert training.count("<tr><td") == 1 + 2 + 2  # clean, each defence, each defence after jpeg
    assert "<img" in training
    assert {d["defence"] for d in results["summary"]["defences"]} == {"glaze", "encoder-8"}
    # what the purification cost the images it was given, beside its scores; unattacked cells have none
    jpeg_cells = [c for c in cells if c["attack"] != "none"]
    assert all(8 < c["attack_psnr"] < 20 for c in jpeg_cells)  # JPEG q50 of random-noise paintings: about 12 dB
    assert all(c.get("attack_psnr") is None for c in cells if c["attack"] == "none")
    jpeg_conditions = [c for c in results["summary"]["conditions"] if c["attack"] != "none"]
    assert all(c["attack_psnr"] is not None for c in jpeg_conditions)
    assert "purified images' PSNR to their input, dB" in (out / "summary.md").read_text()
    assert "what the judge named the generations" in (out / "summary.md").read_text()
    assert "after cleaning the generations" in (out / "summary.md").read_text()

    lines = []
    assert run(micro_grid, out, progress=False, log=lines.append) == 0
    assert lines == []  # every cell was finished: nothing ran again
    assert f"{len(cells)} of the cells were finished by an earlier run" in (out / "report.html").read_text()
    again = json.loads((out / "results.json").read_text())["cells"]
    assert [c["score"] for c in again] == [c["score"] for c in cells]

    # cells finished before the runner recorded attack_psnr get it from their cached image sets on a rerun
    for name in ("results.json", "cells-archive.json"):
        saved = json.loads((out / name).read_text())
        for c in saved["cells"]:
            c.pop("attack_psnr", None)
        (out / name).write_text(json.dumps(saved))
    assert run(micro_grid, out, progress=False, log=lines.append) == 0 and lines == []
    again = json.loads((out / "results.json").read_text())["cells"]
    assert [c.get("attack_psnr") for c in again] == pytest.approx([c.get("attack_psnr") for c in cells])

    # a changed hyper-parameter re-runs exactly the cells it decides
    micro_grid.write_text(micro_grid.read_text().replace('kind = "lora"\nsteps = 2', 'kind = "lora"\nsteps = 3'))
    assert run(micro_grid, out, progress=False, log=lines.append) == 0
    assert len(lines) == 5 and all("|lora|" in line for line in lines)

    # and back: the folder's archive keeps the first run's cells, though results.json now holds the second grid's
    micro_grid.write_text(micro_grid.read_text().replace('kind = "lora"\nsteps = 3', 'kind = "lora"\nsteps = 2'))
    lines.clear()
    assert run(micro_grid, out, progress=False, log=lines.append) == 0
    assert lines == []
    back = json.loads((out / "results.json").read_text())["cells"]
    assert [c["score"] for c in back] == [c["score"] for c in cells]

    # a folder from before the archive existed: what its results.json holds is archived before it is overwritten
    (out / "cells-archive.json").unlink()
    micro_grid.write_text(micro_grid.read_text().replace('kind = "lora"\nsteps = 2', 'kind = "lora"\nsteps = 3'))
    assert run(micro_grid, out, progress=False, log=lines.append) == 0
    micro_grid.write_text(micro_grid.read_text().replace('kind = "lora"\nsteps = 3', 'kind = "lora"\nsteps = 2'))
    lines.clear()
    assert run(micro_grid, out, progress=False, log=lines.append) == 0
    assert lines == []


def test_seeds_override_extends_a_finished_run_and_reuses_its_cells(micro_grid, tmp_path):
    """`cloak eval X --seeds ...`: the config's cells on other seeds; a later, wider --seeds reruns none of them."""
    import re

    from eval.runner import run

    text = micro_grid.read_text()  # img2img alone: no fine-tune, the same cells on fewer model calls
    text = re.sub(r'\[\[mimics\]\]\nkind = "(dreambooth|lora)"\n(.+\n)+?\n', "", text)
    micro_grid.write_text(text.replace('["blur:sigma=1"]', '["median", "blur:sigma=1"]'))  # not in sorted order
    out, lines = tmp_path / "out", []
    assert run(micro_grid, out, progress=False, seeds=[1], log=lines.append) == 0
    first = json.loads((out / "results.json").read_text())["cells"]
    assert len(first) == 5 and {c["seed"] for c in first} == {1} and {c["mimic"] for c in first} == {"img2img-0.5"}
    assert json.loads((out / "run.json").read_text())["seeds"] == [1]
    lines.clear()
    assert run(micro_grid, out, progress=False, seeds=(0, 1), log=lines.append) == 0
    assert len(lines) == 5 and all(line.split(": ")[0].endswith("|0") for line in lines), lines  # only seed 0 ran
    both = json.loads((out / "results.json").read_text())
    again = {c["key"]: c["score"] for c in both["cells"] if c["seed"] == 1}
    assert again == {c["key"]: c["score"] for c in first}
    assert {c["n_seeds"] for c in both["summary"]["conditions"]} == {2}
    # once every row is read back from JSON (keys sorted), the tables still keep the config's order
    assert run(micro_grid, out, progress=False, seeds=(0, 1), log=lines.append) == 0 and len(lines) == 5
    assert "| defence | attack | none | median | blur:sigma=1 |" in (out / "summary.md").read_text()
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        run(micro_grid, out, progress=False, seeds=[0, 0], log=lines.append)


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("4-7", (4, 5, 6, 7)), ("0,2,5", (0, 2, 5)), (" 0-2, 6 ", (0, 1, 2, 6)), ("3", (3,)), ("5,1", (5, 1))],
)
def test_parse_seeds_reads_numbers_and_ranges(text, seeds):
    from eval.config import parse_seeds

    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7-4", "runs backwards; write 4-7"),
        ("1,1", "distinct"),
        ("0-3,2", "distinct"),
        ("", "expected numbers and ranges"),
        ("1;2", "expected numbers and ranges"),
        ("-1", "expected numbers and ranges"),
        ("0-99999999", "over 10,000 seeds"),
        ("99999999999999999999", "distinct integers from 0 to"),
    ],
)
def test_parse_seeds_refuses_with_the_reason(text, message):
    from eval.config import parse_seeds

    with pytest.raises(ConfigError, match=message) as info:
        parse_seeds(text)
    assert "--seeds" in str(info.value)


def test_eval_cli_refuses_bad_seeds_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from cloak.cli import app

    result = CliRunner().invoke(app, ["eval", "quick", "--seeds", "7-4", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--seeds: the range 7-4 runs backwards" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_runner_records_a_failing_cell_and_keeps_the_others(micro_grid, tmp_path):
    from eval.runner import run

    (tmp_path / "glazed" / "alice" / "p1.png").unlink()  # the precomputed defence now lacks a file
    out = tmp_path / "out"
    assert run(micro_grid, out, progress=False, log=lambda s: None) == 1
    cells = json.loads((out / "results.json").read_text())["cells"]
    failed = [c for c in cells if c["status"] == "failed"]
    assert failed and all(c["defence"] == "glaze" for c in failed)
    assert "lacks protected copies of p1" in failed[0]["error"]
    assert sum(c["status"] == "ok" for c in cells) == len(cells) - len(failed)
    assert "lacks protected copies" in (out / "failures.log").read_text()
    assert (out / "report.html").is_file()


def test_paper_style_config_wiring_on_tiny_models(tmp_path, tiny_model_dir):
    """paper-style as shipped (mist, noisy upscaling, bf16 LoRA, CLIP metrics), shrunk to tiny sizes."""
    from dataclasses import replace

    from eval.runner import run

    art = tmp_path / "van"
    art.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(art / f"{i:02d}.png")
    cfg = load_config("paper-style")
    small = replace(
        cfg,
        model=str(tiny_model_dir),
        device="cpu",
        seeds=(0,),
        defences=(replace(cfg.defences[0], steps=1),),
        attacks=("noisy_upscale",),
        mimics=tuple(replace(m, finetune=replace(m.finetune, steps=2)) for m in cfg.mimics),
        generation=replace(cfg.generation, prompts=cfg.generation.prompts[:1], n=2, num_inference_steps=2),
        metrics=replace(cfg.metrics, clip="ViT-B-32:none", lpips=False),
    )
    out = tmp_path / "out"
    assert run(small, out, artists=[art], progress=False, log=lambda s: None) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert len(cells) == 2 + 1 * 2 * 2 and {c["artist"] for c in cells} == {"van"}
    assert all(c["n_generated"] == 2 and 0 <= c["clip_score"] <= 100 and c["fd"] >= 0 for c in cells)
    assert {c["mimic_kind"] for c in cells} == {"dreambooth", "lora"}


def test_missing_artist_folder_fails_before_loading_anything(tmp_path, monkeypatch):
    from eval.runner import run

    with pytest.raises(ConfigError, match=r"artist 'artist': the folder .* does not exist; .* --artist FOLDER"):
        run("paper-style", tmp_path / "out", progress=False)
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(few / f"{i}.png")
    with pytest.raises(ConfigError, match=r"holds 3 images; this config needs at least 20 \(18 to train on"):
        run("paper-style", tmp_path / "out", artists=[few], progress=False)
    missing = _write(tmp_path, MINIMAL + "[[defences]]\nname = 'glaze'\nprecomputed = 'nowhere/{artist}'\n")
    with pytest.raises(ConfigError, match=r"defence 'glaze': the `precomputed` folder nowhere/marbling does not"):
        run(missing, tmp_path / "out", progress=False)
    # A surrogate model (transfer) is loaded only when its first cloak is made; a missing one is named at once.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    unbuilt = _write(tmp_path, MINIMAL + "[[defences]]\nname = 's'\nmethod = 'encoder'\neps = 8\n"
                     "surrogate = 'runs/no-such-unet'\n")
    with pytest.raises(ConfigError, match=r"defence 's': `surrogate`: model 'runs/no-such-unet' is neither a folder"):
        run(unbuilt, tmp_path / "out", progress=False)
    # A target image may be written after the config (benchmarks/target_images.py): parsed fine, refused at run.
    later = _write(tmp_path, MINIMAL + "[[defences]]\nname = 'e'\nmethod = 'encoder'\neps = 8\n"
                   "options = {target = 'runs/not-yet.png'}\n")
    load_config(later)
    with pytest.raises(ConfigError, match=r"defence 'e': target must be one of .* 'runs/not-yet.png' \(no such file"):
        run(later, tmp_path / "out", progress=False)


def test_an_interrupted_cache_rewrite_is_never_read_back(tmp_path, monkeypatch):
    from eval import data

    names = ("a", "b")
    first = [np.full((4, 4, 3), 10, np.uint8), np.full((4, 4, 3), 20, np.uint8)]
    data.save_set(tmp_path, names, first, inputs={"setting": 1})
    calls = []

    def dies_on_the_second(path, payload):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        (tmp_path / Path(path).name).write_bytes(payload)

    monkeypatch.setattr(data, "atomic_write_bytes", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        data.save_set(tmp_path, names, [np.full((4, 4, 3), 99, np.uint8)] * 2, inputs={"setting": 2})
    # a.png is new, b.png old: read as neither setting's set
    assert data.load_set(tmp_path, names, inputs={"setting": 1}) is None
    assert data.load_set(tmp_path, names, inputs={"setting": 2}) is None


def test_eval_cli_keeps_the_section_name_and_refuses_a_file_as_out(tmp_path):
    from typer.testing import CliRunner

    from cloak.cli import app

    bad = _write(tmp_path, MINIMAL + "[[defences]]\nmethod = 'encoder'\neps = 8\nstep = 3\n")
    result = CliRunner().invoke(app, ["eval", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "[[defences]] #1: unknown key `step`" in result.output, result.output
    (tmp_path / "file").write_text("x")
    on_file = CliRunner().invoke(app, ["eval", "quick", "--out", str(tmp_path / "file")])
    assert on_file.exit_code == 2 and "is a file" in on_file.output


def test_surrogate_defence_cloaks_against_the_other_model(micro_grid, tmp_path):
    """Transfer: a defence with `surrogate` is computed on that model, the same cloak without it on the grid's."""
    from tiny_models import make_tiny_components, save_tiny_pipeline

    from cloak.protect import Cloaker
    from eval.runner import _Grid

    other = make_tiny_components(seed=1)
    save_tiny_pipeline(other, tmp_path / "other")
    text = micro_grid.read_text().replace(
        "[[mimics]]",
        f'[[defences]]\nname = "transfer"\nmethod = "encoder"\neps = 8\nsteps = 2\nsurrogate = "{tmp_path}/other"\n\n'
        "[[mimics]]",
        1,
    )
    grid = _Grid(load_config(_write(tmp_path, text)), tmp_path / "out", "cpu")
    direct, transfer = grid.protected("alice", "encoder-8", 0), grid.protected("alice", "transfer", 0)
    assert any(not np.array_equal(a, b) for a, b in zip(direct, transfer, strict=True))
    expected = Cloaker(other, grid.defences["transfer"].cloak_config()).protect(
        grid.artist_images("alice").train[0], seed=0
    )
    assert np.array_equal(transfer[0], expected.image)


def test_a_purifier_is_built_once_a_run_and_gives_what_a_fresh_one_gives(micro_grid, tmp_path, monkeypatch):
    # A spec that names an upscaler or LPIPS model loads it when built: once for the grid, not once a cell.
    import attacks
    from eval.runner import _ATTACK, _Grid, _stream

    spec = "noise:sigma=0.05"  # random: a purifier that kept state between calls would differ from a fresh one
    text = micro_grid.read_text().replace("seeds = [0]", "seeds = [0, 1]").replace("jpeg:quality=50", spec)
    grid = _Grid(load_config(_write(tmp_path, text)), tmp_path / "out", "cpu")
    built = []
    real = attacks.parse_spec
    monkeypatch.setattr(attacks, "parse_spec", lambda spec, *a, **k: built.append(spec) or real(spec, *a, **k))
    runs = {(d, s): grid.attacked("alice", d, spec, s) for d in ("clean", "encoder-8") for s in (0, 1)}
    assert built == [spec]
    fresh = real(spec)
    x = data.to_batch(grid.protected("alice", "encoder-8", 1))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(runs["encoder-8", 1], data.from_batch(fresh(x, _stream(1, _ATTACK))), strict=True)
    )


def test_fraction_protects_the_first_images_and_leaves_the_rest_original(micro_grid, tmp_path):
    """`fraction`: the first round(fraction * n) training images are protected exactly as by the full defence, the
    others stay the artist's originals; for a precomputed defence too; unset, the fingerprint is unchanged."""
    import dataclasses

    from eval.data import fingerprint
    from eval.runner import _Grid

    extra = (
        '[[defences]]\nname = "half"\nmethod = "encoder"\neps = 8\nsteps = 2\nfraction = 0.5\n\n'
        f'[[defences]]\nname = "glaze-third"\nprecomputed = "{tmp_path}/glazed/{{artist}}"\nfraction = 0.34\n\n'
    )
    text = micro_grid.read_text().replace("[[mimics]]", extra + "[[mimics]]", 1)
    grid = _Grid(load_config(_write(tmp_path, text)), tmp_path / "out", "cpu")
    clean = grid.artist_images("alice").train  # n_train = 3
    full, half = grid.protected("alice", "encoder-8", 0), grid.protected("alice", "half", 0)
    assert [np.array_equal(a, b) for a, b in zip(half, full, strict=True)] == [True, True, False]  # round(1.5) = 2
    assert [np.array_equal(a, b) for a, b in zip(half, clean, strict=True)] == [False, False, True]
    glaze, third = grid.protected("alice", "glaze", 0), grid.protected("alice", "glaze-third", 0)
    assert [np.array_equal(a, b) for a, b in zip(third, glaze, strict=True)] == [True, False, False]
    assert [np.array_equal(a, b) for a, b in zip(third, clean, strict=True)] == [False, True, True]
    spec = grid.defences["half"]
    unset = dataclasses.replace(spec, fraction=None)
    from eval.config import _LATER_OPTIONS

    before = {k: v for k, v in dataclasses.asdict(unset).items() if k not in _LATER_OPTIONS}
    assert fingerprint({"d": unset}) == fingerprint({"d": before}) != fingerprint({"d": spec})
    for bad in ("0", "1.5", "'half'"):
        with pytest.raises(ConfigError, match=r"`fraction` must be a number"):
            load_config(_write(tmp_path, MINIMAL + f"[[defences]]\nmethod = 'encoder'\neps = 8\nfraction = {bad}\n"))


def test_budget_plot_keeps_defences_that_share_a_budget_apart():
    from eval.report import plots

    def row(defence, method, eps, effect, mimic="db"):
        return {"artist": "a", "defence": defence, "method": method, "mimic": mimic, "eps": eps, "effect": effect,
                "vis_psnr": 31.0, "above_noise": True}

    summary = {
        "defences": [
            row("enc-4", "encoder", 4, 0.1), {**row("enc-8", "encoder", 8, 0.3), "effect_range": [0.05, 0.5]},
            row("hybrid", "mist", 8, 0.406), row("hybrid-half", "mist", 8, 0.219),  # same eps: two series
        ],
        "conditions": [
            {"artist": "a", "defence": "enc-8", "mimic": "db", "attack": "diffpure:t=0.2,steps=10", "retained": 0.5}
        ],
    }
    svgs = {stem: svg for stem, svg, _ in plots(summary)}
    budget = svgs["budget"]
    assert ">encoder db</text>" in budget and ">hybrid db</text>" in budget and ">hybrid-half db</text>" in budget
    assert budget.count("<circle") == 4  # the two hybrids are not averaged into one point
    assert budget.count("<polyline") == 1  # only the sweep is a line
    assert budget.count('class="range"') == 1  # the one defence with a seed range gets a whisker
    whisker = budget.split('class="range"')[1].split("/>")[0]
    y1, y2 = (float(whisker.split(f'{k}="')[1].split('"')[0]) for k in ("y1", "y2"))
    assert y1 > y2  # low effect lower on the page (SVG y grows downwards)
    # a long attack name is cut for the axis but kept whole in its hover title
    assert "<title>diffpure:t=0.2,steps=10</title>" in svgs["retained"]


def test_series_beyond_the_palette_do_not_repeat_a_look():
    from eval.report import COLOURS, _style

    looks = [_style(i) for i in range(2 * len(COLOURS))]
    assert len(set(looks)) == len(looks)


def test_ctrl_c_in_a_grid_leaves_the_finished_cells_tables(micro_grid, tmp_path, monkeypatch):
    import eval.runner as runner

    real = runner._Grid.run_cell
    calls = []

    def stops_at_the_second(self, cell):
        calls.append(cell.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, cell)

    monkeypatch.setattr(runner._Grid, "run_cell", stops_at_the_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        runner.run(micro_grid, out, progress=False, log=lambda s: None)
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1  # the one finished cell, tabled
    assert (out / "summary.md").is_file() and (out / "report.html").is_file()
    assert "interrupted" in json.loads((out / "run.json").read_text())


def test_a_run_that_fails_says_so_in_run_json(micro_grid, tmp_path, monkeypatch):
    # run.json is written when the run starts; a run that then fails (here: the model does not load) must not leave
    # it looking like the record of the results an earlier run left in the folder.
    import eval.runner as runner
    from cloak.errors import ModelNotFoundError

    def no_model(self, *args, **kwargs):
        raise ModelNotFoundError("model 'x' is not on this machine")

    monkeypatch.setattr(runner._Grid, "__init__", no_model)
    out = tmp_path / "out"
    with pytest.raises(ModelNotFoundError):
        runner.run(micro_grid, out, progress=False, log=lambda s: None)
    info = json.loads((out / "run.json").read_text())
    assert info["error"] == "ModelNotFoundError: model 'x' is not on this machine" and "failed" in info
    assert "finished" not in info
