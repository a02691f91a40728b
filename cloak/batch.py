"""Cloak folders of artworks: find the files, name the outputs, skip what is done, keep going past bad files.

Guarantees: inputs are never written to; every output (image and JSON sidecar) is written atomically; a file that
fails is reported and the others go on; a second run skips outputs that already exist (unless ``overwrite``).
"""

from __future__ import annotations

import glob
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloak import __version__
from cloak.errors import CloakError, ConfigError
from cloak.imageio import SUPPORTED_SUFFIXES, atomic_write_json, load_artwork, save_artwork

if TYPE_CHECKING:
    from cloak.distributed import Node
    from cloak.protect import Cloaker, CloakResult

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
LOSSY_WARNING = (
    "{fmt} is lossy: re-encoding removes part of the cloak. Post the PNG where you can (PNG is the default)."
)


@dataclass(frozen=True)
class Job:
    """One image to cloak: where it comes from and where its results go."""

    source: Path
    output: Path
    sidecar: Path


@dataclass
class Outcome:
    """What happened to one job: status is ``"done"``, ``"skipped"`` or ``"failed"``."""

    job: Job
    status: str
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)


def collect_inputs(inputs: Sequence[str], exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Expand files, folders (recursively) and glob patterns into ``(file, relative output stem)`` pairs.

    Files named directly are always attempted; inside folders only supported image suffixes are taken and hidden
    files are skipped. Everything under ``exclude`` (the output folder) is ignored, so that outputs written inside
    an input folder are not cloaked again on the next run.

    Returns:
        ``(pairs, errors)``: the files with their output path relative to the output folder (suffix not yet
        chosen), and one message per input that matched nothing.
    """
    pairs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    excluded = exclude.resolve() if exclude is not None else None

    def wanted(p: Path) -> bool:
        if p.name.startswith(".") or p.suffix.lower() not in SUPPORTED_SUFFIXES:
            return False
        return excluded is None or not p.resolve().is_relative_to(excluded)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p))
            if not found:
                errors.append(f"{item}: no supported images in this folder ({', '.join(sorted(SUPPORTED_SUFFIXES))})")
            pairs += [(p, p.relative_to(path).with_suffix("")) for p in found]
        elif path.is_file():
            pairs.append((path, Path(path.stem)))
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file() and wanted(Path(p)))
            if not found:
                errors.append(f"{item}: the pattern matched no supported image")
            pairs += [(p, Path(p.stem)) for p in found]
        else:
            errors.append(f"{item}: no such file or folder")
    return pairs, errors


def plan_jobs(pairs: Sequence[tuple[Path, Path]], out_dir: Path, fmt: str = "png") -> tuple[list[Job], list[str]]:
    """Name the outputs; refuse any output that would overwrite an input or another output.

    Returns:
        ``(jobs, errors)``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    sources = {p.resolve() for p, _ in pairs}
    claimed: dict[Path, Path] = {}
    jobs: list[Job] = []
    errors: list[str] = []
    for source, rel in pairs:
        output = out_dir / rel.with_name(rel.name + FORMATS[fmt])
        sidecar = out_dir / rel.with_name(rel.name + ".cloak.json")
        key, real = output.resolve(), source.resolve()
        if claimed.get(key) == real:
            continue  # the same file named twice with the same output (e.g. a file and its folder): cloak it once
        if key in sources:
            errors.append(f"{source}: its output {output} would overwrite an input; choose another --out folder")
        elif key in claimed:
            errors.append(f"{source}: its output {output} is already the output of {claimed[key]}; rename one")
        else:
            claimed[key] = real
            jobs.append(Job(source=source, output=output, sidecar=sidecar))
    return jobs, errors


TILE = 512 * 512
"""Pixels of one 512x512 view: the unit of :func:`job_weight`."""


def job_weight(job: Job) -> int:
    """The cost of cloaking ``job``'s file, for sharing a batch across ranks: its area in 512x512 tiles, >= 1.

    The optimiser's cost grows with the number of views of the image (``cloak.views``), about one per 512x512
    tile for large images and one for anything smaller. Only the header is read; a file that cannot be read
    counts 1 (it will fail quickly and be reported by :func:`run_job`).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(job.source) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError):
        return 1
    return max(1, math.ceil(width * height / TILE))


def share_jobs(jobs: Sequence[Job], node: Node) -> list[Job]:
    """This rank's jobs of a batch run under torchrun / accelerate launch (every job in a single process).

    Shares are disjoint, cover ``jobs`` and depend only on the input files (balanced by :func:`job_weight`,
    ``cloak.distributed.shard``), never on timing. A file's result does not depend on its rank either: every file
    is cloaked with the same seed, and a ``Cloaker`` carries no state from one image to the next.
    """
    from cloak.distributed import share

    return share(jobs, node, job_weight)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_job(
    job: Job,
    cloaker: Cloaker,
    *,
    seed: int,
    fmt: str = "png",
    overwrite: bool = False,
    strip_gps: bool = False,
    describe: dict[str, Any] | None = None,
    measure_lpips: Callable[[Any, Any], float] | None = None,
    callback: Callable[[int, int, float], None] | None = None,
) -> Outcome:
    """Cloak one file and write its image and sidecar; errors become a ``failed`` outcome, never an exception.

    Args:
        job: the file and its outputs.
        cloaker: the loaded method and model.
        seed: seeds the cloak (the same for every file, so a resumed batch gives the same files).
        fmt: ``png`` (lossless, default), ``jpeg`` or ``webp``.
        overwrite: redo outputs that exist.
        strip_gps: remove GPS tags from the EXIF that is carried over.
        describe: extra fields for the sidecar (preset name, model name...).
        measure_lpips: ``f(original_rgb, cloaked_rgb) -> LPIPS`` when LPIPS weights are available.
        callback: per-step progress (step, steps, loss).
    """
    if not overwrite and job.output.exists() and job.sidecar.exists():
        return Outcome(job, "skipped", "output exists (use --overwrite to redo)")
    try:
        artwork = load_artwork(job.source, strip_gps=strip_gps)
        before = sha256(job.source)
        result: CloakResult = cloaker.protect(artwork.rgb, grey=artwork.grey, seed=seed, callback=callback)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        save_artwork(job.output, result.image, artwork, format=fmt)
        if sha256(job.source) != before:  # cannot happen by construction; checked because losing art is the worst
            raise CloakError(f"{job.source}: the input changed while it was being cloaked; not trusting the output")
        cfg = cloaker.config
        record = {
            "source": str(job.source),
            "output": job.output.name,
            "width": artwork.size[0],
            "height": artwork.size[1],
            "method": cfg.method,
            "eps": cfg.eps,
            "min_psnr": cfg.min_psnr,
            "smooth": cfg.smooth,
            "steps": cfg.steps,
            "seed": seed,
            "eot": list(cfg.eot),
            "options": cfg.options,
            "format": fmt,
            "linf": result.linf,
            "psnr": round(result.psnr, 3) if math.isfinite(result.psnr) else None,  # inf: unchanged
            "ssim": round(result.ssim, 5),
            "lpips": measure_lpips(artwork.rgb, result.image) if measure_lpips else None,
            "seconds": round(result.seconds, 3),
            "views": result.views,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "notes": list(artwork.notes),
            "cloak_version": __version__,
            **(describe or {}),
        }
        atomic_write_json(job.sidecar, record)
    except (CloakError, OSError, RuntimeError, ValueError) as err:
        message = str(err) if str(job.source) in str(err) else f"{job.source}: {err}"
        return Outcome(job, "failed", message)
    return Outcome(job, "done", record=record)
