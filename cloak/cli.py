"""The ``cloak`` command line: a thin typer layer over the library.

Heavy imports (torch, diffusers) happen inside the commands, so ``cloak --help`` is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from cloak import __version__
from cloak.testbed.cli import app as testbed_app

if TYPE_CHECKING:  # annotations only: `cloak --help` imports neither torch nor numpy
    import numpy as np
    import torch
    from rich.progress import TaskID

    from cloak.protect import CloakConfig

# Kept as literals (not imported from cloak.models and attacks) so that `cloak --help` does not import torch; a test
# keeps PURIFIERS equal to the registry's names.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PURIFIERS = (
    "identity", "jpeg", "webp", "resize", "crop", "blur", "noise", "median", "bitdepth", "adverse_cleaner", "diffpure",
    "gridpure", "noisy_upscale", "impress",
)

app = typer.Typer(
    help="Protect artworks from style mimicry by diffusion models (DreamBooth, LoRA, img2img).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(testbed_app, name="testbed", help="The miniature Stable Diffusion used to test everything offline.")
console = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrapping: paths stay greppable


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cloak {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Protect artworks from style mimicry by diffusion models."""


def _usage_error(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")  # messages quote TOML tables such as [[defences]]
    return typer.Exit(2)


@app.command()
def methods() -> None:
    """List the protection methods, the presets and the published baselines, one line each."""
    from cloak.methods import METHODS
    from cloak.presets import BASELINES, PRESETS, method_label

    width = max(map(len, [*METHODS, *PRESETS, *BASELINES]))
    typer.echo("methods (--method):")
    for name, cls in METHODS.items():
        typer.echo(f"  {name:<{width}}  {cls.summary}  [needs: {', '.join(sorted(cls.needs))}]")
    typer.echo("presets (--preset):")
    for name, p in PRESETS.items():
        typer.echo(f"  {name:<{width}}  {method_label(p.method, p.options)}, eps {p.eps:g}/255: {p.description}")
    typer.echo("published baselines (--preset, for comparison):")
    for name, p in BASELINES.items():
        typer.echo(f"  {name:<{width}}  {p.method}, eps {p.eps:g}/255, {p.steps} steps [{p.reference}]")


@app.command()
def protect(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the cloaked images and their .cloak.json sidecars."),
    preset: str = typer.Option(
        "default", help="fast | default | strong, or a baseline (see `cloak methods`)."
    ),
    method: str | None = typer.Option(None, help="Protection method (overrides the preset)."),
    eps: float | None = typer.Option(None, help="L-inf budget in 0-255 units, e.g. 8 for 8/255 (overrides preset)."),
    steps: int | None = typer.Option(None, help="Optimiser steps (overrides the preset)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Diffusers model id, local folder, .safetensors file or `testbed`."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    overwrite: bool = typer.Option(False, help="Redo images whose outputs already exist (default: skip them)."),
    fmt: str = typer.Option("png", "--format", help="png (lossless, recommended) | jpeg | webp."),
    target: str | None = typer.Option(
        None, help="Target pattern (stripes|checker|grey) or image, for encoder, mist and sdedit."
    ),
    option: list[str] = typer.Option(
        [], help="A method option KEY=VALUE (repeatable), e.g. --method mist --option semantic=sds- for the hybrid."
    ),
    eot: list[str] = typer.Option([], help="Make the cloak robust to a transform, e.g. jpeg:quality=75 (repeatable)."),
    lpips_bound: float | None = typer.Option(None, help="Also keep LPIPS to the original below this (e.g. 0.05)."),
    min_psnr: float | None = typer.Option(
        None, help="Also keep PSNR to the original at or above this many dB (e.g. 35; overrides the preset)."
    ),
    smooth: float | None = typer.Option(
        None, help="Low-pass the cloak: Gaussian sigma, px as the model sees the image (e.g. 0.7; overrides preset)."
    ),
    strip_gps: bool = typer.Option(False, help="Remove GPS location tags from the copied EXIF."),
) -> None:
    """Cloak images so that fine-tuning or img2img on them fails to copy the style."""
    from cloak.batch import FORMATS, LOSSY_WARNING
    from cloak.errors import ConfigError
    from cloak.presets import BASELINES, PRESETS, parse_option
    from cloak.protect import CloakConfig

    if preset not in PRESETS and preset not in BASELINES:
        raise _usage_error(
            f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} "
            f"(or a published baseline: {', '.join(BASELINES)})."
        )
    if fmt not in FORMATS:
        raise _usage_error(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    try:
        options = dict(parse_option(item) for item in option)
        if target:
            options["target"] = target
        config = CloakConfig.from_preset(
            preset, method=method, eps=eps, steps=steps, eot=tuple(eot) or None, lpips_bound=lpips_bound,
            min_psnr=min_psnr, smooth=smooth, options=options or None,
        )
    except ConfigError as err:
        raise _usage_error(str(err)) from None
    if target is not None:
        from cloak.targets import check_target

        try:  # the file too, before the model loads
            check_target(target, config.options.get("period", 16))
        except ConfigError as err:
            raise _usage_error(str(err)) from None
    if fmt != "png":
        console.print(f"[yellow]warning:[/yellow] {LOSSY_WARNING.format(fmt=fmt.upper())}")

    _check_out_folder(out, inputs)
    try:
        _protect_all(inputs, out, config, preset, fmt, model, device, seed, overwrite, strip_gps)
    except KeyboardInterrupt:
        console.print("\ninterrupted: the images finished so far are saved (each complete, with its record); run the "
                      "same command again to do the rest.")
        raise typer.Exit(130) from None


def _protect_all(
    inputs: list[str],
    out: Path,
    config: CloakConfig,
    preset: str,
    fmt: str,
    model: str,
    device: str,
    seed: int,
    overwrite: bool,
    strip_gps: bool,
) -> None:
    """The body of ``cloak protect`` once its options are checked; raises typer.Exit with the exit code."""
    import torch

    from cloak.batch import collect_inputs, plan_jobs, run_job, share_jobs
    from cloak.distributed import all_sum, session
    from cloak.errors import ConfigError, ModelNotFoundError
    from cloak.methods import METHODS
    from cloak.models import load_components
    from cloak.progress import progress_bar
    from cloak.protect import Cloaker, slim_for_cloaking

    with session(device) as node:  # under torchrun / accelerate launch: this rank's share; else every file
        pairs, errors, notes = collect_inputs(inputs, exclude=out)
        jobs, plan_errors = plan_jobs(pairs, out, fmt)
        errors += plan_errors
        reported = errors if node.is_main else []  # every rank plans the same; rank 0 reports and counts
        for message in reported:
            console.print(f"[red]FAILED[/red] {escape(message)}")
        for message in notes if node.is_main else []:
            console.print(f"note: {escape(message)}")
        if not jobs:
            if node.is_main:
                console.print("nothing to cloak.")
            raise typer.Exit(1 if errors else 0)
        _check_writable(out)
        mine = share_jobs(jobs, node)

        parts = set(METHODS[config.method].needs)
        try:
            with console.status(f"{node.label}loading {model} ({', '.join(sorted(parts))})..."):
                components = load_components(model, parts, device=node.device)
                lpips_model = _lpips_for(components.device, needed=config.lpips_bound is not None)
                cloaker = Cloaker(components, config, lpips_model=lpips_model if config.lpips_bound else None)
                slim_for_cloaking(components, cloaker)  # the same cloak in 2.2 GiB less for SD-1.5
        except ModelNotFoundError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from None
        except ConfigError as err:
            raise _usage_error(str(err)) from None

        def measure_lpips(a: np.ndarray, b: np.ndarray) -> float:
            from cloak.imageio import to_tensor
            from cloak.metrics import lpips_distance

            assert lpips_model is not None  # run_job is given measure_lpips only when there is a model
            dev = components.device
            return round(lpips_distance(lpips_model, to_tensor(a).to(dev), to_tensor(b).to(dev)), 5)

        # The device type, not its index: a file cloaked on cuda:1 by rank 1 gets the sidecar a single process writes.
        describe = {"preset": preset, "model": model, "device": components.device.type}
        counts = {"done": 0, "skipped": 0, "failed": len(reported)}
        # One live bar per terminal: rank 0's (its share); the other ranks print their lines only.
        with progress_bar(console, disable=not node.is_main) as progress:
            overall = progress.add_task(f"{node.label}images", total=len(mine))
            for job in mine:
                current = progress.add_task(f"  {escape(job.source.name)}", total=config.steps)

                def step(i: int, n: int, loss: float, task: TaskID = current) -> None:
                    progress.update(task, completed=i)

                with torch.inference_mode(False):
                    outcome = run_job(
                        job, cloaker, seed=seed, fmt=fmt, overwrite=overwrite, strip_gps=strip_gps,
                        describe=describe, measure_lpips=measure_lpips if lpips_model is not None else None,
                        callback=step,
                    )
                progress.remove_task(current)
                progress.advance(overall)
                counts[outcome.status] += 1
                if outcome.status == "failed":
                    progress.console.print(f"{node.label}[red]FAILED[/red] {escape(outcome.message)}")
                elif outcome.status == "skipped":
                    progress.console.print(f"{node.label}skipped {escape(str(job.source))}: {escape(outcome.message)}")
                else:
                    r = outcome.record
                    psnr = "unchanged" if r["psnr"] is None else f"PSNR {r['psnr']:.1f} dB"
                    progress.console.print(
                        f"{node.label}[green]done[/green] {escape(str(job.source))} -> {escape(str(job.output))}  "
                        f"L-inf {r['linf']}/255, {psnr}, SSIM {r['ssim']:.3f}, {r['seconds']:.1f} s"
                    )
                    for note in r["notes"]:
                        progress.console.print(f"{node.label}  note: {escape(note)}")
        if node.world_size > 1:
            console.print(f"{node.label}this share: {counts['done']} cloaked, {counts['skipped']} skipped, "
                          f"{counts['failed']} failed.")
        done, skipped, failed = all_sum([counts["done"], counts["skipped"], counts["failed"]])
        if node.is_main:
            console.print(f"{done} cloaked, {skipped} skipped, {failed} failed.")
            if lpips_model is None:
                console.print("(LPIPS not measured: its AlexNet weights are not cached on this machine.)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def purify(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the purified PNGs and purify.json."),
    attack: list[str] = typer.Option(
        ..., help=f"Purifier spec, e.g. jpeg:quality=75 or diffpure:t=0.2 (repeatable); one of {', '.join(PURIFIERS)}."
    ),
    model: str | None = typer.Option(None, help="Model for diffusion purifiers: `testbed`, a model id or folder."),
    seed: int = typer.Option(0, help="Random seed of every draw."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
) -> None:
    """Apply what a mimicker would do to strip a cloak (JPEG, blur, DiffPure, ...), to test a cloak yourself."""
    from attacks.batch import purify_files
    from cloak.batch import collect_inputs
    from cloak.errors import ConfigError, ModelNotFoundError

    pairs, errors, notes = collect_inputs(inputs, exclude=out, skip_copies=False)  # cloaked copies are the point
    for message in errors:
        console.print(f"[red]FAILED[/red] {escape(message)}")
    for message in notes:
        console.print(f"note: {escape(message)}")
    if not pairs:
        raise typer.Exit(1)
    try:
        code = purify_files([str(p) for p, _ in pairs], out, attack, model, seed, device,
                            echo=lambda line: console.print(line, markup=False))
    except ModelNotFoundError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    except ConfigError as err:
        raise _usage_error(str(err)) from None
    raise typer.Exit(1 if errors else code)


@app.command("app")
def web_app(
    model: str = typer.Option(DEFAULT_MODEL, help="Diffusers model id, local folder, .safetensors file or `testbed`."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on; the default keeps the page on this computer."),
    port: int | None = typer.Option(None, help="TCP port (default: gradio's 7860 or the next free one)."),
    share: bool = typer.Option(False, help="Also publish a temporary public link (off unless you ask)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
) -> None:
    """Start the web page for artists (no command line needed once it runs)."""
    from cloak.errors import ConfigError, ModelNotFoundError
    from gradio_app import launch

    try:
        launch(model, host=host, port=port, share=share, device=device)
    except ModelNotFoundError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    except ConfigError as err:
        raise _usage_error(str(err)) from None


@app.command("eval")
def evaluate(
    config: str = typer.Argument(
        ...,
        help="A TOML file or the name of a built-in config (a file in eval/configs, whose header says what it "
        "measures; an unknown name lists them all), e.g. quick, baselines, suite8-default, paper-style.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.csv/json, report.html and run.json."),
    resume: bool = typer.Option(True, help="Skip cells already finished in --out (--no-resume starts afresh)."),
    artist: list[Path] = typer.Option([], help="A folder of images to use as the artist (repeatable)."),
    device: str | None = typer.Option(None, help="Override the config's device (auto | cpu | cuda | mps)."),
    seeds: str | None = typer.Option(
        None,
        help="Override the config's seeds, e.g. 4-7 or 0,2,5. Cells already finished in --out for these seeds "
        "are reused, so --seeds 4-7 extends a 4-seed run and --seeds 0-7 then reports all eight.",
    ),
) -> None:
    """Fine-tune mimics on clean, cloaked and purified images and report how much protection survives."""
    from cloak.errors import ConfigError, ModelNotFoundError
    from eval.config import parse_seeds
    from eval.runner import run

    if out.exists() and not out.is_dir():
        raise _usage_error(f"--out {out} is a file; give a folder for the results.")
    try:
        chosen = parse_seeds(seeds) if seeds is not None else None
        code = run(config, out, resume=resume, artists=artist, device=device, seeds=chosen)
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: every finished cell is saved in {escape(str(out))} (results.json, and its "
                      "tables); run the same command again to go on from there.")
        raise typer.Exit(130) from None
    except ModelNotFoundError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    except ConfigError as err:
        raise _usage_error(str(err)) from None
    raise typer.Exit(code)


def _check_out_folder(out: Path, inputs: list[str]) -> None:
    """Refuse, before any work, an ``--out`` that cannot take the outputs: a file, or an input folder."""
    if out.exists() and not out.is_dir():
        raise _usage_error(f"--out {out} is a file; give a folder for the cloaked copies.")
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == out.resolve():
            raise _usage_error(
                f"--out {out} is the input folder itself: the cloaked copies would sit among the "
                f"originals. Give a separate folder, e.g. --out {out.resolve().name}-protected"
            )


def _check_writable(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before the model loads; leave no folder behind for it."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # innermost first; run_job makes them when it writes
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".cloak-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # under torchrun another rank may be probing it too
            for folder in made:
                folder.rmdir()
    except OSError as err:
        raise _usage_error(
            f"cannot write into --out {out} ({err.strerror or err}); choose a folder you can write to."
        ) from None


def _lpips_for(device: torch.device, *, needed: bool) -> torch.nn.Module | None:
    """LPIPS for the budget (downloads its weights if needed) or, when cached, for the sidecar's metric."""
    from cloak.errors import ModelNotFoundError
    from cloak.models import load_lpips

    if needed:
        return load_lpips(device, download=True)
    try:
        return load_lpips(device, download=False)
    except ModelNotFoundError:
        return None


def main() -> None:
    """Console-script entry point."""
    app()
