"""The interface every protection method implements: a loss, nothing else.

The optimisation loop (``cloak.optim``) and the views (``cloak.views``) are shared; a method says which model parts
it needs, what to precompute from the clean image, and the scalar to minimise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from cloak.errors import ConfigError
from cloak.units import vae_scale_factor

if TYPE_CHECKING:
    from cloak.models import Components


class Objective:
    """Base class of protection objectives.

    Subclasses set ``name``, ``summary`` and ``needs`` and implement :meth:`target` and :meth:`loss`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    #: Call :meth:`update` every this many steps (0: never). ASPL's alternating surrogate fine-tune uses it.
    update_every: ClassVar[int] = 0
    #: Parts used only while the objective is built (to encode its prompt), never by :meth:`target` or :meth:`loss`:
    #: whoever owns the components may drop them afterwards (``cloak.protect.release_setup_parts``).
    setup_only: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, components: Components) -> None:
        missing = sorted(p for p in self.needs if getattr(components, p, None) is None)
        if missing:
            raise ConfigError(f"method `{self.name}` needs model parts {missing}, which were not loaded.")
        self.components = components

    @property
    def multiple(self) -> int:
        """View sizes must be multiples of this, px (the VAE factor; times the UNet's when a UNet is used)."""
        factor = vae_scale_factor(self.components.require("vae"))
        if "unet" in self.needs:
            factor *= 2 ** (len(self.components.require("unet").config["block_out_channels"]) - 1)
        return factor

    @property
    def kept_targets(self) -> int:
        """How many view sizes' targets :meth:`target` keeps for later images (0: it computes each view's anew).

        An objective whose target depends only on the view's size computes it once per size; time estimates
        (the web page's) count its cost once per size, oldest size dropped first when more than this many appear.
        """
        return 0

    def target(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """Precompute what :meth:`loss` needs from one clean view ``x`` (1, 3, h, w) in [0, 1]."""
        raise NotImplementedError

    def loss(self, x_adv: torch.Tensor, target: Any, generator: torch.Generator) -> torch.Tensor:
        """Scalar to minimise for the adversarial view ``x_adv`` (1, 3, h, w) in [0, 1]."""
        raise NotImplementedError

    def update(self, views_adv: list[torch.Tensor], generator: torch.Generator) -> None:
        """Adapt the method between steps (only for methods with ``update_every > 0``)."""
