"""Tests for cloak.imageio: artworks load upright and 8-bit, and save back with alpha, ICC and EXIF kept."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps

import cloak.imageio as imageio
from cloak.errors import ConfigError, ImageError
from cloak.imageio import (
    Artwork,
    atomic_write_bytes,
    atomic_write_json,
    from_tensor,
    load_artwork,
    save_artwork,
    to_tensor,
)

W, H = 37, 23  # odd, non-square: catches transposed or cropped outputs


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int | None = None, gps: bool = False) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Artist] = "A. Painter"
    exif[ExifTags.Base.Copyright] = "(c) A. Painter"
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.DateTimeOriginal: "2024:05:06 07:08:09"}
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if gps:
        exif[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
            ExifTags.GPS.GPSLongitudeRef: "E",
            ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
        }
    return exif


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16(values: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit colour PNGs): color_type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _reopen(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


# --------------------------------------------------------------------------------------------- round trips


def _source(mode: str) -> Image.Image:
    rng = _rng(1)
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    if mode == "RGBA":
        pixels = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
        pixels[:5, :, 3] = 0  # fully transparent pixels with arbitrary colours: the colours must survive too
        pixels[5:9, :, 3] = 255
        return Image.fromarray(pixels)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8))
    if mode == "LA":
        return Image.fromarray(rng.integers(0, 256, (H, W, 2), dtype=np.uint8))
    if mode == "P":
        im = Image.fromarray(rng.integers(0, 16, (H, W), dtype=np.uint8))
        im.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())  # L -> P
        return im
    raise AssertionError(mode)


# mode -> (upright RGB(A) the artwork must hold, mode of the saved file, grey)
@pytest.mark.parametrize(
    ("mode", "saved_mode", "grey"),
    [("RGB", "RGB", False), ("RGBA", "RGBA", False), ("L", "L", True), ("LA", "LA", True), ("P", "RGB", False)],
)
def test_png_round_trip_is_pixel_exact(tmp_path, mode, saved_mode, grey):
    src = _source(mode)
    src.save(tmp_path / "in.png")
    art = load_artwork(tmp_path / "in.png")

    expected = np.array(src.convert("RGBA" if mode in ("RGBA", "LA") else "RGB"))
    assert art.size == (W, H)
    assert art.rgb.dtype == np.uint8 and art.rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(art.rgb, expected[..., :3])
    assert art.grey is grey
    assert art.source_format == "PNG"
    if mode in ("RGBA", "LA"):
        np.testing.assert_array_equal(art.alpha, expected[..., 3])
    else:
        assert art.alpha is None
    assert any("palette" in n for n in art.notes) == (mode == "P")

    # Save different pixels than were loaded: the saved file must hold exactly these, plus the original alpha.
    cloaked = art.rgb.copy()
    cloaked[::2] = np.clip(cloaked[::2].astype(int) + 3, 0, 255).astype(np.uint8)
    save_artwork(tmp_path / "out.png", cloaked, art)
    out = _reopen(tmp_path / "out.png")
    assert out.mode == saved_mode and out.size == (W, H)
    got = np.array(out.convert("RGBA"))
    np.testing.assert_array_equal(got[..., :3], cloaked)
    if art.alpha is not None:
        assert np.array(out)[..., -1].tobytes() == np.array(src)[..., -1].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


def test_palette_transparency_is_honoured(tmp_path):
    src = Image.new("P", (3, 2))
    src.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    src.putdata([0, 1, 2, 2, 1, 0])
    src.save(tmp_path / "index.png", transparency=bytes([255, 128, 0]))  # per-entry alpha (tRNS)
    src.save(tmp_path / "key.gif", transparency=1)  # one transparent index

    art = load_artwork(tmp_path / "index.png")
    np.testing.assert_array_equal(art.alpha, [[255, 128, 0], [0, 128, 255]])
    np.testing.assert_array_equal(art.rgb[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    assert any("palette" in n and "RGBA" in n for n in art.notes)

    art = load_artwork(tmp_path / "key.gif")
    assert art.source_format == "GIF"
    np.testing.assert_array_equal(art.alpha, [[255, 0, 255], [255, 0, 255]])
    save_artwork(tmp_path / "out.png", art.rgb, art)
    np.testing.assert_array_equal(np.array(_reopen(tmp_path / "out.png"))[..., 3], art.alpha)


def test_colour_key_transparency_becomes_alpha(tmp_path):
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (1, 2, 3)
    Image.fromarray(pixels).save(tmp_path / "key.png", transparency=(1, 2, 3))
    art = load_artwork(tmp_path / "key.png")
    np.testing.assert_array_equal(art.alpha, [[0, 255], [255, 255]])
    assert any("colour key" in n for n in art.notes)


def test_one_bit_image_is_handled_as_greyscale(tmp_path):
    bits = _rng(2).integers(0, 2, (H, W)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bw.png")
    art = load_artwork(tmp_path / "bw.png")
    assert art.grey
    np.testing.assert_array_equal(art.rgb[..., 1], np.where(bits, 255, 0))
    assert any("1-bit" in n for n in art.notes)
    save_artwork(tmp_path / "out.png", art.rgb, art)
    assert _reopen(tmp_path / "out.png").mode == "L"


# ------------------------------------------------------------------------------------------- orientation

# Upright picture: 3 x 2 blocks of 16 px, six distinct colours, so every flip and rotation is distinguishable.
_BLOCKS = np.array(
    [[(230, 20, 20), (20, 230, 20)], [(20, 20, 230), (230, 230, 20)], [(20, 230, 230), (230, 20, 230)]],
    dtype=np.uint8,
)
_UPRIGHT = np.kron(_BLOCKS, np.ones((16, 16, 1), dtype=np.uint8))  # (48, 32, 3)

# How a camera stores the upright picture for each EXIF orientation (EXIF 2.32, tag 0x0112: where the stored
# 0th row and 0th column lie in the upright picture), written with numpy independently of Pillow's mapping.
_STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],  # 0th row top, 0th column right
    3: lambda u: u[::-1, ::-1],  # 0th row bottom, 0th column right
    4: lambda u: u[::-1],  # 0th row bottom, 0th column left
    5: lambda u: u.transpose(1, 0, 2),  # 0th row left, 0th column top
    6: lambda u: np.rot90(u, 1),  # 0th row right, 0th column top
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),  # 0th row right, 0th column bottom
    8: lambda u: np.rot90(u, -1),  # 0th row left, 0th column bottom
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_loads_upright_and_saves_orientation_1(tmp_path, orientation):
    stored = np.ascontiguousarray(_STORED[orientation](_UPRIGHT))
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=_exif(orientation))

    art = load_artwork(tmp_path / "photo.jpg")
    assert art.size == (32, 48)
    # (48, 32, 3) -> (block row, y, block column, x, 3); the centre of each block, away from JPEG's edge blur
    centres = art.rgb.reshape(3, 16, 2, 16, 3)[:, 4:12, :, 4:12].astype(float).mean(axis=(1, 3))
    np.testing.assert_allclose(centres, _BLOCKS, atol=8)
    parsed = Image.Exif()
    parsed.load(art.exif)
    assert parsed[ExifTags.Base.Orientation] == 1
    assert any(f"orientation {orientation} applied" in n for n in art.notes) == (orientation != 1)

    save_artwork(tmp_path / "out.png", art.rgb, art)
    out = _reopen(tmp_path / "out.png")
    assert out.getexif()[ExifTags.Base.Orientation] == 1
    assert out.getexif()[ExifTags.Base.Make] == "TestCam"
    # A viewer that honours EXIF orientation shows the saved file as stored: upright.
    np.testing.assert_array_equal(np.array(ImageOps.exif_transpose(out)), art.rgb)


def test_png_exif_orientation_is_applied_exactly(tmp_path):
    Image.fromarray(np.ascontiguousarray(_STORED[6](_UPRIGHT))).save(tmp_path / "in.png", exif=_exif(6))
    art = load_artwork(tmp_path / "in.png")
    np.testing.assert_array_equal(art.rgb, _UPRIGHT)


def test_invalid_orientation_is_noted_and_pixels_kept(tmp_path):
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.png", exif=_exif(9))
    art = load_artwork(tmp_path / "in.png")
    np.testing.assert_array_equal(art.rgb, _UPRIGHT)
    assert any("orientation 9" in n and "not a valid" in n for n in art.notes)


# ------------------------------------------------------------------------------------------ metadata kept


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_icc_profile_and_exif_survive_save(tmp_path, fmt):
    icc = _srgb_icc()
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.png", icc_profile=icc, exif=_exif())
    art = load_artwork(tmp_path / "in.png")
    assert art.icc_profile == icc

    save_artwork(tmp_path / f"out.{fmt}", art.rgb, art, format=fmt)
    out = _reopen(tmp_path / f"out.{fmt}")
    assert out.format == fmt.upper()
    assert out.info["icc_profile"] == icc
    exif = out.getexif()
    assert exif[ExifTags.Base.Artist] == "A. Painter"
    assert exif[ExifTags.Base.Copyright] == "(c) A. Painter"
    assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == "2024:05:06 07:08:09"
    assert out.size == (32, 48)


def test_unchanged_exif_is_kept_byte_identical(tmp_path):
    # Trailing padding, as some cameras write: re-serialising the EXIF block would drop it.
    original = _exif().tobytes() + b"\x00pad"
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.jpg", exif=original)
    art = load_artwork(tmp_path / "in.jpg")
    assert art.exif == original
    save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")
    assert _reopen(tmp_path / "out.jpg").info["exif"] == original


@pytest.mark.parametrize("strip_gps", [False, True])
def test_gps_removed_only_when_asked(tmp_path, strip_gps):
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.jpg", exif=_exif(orientation=6, gps=True))
    art = load_artwork(tmp_path / "in.jpg", strip_gps=strip_gps)
    save_artwork(tmp_path / "out.png", art.rgb, art)
    exif = _reopen(tmp_path / "out.png").getexif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if strip_gps:
        assert ExifTags.IFD.GPSInfo not in exif and gps == {}
        assert any("GPS" in n for n in art.notes)
    else:
        assert gps[ExifTags.GPS.GPSLatitudeRef] == "N"
        assert [float(v) for v in gps[ExifTags.GPS.GPSLatitude]] == [52.0, 31.0, 12.0]
    assert exif[ExifTags.Base.Artist] == "A. Painter"
    assert exif[ExifTags.Base.Orientation] == 1


@pytest.mark.parametrize(("fmt", "kept"), [("png", True), ("webp", False)])
def test_grey_icc_profile_is_dropped_only_where_the_file_turns_rgb(tmp_path, fmt, kept):
    grey_icc = b"\x00" * 16 + b"GRAY" + b"\x00" * 108  # header fields that matter here: data colour space
    Image.fromarray(_UPRIGHT[..., 0]).save(tmp_path / "in.png", icc_profile=grey_icc)
    art = load_artwork(tmp_path / "in.png")
    assert art.icc_profile == grey_icc
    save_artwork(tmp_path / f"out.{fmt}", art.rgb, art, format=fmt)
    out = _reopen(tmp_path / f"out.{fmt}")
    assert out.mode == ("L" if fmt == "png" else "RGB")
    assert (out.info.get("icc_profile") == grey_icc) is kept


def test_no_metadata_stays_none(tmp_path):
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.png")
    art = load_artwork(tmp_path / "in.png")
    assert art.exif is None and art.icc_profile is None and art.notes == ()


# ------------------------------------------------------------------------------------------------- 16-bit


def test_16_bit_grey_png_loads_as_8_bit_with_note(tmp_path):
    values = _rng(3).integers(0, 65536, (H, W)).astype(np.uint16)
    values[0, :4] = [0, 65535, 128, 32896]
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert _reopen(tmp_path / "deep.png").mode == "I;16"

    art = load_artwork(tmp_path / "deep.png")
    assert art.grey and art.alpha is None
    np.testing.assert_array_equal(art.rgb[..., 2], np.round(values / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(art.rgb[0, :4, 0], [0, 255, 0, 128])
    assert any("16-bit" in n and "8 bits" in n for n in art.notes)
    save_artwork(tmp_path / "out.png", art.rgb, art)
    assert _reopen(tmp_path / "out.png").mode == "L"


@pytest.mark.parametrize(("color_type", "channels", "grey"), [(2, 3, False), (6, 4, False), (4, 2, True)])
def test_16_bit_colour_png_loads_as_8_bit_with_note(tmp_path, color_type, channels, grey):
    values = _rng(4).integers(0, 65536, (H, W, channels)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(_png16(values, color_type))

    art = load_artwork(tmp_path / "deep.png")
    assert art.grey is grey
    colour = values[..., :1].repeat(3, axis=2) if grey else values[..., :3]
    assert np.abs(art.rgb.astype(float) - colour / 257.0).max() <= 1.0
    if channels in (2, 4):
        assert np.abs(art.alpha.astype(float) - values[..., -1] / 257.0).max() <= 1.0
    else:
        assert art.alpha is None
    assert any("16-bit" in n for n in art.notes)


# --------------------------------------------------------------------------------------------- refusals


def _assert_image_error(path: Path, *reasons: str) -> str:
    with pytest.raises(ImageError) as info:
        load_artwork(path)
    message = str(info.value)
    assert path.name in message
    for reason in reasons:
        assert reason in message
    return message


def test_cmyk_is_refused(tmp_path):
    Image.new("CMYK", (W, H), (10, 20, 30, 40)).save(tmp_path / "print.jpg")
    _assert_image_error(tmp_path / "print.jpg", "CMYK", "convert it to RGB in your editor")


def test_corrupt_bytes_are_refused(tmp_path):
    (tmp_path / "noise.png").write_bytes(os.urandom(2000))
    _assert_image_error(tmp_path / "noise.png", "not an image file")


def test_an_empty_file_is_named_as_empty(tmp_path):
    (tmp_path / "placeholder.jpg").write_bytes(b"")
    message = _assert_image_error(tmp_path / "placeholder.jpg", "the file is empty (0 bytes)", "copy or download it")
    assert "not an image file" not in message


def test_truncated_jpeg_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    _assert_image_error(tmp_path / "cut.jpg", "corrupt or truncated")


def test_truncated_png_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _assert_image_error(tmp_path / "cut.png", "corrupt or truncated")


def test_animated_gif_is_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    _assert_image_error(tmp_path / "anim.gif", "animated", "3 frames")


def test_animated_webp_is_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    _assert_image_error(tmp_path / "anim.webp", "animated", "2 frames")


def test_multi_picture_jpeg_uses_the_main_picture(tmp_path):
    frames = [Image.fromarray(_UPRIGHT), Image.new("RGB", (8, 8), "black")]
    frames[0].save(tmp_path / "phone.mpo", format="MPO", save_all=True, append_images=frames[1:])
    art = load_artwork(tmp_path / "phone.mpo")
    assert art.size == (32, 48) and art.source_format == "MPO"
    assert any("MPO" in n for n in art.notes)


def test_too_large_image_is_refused(tmp_path):
    Image.new("1", (8193, 4096)).save(tmp_path / "huge.png")  # one row of pixels over 8192 x 4096
    message = _assert_image_error(tmp_path / "huge.png", "too large", "8193x4096", f"{8193 * 4096:,}")
    assert f"{imageio.MAX_PIXELS:,}" in message


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (W, H)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this
    _assert_image_error(tmp_path / "bomb.png", "too large", f"{imageio.MAX_PIXELS:,}")


def test_unsupported_format_and_mode_and_missing_file(tmp_path):
    Image.new("RGB", (W, H)).save(tmp_path / "old.pcx")
    _assert_image_error(tmp_path / "old.pcx", "PCX files are not supported", ".png")
    Image.new("F", (W, H)).save(tmp_path / "float.tif")
    _assert_image_error(tmp_path / "float.tif", "unsupported pixel mode 'F'")
    _assert_image_error(tmp_path / "missing.png", "file not found")


# ------------------------------------------------------------------------------------------------ saving


def _artwork(tmp_path: Path, mode: str = "RGB") -> Artwork:
    _source(mode).save(tmp_path / "in.png")
    return load_artwork(tmp_path / "in.png")


def test_shape_mismatch_names_both_sizes(tmp_path):
    art = _artwork(tmp_path)
    with pytest.raises(ConfigError, match=rf"in\.png must match its size {W}x{H} .*got {W + 1}x{H}"):
        save_artwork(tmp_path / "out.png", np.zeros((H, W + 1, 3), np.uint8), art)
    with pytest.raises(ConfigError, match=r"uint8 array of shape \(H, W, 3\).*got dtype float32"):
        save_artwork(tmp_path / "out.png", art.rgb.astype(np.float32), art)
    assert not (tmp_path / "out.png").exists()


def test_save_refuses_bad_requests(tmp_path):
    rgba = _artwork(tmp_path, "RGBA")
    with pytest.raises(ConfigError, match="alpha channel.*JPEG cannot store one"):
        save_artwork(tmp_path / "out.jpg", rgba.rgb, rgba, format="jpeg")
    with pytest.raises(ConfigError, match=r"`format` must be one of png, jpeg, webp, got 'jpg'"):
        save_artwork(tmp_path / "out.jpg", rgba.rgb, rgba, format="jpg")
    with pytest.raises(ConfigError, match=r"`quality` must be an integer in \[1, 100\] for webp, got 0"):
        save_artwork(tmp_path / "out.webp", rgba.rgb, rgba, format="webp", quality=0)
    grey = _artwork(tmp_path, "L")
    coloured = grey.rgb.copy()
    coloured[0, 0, 1] ^= 1
    with pytest.raises(ConfigError, match="greyscale.*channels of the pixels differ"):
        save_artwork(tmp_path / "out.png", coloured, grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_lossy_formats(tmp_path):
    art = _artwork(tmp_path, "RGBA")
    save_artwork(tmp_path / "out.webp", art.rgb, art, format="webp", quality=90)
    out = _reopen(tmp_path / "out.webp")
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.array(out)[..., 3], art.alpha)  # WebP stores alpha losslessly by default

    smooth = _artwork(tmp_path, "RGB")
    save_artwork(tmp_path / "out.jpg", np.array(Image.fromarray(_UPRIGHT).resize((W, H))), smooth, format="jpeg")
    assert _reopen(tmp_path / "out.jpg").format == "JPEG"

    grey = _artwork(tmp_path, "LA")
    save_artwork(tmp_path / "grey.webp", grey.rgb, grey, format="webp")
    out = np.array(_reopen(tmp_path / "grey.webp"))
    np.testing.assert_array_equal(out[..., 3], grey.alpha)


# --------------------------------------------------------------------------------------------- atomicity


def test_failed_encode_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    art = _artwork(tmp_path)
    (tmp_path / "out.png").write_bytes(b"previous result")

    def broken_save(self, *args, **kwargs):
        raise OSError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="encoder exploded"):
        save_artwork(tmp_path / "out.png", art.rgb, art)
    assert (tmp_path / "out.png").read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch, failing):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    seen = []

    def boom(*args):
        seen.extend(Path(p).name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match=f"{failing} failed"):
        atomic_write_bytes(target, b"new result")
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    # the temporary file lived in the same folder, hidden, named after the target
    assert len(seen) == 1 and seen[0].startswith(".out.png.") and seen[0].endswith(".tmp")


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    atomic_write_bytes(str(tmp_path / "second.bin"), b"\x00\x01")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "second.bin"]


def test_atomic_write_json_is_pretty_sorted_and_strict(tmp_path):
    obj = {"psnr": 38.5, "method": "encoder", "eps": 8, "name": "café"}
    atomic_write_json(tmp_path / "run.json", obj)
    text = (tmp_path / "run.json").read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert text.index('"eps"') < text.index('"method"') < text.index('"name"') < text.index('"psnr"')
    with pytest.raises(ConfigError, match=r"cannot write bad\.json.*NaN or infinity"):
        atomic_write_json(tmp_path / "bad.json", {"psnr": math.inf})
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------------------------------------- tensors


def test_tensor_round_trip_is_exact_for_every_8_bit_value():
    rgb = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    rgb[..., 1] = rgb[..., 0][::-1]
    x = to_tensor(rgb)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x[0, 0], torch.from_numpy(rgb[..., 0]).float() / 255)
    np.testing.assert_array_equal(from_tensor(x), rgb)


def test_from_tensor_rounds_and_clamps():
    values = torch.tensor([-0.3, 0.3 / 255, 0.7 / 255, 100.4 / 255, 1.2]).view(1, 1, 1, 5).repeat(1, 3, 1, 1)
    out = from_tensor(values.double())
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 100, 255])


def test_tensor_helpers_validate():
    with pytest.raises(ConfigError, match=r"shape \(H, W, 3\).*got dtype uint8 and shape \(4, 4\)"):
        to_tensor(np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"\(1, 3, H, W\).*got shape \(3, 4, 4\)"):
        from_tensor(torch.zeros(3, 4, 4))
    with pytest.raises(ConfigError, match="NaN or infinity"):
        from_tensor(torch.full((1, 3, 2, 2), float("nan")))


_XMP = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:rights>\u00a9 Zo\u00eb Painter</dc:rights></x:xmpmeta>'


def test_png_text_dpi_and_xmp_are_kept(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Copyright", "(c) A. Painter")
    info.add_itxt("Author", "Zo\u00eb Painter")
    info.add_itxt("XML:com.adobe.xmp", _XMP)
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.png", pnginfo=info, dpi=(300, 300))
    art = load_artwork(tmp_path / "in.png")
    save_artwork(tmp_path / "out.png", art.rgb, art)
    out = _reopen(tmp_path / "out.png")
    assert out.text["Copyright"] == "(c) A. Painter" and out.text["Author"] == "Zo\u00eb Painter"
    assert out.info["xmp"].decode("utf-8") == _XMP
    assert [round(v) for v in out.info["dpi"]] == [300, 300]


def test_jpeg_comment_xmp_and_dpi_reach_png_and_jpeg_outputs(tmp_path):
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.jpg", xmp=_XMP.encode("utf-8"), comment=b"by A. Painter",
                                   dpi=(240, 240))
    art = load_artwork(tmp_path / "in.jpg")
    save_artwork(tmp_path / "out.png", art.rgb, art)
    png = _reopen(tmp_path / "out.png")
    assert png.text["Comment"] == "by A. Painter" and png.info["xmp"].decode("utf-8") == _XMP
    assert [round(v) for v in png.info["dpi"]] == [240, 240]
    save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")
    jpeg = _reopen(tmp_path / "out.jpg")
    assert jpeg.info["comment"] == b"by A. Painter" and jpeg.info["xmp"].decode("utf-8") == _XMP
    assert jpeg.info["dpi"] == (240, 240)


def test_metadata_too_large_for_a_jpeg_segment_is_refused_before_cloaking_and_kept_in_png(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    big_xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><a>' + "h" * 70000 + "</a></x:xmpmeta>"
    info.add_itxt("XML:com.adobe.xmp", big_xmp)  # Photoshop's document history can grow the XMP this large
    Image.fromarray(_UPRIGHT).save(tmp_path / "xmp.png", pnginfo=info)
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = "d" * 70000  # a PNG eXIf chunk has no 64 KiB limit
    Image.fromarray(_UPRIGHT).save(tmp_path / "exif.png", exif=exif.tobytes())
    for name, what in (("xmp.png", "XMP"), ("exif.png", "EXIF")):
        art = load_artwork(tmp_path / name)
        with pytest.raises(ConfigError, match=rf"{name}: its {what} data takes \d+ bytes, more than one JPEG"):
            imageio.check_format(art, "jpeg")
        with pytest.raises(ConfigError, match=f"its {what} data"):
            save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")
        assert not (tmp_path / "out.jpg").exists()
        imageio.check_format(art, "png")
        save_artwork(tmp_path / "out.png", art.rgb, art)
    assert _reopen(tmp_path / "out.png").getexif()[ExifTags.Base.ImageDescription] == "d" * 70000


def test_tiff_authorship_tags_become_exif(tmp_path):
    tags = {ExifTags.Base.Artist: "A. Painter", ExifTags.Base.Copyright: "(c) 2026 A. Painter"}
    Image.fromarray(_UPRIGHT).save(tmp_path / "in.tif", tiffinfo=tags)
    art = load_artwork(tmp_path / "in.tif")
    assert any("copyright" in note for note in art.notes)
    save_artwork(tmp_path / "out.png", art.rgb, art)
    exif = _reopen(tmp_path / "out.png").getexif()
    assert exif[ExifTags.Base.Artist] == "A. Painter" and exif[ExifTags.Base.Copyright] == "(c) 2026 A. Painter"
    assert ExifTags.Base.StripOffsets not in exif  # the TIFF's file layout is not copied
