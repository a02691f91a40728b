"""`cloak protect` end to end on a folder of mixed files, with a tiny local diffusers model folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cloak.cli import app

runner = CliRunner()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture
def art(tmp_path) -> Path:
    """An artist's folder: PNG with alpha, rotated JPEG with EXIF, a 4000x3000 image, a corrupt file, a subfolder."""
    folder = tmp_path / "art"
    (folder / "sketches").mkdir(parents=True)
    rgba = _noise(30, 40, 4)
    rgba[..., 3] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(_noise(24, 36, seed=1)).save(folder / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(np.full((3000, 4000, 3), 200, np.uint8)).save(folder / "sketches" / "large.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really an image")
    (folder / "notes.txt").write_text("not an image: ignored inside folders")
    return folder


def _protect(*args):
    return runner.invoke(app, ["protect", *map(str, args)])


def test_folder_of_mixed_files(art, tiny_model_dir, tmp_path):
    before = _digest(art)
    out = tmp_path / "out"
    result = _protect(art, "--out", out, "--model", tiny_model_dir, "--steps", "2", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "broken.png" in result.output
    assert "3 cloaked, 0 skipped, 1 failed" in result.output
    assert _digest(art) == before, "an input changed"

    expected = {"alpha.png": (40, 30), "photo.png": (24, 36), "sketches/large.png": (4000, 3000)}
    for name, size in expected.items():
        img = Image.open(out / name)
        assert img.format == "PNG" and img.size == size
        record = json.loads((out / name).with_name(Path(name).stem + ".cloak.json").read_text())
        assert record["linf"] <= 8 and record["eps"] == 8 and record["steps"] == 2
        for key in ("method", "preset", "seed", "model", "psnr", "ssim", "lpips", "seconds"):
            assert key in record
    # Alpha untouched; budget measured on the saved file.
    src = np.asarray(Image.open(art / "alpha.png"))
    got = np.asarray(Image.open(out / "alpha.png"))
    assert np.array_equal(src[..., 3], got[..., 3])
    assert np.abs(src[..., :3].astype(int) - got[..., :3]).max() <= 8
    # The JPEG comes back upright (EXIF orientation applied) and no longer asks viewers to rotate.
    assert Image.open(out / "photo.png").getexif().get(0x0112, 1) == 1
    assert not list(out.rglob("*.tmp")), "temporary files left behind"

    again = _protect(art, "--out", out, "--model", tiny_model_dir, "--steps", "2", "--device", "cpu")
    assert "0 cloaked, 3 skipped, 1 failed" in again.output
    assert again.exit_code == 1


def test_all_good_exits_zero_and_overwrite_redoes(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_noise(20, 20)).save(folder / "a.png")
    out = folder / "protected"  # output inside the input folder: must not be cloaked again next time
    args = (folder, "--out", out, "--model", tiny_model_dir, "--steps", "1", "--device", "cpu")
    first = _protect(*args)
    assert first.exit_code == 0, first.output
    stamp = (out / "a.cloak.json").stat().st_mtime_ns
    second = _protect(*args)
    assert second.exit_code == 0 and "0 cloaked, 1 skipped, 0 failed" in second.output
    third = _protect(*args, "--overwrite")
    assert "1 cloaked, 0 skipped" in third.output
    assert (out / "a.cloak.json").stat().st_mtime_ns != stamp
    assert not (out / "protected").exists()


def _protect_one(tmp_path, model_dir, *options):
    """Cloak one 32x32 noise image into tmp_path/out with ``options``; returns the output folder and its sidecar."""
    Image.fromarray(_noise(32, 32)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = _protect(tmp_path / "a.png", "--out", out, "--model", model_dir, *options)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "a.cloak.json").read_text())


def test_min_psnr_holds_on_the_saved_file_and_is_recorded(tmp_path, tiny_model_dir):
    out, record = _protect_one(tmp_path, tiny_model_dir, "--steps", "3", "--min-psnr", "38")
    assert record["min_psnr"] == 38 and record["psnr"] >= 38 and record["linf"] <= 8
    src, got = (np.asarray(Image.open(p)).astype(float) for p in (tmp_path / "a.png", out / "a.png"))
    assert 10 * np.log10(255**2 / np.mean((src - got) ** 2)) >= 38


def test_smooth_is_passed_and_recorded(tmp_path, tiny_model_dir):
    _, record = _protect_one(tmp_path, tiny_model_dir, "--steps", "2", "--smooth", "0.7")
    assert record["smooth"] == 0.7 and 1 <= record["linf"] <= 8
    bad = _protect(tmp_path / "a.png", "--out", tmp_path / "o2", "--model", tiny_model_dir, "--smooth", "-1")
    assert bad.exit_code != 0 and "`smooth` must be a positive Gaussian sigma" in bad.output


def test_method_options_reach_the_method_and_the_record(tmp_path, tiny_model_dir):
    hybrid = ["--method", "mist", "--option", "semantic=sds-", "--option", "samples=2"]
    _, record = _protect_one(tmp_path, tiny_model_dir, *hybrid, "--steps", "1")
    assert record["method"] == "mist" and record["options"] == {"semantic": "sds-", "samples": 2}
    bad = _protect(tmp_path / "a.png", "--out", tmp_path / "o2", "--model", tiny_model_dir, "--method", "mist",
                   "--option", "semantic=nonsense")  # a value the method refuses: refused before any image is made
    assert bad.exit_code == 2 and "`semantic` (mist option)" in bad.output and not (tmp_path / "o2" / "a.png").exists()


def test_never_writes_over_an_input(tmp_path, tiny_model_dir):
    Image.fromarray(_noise(16, 16)).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    result = _protect(tmp_path / "a.png", "--out", tmp_path, "--model", tiny_model_dir, "--steps", "1")
    assert result.exit_code == 1
    assert "would overwrite an input" in result.output
    assert (tmp_path / "a.png").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "0.03"], "Did you mean 8 for 8/255"),
        (["--preset", "turbo"], "unknown preset 'turbo'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--format", "gif"], "unknown --format 'gif'"),
        (["--min-psnr", "90"], "between 20 and 60 dB"),
        (["--method", "advdm", "--target", "grey"], "method `advdm` takes no option `target`"),
        (["--preset", "pid", "--target", "grey"], "method `pid` takes no option `target`"),
        (["--eot", "jpeg:quality=200"], "`quality` must be an int in [1, 100]"),
        (["--target", "no-such-target.png"], "no such file"),
        (["--option", "semantic"], "--option takes KEY=VALUE"),
        (["--option", "colour=red"], "method `encoder` takes no option `colour`"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    Image.fromarray(_noise(8, 8)).save(tmp_path / "a.png")
    result = _protect(tmp_path / "a.png", "--out", tmp_path / "o", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_missing_model_is_one_clear_line(tmp_path):
    Image.fromarray(_noise(8, 8)).save(tmp_path / "a.png")
    result = _protect(tmp_path / "a.png", "--out", tmp_path / "o" / "sub", "--model", "someone/not-cached-model")
    assert result.exit_code == 1
    assert "someone/not-cached-model" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # the --out folders checked for writing are not left behind, empty


def test_missing_input_and_lossy_warning(tmp_path, tiny_model_dir):
    Image.fromarray(_noise(16, 16)).save(tmp_path / "a.png")
    result = _protect(tmp_path / "nope.png", tmp_path / "a.png", "--out", tmp_path / "o", "--model", tiny_model_dir,
                      "--steps", "1", "--format", "webp")
    assert result.exit_code == 1
    assert "nope.png: no such file or folder" in result.output
    assert "lossy" in result.output
    assert (tmp_path / "o" / "a.webp").exists()


def test_methods_and_version():
    from cloak import __version__
    from cloak.methods import METHODS

    listed = runner.invoke(app, ["methods"])
    assert listed.exit_code == 0
    for name in METHODS:
        assert name in listed.output
    for name in ("default", "photoguard", "glaze-like"):
        assert f"  {name} " in listed.output
    bad = runner.invoke(app, ["protect", "x.png", "--out", "o", "--preset", "glaze"])
    assert bad.exit_code == 2 and "published baseline: photoguard" in bad.output
    assert runner.invoke(app, ["--version"]).output.strip() == f"cloak {__version__}"


def test_app_with_missing_weights_is_one_line():
    result = runner.invoke(app, ["app", "--model", "someone/not-cached-model"])
    assert result.exit_code == 1
    assert "someone/not-cached-model" in result.output and "Traceback" not in result.output


def test_eval_unknown_config_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["eval", "no-such-config", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no-such-config" in result.output


def _cloaked_folder(tmp_path: Path, **images: np.ndarray) -> Path:
    """tmp_path/cloaked holding ``name=pixels`` as ``name.png``: the input of a purify test."""
    folder = tmp_path / "cloaked"
    folder.mkdir()
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def test_purify_files_and_errors(tmp_path):
    folder = _cloaked_folder(tmp_path, a=_noise(24, 20))
    out = tmp_path / "purified"
    ok = runner.invoke(app, ["purify", str(folder), "--out", str(out), "--attack", "jpeg:quality=50",
                             "--attack", "blur:sigma=1"])
    assert ok.exit_code == 0, ok.output
    made = sorted(p.name for p in out.glob("*.png"))
    assert len(made) == 2 and all(name.startswith("a.") for name in made)
    assert Image.open(out / made[0]).size == (20, 24)
    bad = runner.invoke(app, ["purify", str(folder), "--out", str(out), "--attack", "sharpen"])
    assert bad.exit_code == 2 and "Unknown attack 'sharpen'" in bad.output
    needs = runner.invoke(app, ["purify", str(folder), "--out", str(out), "--attack", "diffpure"])
    assert needs.exit_code == 2 and "need a diffusion model" in needs.output


def test_same_file_named_twice_is_cloaked_once(tmp_path, tiny_model_dir):
    Image.fromarray(_noise(16, 16)).save(tmp_path / "a.png")
    result = _protect(tmp_path / "a.png", tmp_path / "a.png", "--out", tmp_path / "o", "--model", tiny_model_dir,
                      "--steps", "1")
    assert result.exit_code == 0, result.output
    assert "1 cloaked, 0 skipped, 0 failed" in result.output


def test_testbed_paint_writes_new_files_only(tmp_path):
    """`cloak testbed paint`: n PNGs of the style at the size asked, deterministic, never over an existing file."""
    from PIL import Image

    from cloak.testbed.artists import paint

    out = tmp_path / "art"
    done = runner.invoke(app, ["testbed", "paint", "stained glass", "--out", str(out), "--n", "2", "--seed", "5"])
    assert done.exit_code == 0, done.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["stained-glass-5.png", "stained-glass-6.png"]
    rgb = np.asarray(Image.open(out / "stained-glass-6.png"))
    assert rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb, (paint("stained glass", 6).image * 255).round().astype(np.uint8))
    before = (out / "stained-glass-6.png").read_bytes()
    again = runner.invoke(app, ["testbed", "paint", "stained glass", "--out", str(out), "--n", "1", "--seed", "6"])
    assert again.exit_code == 2 and "exists; nothing written" in again.output
    assert (out / "stained-glass-6.png").read_bytes() == before
    bad = runner.invoke(app, ["testbed", "paint", "cubist", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown style 'cubist'" in bad.output and "cubism" in bad.output


def test_testbed_judge_counts_styles_per_folder_and_skips_bad_files(tmp_path):
    """`cloak testbed judge`: the judge's verdict on each file, counted per folder; a broken file is reported and
    skipped (exit 1), the rest still judged; unknown styles and missing folders are refused (exit 2)."""
    from cloak.testbed.judge import load_judge

    art, other = tmp_path / "art", tmp_path / "other"
    for folder, style in ((art, "woodcut"), (other, "marbling")):
        done = runner.invoke(app, ["testbed", "paint", style, "--out", str(folder), "--n", "3", "--seed", "1000000"])
        assert done.exit_code == 0, done.output
    judge = load_judge()
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(f)).copy()) for f in sorted(art.iterdir())])
    names = [judge.style_names[int(i)] for i in judge.predict(images.permute(0, 3, 1, 2).float() / 255)]
    done = runner.invoke(app, ["testbed", "judge", str(art), str(other), "--style", "woodcut"])
    assert done.exit_code == 0, done.output
    share = names.count("woodcut") / 3
    assert f"{art}: 3 image(s): " in done.output and f"named woodcut: {share:.2f}" in done.output
    assert f"{other}: 3 image(s): " in done.output
    (art / "broken.png").write_bytes(b"not a png")
    partial = runner.invoke(app, ["testbed", "judge", str(art)])
    assert partial.exit_code == 1 and "broken.png" in partial.output and f"{art}: 3 image(s): " in partial.output
    assert runner.invoke(app, ["testbed", "judge", str(art), "--style", "cubist"]).exit_code == 2
    missing = runner.invoke(app, ["testbed", "judge", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_an_earlier_output_is_only_skipped_for_the_file_it_was_made_from(tmp_path, tiny_model_dir):
    first, second = tmp_path / "2023", tmp_path / "2024"
    for folder, seed in ((first, 1), (second, 2)):
        folder.mkdir()
        Image.fromarray(_noise(16, 16, seed=seed)).save(folder / "IMG_0001.png")
    out = tmp_path / "protected"
    common = ("--out", out, "--model", tiny_model_dir, "--steps", "1")
    assert _protect(first, *common).exit_code == 0
    made = (out / "IMG_0001.png").read_bytes()
    record = json.loads((out / "IMG_0001.cloak.json").read_text())
    assert record["source_sha256"] == hashlib.sha256((first / "IMG_0001.png").read_bytes()).hexdigest()

    # Another picture of the same name: not skipped as if done, and the first one's copy is left alone.
    clash = _protect(second, *common)
    assert clash.exit_code == 1 and "is the cloaked copy of another file" in clash.output, clash.output
    assert (out / "IMG_0001.png").read_bytes() == made

    # The same file with other settings: skipped, and the output says so.
    other = _protect(first, *common[:-1], "2")
    assert other.exit_code == 0 and "made earlier with other settings (steps 1)" in other.output, other.output

    # The artist edits the picture: the next run cloaks it again.
    Image.fromarray(_noise(16, 16, seed=3)).save(first / "IMG_0001.png")
    edited = _protect(first, *common)
    assert edited.exit_code == 0 and "1 cloaked, 0 skipped" in edited.output, edited.output
    assert (out / "IMG_0001.png").read_bytes() != made


def test_lossy_outputs_record_the_saved_file_and_transparency_is_refused_first(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_noise(32, 32)).save(folder / "noise.png")
    Image.fromarray(_noise(16, 16, 4)).save(folder / "clear.png")
    out = tmp_path / "out"
    result = _protect(folder, "--out", out, "--model", tiny_model_dir, "--steps", "1", "--format", "jpeg")
    assert result.exit_code == 1
    assert "clear.png: it has transparency" in result.output and "1 cloaked, 0 skipped, 1 failed" in result.output
    record = json.loads((out / "noise.cloak.json").read_text())
    src = np.asarray(Image.open(folder / "noise.png")).astype(int)
    saved = np.asarray(Image.open(out / "noise.jpg")).astype(int)
    measured = int(np.abs(src - saved).max())
    assert record["linf"] == measured  # the file on disk, not the pixels before JPEG compression
    assert measured > 8  # JPEG of noise: the compression, not the cloak, sets the change
    assert any("lossy compression changed the cloaked pixels" in note for note in record["notes"])
    assert "lossy compression" in result.output


def test_out_folder_is_checked_before_any_work(tmp_path, tiny_model_dir):
    art = tmp_path / "art"
    art.mkdir()
    Image.fromarray(_noise(16, 16)).save(art / "a.png")
    same = _protect(art, "--out", art, "--model", tiny_model_dir)
    assert same.exit_code == 2 and "is the input folder itself" in same.output
    (tmp_path / "file").write_text("x")
    not_a_folder = _protect(art, "--out", tmp_path / "file", "--model", tiny_model_dir)
    assert not_a_folder.exit_code == 2 and "is a file" in not_a_folder.output
    unwritable = _protect(art, "--out", tmp_path / "file" / "sub", "--model", tiny_model_dir)
    assert unwritable.exit_code == 2 and "cannot write into --out" in unwritable.output
    assert "Traceback" not in same.output + not_a_folder.output + unwritable.output


def test_out_above_the_input_folder_and_earlier_copies(tmp_path, tiny_model_dir, monkeypatch):
    """`--out .` beside the art folder works; a later run over the whole tree passes over the cloaked copies."""
    art = tmp_path / "art"
    (art / ".thumbs").mkdir(parents=True)
    Image.fromarray(_noise(16, 16)).save(art / "sketch [final].png")
    Image.fromarray(_noise(8, 8, seed=4)).save(art / ".thumbs" / "small.png")
    (art / "photo.heic").write_bytes(b"not read")
    monkeypatch.chdir(tmp_path)
    first = _protect("art", "--out", ".", "--model", tiny_model_dir, "--steps", "1")
    assert first.exit_code == 0, first.output
    assert "done art/sketch [final].png -> sketch [final].png" in first.output  # brackets are not markup
    assert "1 cloaked" in first.output and not Path("small.png").exists()  # hidden folders are left out
    assert "passed over 1 file that is not an image cloak reads (1 .heic)" in first.output
    later = _protect(".", "--out", "again", "--model", tiny_model_dir, "--steps", "1")
    assert later.exit_code == 0, later.output
    assert "passed over 1 cloaked copy from an earlier run" in later.output
    assert "1 cloaked" in later.output and not Path("again/sketch [final].png").exists()


def test_ctrl_c_says_what_is_kept(tmp_path, tiny_model_dir, monkeypatch):
    import cloak.batch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cloak.batch, "run_job", interrupted)
    Image.fromarray(_noise(16, 16)).save(tmp_path / "a.png")
    result = _protect(tmp_path / "a.png", "--out", tmp_path / "o", "--model", tiny_model_dir, "--steps", "1")
    assert result.exit_code == 130
    assert "interrupted: the images finished so far are saved" in result.output


def test_purify_goes_on_past_an_image_a_purifier_cannot_take_and_keeps_earlier_records(tmp_path):
    folder = _cloaked_folder(tmp_path, tiny=_noise(6, 6), big=_noise(64, 64, seed=1))
    out = tmp_path / "purified"
    blur = runner.invoke(app, ["purify", str(folder), "--out", str(out), "--attack", "blur:kernel=33",
                               "--attack", "blur:kernel=33"])  # the same spec twice: purified once
    assert blur.exit_code == 1, blur.output
    assert "tiny.png: blur:kernel=33 cannot be applied to this image (6x6 px)" in blur.output
    assert sorted(p.name for p in out.glob("*.png")) == ["big.blur-kernel=33.png"]
    jpeg = runner.invoke(app, ["purify", str(folder / "big.png"), "--out", str(out), "--attack", "jpeg"])
    assert jpeg.exit_code == 0, jpeg.output
    outputs = json.loads((out / "purify.json").read_text())["outputs"]
    assert sorted(Path(o["output"]).name for o in outputs) == ["big.blur-kernel=33.png", "big.jpeg.png"]
    assert all(o["seed"] == 0 for o in outputs)


def test_purify_takes_the_cloaked_copies_protect_wrote(tmp_path, tiny_model_dir):
    Image.fromarray(_noise(16, 16)).save(tmp_path / "a.png")
    protected = tmp_path / "protected"
    assert _protect(tmp_path / "a.png", "--out", protected, "--model", tiny_model_dir, "--steps", "1").exit_code == 0
    result = runner.invoke(app, ["purify", str(protected), "--out", str(tmp_path / "p"), "--attack", "jpeg"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "a.jpeg.png").is_file()


def test_purify_help_lists_every_purifier():
    from attacks import ATTACKS
    from cloak.cli import PURIFIERS

    assert list(PURIFIERS) == list(ATTACKS)


def test_testbed_commands_refuse_bad_arguments_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (["paint", "marbling", "--out", str(tmp_path / "file")], "is a file"),
        (["check", "--json", str(tmp_path / "nowhere" / "x.json"), "--quick"], "does not exist"),
        (["check", "--styles", "baroque", "--quick"], "`held_out` styles must be among"),
        (["build", "--out", str(tmp_path / "b"), "--vae-from", str(tmp_path / "nowhere")], "no such folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["testbed", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_an_rgb_file_grey_in_every_pixel_gets_a_grey_cloak(tmp_path, tiny_model_dir):
    grey = np.repeat(_noise(16, 16, 1), 3, axis=2)  # a pencil sketch exported as RGB
    Image.fromarray(grey, "RGB").save(tmp_path / "sketch.png")
    result = _protect(tmp_path / "sketch.png", "--out", tmp_path / "o", "--model", tiny_model_dir, "--steps", "2")
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "o" / "sketch.png")
    pixels = np.asarray(out)
    assert out.mode == "RGB" and np.abs(pixels.astype(int) - grey).max() > 0
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert "grey in every pixel" in result.output


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- readme:python -->")[1].split("<!-- /readme:python -->")[0]
    code = block.split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["testbed", "paint", "marbling", "--out", "my_art", "--n", "1"]).exit_code == 0
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] == "8" and 30 < float(printed[1]) < 33  # the README's "# 8 30.5"
    assert Image.open(tmp_path / "cloaked.png").size == (64, 64)
