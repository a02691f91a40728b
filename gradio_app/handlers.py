"""What the web page does, as plain functions: no gradio here, so every step is testable without a server.

The page is a thin layer (``gradio_app.app``) over these handlers:

- :func:`load_backend` loads the model once at start-up and times one optimiser step, for the time estimates.
- :func:`expand_uploads` turns uploaded files and ``.zip`` archives into image files (safe extraction, limits).
- :func:`estimate` says how long the chosen settings will take for the uploaded images on this machine.
- :func:`protect_uploads` cloaks every image with :func:`cloak.batch.run_job`, so the page writes exactly the
  files ``cloak protect`` writes; one failing image does not stop the others.
- :func:`results_table`, :func:`gallery_items` and :func:`detail` shape the results for display.

Nothing is ever re-encoded: the page shows and offers for download the PNG files the library wrote (file paths),
and the comparison pictures are written as PNG.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cloak import imageio
from cloak.batch import Job, run_job
from cloak.errors import ConfigError
from cloak.imageio import SUPPORTED_SUFFIXES, ImageError, load_artwork, save_artwork
from cloak.presets import PRESETS, method_label

if TYPE_CHECKING:
    from cloak.models import Components
    from cloak.protect import CloakConfig, Cloaker

# Limits on what a .zip may unpack to (checked while reading, not trusted from the archive's header).
ZIP_MAX_MEMBERS = 1000  # files per archive
ZIP_MAX_FILE_BYTES = 256 * 2**20  # one unpacked file, bytes (a 8192x4096 RGBA 8-bit TIFF is 128 MiB)
ZIP_MAX_TOTAL_BYTES = 2 * 2**30  # all unpacked files of one archive together, bytes
_CHUNK = 2**20  # bytes read at a time while unpacking

# Side of the square test image timed at start-up, px (capped by the model's resolution). Small, so start-up
# stays quick; the estimate scales the measured time by the number of pixels the model sees.
TIMING_SIDE = 256
# Sides of the two pictures on which the full-size costs (those that grow with the file's pixels, not the model's)
# are timed at start-up, px: both at least SD-1.5's 512, so the model sees them alike.
CALIBRATION_SIDES = (512, 1536)

Progress = Callable[..., Any]  # gr.Progress-like: progress(fraction in [0, 1], desc=str)


@dataclass(frozen=True)
class Backend:
    """What every request shares, read-only: the loaded model, the timing, the folder for results.

    Attributes:
        model: the model as the user named it (``--model``).
        components: the loaded model parts (every part any method in ``METHODS`` needs).
        step_seconds: seconds per optimiser step per pixel the model sees, measured at start-up for each
            preset's method with that preset's options (which change its cost), keyed by
            ``cloak.presets.method_label(method, options)``.
        work_root: folder under which each request writes its results.
        pixel_step_seconds: seconds per optimiser step per pixel of the full-size image, besides the model
            (resizing the change to each view and back, the update): what makes large files slow.
        pixel_seconds: seconds per pixel of the full-size image once per image: reading, checking, writing and
            measuring it, and the comparison pictures.
    """

    model: str
    components: Components
    step_seconds: Mapping[str, float]
    work_root: Path
    pixel_step_seconds: float = 0.0
    pixel_seconds: float = 0.0


@dataclass(frozen=True)
class Upload:
    """One image file to cloak: the name the artist knows it by, and where it lies on disk."""

    name: str
    path: Path


@dataclass(frozen=True)
class ItemResult:
    """What happened to one image.

    Attributes:
        name: the file name as uploaded (``folder/name.png`` for a file from a zip).
        status: ``"done"`` or ``"failed"``.
        message: why it failed (names the file), or notes about conversions made while loading.
        output: the cloaked PNG exactly as the library wrote it, or None.
        sidecar: its ``.cloak.json`` record, or None.
        before: the original as a PNG (upright, 8-bit), for the comparison, or None.
        difference: the change, amplified so that the full budget is white, as a PNG, or None.
        record: the sidecar's content (L-inf 0-255, PSNR dB, SSIM, seconds...); empty when failed.
    """

    name: str
    status: str
    message: str = ""
    output: Path | None = None
    sidecar: Path | None = None
    before: Path | None = None
    difference: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """The outcome of one press of the button.

    Attributes:
        items: one result per image, in upload order.
        skipped: messages about uploads that held no image to cloak (zip members that are not images...).
        archive: a zip of every cloaked PNG with its ``.cloak.json``, or None when nothing was cloaked.
        eps: the budget used, 0-255 units.
    """

    items: list[ItemResult]
    skipped: list[str]
    archive: Path | None
    eps: float


def parts_needed() -> set[str]:
    """Every model part that some method in the registry needs: the page lets the artist pick any method."""
    from cloak.methods import METHODS

    return set().union(*(cls.needs for cls in METHODS.values()))


def load_backend(model: str, device: str = "auto", work_root: Path | None = None) -> Backend:
    """Load the model and time the presets' methods; call once at start-up.

    Args:
        model: ``testbed``, a hub id, a diffusers folder or a checkpoint file (``cloak.models.load_components``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        work_root: folder for the results; default a new temporary folder.

    Raises:
        ModelNotFoundError: the weights are neither cached nor reachable (one line that says what to do).
        ConfigError: unknown device or model kind.
    """
    from cloak.models import load_components
    from cloak.protect import default_autocast, store_unet_in_bf16

    components = load_components(model, parts_needed(), device=device)
    if default_autocast(components.device):  # the page's cloaks run under bf16 autocast there (Cloaker.autocast)
        store_unet_in_bf16(components)
    return backend_for(components, model, work_root)


def backend_for(components: Components, model: str, work_root: Path | None = None) -> Backend:
    """A :class:`Backend` for already loaded components (times the presets' methods on them)."""
    timing: dict[str, float] = {}
    for preset in PRESETS.values():  # each method once per set of options the presets run it with
        key = method_label(preset.method, preset.options)
        if key not in timing:
            timing[key] = time_step(components, preset.method, preset.options)
    root = Path(tempfile.mkdtemp(prefix="cloak-app-")) if work_root is None else Path(work_root)
    root.mkdir(parents=True, exist_ok=True)
    per_step, per_image = time_full_size(components, root)
    return Backend(
        model=model,
        components=components,
        step_seconds=MappingProxyType(timing),
        work_root=root,
        pixel_step_seconds=per_step,
        pixel_seconds=per_image,
    )


def _ramps(height: int, width: int) -> np.ndarray:
    """A smooth test picture, two colour ramps: (height, width, 3) uint8."""
    across = np.linspace(0, 255, width).astype(np.uint8)
    down = np.linspace(0, 255, height).astype(np.uint8)
    return np.stack(
        [np.tile(across, (height, 1)), np.tile(down[:, None], (1, width)), np.full((height, width), 128, np.uint8)],
        axis=2,
    )


def time_full_size(
    components: Components, folder: Path, sides: tuple[int, int] = CALIBRATION_SIDES
) -> tuple[float, float]:
    """Seconds per full-size pixel that the model's views do not account for: per optimiser step, and per image.

    Runs the whole path an upload takes (:func:`cloak.batch.run_job` and the comparison pictures) on two square
    pictures, ``sides`` px, with the VAE-only encoder method for two steps. Both are seen by the model as one view of
    the same size (resized to its resolution), so the differences between the two runs are the costs that grow with
    the file's pixels, the model's cancelling out. Without this a 4000x3000 file was estimated at a second and took
    40.
    """
    from cloak.protect import CloakConfig, Cloaker

    cloaker = Cloaker(components, CloakConfig(method="encoder", steps=2))
    runs = []
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        for side in sides:
            source = Path(scratch) / f"calibration{side}.png"
            Image.fromarray(_ramps(side, side)).save(source)
            job = Job(source, Path(scratch) / f"out{side}.png", Path(scratch) / f"out{side}.cloak.json")
            stamps: list[float] = []
            start = time.perf_counter()
            outcome = run_job(
                job, cloaker, seed=0, callback=lambda *_, at=stamps: at.append(time.perf_counter())
            )
            if outcome.status != "done":
                return 0.0, 0.0  # no estimate beats a wrong one; the model's part is still counted
            _comparison(Upload(source.name, source), job.output, Path(scratch), f"c{side}", cloaker.config.eps)
            total = time.perf_counter() - start
            runs.append((side * side, stamps[1] - stamps[0], total))
    (small, step_small, total_small), (large, step_large, total_large) = runs
    per_step = max(0.0, step_large - step_small) / (large - small)
    per_image = max(0.0, (total_large - 2 * step_large) - (total_small - 2 * step_small)) / (large - small)
    return per_step, per_image


def time_step(components: Components, method: str, options: Mapping[str, Any] | None = None) -> float:
    """Seconds per optimiser step per pixel the model sees, for ``method`` (with ``options``) on this machine.

    Cloaks a small smooth test image for two steps and times the second (the first one warms up).
    """
    from cloak.protect import CloakConfig, Cloaker

    side = min(TIMING_SIDE, components.resolution)
    rgb = _ramps(side, side)
    cloaker = Cloaker(components, CloakConfig(method=method, steps=2, options=dict(options or {})))
    stamps: list[float] = []
    cloaker.protect(rgb, seed=0, callback=lambda step, steps, loss: stamps.append(time.perf_counter()))
    return (stamps[1] - stamps[0]) / view_pixels(cloaker, side, side)


def view_sizes(cloaker: Cloaker, height: int, width: int) -> list[tuple[int, int]]:
    """``(height, width)`` of each view the model evaluates for an image of this size."""
    from cloak.views import plan_views

    views = plan_views(
        height,
        width,
        resolution=cloaker.components.resolution,
        multiple=cloaker.objective.multiple,
        max_side=cloaker.config.max_side,
    )
    return [(v.box[2], v.box[3]) for v in views]


def view_pixels(cloaker: Cloaker, height: int, width: int) -> int:
    """Pixels the model evaluates per step for an image of this size (all views together)."""
    return sum(h * w for h, w in view_sizes(cloaker, height, width))


def _safe_member_name(member: str) -> str | None:
    """The file name to unpack a zip member to (no folders kept), or None for folders and hidden/system files."""
    parts = [p for p in PurePosixPath(member.replace("\\", "/")).parts if p not in ("", "/", ".", "..")]
    if not parts or member.endswith(("/", "\\")):
        return None
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return parts[-1]


def extract_zip(archive: Path, dest: Path, label: str) -> tuple[list[Upload], list[str]]:
    """Unpack the images of a zip archive safely.

    Member paths are never used as paths: each image is written as ``dest/<n>/<its file name>``, so an archive
    cannot write outside ``dest`` (no ``../``, absolute paths or links). Sizes are counted while reading, so a
    zip bomb stops at the limits (`ZIP_MAX_FILE_BYTES`, `ZIP_MAX_TOTAL_BYTES`, `ZIP_MAX_MEMBERS`). Members that
    are not images (by suffix) are skipped with a message; folders, hidden files and macOS ``__MACOSX`` entries
    quietly.

    Args:
        archive: the zip file.
        dest: an empty folder to unpack into.
        label: the archive's name as the artist knows it, used in messages.

    Returns:
        ``(images, messages)``: the unpacked images named ``<label>/<member path>``, and one message per member
        skipped or refused.
    """
    uploads: list[Upload] = []
    messages: list[str] = []
    total = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if _safe_member_name(m.filename) is not None]
            if len(members) > ZIP_MAX_MEMBERS:
                return [], [
                    f"{label}: holds {len(members)} files; at most {ZIP_MAX_MEMBERS} per zip are accepted. "
                    "Split it into smaller zips."
                ]
            for index, member in enumerate(members):
                name = _safe_member_name(member.filename)
                assert name is not None  # members were chosen by it
                shown = f"{label}/{member.filename}"
                if Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                    messages.append(f"{shown}: skipped, not an image ({', '.join(sorted(SUPPORTED_SUFFIXES))}).")
                    continue
                target = dest / str(index) / name
                target.parent.mkdir(parents=True)
                written = 0
                refused = ""
                try:
                    with zf.open(member) as src, open(target, "wb") as out:
                        while chunk := src.read(_CHUNK):
                            written += len(chunk)
                            if written > ZIP_MAX_FILE_BYTES:
                                refused = f"larger than {ZIP_MAX_FILE_BYTES / 2**20:g} MiB unpacked"
                                break
                            if total + written > ZIP_MAX_TOTAL_BYTES:
                                refused = f"the zip unpacks to more than {ZIP_MAX_TOTAL_BYTES / 2**30:g} GiB in all"
                                break
                            out.write(chunk)
                except RuntimeError as err:  # zipfile's words for a password-protected member
                    refused = (
                        "it is password-protected; zip it again without a password"
                        if member.flag_bits & 0x1 else f"cannot be unpacked ({err})"
                    )
                except (zipfile.BadZipFile, OSError, EOFError) as err:  # corrupt
                    refused = f"cannot be unpacked ({err})"
                if refused:
                    target.unlink(missing_ok=True)
                    messages.append(f"{shown}: skipped, {refused}.")
                    if total + written > ZIP_MAX_TOTAL_BYTES:
                        break
                    continue
                total += written
                uploads.append(Upload(name=shown, path=target))
    except (zipfile.BadZipFile, OSError) as err:
        return [], [f"{label}: not a readable zip archive ({err})."]
    if not uploads and not messages:
        messages.append(f"{label}: the zip holds no files.")
    return uploads, messages


def expand_uploads(paths: Sequence[str | Path], dest: Path) -> tuple[list[Upload], list[str]]:
    """Uploaded files -> image files to cloak: zips are unpacked (see :func:`extract_zip`), other files kept.

    Files other than zips are all attempted (the loader says clearly what is wrong with one it cannot read).

    Args:
        paths: the uploaded files; the file name is what the artist sees in messages.
        dest: a folder for unpacked zips.

    Returns:
        ``(images, messages)``.
    """
    uploads: list[Upload] = []
    messages: list[str] = []
    for index, raw in enumerate(paths):
        path = Path(raw)
        if path.suffix.lower() == ".zip":
            found, notes = extract_zip(path, dest / f"zip{index}", path.name)
            uploads += found
            messages += notes
        else:
            uploads.append(Upload(name=path.name, path=path))
    return uploads, messages


def make_config(preset: str, method: str | None, eps: float | None, steps: int | None) -> CloakConfig:
    """The cloak's settings: the preset with the advanced fields on top. Raises ``ConfigError`` with the reason."""
    from cloak.protect import CloakConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if steps is not None and (isinstance(steps, bool) or float(steps) != int(steps)):
        raise ConfigError(f"`steps` must be a whole number, got {steps!r}.")
    eps = None if eps is None else float(eps)
    return CloakConfig.from_preset(preset, method=method or None, eps=eps, steps=None if steps is None else int(steps))


def _check_seed(seed: float | int | None) -> int:
    """The page's seed field gives floats (``3.0``); a whole one is taken as that number."""
    from cloak.protect import check_seed

    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    return check_seed(seed)


def format_duration(seconds: float) -> str:
    """``"about 40 s"``, ``"about 12 min"``, ``"about 1 h"``, ``"about 2 h 5 min"``."""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h" + (f" {rest} min" if rest else "")


def estimate_seconds(backend: Backend, sizes: Sequence[tuple[int, int]], config: CloakConfig) -> float | None:
    """Seconds the cloak of images of these ``(width, height)`` sizes should take here; None if not timed.

    Scales the step time measured at start-up for ``config.method`` with ``config.options`` by the pixels the model
    sees for each image (images larger than the model's resolution are resized or tiled first) and by the number of
    steps, plus one step for computing each view's target, counted once per view size where the objective keeps
    targets by size (``Objective.kept_targets``), in the order the images come; and adds the costs that grow with
    the file's own pixels, per step and once per image (:func:`time_full_size`). None when that method and options
    were not timed at start-up.
    """
    from cloak.protect import Cloaker

    rate = backend.step_seconds.get(method_label(config.method, config.options))
    if rate is None:
        return None
    cloaker = Cloaker(backend.components, config)
    keep = cloaker.objective.kept_targets
    kept: list[tuple[int, int]] = []  # view sizes whose target is kept, oldest first (as the objective drops them)
    seconds = 0.0
    for width, height in sizes:
        for view_height, view_width in view_sizes(cloaker, height, width):
            pixels = view_height * view_width
            seconds += config.steps * pixels * rate
            if (view_height, view_width) not in kept:
                seconds += pixels * rate  # the target, about one step's cost
                if keep:
                    kept.append((view_height, view_width))
                    del kept[:-keep]
        seconds += width * height * (config.steps * backend.pixel_step_seconds + backend.pixel_seconds)
    return seconds


def estimate(
    backend: Backend,
    paths: Sequence[str | Path] | None,
    preset: str,
    method: str | None,
    eps: float | None,
    steps: int | None,
) -> str:
    """A line (Markdown) estimating how long the uploaded images will take with these settings on this machine."""
    if not paths:
        return "Add images to see how long they will take."
    try:
        config = make_config(preset, method, eps, steps)
    except ConfigError as err:
        return f"Cannot estimate: {err}"
    with tempfile.TemporaryDirectory(dir=backend.work_root) as scratch:
        uploads, _ = expand_uploads(paths, Path(scratch))
        sizes, too_large = [], 0
        for upload in uploads:
            try:
                with Image.open(upload.path) as im:  # reads the header only
                    width, height = im.size
            except Image.DecompressionBombError:
                too_large += 1
                continue
            except (OSError, SyntaxError, ValueError):
                continue
            if width * height > imageio.MAX_PIXELS:
                too_large += 1
            else:
                sizes.append((width, height))
    if not sizes:
        return "None of these files can be cloaked: " + ("too large." if too_large else "not readable as images.")
    seconds = estimate_seconds(backend, sizes, config)
    if seconds is None:
        from cloak.methods import METHODS

        uses_unet = "unet" in METHODS[config.method].needs
        slower = " It is usually slower, because it runs the diffusion model too." if uses_unet else ""
        return (
            f"No time estimate for the **{method_label(config.method, config.options)}** method: only "
            f"{', '.join(backend.step_seconds)} was timed at start-up.{slower}"
        )
    count, unreadable = len(sizes), len(uploads) - len(sizes) - too_large
    text = (
        f"Estimated time: **{format_duration(seconds)}** for {count} image{'s' * (count != 1)} "
        f"on this computer ({backend.components.device.type}). This is an estimate from a test run at start-up."
    )
    if unreadable:
        text += f" ({unreadable} unreadable file{'s' * (unreadable != 1)} not counted.)"
    if too_large:
        text += (
            f" **{too_large} image{'s are' if too_large != 1 else ' is'} over the size limit** "
            f"({imageio.MAX_PIXELS:,} pixels) and will be refused."
        )
    return text


def _unique_stem(name: str, taken: set[str]) -> str:
    stem = Path(name).stem or "image"
    candidate, n = stem, 2
    while candidate.lower() in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def difference_image(before: np.ndarray, after: np.ndarray, eps: float) -> np.ndarray:
    """``|after - before|`` per channel scaled by ``255 / eps``: the full budget shows white. (H, W, 3) uint8."""
    delta = np.abs(after.astype(np.int16) - before.astype(np.int16)).astype(np.float64)
    return np.clip(np.round(delta * (255.0 / eps)), 0, 255).astype(np.uint8)


def _comparison(upload: Upload, output: Path, folder: Path, stem: str, eps: float) -> tuple[Path, Path]:
    """Write the original (as PNG) and the amplified difference, both measured from the files."""
    original = load_artwork(upload.path)
    cloaked = load_artwork(output)
    before = folder / f"{stem}.before.png"
    save_artwork(before, original.rgb, original)
    difference = folder / f"{stem}.difference.png"
    Image.fromarray(difference_image(original.rgb, cloaked.rgb, eps)).save(difference, format="PNG")
    return before, difference


def protect_uploads(
    backend: Backend,
    paths: Sequence[str | Path] | None,
    preset: str,
    method: str | None,
    eps: float | None,
    steps: int | None,
    seed: float | int | None,
    progress: Progress | None = None,
) -> Report:
    """Cloak the uploaded images (and the images inside uploaded zips) and write a zip of the results.

    Each image goes through :func:`cloak.batch.run_job`, so its PNG and ``.cloak.json`` are exactly what
    ``cloak protect`` writes for the same file, settings and seed. An image that fails gets a message naming it;
    the others go on.

    Args:
        backend: the loaded model (:func:`load_backend`).
        paths: uploaded files: images or ``.zip`` archives of images.
        preset: a ``cloak.presets.PRESETS`` name (``fast``, ``default``, ``strong``).
        method: a method in ``cloak.methods.METHODS``, or None for the preset's.
        eps: L-inf budget, 0-255 units, or None for the preset's.
        steps: optimiser steps, or None for the preset's.
        seed: whole number >= 0; the same seed gives the same files.
        progress: called as ``progress(fraction, desc=text)`` while working (fraction in [0, 1]).

    Raises:
        ConfigError: no files, or a setting out of range (the message says which and what was expected).
    """
    from cloak.protect import Cloaker

    if not paths:
        raise ConfigError("no files: add one or more images (or a .zip of images) first.")
    config = make_config(preset, method, eps, steps)
    seed = _check_seed(seed)
    cloaker = Cloaker(backend.components, config)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=backend.work_root))
    out_dir, side_dir = run_dir / "cloaked", run_dir / "compare"
    out_dir.mkdir()
    side_dir.mkdir()
    uploads, skipped = expand_uploads(paths, run_dir / "unpacked")
    describe = {"preset": preset, "model": backend.model, "device": str(backend.components.device)}
    taken: set[str] = set()
    items: list[ItemResult] = []
    for index, upload in enumerate(uploads):
        # Zip member names may use either slash; the file is named after the last part only.
        stem = _unique_stem(PurePosixPath(upload.name.replace("\\", "/")).name, taken)
        job = Job(source=upload.path, output=out_dir / f"{stem}.png", sidecar=out_dir / f"{stem}.cloak.json")

        def step(i: int, n: int, loss: float, index: int = index, name: str = upload.name) -> None:
            if progress is not None:  # the steps are most of an image's share of the bar, not all of it
                desc = f"{name}: step {i} of {n}" if i < n else f"{name}: saving and measuring"
                progress((index + 0.85 * i / n) / len(uploads), desc=desc)

        if progress is not None:
            progress(index / len(uploads), desc=f"{upload.name}: starting")
        # The record names the file as the artist uploaded it (the page's own copy is temporary).
        outcome = run_job(job, cloaker, seed=seed, describe={**describe, "source": upload.name}, callback=step)
        if outcome.status != "done":
            items.append(ItemResult(upload.name, "failed", outcome.message.replace(str(upload.path), upload.name)))
            continue
        if progress is not None:
            progress((index + 0.9) / len(uploads), desc=f"{upload.name}: making the comparison pictures")
        try:
            before, difference = _comparison(upload, job.output, side_dir, stem, config.eps)
        except (ImageError, OSError) as err:  # the files were written; only the comparison is missing
            items.append(
                ItemResult(
                    upload.name, "done", f"no comparison: {err}", job.output, job.sidecar, record=outcome.record
                )
            )
            continue
        items.append(
            ItemResult(
                upload.name,
                "done",
                "; ".join(outcome.record.get("notes", [])),
                job.output,
                job.sidecar,
                before,
                difference,
                outcome.record,
            )
        )
    if progress is not None:
        progress(1.0, desc="finished")
    done = [item for item in items if item.status == "done"]
    archive = None
    if done:
        archive = run_dir / "cloaked-images.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for item in done:
                assert item.output is not None and item.sidecar is not None  # a done item has both
                zf.write(item.output, item.output.name)
                zf.write(item.sidecar, item.sidecar.name)
    shutil.rmtree(run_dir / "unpacked", ignore_errors=True)
    return Report(items=items, skipped=skipped, archive=archive, eps=config.eps)


TABLE_HEADERS = ["File", "Result", "Largest change (of 255)", "PSNR (dB)", "SSIM", "Time (s)", "Notes"]


def results_table(report: Report) -> list[list[Any]]:
    """One row per image for the results table (columns: `TABLE_HEADERS`)."""
    rows = []
    for item in report.items:
        r = item.record
        if item.status == "done":
            psnr = "identical" if r["psnr"] is None else round(r["psnr"], 1)
            rows.append(
                [_shown(item), "protected", r["linf"], psnr, round(r["ssim"], 3), round(r["seconds"], 1), item.message]
            )
        else:
            rows.append([item.name, "FAILED", "", "", "", "", item.message])
    return rows


def _shown(item: ItemResult) -> str:
    """The uploaded name, and the saved file's name when it differs (two uploads of the same name, or a zip)."""
    if item.output is None or PurePosixPath(item.name.replace("\\", "/")).stem == item.output.stem:
        return item.name
    return f"{item.name} (saved as {item.output.name})"


def summary(report: Report) -> str:
    """A short Markdown summary: counts, then every failure and skipped file on its own line."""
    done = sum(item.status == "done" for item in report.items)
    failed = [item for item in report.items if item.status != "done"]
    lines = [
        f"**{done} image{'s' * (done != 1)} protected**"
        + (f", **{len(failed)} failed**" if failed else "")
        + f" (budget {report.eps:g}/255)."
    ]
    lines += [f"- {item.message}" for item in failed]
    lines += [f"- {message}" for message in report.skipped]
    if done:
        lines.append(
            "\nDownload the PNG files below and post those: saving them again as JPEG or letting a site "
            "recompress them weakens the protection."
        )
    return "\n".join(lines)


def gallery_items(report: Report) -> list[tuple[str, str]]:
    """The cloaked PNGs as (file path, caption) pairs: shown as they are, never re-encoded."""
    return [
        (str(item.output), f"{_shown(item)}: change at most {item.record['linf']}/255")
        for item in report.items
        if item.status == "done"
    ]


def detail(item: ItemResult) -> tuple[str | None, str | None, str | None, str]:
    """Before, after and difference PNG paths, and a Markdown line of measurements, for one image."""
    r = item.record
    psnr = "identical" if r["psnr"] is None else f"{r['psnr']:.1f} dB"
    text = (
        f"**{item.name}**: largest pixel change **{r['linf']}/255** (budget {r['eps']:g}), PSNR {psnr}, "
        f"SSIM {r['ssim']:.3f}, {r['seconds']:.1f} s. The difference picture is amplified: white = a change "
        "of the full budget, black = unchanged."
    )
    as_str = [None if p is None else str(p) for p in (item.before, item.output, item.difference)]
    return as_str[0], as_str[1], as_str[2], text
