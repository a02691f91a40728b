"""Purification attacks: everything a mimicker does to an image to strip a cloak.

Every purifier is a pure function plus a thin `Purifier` class (see `attacks.base`), registered in `ATTACKS`
under its spec name. Specs use the grammar of `cloak.specs`::

    jpeg:quality=75                     one purifier with its parameters
    jpeg:quality=50..90                 a range, drawn on every call from the caller's generator
    jpeg:quality=75+blur:sigma=1        a chain (`Chain`), applied left to right
    diffpure:t=0.2,steps=10             diffusion purifiers need model components

`parse_spec` turns a spec into an instance; the CLI, the eval config and the web page all go through it.
Only purifiers with ``differentiable = True`` may feed the cloak optimiser's EOT (and `cloak.transforms` has
the differentiable stand-ins for the codecs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attacks.base import Chain, Purifier
from attacks.classical import JPEG, AdverseCleaner, BitDepth, Blur, Crop, Identity, Median, Noise, Resize, WebP
from attacks.diffusion import DiffPure, GridPure, Impress, NoisyUpscale
from cloak.errors import ConfigError
from cloak.specs import format_item, resolve_params, split_spec

if TYPE_CHECKING:
    from cloak.models import Components

ATTACKS: dict[str, type[Purifier]] = {
    "identity": Identity,
    "jpeg": JPEG,
    "webp": WebP,
    "resize": Resize,
    "crop": Crop,
    "blur": Blur,
    "noise": Noise,
    "median": Median,
    "bitdepth": BitDepth,
    "adverse_cleaner": AdverseCleaner,
    "diffpure": DiffPure,
    "gridpure": GridPure,
    "noisy_upscale": NoisyUpscale,
    "impress": Impress,
}


def check_spec(spec: str) -> str:
    """Validate a spec's names and parameters without building it (no model needed).

    Checks everything `parse_spec` checks except what depends on the model (GrIDPure's default tile size
    against an explicit stride, missing model parts).

    Returns:
        The canonical spec (defaults left out), e.g. ``"diffpure:t=0.1"`` for ``"diffpure: t=0.1, steps=5"``.

    Raises:
        ConfigError: as `parse_spec`.
    """
    canonical = []
    for item in split_spec(spec):
        cls = _lookup(item.name, spec)
        canonical.append(format_item(cls.name, resolve_params(cls.name, item.options, cls.params), cls.params))
    return "+".join(canonical)


def _lookup(name: str, spec: str) -> type[Purifier]:
    cls = ATTACKS.get(name)
    if cls is None:
        raise ConfigError(f"Unknown attack {name!r} in {spec!r}; known: {', '.join(ATTACKS)}.")
    return cls


def needs_model(spec: str) -> bool:
    """Whether a spec names a purifier that needs diffusion model components (without building it)."""
    return any(item.name in ATTACKS and ATTACKS[item.name].needs for item in split_spec(spec))


def parse_spec(
    spec: str,
    components: Components | None = None,
    *,
    prompt: str = "",
    lpips: Any = None,
    upscaler: Any = None,
) -> Purifier:
    """Build the purifier a spec names, e.g. ``parse_spec("jpeg:quality=75")``.

    Args:
        spec: `cloak.specs` grammar over the names of `ATTACKS`; ``+`` chains several into a `Chain`.
        components: model parts for the diffusion purifiers (`cloak.models.Components`); ignored by the others.
        prompt: conditioning text for diffusion purifiers (empty = unconditional).
        lpips: an LPIPS model for ``impress`` (without one it uses an L-inf bound).
        upscaler: a ``StableDiffusionUpscalePipeline`` for ``noisy_upscale`` (without one: SDEdit fallback).

    Returns:
        A `Purifier` (a `Chain` when the spec has several items).

    Raises:
        ConfigError: an unknown name (the message lists the known ones), an unknown parameter (lists the
            accepted ones), a bad value (says the expected type and range), or missing model components.
    """
    members: list[Purifier] = []
    for item in split_spec(spec):
        cls = _lookup(item.name, spec)
        if cls is Impress:
            members.append(cls(components, lpips=lpips, **item.options))
        elif cls is NoisyUpscale:
            members.append(cls(components, pipeline=upscaler, prompt=prompt, **item.options))
        elif cls.needs:  # the other purifiers that need a model take it first, and a prompt
            members.append(cls(components, prompt=prompt, **item.options))  # type: ignore[call-arg]
        else:
            members.append(cls(**item.options))
    return members[0] if len(members) == 1 else Chain(members)


__all__ = [
    "ATTACKS",
    "AdverseCleaner",
    "BitDepth",
    "Blur",
    "Chain",
    "Crop",
    "DiffPure",
    "GridPure",
    "Identity",
    "Impress",
    "JPEG",
    "Median",
    "Noise",
    "NoisyUpscale",
    "Purifier",
    "Resize",
    "WebP",
    "check_spec",
    "needs_model",
    "parse_spec",
]
