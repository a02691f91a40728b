"""Run an evaluation grid: protect, purify, mimic, measure, for every cell; resumable; one report.

A cell is one (artist, defence, attack, mimic, seed). The clean baseline (defence "clean") and the unattacked
images (attack "none") are always part of the grid. Protected and purified images are cached per (defence,
seed) and (defence, seed, attack) as PNG files; finished cells are recorded in ``results.json`` after each one
and skipped on a re-run; a failing cell is recorded with its error and the others go on. Every finished cell is
also kept in ``cells-archive.json``, so another config run into the same folder reuses each cell whose settings
(its fingerprint) are the same, whichever configs ran in between.

Under ``torchrun`` / ``accelerate launch`` the cells are shared across the ranks (:func:`share_cells`); each rank
checkpoints its rows into ``results.part<rank>.json`` and rank 0 merges them into the outputs below at the end.

Seeds are paired across conditions: seed ``s`` draws the same purification parameters, fine-tune batches and
noise, and sampling noise for every defence, so conditions differ only by their images.

With ``output_attacks`` in the config, each cell's generations are also scored after each of those purifications
(the attacker cleaning the mimic's output instead of, or as well as, its training images): ``output_scores``.

Outputs in ``out_dir``: ``results.json`` (cells + summary), ``results.csv`` (one row per cell), ``run.json``
(config, versions, seeds, git revision; ``failed`` and ``error`` if the run stopped on an error), ``report.html``
(self-contained), ``plots/*.svg`` and ``summary.md`` (the per-defence table in Markdown), ``images/`` (the cached
training images), ``generations/`` (one PNG grid per cell), ``failures.log`` (tracebacks of failed cells).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.markup import escape

from cloak.distributed import Node, all_sum, barrier, gather, session
from cloak.errors import CloakError, ConfigError
from cloak.imageio import atomic_write_bytes, atomic_write_json
from cloak.progress import progress_bar
from eval import data
from eval import metrics as M
from eval.config import (
    ArtistSpec,
    DefenceSpec,
    EvalConfig,
    MimicSpec,
    check_input_files,
    load_config,
    protected_count,
    with_artist_folders,
    with_seeds,
)
from eval.mimics import finetune, generate, img2img
from eval.summary import CLEAN, NO_ATTACK, summarise

if TYPE_CHECKING:
    from cloak.models import OpenClip
    from cloak.testbed.judge import Judge

CSV_COLUMNS = (
    "artist",
    "defence",
    "method",
    "eps",
    "attack",
    "mimic",
    "mimic_kind",
    "seed",
    "status",
    "score",
    "score_name",
    "success",
    "judged_as",
    "output_scores",
    "style_similarity",
    "fd",
    "clip_score",
    "sharpness",
    "vis_linf",
    "vis_psnr",
    "vis_ssim",
    "vis_lpips",
    "attack_psnr",
    "n_generated",
    "seconds",
    "error",
)
# Errors a cell may raise that should not stop the others: our own, torch's (RuntimeError, out-of-memory
# included), bad values from the libraries, and files that cannot be read or written.
CELL_ERRORS = (CloakError, RuntimeError, ValueError, OSError)
GRID_IMAGES = 8  # generations kept per cell for the report
PART_GLOB = "results.part*.json"  # one rank's checkpoint in a multi-process run (merged into results.json)
# Every cell ever finished in the folder, whatever config ran it: results.json holds only the last config's grid,
# so without this a config run into a folder after another one would redo the first one's cells.
ARCHIVE = "cells-archive.json"
# Independent random streams per seed (the same for every defence, so conditions are paired).
_ATTACK, _FINETUNE, _SAMPLE, _CLASS, _CLOAK, _OUTPUT = range(1, 7)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    artist: str
    defence: str
    attack: str  # an attack spec, or "none"
    mimic: str
    seed: int

    @property
    def key(self) -> str:
        """The cell's id in ``results.json``."""
        return f"{self.artist}|{self.defence}|{self.attack}|{self.mimic}|{self.seed}"


def plan(config: EvalConfig) -> list[Cell]:
    """Every cell of the grid, ordered so that cached images are reused while they are fresh."""
    cells = []
    for artist in config.artists:
        for seed in config.seeds:
            for defence in (CLEAN, *(d.name for d in config.defences)):
                attacks = (NO_ATTACK, *config.attacks) if defence != CLEAN or config.attack_clean else (NO_ATTACK,)
                for attack in attacks:
                    for mimic in config.mimics:
                        cells.append(Cell(artist.name, defence, attack, mimic.name, seed))
    return cells


def share_cells(cells: Sequence[Cell], node: Node) -> list[Cell]:
    """This rank's cells when the grid runs under torchrun / accelerate launch (every cell in a single process).

    Cells are shared in groups of one (artist, defence, seed): a group's protected and purified images are cached
    in its own folder, so exactly one rank computes and writes them. Groups are balanced by their number of cells
    (``cloak.distributed.shard``); the share depends only on the cells, never on timing, and each rank keeps the
    plan's order. A cell's result does not depend on its rank: every random draw comes from the cell's seed.
    """
    from cloak.distributed import share

    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.artist, cell.defence, cell.seed), []).append(cell)
    keys = {c.key for group in share(list(groups.values()), node, len) for c in group}
    return [c for c in cells if c.key in keys]


def inputs_of(
    config: EvalConfig,
    artist: str,
    defence: str = CLEAN,
    attack: str = NO_ATTACK,
    mimic: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every setting that decides a cached image set (``mimic`` None) or a cell's result; its fingerprint guards
    caches and resumes, so a cell whose settings changed runs again."""
    find = {**{a.name: a for a in config.artists}, **{d.name: d for d in config.defences}}
    out: dict[str, Any] = {
        "model": config.model,
        "dtype": config.dtype,
        "artist": find[artist],
        "defence": find.get(defence, CLEAN),
        "attack": attack,
        "seed": seed,
    }
    if mimic is not None:
        out.update(
            mimic=next(m for m in config.mimics if m.name == mimic),
            generation=config.generation,
            metrics=config.metrics,
        )
        if config.output_attacks:  # only when set: cells of configs without them keep their fingerprints
            out["output_attacks"] = config.output_attacks
    return out


def image_set(
    config: EvalConfig, out_dir: Path, artist: str, defence: str = CLEAN, attack: str = NO_ATTACK, seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Where a cached image set lives under ``out_dir/images``, and the settings that decide it (``inputs_of``).

    The clean training images are one set for every seed; any other set is per seed (``<defence>/seed<N>``), and a
    purified one sits in a folder under the set it purified (``.../<slug of the attack>``)."""
    base = out_dir / "images" / artist
    if defence == CLEAN and attack == NO_ATTACK:
        return base / CLEAN, inputs_of(config, artist)
    folder = base / defence / f"seed{seed}"
    if attack != NO_ATTACK:
        folder = folder / data.slug(attack)
    return folder, inputs_of(config, artist, defence, attack, seed=seed)


def cell_fingerprint(config: EvalConfig, cell: Cell) -> str:
    """The fingerprint of everything that decides ``cell``'s result."""
    return data.fingerprint(inputs_of(config, cell.artist, cell.defence, cell.attack, cell.mimic, cell.seed))


def _stream(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def git_revision() -> str | None:
    """``git describe --always --dirty`` of the source tree this package runs from, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages that decide the results."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("artcloak", "torch", "diffusers", "transformers", "peft", "open_clip_torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class _Grid:
    """Loaded models, artists' images and caches shared by the cells of one run."""

    def __init__(self, config: EvalConfig, out_dir: Path, device: str | None, shared_writer: bool = True) -> None:
        from cloak.models import load_components

        self.config = config
        self.out = out_dir
        self.shared_writer = shared_writer  # False on ranks > 0: rank 0 writes the caches every rank reads
        dtype = getattr(torch, config.dtype)
        self.components = load_components(config.model, device=device or config.device, dtype=dtype)
        self.judge = self._load_judge()
        self.clip, self.clip_tokenizer = self._load_clip()
        self.lpips = None
        if config.metrics.lpips:
            from cloak.models import load_lpips

            self.lpips = load_lpips(self.components.device, download=False)
        self.artists = {a.name: a for a in config.artists}
        self.defences = {d.name: d for d in config.defences}
        self.mimics = {m.name: m for m in config.mimics}
        self._images: dict[str, data.ArtistImages] = {}
        self._ref_feats: dict[str, torch.Tensor] = {}
        self._cloakers: dict[str, Any] = {}
        self._purifiers: dict[str, Any] = {}
        self._visibility: dict[tuple[str, str, int], dict[str, float | None]] = {}

    def _load_judge(self) -> Judge | None:
        from cloak.models import TESTBED
        from cloak.testbed.judge import load_judge

        spec, model = self.config.metrics.judge, self.config.model
        beside = Path(model).expanduser() / "judge"  # a folder written by `cloak testbed build` holds its judge
        if spec == "auto":
            spec = "testbed" if model == TESTBED or beside.is_dir() else ""
        if not spec:
            return None
        if spec == "testbed":
            folder = beside if model != TESTBED and beside.is_dir() else None
            return load_judge(self.components.device, folder)
        return load_judge(self.components.device, Path(spec).expanduser())

    def _load_clip(self) -> tuple[OpenClip | None, Callable[[list[str]], torch.Tensor] | None]:
        spec = self.config.metrics.clip
        if not spec:
            return None, None
        import open_clip

        from cloak.models import load_open_clip

        arch, _, tag = spec.partition(":")
        clip = load_open_clip(arch, None if tag in ("", "none") else tag, device=str(self.components.device))
        return clip, open_clip.get_tokenizer(arch)

    # ------------------------------------------------------------------------------------------------ images

    def artist_images(self, name: str) -> data.ArtistImages:
        if name not in self._images:
            images = data.load_artist(self.artists[name], self.components.resolution)
            if self.shared_writer:
                folder, inputs = image_set(self.config, self.out, name)
                data.save_set(folder, images.names, list(images.train), inputs)
            self._images[name] = images
        return self._images[name]

    def protected(self, artist: str, defence: str, seed: int) -> list[np.ndarray]:
        """The training images as the defence leaves them (cached), and their visibility recorded."""
        images = self.artist_images(artist)
        if defence == CLEAN:
            return list(images.train)
        folder, inputs = image_set(self.config, self.out, artist, defence, seed=seed)
        cached = data.load_set(folder, images.names, inputs)
        if cached is None:
            spec = self.defences[defence]
            k = protected_count(spec.fraction, len(images.train))  # the rest stay the artist's originals
            if spec.precomputed is not None:
                cached = data.load_precomputed(spec, artist, images.names, self.components.resolution)[:k]
            else:
                cached = [self._cloak(spec, rgb, seed * 100_003 + i) for i, rgb in enumerate(images.train[:k])]
            cached = [*cached, *images.train[k:]]
            data.save_set(folder, images.names, cached, inputs)
        if (artist, defence, seed) not in self._visibility:
            self._visibility[(artist, defence, seed)] = M.visibility(images.train, cached, self.lpips)
        return cached

    def _cloak(self, spec: DefenceSpec, rgb: np.ndarray, seed: int) -> np.ndarray:
        from cloak.protect import Cloaker

        if spec.name not in self._cloakers:
            components = self.components
            if spec.surrogate is not None:  # transfer: cloak against another model, mimic with the grid's
                from cloak.models import load_components

                device, dtype = str(self.components.device), self.components.dtype
                components = load_components(spec.surrogate, device=device, dtype=dtype)
            self._cloakers[spec.name] = Cloaker(components, spec.cloak_config(), lpips_model=self.lpips)
        return self._cloakers[spec.name].protect(rgb, seed=seed).image

    def attacked(self, artist: str, defence: str, attack: str, seed: int) -> list[np.ndarray]:
        """The protected images after the attacker's purification (cached), as 8-bit files."""
        protected = self.protected(artist, defence, seed)
        if attack == NO_ATTACK:
            return protected
        names = self.artist_images(artist).names
        folder, inputs = image_set(self.config, self.out, artist, defence, attack, seed)
        cached = data.load_set(folder, names, inputs)
        if cached is None:
            purifier = self._purifier(attack)
            with torch.no_grad():
                x = data.to_batch(protected).to(self.components.device)
                cached = data.from_batch(purifier(x, _stream(seed, _ATTACK)))
            data.save_set(folder, names, cached, inputs)
        return cached

    def _purifier(self, attack: str) -> Any:
        """The purifier ``attack`` names, built once a run: the models a spec names (an upscaler, LPIPS) load once,
        not once for every artist, defence and seed. Purifiers keep no state between calls."""
        if attack not in self._purifiers:
            from attacks import parse_spec

            self._purifiers[attack] = parse_spec(attack, self.components)
        return self._purifiers[attack]

    def class_images(self, mimic: MimicSpec, seed: int) -> torch.Tensor | None:
        """Prior-preservation class images from the base model (cached per class prompt, count and seed); None when
        the mimic does not use them (img2img trains nothing)."""
        ft = mimic.finetune
        if ft is None or not ft.prior_preservation:
            return None
        key = f"{ft.class_prompt}|{ft.num_class_images}|{ft.class_inference_steps}"
        folder = self.out / "images" / "_class" / data.slug(key) / f"seed{seed}"
        names = tuple(f"{i:04d}" for i in range(ft.num_class_images))
        inputs = {"model": self.config.model, "dtype": self.config.dtype, "class": key}
        cached = data.load_set(folder, names, inputs)
        if cached is None:
            x = generate(
                self.components,
                ft.class_prompt,
                ft.num_class_images,
                ft.class_inference_steps,
                7.5,
                _stream(seed, _CLASS),
                self.config.generation.batch_size,
            )
            cached = data.from_batch(x)
            data.save_set(folder, names, cached, inputs)
        return data.to_batch(cached)

    def prepare_shared(self, cells: Sequence[Cell]) -> None:
        """Write the caches that cells of different ranks share (artists' clean images, prior-preservation class
        images per seed), so that no two ranks ever write the same file; call on rank 0 before the ranks start."""
        for artist in dict.fromkeys(c.artist for c in cells):
            try:
                self.artist_images(artist)
            except CELL_ERRORS:
                pass  # the cells that need these images fail on their own rank with this error and record it
        for mimic, seed in dict.fromkeys((c.mimic, c.seed) for c in cells):
            try:
                self.class_images(self.mimics[mimic], seed)
            except CELL_ERRORS:
                pass  # as above

    # ------------------------------------------------------------------------------------------------ cells

    def mimic(self, cell: Cell, train: list[np.ndarray]) -> tuple[torch.Tensor, list[str]]:
        """Run the cell's mimic on its training images: generations ``(N, 3, R, R)`` and their prompts."""
        spec = self.mimics[cell.mimic]
        gen_cfg = self.config.generation
        x = data.to_batch(train)
        if spec.kind == "img2img":
            assert spec.strength is not None  # eval.config gives every img2img mimic a strength
            out = img2img(
                self.components,
                x,
                spec.prompt,
                spec.strength,
                gen_cfg.num_inference_steps,
                gen_cfg.guidance_scale,
                _stream(cell.seed, _SAMPLE),
            )
            return out, [spec.prompt] * out.shape[0]
        assert spec.finetune is not None  # and every other mimic a fine-tune
        tuned = finetune(
            self.components,
            x,
            spec.finetune,
            _stream(cell.seed, _FINETUNE),
            class_images=self.class_images(spec, cell.seed),
        )
        sampler = _stream(cell.seed, _SAMPLE)
        images, prompts = [], []
        for prompt in gen_cfg.prompts:
            images.append(
                generate(
                    tuned,
                    prompt,
                    gen_cfg.n,
                    gen_cfg.num_inference_steps,
                    gen_cfg.guidance_scale,
                    sampler,
                    gen_cfg.batch_size,
                )
            )
            prompts += [prompt] * gen_cfg.n
        return torch.cat(images), prompts

    def measure(self, artist: ArtistSpec, images: torch.Tensor, prompts: list[str]) -> dict[str, Any]:
        """Every mimicry metric of one cell's generations.

        Style similarity and the Frechet distance use the judge's features when there is a judge, else CLIP's.
        """
        row: dict[str, Any] = {"n_generated": int(images.shape[0]), "sharpness": M.sharpness(images)}
        if self.judge is not None:
            # what the judge names the generations: whether a protected mimic paints some other known style
            row["judged_as"] = self.judge.name_counts(images)
            if self._judges(artist):
                assert artist.style is not None  # what _judges checks
                row["success"] = M.judged_share(row["judged_as"], artist.style, self.judge.style_names)
        clip_feats = None
        if self.clip is not None:
            assert self.clip_tokenizer is not None  # _load_clip loads it with the model
            clip_feats = M.clip_image_features(self.clip, images)
            text = M.clip_text_features(self.clip, self.clip_tokenizer, prompts)
            row["clip_score"] = M.clip_score(clip_feats, text)
        if self.judge is not None or self.clip is not None:
            feats = self._features(images) if clip_feats is None or self.judge is not None else clip_feats
            ref = self._reference(artist)
            row["style_similarity"] = M.style_similarity(feats, ref)
            row["fd"] = M.frechet_distance(feats, ref) if feats.shape[0] >= 2 else None
        if row.get("success") is not None:
            row["score"], row["score_name"] = row["success"], "success"
        elif row.get("style_similarity") is not None:
            row["score"], row["score_name"] = row["style_similarity"], "style_similarity"
        return row

    def score(self, artist: ArtistSpec, images: torch.Tensor) -> float | None:
        """``measure``'s ``score`` of these generations alone: the judge's success where it knows the artist's
        style, else the style similarity, None with neither a judge nor CLIP."""
        if self._judges(artist):
            assert self.judge is not None and artist.style is not None  # what _judges checks
            return M.judged_share(self.judge.name_counts(images), artist.style, self.judge.style_names)
        if self.judge is None and self.clip is None:
            return None
        return M.style_similarity(self._features(images), self._reference(artist))

    def _judges(self, artist: ArtistSpec) -> bool:
        """Whether the judge can say if generations are in this artist's style."""
        return self.judge is not None and artist.style is not None and artist.style in self.judge.style_names

    def _reference(self, artist: ArtistSpec) -> torch.Tensor:
        """Features of the artist's held-out images, computed once an artist."""
        if artist.name not in self._ref_feats:
            heldout = data.to_batch(self.artist_images(artist.name).heldout)
            self._ref_feats[artist.name] = self._features(heldout)
        return self._ref_feats[artist.name]

    def output_scores(self, cell: Cell, images: torch.Tensor) -> dict[str, float | None]:
        """The cell's mimicry score after each of the config's ``output_attacks`` cleans its generations."""
        artist = self.artists[cell.artist]
        scores: dict[str, float | None] = {}
        for spec in self.config.output_attacks:
            with torch.no_grad():
                cleaned = self._purifier(spec)(images.to(self.components.device), _stream(cell.seed, _OUTPUT))
            scores[spec] = self.score(artist, cleaned)
        return scores

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if self.judge is not None:
            return self.judge.features(images).float().cpu()
        assert self.clip is not None  # callers ask for features only when there is a judge or CLIP
        return M.clip_image_features(self.clip, images)

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        start = time.perf_counter()
        spec = self.defences.get(cell.defence)
        row: dict[str, Any] = {
            "artist": cell.artist,
            "defence": cell.defence,
            "attack": cell.attack,
            "mimic": cell.mimic,
            "seed": cell.seed,
            "mimic_kind": self.mimics[cell.mimic].kind,
            "method": None if spec is None else (spec.method or "precomputed"),
            "eps": None if spec is None else spec.eps,
        }
        train = self.attacked(cell.artist, cell.defence, cell.attack, cell.seed)
        vis = self._visibility.get((cell.artist, cell.defence, cell.seed))
        if vis is not None:
            row.update({f"vis_{k}": v for k, v in vis.items()})
        images, prompts = self.mimic(cell, train)
        row.update(self.measure(self.artists[cell.artist], images, prompts))
        if self.config.output_attacks:
            row["output_scores"] = self.output_scores(cell, images)
        grid = data.from_batch(images[:GRID_IMAGES])
        path = self.out / "generations" / f"{data.slug(cell.key)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_strip(path, grid)
        row["generations"] = str(path.relative_to(self.out))
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["device"] = str(self.components.device)
        row["status"] = "ok"
        return row


def _save_strip(path: Path, images: list[np.ndarray]) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.concatenate(images, axis=1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _load_rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in _load_rows_list(path)}


def _archive_id(row: dict[str, Any]) -> str:
    return row["key"] + " " + json.dumps(row.get("inputs"), sort_keys=True)


def _load_archive(path: Path, prints: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The archived rows of the cells in ``prints`` (key -> fingerprint) finished with the same fingerprint."""
    archived = {_archive_id(r): r for r in _load_rows_list(path)}
    wanted = {k: archived.get(_archive_id({"key": k, "inputs": inputs})) for k, inputs in prints.items()}
    return {k: r for k, r in wanted.items() if r is not None}


def _load_rows_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except ValueError as err:
        raise ConfigError(
            f"cannot resume from {path}: not valid JSON ({err}); delete it, or start afresh with --no-resume "
            "(resume=False in Python)."
        ) from None


def _update_archive(out_dir: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Add the finished (status ok) ``rows`` to the folder's archive, replacing rows of the same key and inputs."""
    path = out_dir / ARCHIVE
    archived = {_archive_id(r): r for r in _load_rows_list(path)}
    archived.update({_archive_id(r): r for r in rows.values() if r.get("status") == "ok"})
    atomic_write_json(path, {"cells": list(archived.values())})


def _csv_value(v: Any) -> Any:
    """A cell of the CSV: empty for not measured; a mapping (the judge's namings, the scores after each output
    attack) as JSON."""
    if v is None:
        return ""
    return json.dumps(v) if isinstance(v, dict) else v


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The tidy table: one row per cell, ``CSV_COLUMNS`` in order (empty = not measured)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def run(
    config_path_or_name: str | Path | EvalConfig,
    out_dir: Path,
    resume: bool = True,
    *,
    artists: Sequence[str | Path] = (),
    device: str | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> int:
    """Run an evaluation grid and write its results and report into ``out_dir``.

    Args:
        config_path_or_name: a TOML file, a built-in config name (``quick``, ``paper-style``, ``paper-face``), or
            an ``EvalConfig`` already loaded.
        out_dir: the output folder (created).
        resume: skip the cells ``out_dir/results.json`` records as finished (failed cells run again); False
            starts the grid afresh (cached images are still reused: they depend only on config and seed).
        artists: folders of images that replace the config's artists (``n_train`` kept from the config), e.g.
            for ``paper-style``.
        device: overrides the config's ``device`` ("auto", "cpu", "cuda", ...).
        seeds: override the config's ``seeds``. A cell's fingerprint holds its own seed, not the config's list, so
            the cells an earlier run finished in ``out_dir`` for any of these seeds are reused.
        progress: show rich progress bars (on stderr).
        log: called with one line per finished or failed cell (prefixed ``rank R/N:`` in a group); default prints
            through rich.

    Under ``torchrun`` / ``accelerate launch`` every rank calls this with the same arguments; each computes its
    share of the cells, exactly as a single process would, and rank 0 writes the merged outputs (see
    ``cloak.distributed``).

    Returns:
        The exit code: 0 when every cell finished, 1 when some failed (see ``failures.log``); the same on every
        rank.

    Raises:
        ConfigError: a bad config (the message names the file and key) or an unreadable ``results.json``.
        ModelNotFoundError: the model, judge or CLIP weights cannot be loaded.
    """
    from rich.console import Console

    config = config_path_or_name if isinstance(config_path_or_name, EvalConfig) else load_config(config_path_or_name)
    if artists:
        config = with_artist_folders(config, tuple(artists))
    if seeds is not None:
        config = with_seeds(config, tuple(seeds))
    check_input_files(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, soft_wrap=True)  # no hard wrap at 80 columns when stderr is a log file
    log = log or console.print
    with session(device or config.device) as node:  # under torchrun / accelerate launch: this rank's cells
        started = _now()
        cells = plan(config)
        prints = {c.key: cell_fingerprint(config, c) for c in cells}
        done = _finished_rows(out_dir, prints, node) if resume else {}
        rows = {k: r for k, r in done.items() if r.get("status") == "ok" and r.get("inputs") == prints.get(k)}
        barrier()  # every rank has read what is done before any rank writes a checkpoint
        run_info = {
            "config": config.to_dict(),
            "config_file": config.source,
            "versions": versions(),
            "git": git_revision(),
            "seeds": list(config.seeds),
            "started": started,
            "cells": len(cells),
            "resumed_cells": len(rows),
            "torch_threads": torch.get_num_threads(),
            "world_size": node.world_size,
        }
        if node.is_main:
            atomic_write_json(out_dir / "run.json", run_info)
        grid_run = _GridRun(config, out_dir, cells, prints, node, run_info, console, log, progress)
        try:
            failed = grid_run.run(rows, done)
        except Exception as err:
            # run.json already names this config: say it failed, so that it is not read as describing the results
            # an earlier run left in the folder
            if node.is_main:
                run_info.update(failed=_now(), error=f"{type(err).__name__}: {err}")
                atomic_write_json(out_dir / "run.json", run_info)
            raise
    return 1 if failed else 0


def _finished_rows(out_dir: Path, prints: dict[str, str], node: Node) -> dict[str, dict[str, Any]]:
    """The rows earlier runs left in ``out_dir``: results.json, the part files of a stopped group, and the archive
    of the cells any config finished there (those whose inputs match ``prints``)."""
    done = _load_rows(out_dir / "results.json")
    for part in sorted(out_dir.glob(PART_GLOB)):  # rows a stopped multi-process run checkpointed
        done.update(_load_rows(part))
    done.update(_load_archive(out_dir / ARCHIVE, prints))
    if node.is_main:  # a folder written before the archive existed: keep its results.json's cells too
        _update_archive(out_dir, done)
    return done


@dataclass
class _GridRun:
    """One call of :func:`run` on one rank, once it knows its cells and what earlier runs finished."""

    config: EvalConfig
    out_dir: Path
    cells: list[Cell]
    prints: dict[str, str]
    node: Node
    run_info: dict[str, Any]
    console: Any  # rich's Console, on stderr
    log: Callable[[str], None]
    progress: bool

    def run(self, rows: dict[str, dict[str, Any]], done: dict[str, dict[str, Any]]) -> int:
        """Run this rank's share of the cells not in ``rows`` (which gains them); rank 0 merges every rank's rows
        and writes the outputs. Returns the number of failed cells (the same on every rank)."""
        node = self.node
        todo = [c for c in self.cells if c.key not in rows]
        grid = _Grid(self.config, self.out_dir, node.device, shared_writer=node.is_main) if todo else None
        if grid is not None and node.world_size > 1:
            if node.is_main:
                grid.prepare_shared(todo)
            barrier()  # the shared caches are written before any other rank reads them
        self.run_info["device"] = str(grid.components.device) if grid is not None else done_device(done)
        try:
            new_rows, failures = self._run_share(grid, todo, rows)
        except KeyboardInterrupt:
            if node.world_size == 1 and rows:  # the finished cells are in results.json: write their tables too
                _write_outputs(self.out_dir, self.config, self.cells, rows, self.run_info, interrupted=_now())
            raise
        gathered = gather((new_rows, failures))
        if node.is_main:
            assert gathered is not None  # rank 0 gathers every rank's
            for their_rows, their_failures in gathered[1:]:
                rows.update(their_rows)
                failures += their_failures
            if failures:
                atomic_write_bytes(self.out_dir / "failures.log", "\n".join(failures).encode("utf-8"))
            _write_outputs(
                self.out_dir, self.config, self.cells, rows, self.run_info, finished=_now(), failed_cells=len(failures)
            )
            for stale in self.out_dir.glob(PART_GLOB):  # merged into results.json
                stale.unlink()
        (failed,) = all_sum([len(failures) if node.is_main else 0])  # also holds every rank until rank 0 wrote
        return failed

    def _run_share(
        self, grid: _Grid | None, todo: list[Cell], rows: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Run this rank's share of ``todo`` under one progress bar (rank 0's: the other ranks log their lines
        only), checkpointing after each cell. Returns the new rows and a traceback per failed cell."""
        node = self.node
        mine = share_cells(todo, node)
        new_rows: dict[str, dict[str, Any]] = {}
        failures: list[str] = []
        with progress_bar(self.console, disable=not self.progress or not node.is_main) as bar:
            resumed = len(self.cells) - len(todo)
            task = bar.add_task(f"{node.label}cells", total=resumed + len(mine), completed=resumed)
            for cell in mine:
                assert grid is not None  # there is a grid whenever there are cells to run
                what = f"{cell.artist} {cell.defence} {cell.attack} {cell.mimic} s{cell.seed}"
                bar.update(task, description=escape(what))
                row, failure = self._run_cell(grid, cell)
                if failure:
                    failures.append(failure)
                rows[cell.key] = new_rows[cell.key] = row
                self._checkpoint(rows, new_rows)
                bar.advance(task)
        return new_rows, failures

    def _run_cell(self, grid: _Grid, cell: Cell) -> tuple[dict[str, Any], str | None]:
        """One cell's row, and its traceback if it failed (a failed cell is logged and the grid goes on)."""
        failure = None
        try:
            row = grid.run_cell(cell)
        except CELL_ERRORS as err:
            message = f"{type(err).__name__}: {err}"
            row = _failed_row(cell, message)
            failure = f"== {cell.key}\n{traceback.format_exc()}"
            self.log(f"{self.node.label}[red]failed[/red] {escape(cell.key)}: {escape(message)}")
        else:
            self.log(f"{self.node.label}done {escape(cell.key)}: score {row.get('score')} in {row['seconds']} s")
        row["key"], row["inputs"] = cell.key, self.prints[cell.key]
        return _finite(row), failure

    def _checkpoint(self, rows: dict[str, dict[str, Any]], new_rows: dict[str, dict[str, Any]]) -> None:
        """A single process checkpoints into results.json; in a group each rank writes its own part file, merged
        by rank 0 at the end (and read back by a resumed run if the group was stopped)."""
        if self.node.world_size == 1:
            _write_results(self.out_dir, self.config, self.cells, rows)
        else:
            part = self.out_dir / f"results.part{self.node.rank}.json"
            atomic_write_json(part, {"config": self.config.name, "cells": list(new_rows.values())})


def _failed_row(cell: Cell, message: str) -> dict[str, Any]:
    return {
        "artist": cell.artist,
        "defence": cell.defence,
        "attack": cell.attack,
        "mimic": cell.mimic,
        "seed": cell.seed,
        "status": "failed",
        "error": message,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_outputs(
    out_dir: Path, config: EvalConfig, cells: list[Cell], rows: dict[str, dict[str, Any]], run_info: dict[str, Any],
    **stamp: Any,
) -> None:
    """results.json (and its archive), results.csv, run.json with ``stamp`` added, and the report, for ``rows``."""
    from eval.report import write_report

    record_attack_psnr(out_dir, config, cells, rows)
    for row in rows.values():
        # JSON files keep keys sorted, fresh rows keep the config's order: give the tables one order, the config's
        scores = row.get("output_scores")
        if scores:
            row["output_scores"] = {s: scores[s] for s in config.output_attacks if s in scores} | scores
    ordered = [rows[c.key] for c in cells if c.key in rows]
    summary = _write_results(out_dir, config, cells, rows)
    write_csv(out_dir / "results.csv", ordered)
    run_info.update(stamp)
    atomic_write_json(out_dir / "run.json", run_info)
    write_report(out_dir, config, ordered, summary, run_info)


def record_attack_psnr(
    out_dir: Path, config: EvalConfig, cells: list[Cell], rows: dict[str, dict[str, Any]]
) -> None:
    """Give each purified cell without one its ``attack_psnr``: what the purification cost the images it was given
    (their PSNR to its input, dB), from the image sets cached in ``out_dir``. A purification that stops a cloak by
    wrecking the paintings is no attack an artist need fear; the summary shows this beside its scores. Cells that
    runners from before this figure finished get it too; one whose sets are gone or stale keeps none."""
    names = {}  # per artist: the training images' names, as the clean set holds them
    for artist in {c.artist for c in cells}:
        clean, _ = image_set(config, out_dir, artist)
        names[artist] = tuple(sorted(p.stem for p in clean.glob("*.png")))
    for cell in cells:
        row = rows.get(cell.key)
        if row is None or cell.attack == NO_ATTACK or row.get("attack_psnr") is not None:
            continue
        folder, inputs = image_set(config, out_dir, cell.artist, cell.defence, seed=cell.seed)
        given = data.load_set(folder, names[cell.artist], inputs)
        folder, inputs = image_set(config, out_dir, cell.artist, cell.defence, cell.attack, cell.seed)
        purified = data.load_set(folder, names[cell.artist], inputs)
        if names[cell.artist] and given is not None and purified is not None:
            row["attack_psnr"] = M.visibility(given, purified)["psnr"]


def done_device(rows: dict[str, dict[str, Any]]) -> str | None:
    """The device recorded by the run that finished ``rows`` (a resumed run with nothing left to do)."""
    return next((r["device"] for r in rows.values() if r.get("device")), None)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity -> None (strict JSON; e.g. the PSNR of an unchanged image)."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}


def _write_results(out_dir: Path, config: EvalConfig, cells: list[Cell], rows: dict[str, dict[str, Any]]) -> dict:
    ordered = [rows[c.key] for c in cells if c.key in rows]
    summary = summarise(ordered)
    atomic_write_json(out_dir / "results.json", {"config": config.name, "cells": ordered, "summary": summary})
    _update_archive(out_dir, rows)
    return summary
