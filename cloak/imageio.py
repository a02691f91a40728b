"""Artworks as artists have them: load any size, mode and orientation; save atomically with metadata kept.

Loading gives upright 8-bit RGB pixels (EXIF orientation applied), the alpha channel untouched, and the ICC
profile and EXIF block to write back, so that the cloaked file differs from the original only by the cloak.
Inputs we cannot convert without changing how the picture looks (CMYK, animations, 32-bit or float pixels)
are refused with a message that names the file and says what to do.

What is handled, and how:

- PNG, JPEG, WebP, BMP, TIFF and single-frame GIF files of any width x height up to `MAX_PIXELS`.
- RGB and RGBA as they are; greyscale (L, LA) kept greyscale (``grey=True``); 1-bit black-and-white handled
  as 8-bit greyscale, with a note; palette images (P, PA) converted to RGB or RGBA with their transparency,
  with a note; a transparent colour key (PNG ``tRNS``) becomes an alpha channel, with a note.
- 16-bit PNG/TIFF (grey, grey+alpha, RGB, RGBA) reduced to 8 bits, with a note.
- Multi-picture JPEG (MPO, as some phones write): the main picture is used, with a note.
- Authorship metadata (EXIF, XMP, PNG text, JPEG comment, IPTC, DPI) goes back as the output format allows; the
  preview thumbnails editors embed in EXIF, XMP and Photoshop data do not, as they are uncloaked copies of the
  picture (`cloak.metadata`).

Tensor helpers convert between the ``(H, W, 3)`` uint8 arrays used here and the project's public image
tensors, float ``(1, 3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from cloak.errors import ConfigError, ImageError
from cloak.metadata import (
    JPEG_SEGMENT_BYTES,
    PREVIEW_RESOURCES,
    RIGHTS_RESOURCES,
    exif_has_thumbnail,
    fits_one_segment,
    iptc_profile_resources,
    jpeg_with_resources,
    photoshop_resources,
    raw_profile,
    raw_profile_text,
    resource_block,
    xmp_upright,
    xmp_without_thumbnails,
)

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

# Largest image accepted, in pixels (width * height): 8192 x 4096, twice a 4096 x 4096 canvas. The cloak works
# on overlapping tiles so its memory is bounded, but the full-size float copies of the image are not.
MAX_PIXELS: int = 8192 * 4096

# Pillow's format names for the suffixes above ("MPO" is a JPEG holding extra pictures).
_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF"})

# What Pillow raises on damaged files besides OSError: SyntaxError ("broken PNG file"), EOFError,
# struct.error and TypeError ("Missing dimensions") from malformed TIFF headers.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, TypeError)

# EXIF Orientation (tag 274) -> the transpose that makes the stored pixels upright. The same mapping as
# Pillow's ImageOps.exif_transpose; meaning of each value: EXIF 2.32 (CIPA DC-008) section 4.6.4, tag 0x0112.
_ORIENTATION_FIX: dict[int, tuple[Image.Transpose, str]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored left-right"),
    3: (Image.Transpose.ROTATE_180, "turned 180 degrees"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "mirrored top-bottom"),
    5: (Image.Transpose.TRANSPOSE, "mirrored across the main diagonal"),
    6: (Image.Transpose.ROTATE_270, "turned 90 degrees clockwise"),
    7: (Image.Transpose.TRANSVERSE, "mirrored across the anti-diagonal"),
    8: (Image.Transpose.ROTATE_90, "turned 90 degrees counter-clockwise"),
}

_SAVE_FORMATS = ("png", "jpeg", "webp")


@dataclass(frozen=True)
class Artwork:
    """One loaded artwork: upright 8-bit pixels plus everything needed to write it back faithfully.

    Attributes:
        path: the file it was read from.
        rgb: ``(H, W, 3)`` uint8 pixels, EXIF orientation already applied. For greyscale artworks the three
            channels are equal.
        alpha: ``(H, W)`` uint8 alpha channel (255 = opaque), or None; `save_artwork` writes it back unchanged.
        grey: the input was greyscale (1-bit, L, LA, 16-bit grey); the output is saved greyscale.
        icc_profile: the embedded ICC colour profile, or None; written back unchanged.
        exif: the EXIF block to write back, or None. Orientation is 1 (the pixels are already upright) and the
            GPS location is absent when loaded with ``strip_gps=True``.
        source_format: Pillow's format name of the input, e.g. ``"PNG"``, ``"JPEG"``.
        notes: human-readable notes about conversions made while loading, e.g. 16-bit reduced to 8-bit.
        dpi: the print resolution ``(x, y)`` in dots per inch, or None; written back.
        text: PNG text chunks (``Copyright``, ``Author``, ``Description``...) as ``(key, value)`` pairs; written
            back into PNG outputs.
        xmp: the XMP packet (where editors keep rights, creator and licence), or None; written back, without the
            preview thumbnails some editors put in it.
        comment: a JPEG comment, or None; written back (as a PNG ``Comment`` text chunk in PNG outputs).
        photoshop: the rights resources of a JPEG's or TIFF's Photoshop block as ``(id, data)`` pairs: the IPTC
            record editors show as File Info (creator, copyright notice, caption), the copyright flag and the
            URL (`cloak.metadata.RIGHTS_RESOURCES`), also read from a PNG's "Raw profile type iptc" text chunk.
            Written back into PNG outputs (that text chunk) and JPEG outputs (an APP13 segment, when they fit in
            one); WebP cannot hold them.
    """

    path: Path
    rgb: np.ndarray
    alpha: np.ndarray | None
    grey: bool
    icc_profile: bytes | None
    exif: bytes | None
    source_format: str
    notes: tuple[str, ...]
    dpi: tuple[float, float] | None = None
    text: tuple[tuple[str, str], ...] = ()
    xmp: bytes | None = None
    comment: bytes | None = None
    photoshop: tuple[tuple[int, bytes], ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels, upright."""
        return self.rgb.shape[1], self.rgb.shape[0]


def load_artwork(path: str | Path, *, strip_gps: bool = False) -> Artwork:
    """Read an image file as the artist sees it: upright, 8-bit, alpha and colour profile kept.

    Truncated or corrupt files are refused, never padded: this relies on Pillow's default
    ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.

    Args:
        path: the image file (PNG, JPEG, WebP, BMP, TIFF or single-frame GIF), at most `MAX_PIXELS` pixels.
        strip_gps: remove the GPS location from the EXIF block that will be written back. Default False.

    Returns:
        The `Artwork`; ``rgb`` is ``(H, W, 3)`` uint8 in 0-255, ``alpha`` ``(H, W)`` uint8 or None.

    Raises:
        ImageError: the file is missing, unreadable, corrupt or truncated, of an unsupported format or pixel
            mode (CMYK among them), animated, or larger than `MAX_PIXELS`. The message names the file.
    """
    path = Path(path)
    notes: list[str] = []
    previews: list[str] = []  # the blocks whose preview thumbnail is left out, named in one note
    im: Image.Image  # as opened (an ImageFile), then turned upright (a plain Image) below
    try:
        with Image.open(path) as im:
            source_format = _check_container(path, im, notes)
            rawmode = _raw_mode(im)
            im.load()
            exif = im.getexif()
            icc_profile = im.info.get("icc_profile") or None
            raw_exif = im.info.get("exif") or _raw_profile_exif(im)
            kept = _kept_info(im, notes, previews)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found.") from e
    except PermissionError as e:
        raise ImageError(f"{path}: permission denied; cannot read the file.") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a folder, not an image file.") from e
    except UnidentifiedImageError as e:
        if _is_empty(path):  # a copy or download that never finished, or a cloud-sync placeholder
            raise ImageError(f"{path}: the file is empty (0 bytes); copy or download it again.") from e
        raise ImageError(
            f"{path}: not an image file Pillow can read (unknown format or corrupt header); "
            f"supported: {_suffix_list()}."
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"{path}: image too large; the limit is {_limit_text()}. Downscale it in your editor first."
        ) from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{path}: the file is corrupt or truncated ({e}). Re-export it from your editor.") from e

    orientation = exif.get(ExifTags.Base.Orientation)
    if orientation in _ORIENTATION_FIX:
        method, what = _ORIENTATION_FIX[orientation]
        im = im.transpose(method)
        notes.append(f"EXIF orientation {orientation} applied: the pixels were {what} to stand upright")
        if "xmp" in kept:
            kept["xmp"] = xmp_upright(kept["xmp"])
    elif orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation!r} is not a valid value (1-8); the pixels are used as stored")

    rgb, alpha, grey = _to_arrays(path, im, rawmode, notes)
    exif_bytes = _exif_to_keep(exif, raw_exif, source_format, strip_gps, notes, previews)
    if previews:
        notes.append(_previews_note(previews))
    if source_format == "TIFF":
        exif_bytes = _tiff_authorship(exif, notes)
    return Artwork(
        path=path,
        rgb=rgb,
        alpha=alpha,
        grey=grey,
        icc_profile=icc_profile,
        exif=exif_bytes,
        source_format=source_format,
        notes=tuple(notes),
        **kept,
    )


def save_artwork(
    path: str | Path, rgb: np.ndarray, artwork: Artwork, *, format: str = "png", quality: int = 95
) -> None:
    """Write pixels back with the artwork's alpha, greyscale-ness, ICC profile and EXIF, atomically.

    Lossy formats change the pixels after the cloak was computed and weaken it; PNG keeps every pixel. The
    authorship and print information read by `load_artwork` goes back as each format allows: DPI (not WebP), XMP,
    PNG text chunks (PNG only), the JPEG comment (JPEG, or a PNG ``Comment`` chunk) and the IPTC record (JPEG and
    PNG).
    JPEG is written with 4:4:4 chroma (no subsampling), which keeps more of the cloak than Pillow's 4:2:0
    default. A greyscale artwork saved as WebP (which has no greyscale mode) is written as RGB without a
    greyscale-only ICC profile, which an RGB file cannot carry.

    Args:
        path: the output file; written through a temporary file in the same folder, then renamed.
        rgb: ``(H, W, 3)`` uint8 pixels in 0-255 of the artwork's upright size; for greyscale artworks the
            three channels must be equal.
        artwork: the `Artwork` the pixels belong to (alpha, ICC profile, EXIF and ``grey`` come from it).
        format: ``"png"`` (default, lossless), ``"jpeg"`` or ``"webp"`` (lossy).
        quality: 1-100, for JPEG and WebP only. Default 95.

    Raises:
        ConfigError: wrong shape, dtype or format, unequal channels for a greyscale artwork, alpha with JPEG.
        OSError: the file cannot be written (the old file at ``path``, if any, is left as it was).
    """
    if format not in _SAVE_FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(_SAVE_FORMATS)}, got {format!r}.")
    if format != "png" and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise ConfigError(f"`quality` must be an integer in [1, 100] for {format}, got {quality!r}.")
    _check_rgb(rgb, f"pixels for {artwork.path.name}")
    width, height = artwork.size
    if rgb.shape != (height, width, 3):
        raise ConfigError(
            f"pixels for {artwork.path.name} must match its size {width}x{height} (width x height), got "
            f"{rgb.shape[1]}x{rgb.shape[0]} (array shape {rgb.shape})."
        )
    check_format(artwork, format)

    icc_profile = artwork.icc_profile
    if artwork.grey:
        if not channels_equal(rgb):
            raise ConfigError(
                f"{artwork.path.name} is greyscale and is saved greyscale, but the three channels of the "
                "pixels differ; make the cloak greyscale (equal channels)."
            )
        # WebP has no greyscale mode: grey goes out as RGB with equal channels.
        base = rgb if format == "webp" else rgb[..., :1]
        # An ICC profile's data colour space is bytes 16-20 of its header (ICC.1:2022, section 7.2.6).
        if format == "webp" and icc_profile is not None and icc_profile[16:20] == b"GRAY":
            icc_profile = None
    else:
        base = rgb
    pixels = base if artwork.alpha is None else np.concatenate([base, artwork.alpha[..., None]], axis=2)
    # (H, W, C) -> Pillow's L (C=1), LA (2), RGB (3) or RGBA (4)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels))

    options: dict[str, Any] = {}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if artwork.exif is not None:
        options["exif"] = artwork.exif
    if artwork.dpi is not None and format != "webp":  # WebP has no resolution field
        options["dpi"] = artwork.dpi
    if artwork.xmp is not None and format != "png":
        options["xmp"] = artwork.xmp
    if format == "png":
        options["pnginfo"] = _png_text(artwork)
    elif format == "jpeg" and artwork.comment is not None:
        options["comment"] = artwork.comment
    if format == "jpeg":
        options.update(quality=quality, subsampling=0)
    elif format == "webp":
        options.update(quality=quality, exact=True)  # exact: keep colours under transparent pixels
    buffer = io.BytesIO()
    image.save(buffer, format=format.upper(), **options)
    data = buffer.getvalue()
    resources = dict(artwork.photoshop)
    if format == "jpeg" and fits_one_segment(resources):  # else noted when it was loaded
        data = jpeg_with_resources(data, resources)
    atomic_write_bytes(path, data)


def check_format(artwork: Artwork, format: str) -> None:
    """Refuse an output format that cannot hold the artwork (transparency in JPEG, or EXIF or XMP data larger than
    a JPEG segment): `save_artwork` does, and callers that spend minutes before saving check first.

    Raises:
        ConfigError: naming the file.
    """
    if format != "jpeg":
        return
    if artwork.alpha is not None:
        raise ConfigError(
            f"{artwork.path}: it has transparency (an alpha channel), and JPEG cannot store one; save as png "
            "(lossless, the default) or webp."
        )
    for what, data, limit in (("EXIF", artwork.exif, _JPEG_MAX_EXIF), ("XMP", artwork.xmp, _JPEG_MAX_XMP)):
        if data is not None and len(data) > limit:
            raise ConfigError(
                f"{artwork.path}: its {what} data takes {len(data)} bytes, more than one JPEG segment holds "
                f"({limit}); save as png (lossless, the default) or webp, which keep it."
            )


# The EXIF block fills its segment; the XMP one begins with its 29-byte namespace.
_JPEG_MAX_EXIF = JPEG_SEGMENT_BYTES
_JPEG_MAX_XMP = JPEG_SEGMENT_BYTES - len(b"http://ns.adobe.com/xap/1.0/\x00")


def channels_equal(rgb: np.ndarray) -> bool:
    """The three channels of ``(H, W, 3)`` pixels are equal everywhere: the picture is grey."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the complete new one.

    The bytes go to a temporary file ``.<name>.<random>.tmp`` in the same folder, are flushed to disk, and
    the temporary file is renamed over ``path`` (``os.replace``, atomic on POSIX and Windows). If anything
    fails the temporary file is removed and the error propagates. A symbolic link at ``path`` is replaced
    by the file, never written through.

    Args:
        path: destination file; its folder must exist.
        data: the complete file contents.

    Raises:
        OSError: the folder is missing or not writable, the disk is full, ...
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (2-space indent, sorted keys, UTF-8, trailing newline), atomically.

    Args:
        path: destination file; its folder must exist.
        obj: JSON-serialisable data. NaN and infinity are refused: strict JSON (and browsers) cannot read them.

    Raises:
        ConfigError: ``obj`` holds NaN or infinity.
        TypeError: ``obj`` holds something JSON cannot represent.
        OSError: as `atomic_write_bytes`.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ConfigError(f"cannot write {Path(path).name}: {e}; store None instead of NaN or infinity.") from e
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 pixels in 0-255 -> float32 ``(1, 3, H, W)`` tensor in ``[0, 1]`` on the CPU.

    Raises:
        ConfigError: not a ``(H, W, 3)`` uint8 array.
    """
    _check_rgb(rgb, "`rgb`")
    pixels = torch.tensor(np.ascontiguousarray(rgb))  # flipped or rotated views have negative strides
    return pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div(255.0).contiguous()


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """float ``(1, 3, H, W)`` tensor in ``[0, 1]`` (any device) -> ``(H, W, 3)`` uint8 pixels, rounded and clamped.

    Raises:
        ConfigError: not a ``(1, 3, H, W)`` floating-point tensor, or it holds NaN or infinity.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"`x` must be a floating-point tensor of shape (1, 3, H, W) in [0, 1], got {got}.")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ConfigError("`x` holds NaN or infinity; expected values in [0, 1].")
    return x[0].clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"dtype {rgb.dtype} and shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ConfigError(f"{what} must be a uint8 array of shape (H, W, 3) in 0-255, got {got}.")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ConfigError(f"{what} is empty (shape {rgb.shape}); an image needs at least one pixel.")


def _suffix_list() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


def _limit_text() -> str:
    return f"{MAX_PIXELS:,} pixels (for example 8192x4096)"


def _check_container(path: Path, im: Image.Image, notes: list[str]) -> str:
    """Refuse unsupported formats, oversized images and animations before decoding any pixels; return the format."""
    if im.format not in _FORMATS:
        raise ImageError(
            f"{path}: {im.format} files are not supported; supported: {_suffix_list()}. "
            "Export it as PNG from your editor."
        )
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{path}: image too large: {width}x{height} = {width * height:,} pixels; the limit is {_limit_text()}. "
            "Downscale it in your editor first."
        )
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        if im.format == "MPO":
            notes.append(f"the file holds {frames} pictures (MPO); only the first (main) picture is used")
        else:
            raise ImageError(
                f"{path}: animated or multi-page image ({frames} frames); only single still images can be "
                "cloaked. Export the frame you want as PNG."
            )
    if im.mode == "CMYK":
        raise ImageError(
            f"{path}: CMYK image (print colours). Converting it here would change its colours; convert it to "
            "RGB in your editor (with your colour profile) and export as PNG."
        )
    return im.format


def _raw_mode(im: ImageFile.ImageFile) -> str:
    """The raw (stored) pixel layout, e.g. ``"RGB;16B"``; call before `load`, which clears the tile list.

    Pillow opens 16-bit RGB(A) PNGs as 8-bit RGB/RGBA images and 16-bit grey+alpha PNGs as RGBA with equal
    colour channels; only the raw mode tells them apart.
    """
    args = im.tile[0].args if im.tile else None
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def _to_arrays(
    path: Path, im: Image.Image, rawmode: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Convert a loaded, upright Pillow image to ``(rgb, alpha, grey)`` uint8 arrays."""
    mode = im.mode
    keyed = "transparency" in im.info  # a transparent colour key or palette transparency (PNG tRNS, GIF)
    if mode.startswith("I;16") or ";16" in rawmode:
        notes.append("16-bit input reduced to 8 bits per channel; the output is saved as 8-bit")
    if mode == "1":
        notes.append("1-bit black-and-white image handled as 8-bit greyscale; the output is saved as 8-bit grey")
        im, mode = im.convert("L"), "L"
    if mode in ("P", "PA"):
        target = "RGBA" if keyed or mode == "PA" else "RGB"
        notes.append(f"palette (indexed-colour) image converted to {target}; the output is saved as {target}")
        return _split(np.array(im.convert(target)), grey=False)
    if mode.startswith("I;16"):
        values = np.array(im, dtype=np.uint32)
        # round(v * 255 / 65535): the nearest 8-bit value
        grey8 = ((values * 255 + 32767) // 65535).astype(np.uint8)
        alpha = None
        if keyed:
            notes.append("transparent grey level (PNG tRNS) converted to an alpha channel")
            alpha = np.where(values == im.info["transparency"], 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2), alpha, True
    if mode in ("L", "RGB") and keyed:
        target = "LA" if mode == "L" else "RGBA"
        notes.append(f"transparent colour key (PNG tRNS) converted to an alpha channel; saved as {target}")
        im, mode = im.convert(target), target
    if mode in ("L", "LA"):
        pixels = np.array(im)
        grey8 = pixels if mode == "L" else pixels[..., 0]
        alpha = None if mode == "L" else np.ascontiguousarray(pixels[..., 1])
        return np.repeat(grey8[..., None], 3, axis=2), alpha, True
    if mode == "RGBA" and rawmode.startswith("LA;16"):
        pixels = np.array(im)
        return np.repeat(pixels[..., :1], 3, axis=2), np.ascontiguousarray(pixels[..., 3]), True
    if mode in ("RGB", "RGBA"):
        return _split(np.array(im), grey=False)
    raise ImageError(
        f"{path}: unsupported pixel mode {mode!r}; supported: 8- or 16-bit RGB, RGBA, greyscale, "
        "greyscale+alpha, 1-bit and palette. Export it as 8-bit RGB PNG from your editor."
    )


def _split(pixels: np.ndarray, grey: bool) -> tuple[np.ndarray, np.ndarray | None, bool]:
    if pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[..., :3]), np.ascontiguousarray(pixels[..., 3]), grey
    return pixels, None, grey


# PNG text chunk keys Pillow reads but that are not the artist's text: the XMP packet has its own field, and the
# EXIF block that ImageMagick keeps as hex text is read into the EXIF one (and written as an eXIf chunk).
_XMP_KEY = "XML:com.adobe.xmp"
_RAW_PROFILE = "Raw profile type "
_RAW_EXIF_KEY = _RAW_PROFILE + "exif"
_RAW_IPTC_KEY = _RAW_PROFILE + "iptc"

# TIFF tags that say who made the picture and who holds its rights (TIFF 6.0 baseline tags 270 and 315, and
# 33432 Copyright): the only ones carried from a TIFF, whose other tags describe its file layout.
_TIFF_AUTHORSHIP = (270, 315, 33432)


def _kept_info(im: Image.Image, notes: list[str], previews: list[str]) -> dict[str, Any]:
    """DPI, PNG text, XMP, JPEG comment and IPTC record of an opened image, for `Artwork`; notes what is not kept
    and adds to ``previews`` the blocks (XMP, Photoshop) whose preview thumbnail is left out."""
    kept: dict[str, Any] = {}
    dpi = im.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in dpi):
        kept["dpi"] = (float(dpi[0]), float(dpi[1]))
    text = getattr(im, "text", None) if im.format == "PNG" else None
    png_iptc = _png_iptc(text or {})
    if text:
        skip = {_XMP_KEY, _RAW_EXIF_KEY} | ({png_iptc[0]} if png_iptc else set())  # written again from `kept`
        kept["text"] = tuple(
            (str(k), _without_previews(str(k), str(v), previews)) for k, v in text.items() if k not in skip
        )
    xmp = im.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if isinstance(xmp, bytes) and xmp:
        xmp, removed = xmp_without_thumbnails(xmp)
        kept["xmp"] = xmp
        if removed:
            previews.append("XMP")
    comment = im.info.get("comment")
    if isinstance(comment, bytes) and comment:
        kept["comment"] = comment
    resources = png_iptc[1] if png_iptc else _photoshop_resources(im)
    rights = {rid: data for rid, data in resources.items() if rid in RIGHTS_RESOURCES}
    if rights:
        kept["photoshop"] = tuple(sorted(rights.items()))
        where = (
            "PNG and JPEG outputs; WebP cannot hold it"
            if fits_one_segment(rights)
            else "PNG outputs only: it is too large for one JPEG segment, and WebP cannot hold it"
        )
        notes.append(
            f"the file's IPTC record (File Info) is written back into {where} (most editors also keep the "
            "copyright in the XMP and EXIF data, which are carried over)"
        )
    if resources.keys() & PREVIEW_RESOURCES:
        previews.append("Photoshop")
    return kept


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _png_iptc(text: dict[str, Any]) -> tuple[str, dict[int, bytes]] | None:
    """A PNG's "Raw profile type iptc" text chunk (ExifTool's and ImageMagick's place for the IPTC record): its key
    and its Photoshop resources; None when there is none or it cannot be read (it is then kept as text)."""
    for key, value in text.items():
        if isinstance(key, str) and key.lower() == _RAW_IPTC_KEY.lower() and isinstance(value, str):
            data = raw_profile(value)
            resources = None if data is None else iptc_profile_resources(data)
            if resources is not None:
                return key, resources
    return None


def _without_previews(key: str, value: str, previews: list[str]) -> str:
    """A PNG text chunk's value, without the thumbnail in the XMP, Photoshop or EXIF data ImageMagick keeps as hex
    text ("Raw profile type xmp" / "8bim" / "app1", older versions' EXIF); adds the block to ``previews`` when one is
    taken out."""
    kind = key[len(_RAW_PROFILE) :].lower() if key.startswith(_RAW_PROFILE) else ""
    data = raw_profile(value) if kind in ("xmp", "8bim", "app1") else None
    if data is None:
        return value
    if kind == "app1":
        if not (data.startswith(b"Exif\x00\x00") and exif_has_thumbnail(data)):
            return value
        exif = Image.Exif()
        exif.load(data)
        data = exif.tobytes()  # IFD0 and its sub-directories: Pillow never writes IFD1
        previews.append("EXIF")
    elif kind == "xmp":
        data, removed = xmp_without_thumbnails(data)
        if not removed:
            return value
        previews.append("XMP")
    else:
        resources = photoshop_resources(data)
        if resources is None or not resources.keys() & PREVIEW_RESOURCES:
            return value
        data = resource_block({rid: v for rid, v in resources.items() if rid not in PREVIEW_RESOURCES})
        previews.append("Photoshop")
    return raw_profile_text(key[len(_RAW_PROFILE) :], data)  # the profile's name as the key spells it


def _previews_note(previews: list[str]) -> str:
    """One note for the preview thumbnails left out, e.g. of ``["XMP", "EXIF"]``."""
    previews = list(dict.fromkeys(previews))  # a block named twice (XMP in a PNG's two XMP chunks) once
    where = previews[0] if len(previews) == 1 else ", ".join(previews[:-1]) + " and " + previews[-1]
    what = "thumbnail" if len(previews) == 1 else "thumbnails"
    return f"preview {what} removed from the {where} data: each is a small uncloaked copy of the picture"


def _raw_profile_exif(im: Image.Image) -> bytes | None:
    """The EXIF block of a PNG that keeps it as ImageMagick does, in a "Raw profile type exif" text chunk."""
    text = im.info.get(_RAW_EXIF_KEY) if im.format == "PNG" else None
    return raw_profile(text) if isinstance(text, str) else None


def _photoshop_resources(im: Image.Image) -> dict[int, bytes]:
    """The Photoshop image resources of a JPEG (APP13) or TIFF (tag 34377), id -> data; empty for others."""
    if isinstance(im, TiffImagePlugin.TiffImageFile):
        blocks = im.get_photoshop_blocks()
        return {rid: block["data"] for rid, block in blocks.items() if isinstance(block.get("data"), bytes)}
    resources = im.info.get("photoshop")
    if not isinstance(resources, dict):
        return {}
    return {rid: data for rid, data in resources.items() if isinstance(data, bytes)}


def _png_text(artwork: Artwork) -> PngImagePlugin.PngInfo:
    """The PNG text chunks to write: the input's own, its XMP packet, its IPTC record and its JPEG comment."""
    info = PngImagePlugin.PngInfo()
    keys = set()
    for key, value in artwork.text:
        keys.add(key)
        try:
            value.encode("latin-1")
            info.add_text(key, value)
        except UnicodeEncodeError:  # tEXt is Latin-1 only; iTXt carries UTF-8
            info.add_itxt(key, value)
    if artwork.xmp is not None:
        info.add_itxt(_XMP_KEY, artwork.xmp.decode("utf-8", errors="replace"))
    if artwork.photoshop and _RAW_IPTC_KEY not in keys:  # compressed, as ExifTool writes raw profiles
        info.add_text(_RAW_IPTC_KEY, raw_profile_text("iptc", resource_block(dict(artwork.photoshop))), zip=True)
    if artwork.comment is not None and "Comment" not in keys:
        info.add_itxt("Comment", artwork.comment.decode("utf-8", errors="replace"))
    return info


def _tiff_authorship(exif: Image.Exif, notes: list[str]) -> bytes | None:
    """An EXIF block with a TIFF's description, artist and copyright tags, or None when it has none."""
    kept = Image.Exif()
    for tag in _TIFF_AUTHORSHIP:
        value = exif.get(tag)
        if isinstance(value, str) and value:
            kept[tag] = value
    if len(kept) == 0:
        return None
    notes.append("the TIFF's description, artist and copyright tags are carried over as EXIF")
    return kept.tobytes()


def _exif_to_keep(
    exif: Image.Exif, raw: bytes | None, source_format: str, strip_gps: bool, notes: list[str], previews: list[str]
) -> bytes | None:
    """The EXIF block to write back: orientation reset to 1, GPS removed on request, the thumbnail dropped, else the
    original bytes.

    TIFF files keep their tags in the file structure, not in an EXIF block; none is carried over from them. A
    dropped thumbnail adds "EXIF" to ``previews``.
    """
    if source_format == "TIFF" or len(exif) == 0:
        return None
    changed = False
    if exif.get(ExifTags.Base.Orientation, 1) != 1:
        exif[ExifTags.Base.Orientation] = 1
        changed = True
    # Delete before any get_ifd(GPSInfo): a loaded sub-IFD would be written back by Exif.tobytes.
    if strip_gps and ExifTags.IFD.GPSInfo in exif:
        del exif[ExifTags.IFD.GPSInfo]
        notes.append("GPS location removed from the EXIF data")
        changed = True
    # Pillow writes IFD0 and its sub-directories, never IFD1: writing the block again drops the thumbnail.
    if raw is not None and exif_has_thumbnail(raw):
        previews.append("EXIF")
        changed = True
    if raw is not None and not changed:
        return raw
    return exif.tobytes()
