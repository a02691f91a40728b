"""Measure how much of a cloak each purifier removes, and what it costs in image quality.

For a clean image ``x``, its cloaked copy ``x_adv``, the VAE encoder ``E`` (posterior mean, scaled latents) and
a purifier ``P`` whose random draws are shared between the two calls (the same sampled parameters and noise
seed, so the purifier's own randomness is not counted as cloak), with the cloak's latent shift
``d = E(x_adv) - E(x)`` and what is left of it after purification ``r = E(P(x_adv)) - E(P(x))``::

    removed = 1 - <r, d> / ||d||^2         the share of the shift, along its own direction, that is gone
    spread  = ||r|| / ||d||                how far apart the two purified images encode, relative to the shift

``removed`` is 1 when nothing of the cloak's direction is left, 0 when it survives whole (``identity``),
negative when the purifier pushes further along it. It ignores the part of ``r`` orthogonal to ``d``: a
diffusion purifier that redraws two slightly different inputs differently (``spread`` above 1) has not thereby
kept the cloak. A purifier that flattens everything scores 1 too, so the table also gives the price: PSNR (dB,
8-bit) of ``P(x_adv)`` to the clean ``x``. The encoder is what an ``encoder``-method cloak (PhotoGuard-style)
attacks, and what every latent-diffusion fine-tune sees.

``python -m attacks.bench`` runs the table on the testbed (see `testbed_table`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks import parse_spec
from cloak.errors import ConfigError
from cloak.imageio import from_tensor
from cloak.metrics import psnr
from cloak.units import vae_latents, vae_scale_factor

if TYPE_CHECKING:
    from cloak.models import Components

MODEL_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
DEFAULT_SPECS = (
    "identity",
    "jpeg:quality=90",
    "jpeg:quality=75",
    "jpeg:quality=50",
    "webp:quality=75",
    "resize:factor=0.5",
    "crop:fraction=0.1",
    "blur:sigma=1.0",
    "noise:sigma=0.05",
    "median:size=3",
    "bitdepth:bits=4",
    "adverse_cleaner",
    "impress",
    "diffpure:t=0.1",
    "diffpure:t=0.2",
    "gridpure",
    "noisy_upscale",
)


@dataclass(frozen=True)
class BenchRow:
    """One purifier's figures, averaged over the images.

    Attributes:
        spec: the purifier's spec.
        removed: mean share of the cloak's latent shift removed (higher = stronger attack; see the module).
        removed_min: the smallest per-image value (the cloak's best case).
        spread: mean ``||r|| / ||d||`` (see the module).
        psnr: mean PSNR of the purified cloaked image to the clean one, dB on 8-bit pixels (higher = cheaper).
        seconds: mean wall time of one purification of one image, s.
    """

    spec: str
    removed: float
    removed_min: float
    spread: float
    psnr: float
    seconds: float


def _latent(components: Components, x: Tensor) -> Tensor:
    vae = components.require("vae")
    f = vae_scale_factor(vae)
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (-w) % f, 0, (-h) % f), mode="replicate").to(components.device, components.dtype)
    with torch.no_grad():
        return vae_latents(vae, x).float()


def shift_removed(
    components: Components, clean: Tensor, cloaked: Tensor, purifier: Any, generator: torch.Generator
) -> tuple[float, float, Tensor]:
    """``removed`` and ``spread`` for one image pair, and the purified cloaked image (module docstring).

    Args:
        components: needs vae (and what the purifier needs).
        clean: ``(1, 3, H, W)`` in [0, 1].
        cloaked: same shape, the cloaked copy.
        purifier: a `attacks.base.Purifier`.
        generator: draws the purifier's parameters once, for both images.

    Returns:
        ``(removed, spread, purified_cloaked)``.
    """
    d = (_latent(components, cloaked) - _latent(components, clean)).flatten().double()
    if not d.any():
        raise ConfigError("the cloaked image encodes exactly like the clean one: there is no latent shift to remove.")
    params = purifier.sample(generator)
    purified_adv = purifier.apply(cloaked, params)
    purified_clean = purifier.apply(clean, params)
    r = (_latent(components, purified_adv) - _latent(components, purified_clean)).flatten().double()
    removed = 1 - float(r @ d) / float(d @ d)
    return removed, float(r.norm() / d.norm()), purified_adv


def bench(
    components: Components,
    clean: Sequence[Tensor],
    cloaked: Sequence[Tensor],
    specs: Sequence[str] = DEFAULT_SPECS,
    *,
    seed: int = 0,
    **inject: Any,
) -> list[BenchRow]:
    """Measure every purifier of ``specs`` on the image pairs.

    Args:
        components: model parts (vae always; the diffusion purifiers need the rest).
        clean: ``(1, 3, H, W)`` images in [0, 1].
        cloaked: their cloaked copies, same shapes.
        specs: purifier specs (`attacks.parse_spec`).
        seed: seeds each purifier's generator (the same for every spec).
        **inject: ``prompt``, ``lpips``, ``upscaler`` for `attacks.parse_spec`.

    Returns:
        One `BenchRow` per spec, in order.
    """
    if len(clean) != len(cloaked) or not clean:
        raise ConfigError(f"need as many cloaked as clean images (at least one), got {len(clean)} and {len(cloaked)}.")
    rows = []
    for spec in specs:
        purifier = parse_spec(spec, components, **inject)
        generator = torch.Generator().manual_seed(seed)
        removed, spread, quality, seconds = [], [], [], []
        for x, x_adv in zip(clean, cloaked, strict=True):
            start = time.perf_counter()
            value, ratio, purified = shift_removed(components, x, x_adv, purifier, generator)
            seconds.append((time.perf_counter() - start) / 2)  # two purifications per pair
            removed.append(value)
            spread.append(ratio)
            quality.append(psnr(from_tensor(x), from_tensor(purified)))
        rows.append(
            BenchRow(
                spec=purifier.spec,
                removed=sum(removed) / len(removed),
                removed_min=min(removed),
                spread=sum(spread) / len(spread),
                psnr=sum(quality) / len(quality),
                seconds=sum(seconds) / len(seconds),
            )
        )
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table of the rows, strongest attack (most shift removed) first."""
    lines = [
        "| attack | shift removed (mean) | (worst image) | spread | PSNR to clean, dB | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r.removed):
        quality = "inf" if math.isinf(r.psnr) else f"{r.psnr:.1f}"
        lines.append(
            f"| `{r.spec}` | {r.removed:.3f} | {r.removed_min:.3f} | {r.spread:.2f} | {quality} | {r.seconds:.2f} |"
        )
    return "\n".join(lines)


def testbed_table(
    n_images: int = 4,
    size: int = 64,
    eps: float = 8.0,
    steps: int = 50,
    seed: int = 0,
    specs: Sequence[str] = DEFAULT_SPECS,
    components: Components | None = None,
) -> str:
    """Cloak held-out testbed paintings with the ``encoder`` method, then bench the purifiers on them.

    Args:
        n_images: paintings, one per held-out style in turn (evaluation seeds).
        size: painting side, px (the testbed's resolution is 64).
        eps: cloak budget, 0-255 units.
        steps: cloak PGD steps.
        seed: seeds paintings' choice, cloaks and purifiers.
        specs: purifier specs.
        components: the model to cloak against and purify with; default: the testbed, loaded on the CPU.

    Returns:
        The Markdown table, with a header line giving the setting.
    """
    from cloak.imageio import to_tensor
    from cloak.models import load_components
    from cloak.protect import CloakConfig, Cloaker
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, paint

    if components is None:
        components = load_components(
            "testbed", ["vae", "unet", "text_encoder", "tokenizer", "scheduler"], device="cpu"
        )
    cloaker = Cloaker(components, CloakConfig(method="encoder", eps=eps, steps=steps))
    clean, cloaked = [], []
    for i in range(n_images):
        image = paint(HELD_OUT[i % len(HELD_OUT)], EVAL_SEED_OFFSET + seed + i, size).image
        rgb = (image * 255).round().astype("uint8")
        clean.append(to_tensor(rgb))
        cloaked.append(to_tensor(cloaker.protect(rgb, seed=seed + i).image))
    rows = bench(components, clean, cloaked, specs, seed=seed)
    header = (
        f"Model {components.name!r}, {n_images} held-out paintings of {size}x{size} px, `encoder` cloak at "
        f"{eps:g}/255 with {steps} steps, purifier seed {seed}."
    )
    return header + "\n\n" + format_table(rows)


if __name__ == "__main__":
    print(testbed_table())
