"""Purify image files: the library side of ``cloak purify INPUT... --out DIR --attack SPEC [--model] [--seed]``.

Lets artists (and evaluators) test a cloak themselves: every input is purified by every spec and saved as a PNG
next to the others, flat in ``out_dir``::

    <out_dir>/<stem>.<spec slug>.png      e.g. painting.jpeg.png, painting.jpeg-quality=50.png,
                                               painting.blur-sigma=2+noise.png
    <out_dir>/purify.json                 every output in the folder (this run's and earlier runs'), with the
                                          spec, seed, model and parameters it was made with

The slug is the canonical spec (`attacks.base.Purifier.spec`, defaults left out) with ``:`` and ``,`` turned
into ``-``. Writes are atomic; inputs are never overwritten (an output path that is an input is refused before
anything runs). Alpha, ICC profile and EXIF are written back as loaded; a greyscale artwork is saved greyscale
(the purified channels are averaged).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from attacks import needs_model, parse_spec
from cloak.errors import CloakError, ConfigError
from cloak.imageio import atomic_write_json, from_tensor, load_artwork, save_artwork, to_tensor

MODEL_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


def spec_slug(spec: str) -> str:
    """A file-name-safe form of a canonical spec: ``jpeg:quality=50,x=1`` -> ``jpeg-quality=50-x=1``."""
    return spec.replace(":", "-").replace(",", "-")


def output_path(out_dir: Path, input_path: Path, spec: str) -> Path:
    """Where the purified copy of ``input_path`` by ``spec`` (canonical) is written."""
    return out_dir / f"{input_path.stem}.{spec_slug(spec)}.png"


def _earlier_outputs(path: Path) -> list[dict]:
    """The output entries of an earlier ``purify.json`` whose files still exist (none if it is unreadable)."""
    try:
        outputs = json.loads(path.read_text(encoding="utf-8")).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [o for o in outputs if isinstance(o, dict) and Path(str(o.get("output", ""))).is_file()]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def purify_files(
    inputs: list[str],
    out_dir: Path,
    specs: list[str],
    model: str | None,
    seed: int,
    device: str,
    *,
    echo: Callable[[str], None] = _stderr,
) -> int:
    """Purify every input with every spec and save the results (see the module docstring for names).

    Each (file, spec) pair gets its own generator seeded with ``seed``, so an output does not depend on which
    other files or specs were given.

    Args:
        inputs: image files (anything `cloak.imageio.load_artwork` reads).
        out_dir: output folder, created if missing.
        specs: purifier specs (`attacks.parse_spec`), at least one.
        model: model for diffusion purifiers (`cloak.models.load_components`: "testbed", a hub id, a folder, a
            file); loaded only when a spec needs it.
        seed: seed of every random draw.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps"; the diffusion purifiers run there.
        echo: receives one progress or error line per event (default: standard error).

    Returns:
        0 when every file was purified by every spec, 1 when some file failed (each failure is echoed with its
        file name; the others are still written).

    Raises:
        ConfigError: no spec, a bad spec, a diffusion spec without ``model``, two inputs with the same stem, an
            output that would overwrite an input.
        ModelNotFoundError: the model cannot be loaded.
    """
    if not specs:
        raise ConfigError("give at least one --attack SPEC, e.g. --attack jpeg:quality=75.")
    components = None
    if any(needs_model(s) for s in specs):
        if model is None:
            names = ", ".join(s for s in specs if needs_model(s))
            raise ConfigError(f"the attack(s) {names} need a diffusion model; pass --model testbed or a SD-1.x model.")
        from cloak.models import load_components

        components = load_components(model, MODEL_PARTS, device=device)
    purifiers = list({p.spec: p for p in (parse_spec(s, components) for s in specs)}.values())  # each spec once

    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems and stems[path.stem].resolve() != path.resolve():
            raise ConfigError(
                f"{stems[path.stem]} and {path} share the name {path.stem!r}: their outputs would collide in "
                f"{out_dir}; purify them into separate --out folders."
            )
        stems[path.stem] = path
    resolved_inputs = {p.resolve() for p in paths}
    for path in paths:
        for purifier in purifiers:
            target = output_path(out_dir, path, purifier.spec)
            if target.resolve() in resolved_inputs:
                raise ConfigError(f"{target} is an input file and would be overwritten; choose another --out folder.")

    out_dir.mkdir(parents=True, exist_ok=True)
    # purify.json describes every output in the folder: earlier runs' entries are kept, unless this run rewrote
    # their file. Each entry carries its own spec, seed and model.
    earlier = _earlier_outputs(out_dir / "purify.json")
    record: dict = {"specs": [p.spec for p in purifiers], "seed": seed, "model": model, "outputs": earlier}
    failures = 0
    for path in paths:
        try:
            artwork = load_artwork(path)
        except CloakError as err:
            echo(f"error: {err}")
            failures += 1
            continue
        x = to_tensor(artwork.rgb)
        for purifier in purifiers:
            target = output_path(out_dir, path, purifier.spec)
            generator = torch.Generator().manual_seed(seed)
            params = purifier.sample(generator)
            try:  # one file a purifier cannot take (e.g. smaller than its filter) does not stop the others
                y = purifier.apply(x, params)
            except (CloakError, RuntimeError, ValueError) as err:
                echo(f"error: {path}: {purifier.spec} cannot be applied to this image "
                     f"({artwork.size[0]}x{artwork.size[1]} px): {err}")
                failures += 1
                continue
            if artwork.grey:
                y = y.mean(dim=1, keepdim=True).expand_as(y)
            try:
                save_artwork(target, from_tensor(y), artwork)
            except OSError as err:
                echo(f"error: cannot write {target}: {err}")
                failures += 1
                continue
            record["outputs"] = [o for o in record["outputs"] if o["output"] != str(target)]
            record["outputs"].append(
                {"input": str(path), "output": str(target), "spec": purifier.spec, "params": params, "seed": seed,
                 "model": model}
            )
            echo(f"{path.name} -> {target.name}")
    atomic_write_json(out_dir / "purify.json", record)
    return 1 if failures else 0
