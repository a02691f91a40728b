"""Cloak folders of artworks: find the files, name the outputs, skip what is done, keep going past bad files.

Guarantees: inputs are never written to; every output (image and JSON sidecar) is written atomically; a file that
fails is reported and the others go on; a second run skips outputs that already exist (unless ``overwrite``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloak import __version__, metrics
from cloak.errors import CloakError, ConfigError
from cloak.imageio import (
    SUPPORTED_SUFFIXES,
    atomic_write_json,
    channels_equal,
    check_format,
    load_artwork,
    save_artwork,
)

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


SIDECAR_SUFFIX = ".cloak.json"


def sidecar_of(image: Path) -> Path:
    """Where the JSON record of a cloaked file ``image`` lies: beside it, ``<stem>.cloak.json``."""
    return image.with_name(image.stem + SIDECAR_SUFFIX)


def is_cloak_output(path: Path) -> bool:
    """``path`` is a cloaked copy made by this tool: a sidecar beside it names it as its output."""
    try:
        record = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("output") == path.name


def collect_inputs(
    inputs: Sequence[str], exclude: Path | None = None, *, skip_copies: bool = True
) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """Expand files, folders (recursively) and glob patterns into ``(file, relative output stem)`` pairs.

    Files named directly are always attempted. Inside folders (and glob matches) only supported image suffixes
    are taken; hidden files and hidden folders (``.thumbs/``, ``.git/``) are skipped, and so are cloaked copies
    from an earlier run (a ``.cloak.json`` beside the file names it as its output), wherever they lie, so that
    nothing is cloaked twice. ``exclude`` (the output folder) is skipped whole when it lies inside a searched
    folder; when it is that folder's parent (``--out .``) only the cloaked copies in it are. ``skip_copies=False``
    takes the cloaked copies too (``cloak purify`` is run on them).

    Returns:
        ``(pairs, errors, notes)``: the files with their output path relative to the output folder (suffix not
        yet chosen); one message per input that matched nothing; one line per kind of file passed over (cloaked
        copies, files of other types), for the user to see what was left out and why.
    """
    pairs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    excluded = exclude.resolve() if exclude is not None else None
    copies: list[Path] = []
    other: Counter[str] = Counter()

    def search(root: Path, candidates: Iterable[Path]) -> list[Path]:
        real_root = root.resolve()
        # The output folder is passed over whole only when it sits inside the folder searched.
        inside = excluded is not None and excluded != real_root and excluded.is_relative_to(real_root)
        skip = excluded if inside else None
        found = []
        for p in candidates:
            if not p.is_file():
                continue
            rel = p.relative_to(root).parts if p.is_relative_to(root) else (p.name,)
            if any(part.startswith(".") for part in rel):
                continue  # hidden files, and everything in hidden folders
            if skip is not None and p.resolve().is_relative_to(skip):
                continue
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                if not p.name.endswith(SIDECAR_SUFFIX):
                    other[p.suffix.lower() or "(no suffix)"] += 1
                continue
            if skip_copies and is_cloak_output(p):
                copies.append(p)
                continue
            found.append(p)
        return sorted(found)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = search(path, path.rglob("*"))
            if not found:
                errors.append(f"{item}: no images to cloak in this folder (looked for {_suffix_text()})")
            pairs += [(p, p.relative_to(path).with_suffix("")) for p in found]
        elif path.is_file():
            pairs.append((path, Path(path.stem)))
        elif glob.has_magic(item):
            literal = list(iter_until_magic(Path(item).parts))
            root = Path(*literal) if literal else Path(".")
            found = search(root, (Path(p) for p in glob.glob(item, recursive=True)))
            if not found:
                errors.append(f"{item}: the pattern matched no image to cloak")
            pairs += [(p, Path(p.stem)) for p in found]
        else:
            errors.append(f"{item}: no such file or folder")

    notes = []
    if copies:
        notes.append(
            f"passed over {len(copies)} cloaked cop{'y' if len(copies) == 1 else 'ies'} from an earlier run (a "
            f"{SIDECAR_SUFFIX} beside {'it' if len(copies) == 1 else 'each'} names it), e.g. {copies[0]}; "
            "cloaking a copy again would double the change"
        )
    if other:
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(other.items()))
        count = sum(other.values())
        notes.append(f"passed over {count} file{'' if count == 1 else 's'} that {'is' if count == 1 else 'are'} not "
                     f"an image cloak reads ({kinds}); it reads {_suffix_text()}")
    return pairs, errors, notes


def iter_until_magic(parts: Sequence[str]) -> Iterable[str]:
    """The leading parts of a glob pattern's path that hold no wildcard: the folder it searches."""
    for part in parts:
        if glob.has_magic(part):
            return
        yield part


def _suffix_text() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


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
        sidecar = sidecar_of(output)
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
    try:
        before = sha256(job.source)
    except OSError as err:
        return Outcome(job, "failed", f"{job.source}: cannot read the file ({err.strerror or err}).")
    if not overwrite and job.output.exists() and job.sidecar.exists():
        verdict = _earlier_output(job, before, describe or {}, cloaker.config, seed)
        if verdict is not None:
            return verdict
    try:
        artwork = load_artwork(job.source, strip_gps=strip_gps)
        check_format(artwork, fmt)  # refused before minutes of cloaking, not after
        notes = list(artwork.notes)
        # A pencil drawing scanned or exported as RGB is grey in every pixel: a coloured cloak would show as colour
        # noise on it, so its cloak is kept grey too (the file stays RGB).
        grey = artwork.grey or channels_equal(artwork.rgb)
        if grey and not artwork.grey:
            notes.append("the picture is grey in every pixel, so its cloak is kept grey too (saved as RGB)")
        result: CloakResult = cloaker.protect(artwork.rgb, grey=grey, seed=seed, callback=callback)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        save_artwork(job.output, result.image, artwork, format=fmt)
        if sha256(job.source) != before:  # cannot happen by construction; checked because losing art is the worst
            raise CloakError(f"{job.source}: the input changed while it was being cloaked; not trusting the output")
        # The figures are those of the file on disk, as written: for JPEG and WebP, compression changes the pixels
        # after cloaking, and the sidecar must not claim the cloak's own budget for them.
        saved = load_artwork(job.output).rgb
        if np.array_equal(saved, result.image):  # PNG: the pixels the cloak measured (SSIM is slow on large files)
            linf, psnr, ssim = result.linf, result.psnr, result.ssim
        else:
            linf = metrics.linf(artwork.rgb, saved)
            psnr, ssim = metrics.psnr(artwork.rgb, saved), metrics.ssim(artwork.rgb, saved)
        if linf > cloaker.config.eps:
            notes.append(
                f"the saved {fmt.upper()} differs from the original by up to {linf}/255, more than the budget "
                f"{cloaker.config.eps:g}/255: lossy compression changed the cloaked pixels"
            )
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
            "step_size": cfg.step_size,
            "schedule": cfg.schedule,
            "random_start": cfg.random_start,
            "seed": seed,
            "eot": list(cfg.eot),
            "options": cfg.options,
            "format": fmt,
            "source_sha256": before,
            "linf": linf,
            "psnr": round(psnr, 3) if math.isfinite(psnr) else None,  # inf: unchanged
            "ssim": round(ssim, 5),
            "lpips": measure_lpips(artwork.rgb, saved) if measure_lpips else None,
            "seconds": round(result.seconds, 3),
            "views": result.views,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "notes": notes,
            "cloak_version": __version__,
            **(describe or {}),
        }
        atomic_write_json(job.sidecar, record)
    except (CloakError, OSError, RuntimeError, ValueError) as err:
        if isinstance(err, RuntimeError) and _out_of_memory(err):
            return Outcome(job, "failed", _NO_MEMORY.format(source=job.source))
        message = str(err) if str(job.source) in str(err) else f"{job.source}: {err}"
        return Outcome(job, "failed", message)
    except MemoryError:
        return Outcome(job, "failed", _NO_MEMORY.format(source=job.source))
    return Outcome(job, "done", record=record)


_NO_MEMORY = (
    "{source}: not enough memory to cloak this image here; close other programs, or downscale it in your editor, "
    "and try again"
)


def _out_of_memory(err: BaseException) -> bool:
    """torch's allocation failures (CPU and CUDA) are RuntimeErrors; their text is all that tells them apart."""
    text = str(err)
    return "out of memory" in text.lower() or "DefaultCPUAllocator" in text or "can't allocate memory" in text


# What an earlier run's sidecar must match, besides the input, for its output to count as this run's.
_SETTINGS = ("method", "eps", "steps", "seed", "min_psnr", "smooth", "preset", "model")


def _earlier_output(job: Job, digest: str, describe: dict[str, Any], config: Any, seed: int) -> Outcome | None:
    """Decide what to do with an output that exists: skip it (``skipped``), refuse (``failed``) or redo (None).

    An output made from this very input (the sidecar's ``source_sha256``) is skipped, with a word when the
    settings differ. One made from another file of the same name (another folder, or this file before it was
    edited) is not silently taken for this one's: an edited file is cloaked again, another file's output is left
    alone and the job fails, naming both (paths compared as recorded, relative to where each run started).
    Sidecars written before ``source_sha256`` existed are trusted.
    """
    try:
        record = json.loads(job.sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # an unreadable record: make the pair again
    if not isinstance(record, dict):
        return None
    recorded = record.get("source_sha256")
    if recorded is not None and recorded != digest:
        made_from = Path(str(record.get("source", "")))
        if made_from.resolve() != job.source.resolve():
            return Outcome(
                job, "failed",
                f"{job.source}: {job.output} is the cloaked copy of another file, {made_from}; choose another "
                "--out folder (or --overwrite to replace it)",
            )
        return None  # this file changed since it was cloaked: cloak it again
    current = {"method": config.method, "eps": config.eps, "steps": config.steps, "seed": seed,
               "min_psnr": config.min_psnr, "smooth": config.smooth, **describe}
    differ = [f"{k} {record[k]}" for k in _SETTINGS if k in record and k in current and record[k] != current[k]]
    if differ:
        settings = ", ".join(differ)
        return Outcome(job, "skipped", f"made earlier with other settings ({settings}); --overwrite redoes it")
    return Outcome(job, "skipped", "done in an earlier run; --overwrite redoes it")
