"""The testbed: procedural artists, judge, micro build, minimal DreamBooth and the shipped weights."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cloak.errors import ConfigError, ModelNotFoundError
from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, SEEN, STYLES, paint, paint_batch, style_index
from cloak.testbed.judge import JUDGE_DIR, frechet_distance, load_judge

WEIGHTS = Path(__file__).parents[1] / "cloak" / "testbed" / "weights"


# ------------------------------------------------------------------------------------------------- artists


def test_styles_and_held_out_split():
    assert len(STYLES) >= 12 and len(set(STYLES)) == len(STYLES)
    assert len(HELD_OUT) >= 4 and set(HELD_OUT) <= set(STYLES)
    assert set(SEEN) | set(HELD_OUT) == set(STYLES) and not set(SEEN) & set(HELD_OUT)


@pytest.mark.parametrize("style", STYLES)
def test_paint_is_deterministic_in_range_and_captioned(style):
    a, b = paint(style, 7), paint(style, 7)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.float32
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    np.testing.assert_array_equal(a.image, b.image)
    assert a.caption.startswith(f"a painting in the style of {style}, ")
    # content and palette vary with the seed
    assert np.abs(paint(style, 8).image - a.image).mean() > 0.02


def test_styles_differ_in_texture_not_only_colour():
    # Grey-level high-frequency energy (mean absolute Laplacian) differs between styles for the same scene:
    # the styles are told apart by their marks, which colour changes cannot fake.
    def texture(style):
        g = paint(style, 3).image.mean(-1)
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float(np.abs(lap).mean())

    energies = sorted(texture(s) for s in STYLES)
    assert energies[-1] > 4 * energies[0]
    images = [paint(s, 3).image for s in STYLES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 0.03, (STYLES[i], STYLES[j])


def test_paint_batch_and_errors():
    images, captions = paint_batch("pointillism", range(3))
    assert images.shape == (3, 3, 64, 64) and len(captions) == 3
    np.testing.assert_array_equal(images[1], paint("pointillism", 1).image.transpose(2, 0, 1))
    assert style_index(STYLES[5]) == 5
    with pytest.raises(ConfigError, match=r"unknown style 'van gogh'; expected one of pointillism"):
        paint("van gogh", 0)
    with pytest.raises(ConfigError, match=r"`size` must be >= 32 px, got 16"):
        paint("pointillism", 0, size=16)
    assert EVAL_SEED_OFFSET >= 100_000


# --------------------------------------------------------------------------------------------------- judge


def test_frechet_distance_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    b = torch.randn(200, 8, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same = frechet_distance(a, b)
    assert 0 < same < 1.0
    assert frechet_distance(a + 3.0, b + 3.0) == pytest.approx(same, rel=1e-6)  # translation invariant
    assert frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)  # same covariance: ||mu shift||^2
    with pytest.raises(ConfigError, match=r"feature sizes differ: feats_a has D=8, feats_b has D=4"):
        frechet_distance(a, b[:, :4])


def test_load_judge_missing_folder_says_how_to_build(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no style judge in .*`cloak testbed build --out DIR`"):
        load_judge("cpu", tmp_path)


# ---------------------------------------------------------------------------------------------- micro build


@pytest.fixture(scope="module")
def micro_build(tmp_path_factory):
    from cloak.testbed.build import MICRO, build

    out = tmp_path_factory.mktemp("micro")
    cpu = time.process_time()
    record = build(out, MICRO)
    # CPU seconds, not wall time, so a busy shared machine does not fail the test
    record["cpu_seconds"] = time.process_time() - cpu
    return out, record


def test_micro_build_is_a_loadable_stable_diffusion_folder(micro_build):
    from diffusers import StableDiffusionPipeline

    out, record = micro_build
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).is_dir(), part
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert record["cpu_seconds"] < 60, record
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.latent_channels == 4 and pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer("sks").input_ids[0] == 49406  # the real CLIP vocabulary: <|startoftext|>
    image = pipe(
        "a painting in the style of pointillism",
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])


def test_micro_build_judge_and_dreambooth(micro_build):
    """The micro build's judge works and eval's DreamBooth (the one the check uses) trains a copy of its UNet."""
    from cloak.models import load_components
    from cloak.testbed.check import SKS_PROMPT
    from eval.mimics import FinetuneConfig, finetune, generate

    out, _ = micro_build
    judge = load_judge("cpu", out / "judge")
    assert judge.style_names == STYLES
    x = torch.from_numpy(paint_batch("woodcut", range(3))[0])
    assert judge.predict(x).shape == (3,) and judge.features(x).shape == (3, 16)

    comp = load_components(str(out), device="cpu")
    before = [p.clone() for p in comp.unet.parameters()]
    config = FinetuneConfig(instance_prompt=SKS_PROMPT, steps=2, lr=1e-3, batch_size=2)
    mimic = finetune(comp, x, config, torch.Generator().manual_seed(0))
    assert all(
        torch.equal(a, b) for a, b in zip(before, comp.unet.parameters(), strict=True)
    )  # the base model is untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, mimic.unet.parameters(), strict=True))
    images = generate(mimic, SKS_PROMPT, 2, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    again = generate(mimic, SKS_PROMPT, 2, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, again)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
        finetune(comp, x * 2 - 1, config, torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------ shipped weights


@pytest.mark.skipif(not (WEIGHTS / "model_index.json").is_file(), reason="testbed weights not built")
def test_shipped_weights_load_and_fit_the_size_budget():
    from cloak.models import load_components

    files = [f for f in WEIGHTS.rglob("*") if f.is_file()]
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert weights and not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt")]
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20
    comp = load_components("testbed", device="cpu")
    assert comp.resolution == 64 and comp.vae.config.latent_channels == 4
    judge = load_judge("cpu")
    assert JUDGE_DIR == WEIGHTS / "judge" and judge.style_names == STYLES
    # the judge names clean evaluation images of a held-out style
    x = torch.from_numpy(paint_batch(HELD_OUT[0], range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 8))[0])
    assert (judge.predict(x) == STYLES.index(HELD_OUT[0])).float().mean() >= 0.75


def test_second_unet_on_the_same_vae(micro_build, tmp_path):
    """--vae-from: same VAE weights and judge, a different UNet (the transfer experiment's second model)."""
    from safetensors.torch import load_file

    from cloak.testbed.build import MICRO, build

    src, _ = micro_build
    out = tmp_path / "second"
    record = build(out, replace(MICRO, seed=1), vae_from=src)
    assert record["vae_from"] == str(src) and "vae" not in record["seconds"]
    vae_a, vae_b = (load_file(d / "vae" / "diffusion_pytorch_model.safetensors") for d in (src, out))
    assert vae_a.keys() == vae_b.keys() and all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
    unet_a, unet_b = (load_file(d / "unet" / "diffusion_pytorch_model.safetensors") for d in (src, out))
    assert not all(torch.equal(unet_a[k], unet_b[k]) for k in unet_a)
    assert (out / "judge").is_dir() and sorted(p.name for p in (out / "judge").iterdir()) == sorted(
        p.name for p in (src / "judge").iterdir()
    )


def test_second_unet_refuses_a_folder_without_a_vae(tmp_path):
    from cloak.testbed.build import MICRO, build

    with pytest.raises(ConfigError, match=r"--vae-from .*: no `vae/` folder"):
        build(tmp_path / "out", MICRO, vae_from=tmp_path)
    # "testbed" names the shipped build (whose full-size VAE a micro config cannot take)
    with pytest.raises(ConfigError, match=r"--vae-from .*weights: its VAE has channels"):
        build(tmp_path / "out", MICRO, vae_from="testbed")


def test_shipped_weights_were_built_with_the_default_config():
    """`cloak testbed build` at its defaults rebuilds what is shipped: the record matches BuildConfig()."""
    from dataclasses import asdict

    from cloak.models import TESTBED_DIR
    from cloak.testbed.artists import OPTICAL_BLUR_PX
    from cloak.testbed.build import BuildConfig

    record = json.loads((TESTBED_DIR / "build.json").read_text())
    expected = json.loads(json.dumps(asdict(BuildConfig())))  # tuples -> lists, as the record stores them
    assert record["config"] == expected
    assert record.get("vae_from") is None and record["held_out"] == list(HELD_OUT)
    assert OPTICAL_BLUR_PX == 1.0  # the shipped weights were trained on paintings through this blur
