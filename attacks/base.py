"""The purifier interface: a thin class over a pure function, with replayable random parameters.

Modelled on torchvision transforms v2 (``make_params`` then ``transform``): `Purifier.sample` draws every random
choice of one call from an explicit ``torch.Generator`` into a plain, JSON-serialisable dict, and
`Purifier.apply` is a pure function of the image and that dict. So::

    params = purifier.sample(generator)   # e.g. {"quality": 63} for "jpeg:quality=50..90"
    y = purifier.apply(x, params)         # same x and params -> same y, always
    y = purifier(x, generator)            # the two steps at once

Randomness that is not a parameter (noise images, diffusion noise) is drawn from a ``seed`` that `sample` puts
in the dict; `apply` rebuilds a generator from it on the image's device (so CPU and CUDA give different noise
for the same seed, as torch does).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from cloak.errors import ConfigError
from cloak.specs import Param, draw_params, format_item, resolve_params

SEED_RANGE = 2**62  # `sample` draws noise seeds uniformly in [0, SEED_RANGE)


def check_image(x: Tensor, where: str) -> None:
    """Refuse anything but a float ``(B, 3, H, W)`` tensor, naming the purifier."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"`{where}` expects a float tensor (B, 3, H, W) in [0, 1], got {got}.")
    # Generous bounds: float drift is fine, 0-255 or [-1, 1] images are not (they came back clamped or unchanged).
    if not x.numel():
        return
    # detached: a check, not part of any gradient (EOT feeds differentiable purifiers tensors with grad)
    low, high = float(x.detach().amin()), float(x.detach().amax())
    if high > 1.5 or low < -0.5:
        raise ConfigError(
            f"`{where}` expects values in [0, 1], got {low:g} to {high:g}; divide 0-255 images "
            "by 255 (or map [-1, 1] with (x + 1) / 2)."
        )


def seeded(seed: int, device: torch.device | str) -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed`` (a seed from `Purifier.sample`)."""
    return torch.Generator(device=device).manual_seed(seed)


class Purifier:
    """Base class of purifiers: what a mimicker does to an image to strip a cloak.

    Subclasses set the class variables and implement `purify`; the base class validates options against
    `params`, draws ranges and seeds, and formats the spec.

    Attributes:
        name: registry key and spec name.
        summary: one line for listings.
        differentiable: the output is differentiable in the input with useful gradients; only these may feed EOT.
        params: the accepted spec parameters.
        random: `purify` uses a noise seed drawn by `sample` (besides any ranged parameter).
        needs: the `cloak.models.Components` parts a diffusion purifier needs; empty for classical ones.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    differentiable: ClassVar[bool]
    params: ClassVar[tuple[Param, ...]] = ()
    random: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **options: Any) -> None:
        """Validate ``options`` (Python values, spec text or `cloak.specs.Range`s) against `params`."""
        self.values = resolve_params(self.name, options, self.params)

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``"jpeg:quality=50..90"`` (defaults left out)."""
        return format_item(self.name, self.values, self.params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        """Draw this call's parameters: ranges first (in declared order), then the noise seed if `random`."""
        drawn = draw_params(self.values, self.params, generator)
        if self.random:
            drawn["seed"] = int(torch.randint(SEED_RANGE, (1,), generator=generator, device=generator.device).item())
        return drawn

    def apply(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        """Purify ``x`` with parameters from `sample`; same ``x`` and ``params`` give the same output.

        Args:
            x: ``(B, 3, H, W)`` float in [0, 1].
            params: a dict from `sample`.

        Returns:
            ``(B, 3, H, W)`` in [0, 1], same dtype and device as ``x``.
        """
        check_image(x, self.name)
        return self.purify(x, **params)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """`sample` then `apply`."""
        return self.apply(x, self.sample(generator))

    def purify(self, x: Tensor, *args: Any, **params: Any) -> Tensor:
        """The pure function, on a validated image and drawn parameters (implemented by subclasses).

        Each subclass names its own keyword parameters (those of `sample`'s dict); the ``*args: Any, **params: Any``
        here is how a type checker accepts that (the typing spec's gradual ``...`` signature). `apply` passes only
        keywords.
        """
        raise NotImplementedError


class Chain(Purifier):
    """Purifiers applied one after the other; the spec joins them with ``+`` (``"jpeg:quality=75+blur"``).

    Parameters are drawn member by member, in order, from the one generator; differentiable when every
    member is.
    """

    name = "chain"
    summary = "purifiers applied in sequence"

    def __init__(self, members: list[Purifier]) -> None:
        if len(members) < 2:
            raise ConfigError(f"A chain needs at least two purifiers, got {len(members)}.")
        self.members = list(members)
        self.values = {}

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(m.differentiable for m in self.members)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(m.needs for m in self.members))

    @property
    def spec(self) -> str:
        return "+".join(m.spec for m in self.members)

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        return {"members": [m.sample(generator) for m in self.members]}

    def purify(self, x: Tensor, members: list[dict[str, Any]]) -> Tensor:
        for member, params in zip(self.members, members, strict=True):
            x = member.apply(x, params)
        return x
