"""`cloak testbed ...`: rebuild the miniature Stable Diffusion and measure its gates.

Thin typer layer; torch and diffusers are imported inside the commands so `cloak --help` stays instant.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="The miniature Stable Diffusion used to test everything offline.")


def _fail(message: object, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the exit to raise (2: bad arguments, 1: could not be done)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} is a file; give a folder.")


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="Folder to write the model (diffusers layout) and judge/ into."),
    seed: int = typer.Option(0, help="Master seed; the same seed rebuilds the same weights."),
    micro: bool = typer.Option(False, "--micro", help="A tiny build (under a minute) that exercises every step."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads; 0 keeps torch's default."),
    vae_from: str | None = typer.Option(
        None, help="Reuse this build's VAE and judge (`testbed` or a folder): train only a second UNet (transfer)."
    ),
) -> None:
    """Rebuild the testbed from scratch: procedural artists -> VAE -> judge -> text encoder + UNet."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cloak.errors import CloakError
    from cloak.testbed.build import build as run_build
    from cloak.testbed.build import config_for

    _check_out(out)
    if vae_from is not None and vae_from != "testbed" and not Path(vae_from).is_dir():
        raise _fail(f"--vae-from {vae_from}: no such folder (give `testbed` or a folder written by `build`).")
    if threads:
        torch.set_num_threads(threads)
    console = Console()
    cfg = config_for(micro, seed)
    tasks: dict[str, TaskID] = {}
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<6}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)
            if not console.is_terminal and (done % max(total // 50, 1) == 0 or done == total):
                # a log file gets plain lines instead of a live bar
                console.print(f"{stage} {done}/{total} at {time.perf_counter() - start:.0f} s", highlight=False)

        try:
            record = run_build(out, cfg, progress, vae_from=vae_from)
        except (CloakError, OSError) as err:
            raise _fail(err, code=1) from None
    elapsed = time.perf_counter() - start
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in record["seconds"].items() if k != "total")
    console.print(f"built {out} in {elapsed / 60:.1f} min ({stages}); {torch.get_num_threads()} threads")


@app.command()
def check(
    model: str = typer.Option("testbed", help="`testbed` (the shipped weights) or a folder written by `build`."),
    seed: int = typer.Option(0, help="Seed of every draw in the check."),
    quick: bool = typer.Option(False, "--quick", help="Fewer images and steps: a smoke run, not the gate figures."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the gates and per-style figures here."),
    styles: str = typer.Option("", help="Comma-separated held-out styles to DreamBooth (default: all held out)."),
) -> None:
    """Measure and print the testbed's gates (VAE PSNR, judge accuracy, base-model fidelity, DreamBooth)."""
    from rich.console import Console
    from rich.table import Table

    from cloak.errors import CloakError, ModelNotFoundError
    from cloak.imageio import atomic_write_json
    from cloak.testbed.check import run_check

    if json_out is not None and not json_out.parent.is_dir():  # checked now, not after minutes of measuring
        raise _fail(f"--json {json_out}: the folder {json_out.parent} does not exist.")
    console = Console()
    try:
        report = run_check(model, seed=seed, quick=quick, log=console.print, held_out=styles)
    except ModelNotFoundError as err:
        raise _fail(err, code=1) from None
    except CloakError as err:
        raise _fail(err) from None
    table = Table(title=f"testbed gates ({model})")
    for col in ("gate", "measured", "target", "pass"):
        table.add_column(col)
    for gate in report.gates:
        table.add_row(gate.name, gate.measured, gate.target, "yes" if gate.passed else "NO")
    console.print(table)
    if json_out is not None:
        atomic_write_json(json_out, {"gates": [asdict(g) for g in report.gates], **report.figures})
    if not all(g.passed for g in report.gates):
        raise typer.Exit(code=1)


@app.command()
def paint(
    style: str = typer.Argument(..., help="A testbed style, e.g. `marbling` (an unknown name lists them all)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the PNGs into (created if missing)."),
    n: int = typer.Option(8, "--n", min=1, help="How many paintings."),
    seed: int = typer.Option(0, min=0, help="Seed of the first painting; painting i uses seed + i."),
    size: int = typer.Option(64, min=32, help="Side in px (the testbed's textures are designed for 64)."),
) -> None:
    """Paint a procedural artist's works into a folder: artworks to try `cloak protect` on offline, or a target image.

    Files are named `<style>-<seed>.png`; an existing file is never written over (the command stops before writing
    anything). Seeds from 1,000,000 up are the ones `cloak eval` paints; the testbed was trained on lower ones of the
    styles it has seen.
    """
    import io

    import numpy as np
    from PIL import Image

    from cloak.errors import ConfigError
    from cloak.imageio import atomic_write_bytes
    from cloak.testbed.artists import paint as paint_one
    from cloak.testbed.artists import style_index

    try:
        style_index(style)
    except ConfigError as err:
        raise _fail(err) from None
    _check_out(out)
    stem = style.replace(" ", "-")
    paths = [out / f"{stem}-{seed + i}.png" for i in range(n)]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise _fail(f"{existing[0]} exists; nothing written (choose another --out or --seed).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            rgb = (paint_one(style, seed + i, size).image * 255).round().astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise _fail(f"cannot write into {out} ({err.strerror or err}).", code=1) from None
    typer.echo(f"wrote {n} {style} painting(s), {size}x{size} px, to {out}")


@app.command()
def judge(
    folders: list[Path] = typer.Argument(..., help="Folders of images, one painting a file (not searched deeper)."),
    style: str | None = typer.Option(None, "--style", help="Also print the share named as this testbed style."),
) -> None:
    """Name each image's style with the testbed's judge, the way `cloak eval` scores a mimic's generations.

    Prints, for each folder, how many images the judge names as each style (most first) and, with `--style`, the
    share named as that style. An unreadable file is reported and skipped; the others are still judged.
    """
    from cloak.errors import ConfigError, ImageError
    from cloak.imageio import SUPPORTED_SUFFIXES, load_artwork, to_tensor
    from cloak.testbed.artists import style_index
    from cloak.testbed.judge import load_judge, most_first

    if style is not None:
        try:
            style_index(style)
        except ConfigError as err:
            raise _fail(err) from None
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        raise _fail(f"{missing[0]} is not a folder.")
    model = load_judge()
    failed = False
    for folder in folders:
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        counts: dict[str, int] = {}
        for path in files:
            try:
                rgb = load_artwork(path).rgb
            except ImageError as err:
                typer.echo(f"skipped: {err}", err=True)
                failed = True
                continue
            for name, k in model.name_counts(to_tensor(rgb)).items():
                counts[name] = counts.get(name, 0) + k
        n = sum(counts.values())
        if n == 0:
            typer.echo(f"{folder}: no readable images ({', '.join(sorted(SUPPORTED_SUFFIXES))})")
            failed = True
            continue
        named = ", ".join(f"{k} {v}" for k, v in most_first(counts).items())
        share = f"; named {style}: {counts.get(style, 0) / n:.2f}" if style is not None else ""
        typer.echo(f"{folder}: {n} image(s): {named}{share}")
    if failed:
        raise typer.Exit(code=1)
