"""The web page's handlers, called directly (no server) with the tiny real components."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.batch import Job, run_job
from cloak.errors import ConfigError
from cloak.imageio import load_artwork
from cloak.metrics import linf
from cloak.protect import Cloaker
from gradio_app import handlers


def _noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _png_bytes(array: np.ndarray, path: Path) -> bytes:
    Image.fromarray(array).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these images are tiny, and a second thread only waits for the first on a busy machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def backend(tiny_components, tmp_path_factory) -> handlers.Backend:
    return handlers.backend_for(tiny_components, "tiny", work_root=tmp_path_factory.mktemp("work"))


@pytest.fixture
def uploads(tmp_path) -> dict[str, Path]:
    """What an artist drops on the page: an RGB PNG, a PNG with transparency, a JPEG and a corrupt file."""
    folder = tmp_path / "upload"
    folder.mkdir()
    Image.fromarray(_noise(32, 32, seed=1)).save(folder / "sky.png")
    rgba = _noise(32, 32, 4, seed=2)
    rgba[..., 3] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(folder / "glass.png")
    Image.fromarray(_noise(32, 32, seed=3)).save(folder / "photo.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really an image")
    return {p.name: p for p in folder.iterdir()}


def test_outputs_are_the_files_run_job_writes(backend, tiny_components, uploads, tmp_path):
    sources = [uploads["sky.png"], uploads["glass.png"], uploads["photo.jpg"]]
    report = handlers.protect_uploads(backend, sources, "fast", None, 6, 3, seed=5)
    assert [item.status for item in report.items] == ["done"] * 3
    assert report.eps == 6.0
    cloaker = Cloaker(tiny_components, handlers.make_config("fast", None, 6, 3))
    for source, item in zip(sources, report.items, strict=True):
        assert item.name == source.name and item.output.name == source.stem + ".png"
        expected = Job(source, tmp_path / "ref" / f"{source.stem}.png", tmp_path / "ref" / f"{source.stem}.cloak.json")
        assert run_job(expected, cloaker, seed=5).status == "done"
        assert item.output.read_bytes() == expected.output.read_bytes()  # byte-identical to the library
        original, cloaked = load_artwork(source), load_artwork(item.output)
        assert cloaked.size == original.size
        assert 0 < linf(original.rgb, cloaked.rgb) <= 6  # measured on the returned file
        assert item.record["linf"] == linf(original.rgb, cloaked.rgb)
        assert item.record["preset"] == "fast" and item.record["steps"] == 3 and item.record["seed"] == 5
    assert load_artwork(report.items[1].output).alpha is not None  # transparency kept


def test_comparison_pictures_are_pngs_measured_from_the_files(backend, uploads):
    report = handlers.protect_uploads(backend, [uploads["sky.png"]], "fast", None, 8, 2, seed=0)
    item = report.items[0]
    before, after, difference, text = handlers.detail(item)
    assert after == str(item.output)
    original = np.asarray(Image.open(uploads["sky.png"]).convert("RGB"))
    with Image.open(before) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), original)
    cloaked = np.asarray(Image.open(after).convert("RGB"))
    with Image.open(difference) as im:
        assert im.format == "PNG"
        expected = np.clip(np.abs(cloaked.astype(int) - original.astype(int)) * 255 / 8, 0, 255).round()
        assert np.array_equal(np.asarray(im), expected.astype(np.uint8))
    assert f"**{item.record['linf']}/255**" in text and "PSNR" in text and "SSIM" in text


def test_difference_image_full_budget_is_white():
    before = np.zeros((2, 2, 3), np.uint8)
    after = np.array([[[8, 4, 0], [0, 0, 0]], [[2, 0, 1], [8, 8, 8]]], np.uint8)
    diff = handlers.difference_image(before, after, eps=8)
    assert diff[0, 0].tolist() == [255, 128, 0] and diff[1, 1].tolist() == [255, 255, 255]
    assert diff[1, 0].tolist() == [64, 0, 32]


def test_one_corrupt_file_does_not_stop_the_others(backend, uploads):
    calls: list[tuple[float, str]] = []
    report = handlers.protect_uploads(
        backend,
        [uploads["broken.png"], uploads["sky.png"]],
        "fast",
        None,
        None,
        2,
        seed=0,
        progress=lambda fraction, desc: calls.append((fraction, desc)),
    )
    broken, sky = report.items
    assert broken.status == "failed" and sky.status == "done"
    assert broken.message.startswith("broken.png: not an image file Pillow can read")
    assert str(uploads["broken.png"].parent) not in broken.message  # the artist's name, not a temp path
    rows = handlers.results_table(report)
    assert rows[0][:2] == ["broken.png", "FAILED"] and rows[1][:3] == ["sky.png", "protected", sky.record["linf"]]
    text = handlers.summary(report)
    assert "**1 image protected**, **1 failed**" in text and broken.message in text
    assert [name for _, name in handlers.gallery_items(report)] == [
        f"sky.png: change at most {sky.record['linf']}/255"
    ]
    fractions = [f for f, _ in calls]
    descriptions = [d for _, d in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and "sky.png: step 1 of 2" in descriptions
    # The bar is not full before the work is: saving, measuring and the comparison come after the last step.
    assert descriptions[-3:] == ["sky.png: saving and measuring", "sky.png: making the comparison pictures",
                                 "finished"]
    assert max(fractions[:-1]) < 1.0
    with zipfile.ZipFile(report.archive) as zf:
        assert sorted(zf.namelist()) == ["sky.cloak.json", "sky.png"]


def test_image_over_the_size_limit_gets_a_clear_message(backend, uploads, monkeypatch):
    import cloak.imageio

    monkeypatch.setattr(cloak.imageio, "MAX_PIXELS", 500)
    report = handlers.protect_uploads(backend, [uploads["sky.png"], uploads["photo.jpg"]], "fast", None, None, 2, 0)
    assert [item.status for item in report.items] == ["failed", "failed"]
    assert report.items[0].message.startswith("sky.png: ") and "limit" in report.items[0].message
    assert report.archive is None
    text = handlers.estimate(backend, [uploads["sky.png"]], "fast", None, None, None)
    assert text == "None of these files can be cloaked: too large."
    uploads_big = [uploads["sky.png"], uploads["photo.jpg"]]
    monkeypatch.setattr(cloak.imageio, "MAX_PIXELS", 32 * 32 - 1)
    Image.fromarray(_noise(16, 16)).save(uploads["sky.png"].parent / "small.png")
    text = handlers.estimate(backend, [*uploads_big, uploads["sky.png"].parent / "small.png"], "fast", None, 2, None)
    assert text.endswith(
        "for 1 image on this computer (cpu). This is an estimate from a test run at start-up. "
        "**2 images are over the size limit** (1,023 pixels) and will be refused."
    )


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_upload_is_unpacked_safely(backend, uploads, tmp_path):
    png = _png_bytes(_noise(32, 32, seed=4), tmp_path / "x.png")
    archive = _zip(
        tmp_path / "portfolio.zip",
        {
            "portfolio/a.png": png,
            "portfolio/sub/a.png": uploads["sky.png"].read_bytes(),  # same name in another folder
            "../../escape.png": png,  # path traversal: must land inside the work folder
            "/abs/root.png": png,
            "notes.txt": b"hello",
            "__MACOSX/portfolio/._a.png": b"resource fork",
            "portfolio/": b"",
            "old\\2023\\sunset.png": png,  # written on Windows: backslashes
        },
    )
    report = handlers.protect_uploads(backend, [archive, uploads["glass.png"]], "fast", None, None, 2, seed=0)
    names = [item.name for item in report.items]
    assert names == [
        "portfolio.zip/portfolio/a.png",
        "portfolio.zip/portfolio/sub/a.png",
        "portfolio.zip/../../escape.png",
        "portfolio.zip//abs/root.png",
        "portfolio.zip/old\\2023\\sunset.png",
        "glass.png",
    ]
    assert all(item.status == "done" for item in report.items)
    assert [item.output.name for item in report.items] == [
        "a.png", "a-2.png", "escape.png", "root.png", "sunset.png", "glass.png"
    ]
    # Each result can be told from its original: the table says where a renamed copy went, the record names the
    # file as uploaded (the page's own copy of it is gone).
    rows = handlers.results_table(report)
    assert rows[1][0] == "portfolio.zip/portfolio/sub/a.png (saved as a-2.png)" and rows[0][0] == names[0]
    assert json.loads(report.items[1].sidecar.read_text())["source"] == "portfolio.zip/portfolio/sub/a.png"
    assert all(item.output.parent == report.items[0].output.parent for item in report.items)
    assert not (tmp_path.parent / "escape.png").exists() and not Path("/abs/root.png").exists()
    assert report.skipped == [
        "portfolio.zip/notes.txt: skipped, not an image "
        "(.bmp, .gif, .jfif, .jpe, .jpeg, .jpg, .png, .tif, .tiff, .webp)."
    ]
    # the second a.png is the sky picture: same pixels, cloaked
    assert load_artwork(report.items[1].output).size == (32, 32)


def test_zip_limits_and_broken_zips(backend, tmp_path, monkeypatch):
    png = _png_bytes(_noise(32, 32, seed=5), tmp_path / "x.png")
    big = _zip(tmp_path / "big.zip", {"huge.png": b"\0" * 5000, "ok.png": png})
    monkeypatch.setattr(handlers, "ZIP_MAX_FILE_BYTES", 4096)
    found, messages = handlers.extract_zip(big, tmp_path / "out1", "big.zip")
    assert [u.name for u in found] == ["big.zip/ok.png"]
    assert messages == ["big.zip/huge.png: skipped, larger than 0.00390625 MiB unpacked."]
    monkeypatch.setattr(handlers, "ZIP_MAX_MEMBERS", 1)
    assert handlers.extract_zip(big, tmp_path / "out2", "big.zip") == (
        [],
        ["big.zip: holds 2 files; at most 1 per zip are accepted. Split it into smaller zips."],
    )
    # A password-protected member (the encryption flag set in both headers) is named as such, not as Python's text.
    locked = bytearray(_zip(tmp_path / "locked.zip", {"secret.png": png}).read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = locked.index(signature) + flag_at
        locked[at] |= 0x1
    (tmp_path / "locked.zip").write_bytes(bytes(locked))
    found, messages = handlers.extract_zip(tmp_path / "locked.zip", tmp_path / "out4", "locked.zip")
    assert found == [] and messages == [
        "locked.zip/secret.png: skipped, it is password-protected; zip it again without a password."
    ]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    found, messages = handlers.extract_zip(bad, tmp_path / "out3", "bad.zip")
    assert found == [] and messages[0].startswith("bad.zip: not a readable zip archive")


def test_download_zip_holds_every_png_and_sidecar(backend, uploads):
    sources = [uploads["sky.png"], uploads["photo.jpg"]]
    report = handlers.protect_uploads(backend, sources, "fast", None, None, 2, seed=1)
    with zipfile.ZipFile(report.archive) as zf:
        assert sorted(zf.namelist()) == ["photo.cloak.json", "photo.png", "sky.cloak.json", "sky.png"]
        for item in report.items:
            assert zf.read(item.output.name) == item.output.read_bytes()
            record = json.loads(zf.read(item.sidecar.name))
            assert record == item.record and record["output"] == item.output.name and record["model"] == "tiny"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"paths": []}, "no files: add one or more images (or a .zip of images) first."),
        ({"eps": 0}, "`eps` must be in (0, 255]"),
        ({"seed": -1}, "`seed` must be a whole number from 0 to 2^63 - 1, got -1."),
        ({"seed": 2.5}, "`seed` must be a whole number from 0 to 2^63 - 1, got 2.5."),
        ({"seed": float("inf")}, "`seed` must be a whole number from 0 to 2^63 - 1, got inf."),  # was OverflowError
        ({"steps": 2.5}, "`steps` must be a whole number, got 2.5."),
        ({"preset": "extreme"}, "unknown preset 'extreme'; choose one of fast, default, strong."),
    ],
)
def test_bad_settings_are_refused_with_the_reason(backend, uploads, kwargs, message):
    args = {"paths": [uploads["sky.png"]], "preset": "fast", "method": None, "eps": None, "steps": 2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        handlers.protect_uploads(backend, **args)
    assert message in str(info.value)


def test_estimate_scales_with_steps_and_images(backend, uploads):
    fast, strong = handlers.make_config("fast", None, None, None), handlers.make_config("strong", None, None, None)
    one = handlers.estimate_seconds(backend, [(40, 24)], fast)
    assert one > 0
    # The model's part grows with steps + 1 (the target), the full-size part per step with steps, plus once per image.
    model_only = dataclasses.replace(backend, pixel_step_seconds=0.0, pixel_seconds=0.0)
    model_one = handlers.estimate_seconds(model_only, [(40, 24)], fast)
    # The encoder's target depends only on the view's size: later images of a size do not pay for it again.
    per_step = model_one / (fast.steps + 1)
    three = handlers.estimate_seconds(model_only, [(40, 24)] * 3, fast)
    assert three == pytest.approx(per_step * (3 * fast.steps + 1))
    assert handlers.estimate_seconds(backend, [(40, 24)] * 3, fast) < 3 * one
    away = dataclasses.replace(fast, options={"direction": "away"})  # its target is each artwork's own latent
    timed_away = dataclasses.replace(
        model_only, step_seconds={**backend.step_seconds, "encoder (direction=away)": backend.step_seconds["encoder"]}
    )
    assert handlers.estimate_seconds(timed_away, [(40, 24)] * 3, away) == pytest.approx(3 * model_one)
    # Nine view sizes: the ninth drops the first size's target, so the first size pays again.
    cloaker = Cloaker(backend.components, fast)
    shapes = [(24 + 8 * k, 24) for k in range(9)]
    views = [handlers.view_sizes(cloaker, h, w) for w, h in shapes]
    assert len({tuple(v) for v in views}) == 9 and all(len(v) == 1 for v in views)
    pixels = sum(h * w for (h, w), in views) + views[0][0][0] * views[0][0][1]  # every image pays for its target
    assert handlers.estimate_seconds(model_only, [*shapes, shapes[0]], fast) == pytest.approx(
        backend.step_seconds["encoder"] * (fast.steps + 1) * pixels
    )
    ratio = (strong.steps + 1) / (fast.steps + 1)
    assert handlers.estimate_seconds(model_only, [(40, 24)], strong) == pytest.approx(model_one * ratio)
    sized = dataclasses.replace(backend, pixel_step_seconds=1e-6, pixel_seconds=3e-6)
    assert handlers.estimate_seconds(sized, [(40, 24)], strong) == pytest.approx(
        model_one * ratio + 40 * 24 * (strong.steps * 1e-6 + 3e-6)
    )
    # Measured at start-up: a large file costs far more than a small one, though the model sees both at its size.
    assert backend.pixel_step_seconds > 0 and backend.pixel_seconds > 0
    assert handlers.estimate_seconds(backend, [(4000, 3000)], fast) > 10 * handlers.estimate_seconds(
        backend, [(400, 300)], fast
    )
    assert handlers.estimate_seconds(backend, [(40, 24)], handlers.make_config("fast", "advdm", None, None)) is None
    # Only the presets' methods are timed at start-up (all three run the encoder cloak); mist is not among them.
    assert handlers.estimate_seconds(backend, [(40, 24)], handlers.make_config("default", None, None, None)) > 0
    assert handlers.estimate_seconds(backend, [(40, 24)], handlers.make_config("fast", "mist", None, None)) is None
    text = handlers.estimate(backend, [uploads["sky.png"], uploads["broken.png"]], "default", None, None, None)
    assert text.startswith("Estimated time: **about ") and "for 1 image on this computer (cpu)" in text
    assert "estimate" in text and "(1 unreadable file not counted.)" in text
    assert (
        handlers.estimate(backend, None, "default", None, None, None) == "Add images to see how long they will take."
    )
    assert "No time estimate for the **advdm** method" in handlers.estimate(
        backend, [uploads["sky.png"]], "default", "advdm", None, None
    )
    assert handlers.estimate(backend, [uploads["broken.png"]], "default", None, None, None) == (
        "None of these files can be cloaked: not readable as images."
    )
    assert handlers.estimate(backend, [uploads["sky.png"]], "default", None, 300, None).startswith(
        "Cannot estimate: `eps` must be in (0, 255]"
    )


def test_format_duration():
    assert [handlers.format_duration(s) for s in (0.2, 59, 61, 3599, 7500)] == [
        "about 1 s",
        "about 59 s",
        "about 1 min",
        "about 1 h",
        "about 2 h 5 min",
    ]


def test_page_builds_without_a_server_and_lists_every_method(backend):
    import gradio as gr

    from cloak.methods import METHODS
    from gradio_app import build_app

    demo = build_app(backend)
    assert isinstance(demo, gr.Blocks) and demo.analytics_enabled is False
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    assert [value for _, value in dropdowns[0].choices] == list(METHODS)
    images = [b for b in demo.blocks.values() if isinstance(b, (gr.Image, gr.Gallery))]
    assert images and all(b.format == "png" for b in images)  # never gradio's default lossy WebP


def test_missing_model_weights_fail_at_start_up_in_one_line(tmp_path):
    from cloak.errors import ModelNotFoundError

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        handlers.load_backend(str(missing), device="cpu")
    assert str(info.value) == (
        f"model path {str(missing)!r} does not exist (expected a diffusers folder or a .safetensors/.ckpt file)."
    )


def test_step_timing_runs_the_method_with_the_presets_options(tiny_components):
    assert handlers.time_step(tiny_components, "mist", {"semantic": "sds-", "samples": 2}) > 0
    with pytest.raises(ConfigError, match="`semantic` \\(mist option\\)"):  # the options reach the method
        handlers.time_step(tiny_components, "mist", {"semantic": "nonsense"})


def test_backend_loads_a_model_folder_with_every_part_a_method_needs(tiny_model_dir, tmp_path):
    from cloak.methods import METHODS

    backend = handlers.load_backend(str(tiny_model_dir), device="cpu", work_root=tmp_path / "work")
    assert backend.model == str(tiny_model_dir) and (tmp_path / "work").is_dir()
    for cls in METHODS.values():
        assert all(getattr(backend.components, part) is not None for part in cls.needs)
    assert set(backend.step_seconds) == {"encoder"}  # every artist preset runs the encoder cloak (cloak 0.3)
    assert min(backend.step_seconds.values()) > 0
