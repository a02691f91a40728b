"""The images of an evaluation: the artist's training and held-out sets, protected and purified copies.

Images travel as the files an artist posts: ``(R, R, 3)`` uint8 arrays at the model's resolution R. Protected
and purified copies are cached as PNG files under the run's ``images/`` folder, one folder per (artist, defence,
seed) and (artist, defence, seed, attack), so a re-run and every mimic reuse them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cloak.errors import ConfigError
from cloak.imageio import SUPPORTED_SUFFIXES, atomic_write_bytes, load_artwork
from eval.config import ArtistSpec, DefenceSpec

HELDOUT_SEED_OFFSET = 10_000
"""Testbed held-out paintings use evaluation seeds this far above the training ones."""


@dataclass(frozen=True)
class ArtistImages:
    """An artist's images at the model's resolution.

    Attributes:
        names: file stems of the training images (precomputed defences are matched by them).
        train: ``(R, R, 3)`` uint8 training images.
        heldout: ``(R, R, 3)`` uint8 held-out images.
    """

    names: tuple[str, ...]
    train: tuple[np.ndarray, ...]
    heldout: tuple[np.ndarray, ...]


def fit_square(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Resize the shorter side to ``resolution`` (bicubic) and centre-crop a square: DreamBooth's preprocessing."""
    h, w = rgb.shape[:2]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    im = (
        Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BICUBIC) if (nh, nw) != (h, w) else Image.fromarray(rgb)
    )
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return np.asarray(im.crop((left, top, left + resolution, top + resolution)).convert("RGB"))


def image_files(folder: Path) -> list[Path]:
    """The images of an artist's (or a precomputed defence's) folder, sorted by name: what the grid reads."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def load_artist(spec: ArtistSpec, resolution: int) -> ArtistImages:
    """Paint a testbed style's images, or read a folder's, at ``resolution`` px.

    Testbed styles: training seeds ``EVAL_SEED_OFFSET + i`` and held-out seeds ``EVAL_SEED_OFFSET +
    HELDOUT_SEED_OFFSET + i`` (never used by the testbed's build). Folders: sorted by name, the first ``n_train``
    files train and the rest are held out.
    """
    style = spec.style
    if style is not None:
        from cloak.testbed.artists import EVAL_SEED_OFFSET, paint

        def painted(seeds: range) -> tuple[np.ndarray, ...]:
            return tuple(np.round(paint(style, s, resolution).image * 255).astype(np.uint8) for s in seeds)

        train = painted(range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + spec.n_train))
        start = EVAL_SEED_OFFSET + HELDOUT_SEED_OFFSET
        heldout = painted(range(start, start + spec.n_heldout))
        return ArtistImages(tuple(f"train-{i:03d}" for i in range(spec.n_train)), train, heldout)
    assert spec.folder is not None  # eval.config gives an artist exactly one of `style` and `folder`
    if not spec.folder.is_dir():
        raise ConfigError(f"artist {spec.name!r}: the folder {spec.folder} does not exist.")
    files = image_files(spec.folder)
    if len(files) < spec.n_train + 2:
        raise ConfigError(
            f"artist {spec.name!r}: {spec.folder} holds {len(files)} image(s); need n_train={spec.n_train} for "
            "training plus at least 2 held out."
        )
    images = [fit_square(load_artwork(p).rgb, resolution) for p in files]
    return ArtistImages(
        tuple(p.stem for p in files[: spec.n_train]), tuple(images[: spec.n_train]), tuple(images[spec.n_train :])
    )


def load_precomputed(spec: DefenceSpec, artist: str, names: tuple[str, ...], resolution: int) -> list[np.ndarray]:
    """Another tool's protected copies of the training images, matched by file stem, at ``resolution`` px."""
    assert spec.precomputed is not None  # called for precomputed defences only
    folder = Path(spec.precomputed.replace("{artist}", artist)).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"defence {spec.name!r}: the precomputed folder {folder} does not exist.")
    by_stem = {p.stem: p for p in image_files(folder)}
    missing = [n for n in names if n not in by_stem]
    if missing:
        raise ConfigError(
            f"defence {spec.name!r}: {folder} lacks protected copies of {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (files are matched to the training images by name)."
        )
    return [fit_square(load_artwork(by_stem[n]).rgb, resolution) for n in names]


def to_batch(images: list[np.ndarray] | tuple[np.ndarray, ...]) -> Tensor:
    """``(H, W, 3)`` uint8 arrays -> float32 ``(N, 3, H, W)`` in [0, 1] on the CPU."""
    # Contiguous: the permuted view is channels-last, and the two memory layouts take different convolution
    # kernels, so a batch read back from the cache (by a resumed run, or by a rank reading what rank 0 wrote) would
    # fine-tune differently in the last bits from a freshly made one.
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).contiguous()


def from_batch(x: Tensor) -> list[np.ndarray]:
    """float ``(N, 3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 arrays (rounded: what a saved file holds)."""
    x = x.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).numpy())


INPUTS_FILE = "inputs.json"
"""Beside cached images: what made them; a cache whose inputs differ is recomputed."""


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able settings (dataclasses included; one with a ``__fingerprint__`` method is
    hashed by what that returns)."""

    def encode(o: Any) -> Any:
        if hasattr(o, "__fingerprint__"):
            return o.__fingerprint__()
        return asdict(o) if is_dataclass(o) and not isinstance(o, type) else str(o)

    text = json.dumps(obj, sort_keys=True, default=encode)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def save_set(folder: Path, names: tuple[str, ...], images: list[np.ndarray], inputs: Any = None) -> None:
    """Write images as ``<name>.png`` into ``folder`` (created), and the fingerprint of ``inputs`` beside them.

    The fingerprint goes first out and last in: a rewrite stopped half-way leaves no fingerprint, so a mix of old
    and new images is never read back as either set (`load_set`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INPUTS_FILE).unlink(missing_ok=True)
    for name, rgb in zip(names, images, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        atomic_write_bytes(folder / f"{name}.png", buffer.getvalue())
    atomic_write_bytes(folder / INPUTS_FILE, (json.dumps({"fingerprint": fingerprint(inputs)}) + "\n").encode())


def load_set(folder: Path, names: tuple[str, ...], inputs: Any = None) -> list[np.ndarray] | None:
    """Read ``<name>.png`` for every name from ``folder``; None when any is missing or the folder was made from
    other ``inputs`` (a stale cache)."""
    paths = [folder / f"{n}.png" for n in names]
    marker = folder / INPUTS_FILE
    if not all(p.is_file() for p in paths) or not marker.is_file():
        return None
    if json.loads(marker.read_text()).get("fingerprint") != fingerprint(inputs):
        return None
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def slug(text: str) -> str:
    """A file-name-safe label for a spec string, with a short hash so distinct specs never collide."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:60]
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"
