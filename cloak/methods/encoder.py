"""``encoder``: targeted attack on the VAE encoder (PhotoGuard encoder attack; Mist's textural loss).

Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML'23, https://arxiv.org/abs/2302.06588;
Liang et al., "Adversarial Example Does Good" (Mist), ICML'23, https://arxiv.org/abs/2302.04578.

Targets the VAE encoder E only. Objective (minimised): ``|| E(x + delta) - E(x_T) ||_2^2`` (mean over latent
elements), where ``x_T`` is a target pattern rendered at the view's size. Every latent diffusion fine-tune trains on
``E(x)``, so a mimic trained on cloaked images learns the target's texture. Budget: the shared L-inf budget
(PhotoGuard's notebook uses about 7.7/255; Mist v1 16/255).

Option ``direction="away"`` (this project's variant, an experiment): the untargeted form, ``-|| E(x + delta) - E(x)
||_2^2``, pushes the latent as far from the artwork's own as the budget allows, in whatever direction that is; the
target pattern is then unused. docs/RESULTS.md compares it with the targeted form on mimicry.

Option ``space="pixel"`` (this project's variant, an experiment): compare the VAE round trip ``D(E(x + delta))``
with the target image (or, ``away``, with ``D(E(x))``) instead of the latents, so the latent moves in the directions
the decoder renders most visibly; one decoder pass more a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.methods.base import Objective
from cloak.targets import check_target, target_image
from cloak.units import vae_latents, vae_roundtrip

if TYPE_CHECKING:
    from cloak.models import Components

#: Values of the ``direction`` option.
DIRECTIONS = ("toward", "away")
#: Values of the ``space`` option: where the attacked image is compared with its target.
SPACES = ("latent", "pixel")
#: Target latents an objective keeps, one per view size: a batch's images mostly share a few sizes, and at SD-1.5's
#: 512 px each one saved is a VAE encoder pass (2.4 s on 2 CPU cores in bf16; `fast` took 17.0 s a later image
#: without the cache and 13.9 s with it, `python benchmarks/bench_protect.py --presets fast --sizes 512 --images 3`).
PATTERN_CACHE_SIZE = 8


class EncoderAttack(Objective):
    """Pull the VAE latent of the artwork toward the latent of a target pattern.

    Args:
        components: needs ``vae``.
        target: a built-in pattern name (``cloak.targets.PATTERNS``) or an image path. Default ``"stripes"``.
        period: pattern period in px at the model's resolution (default 16: two latent cells of SD's VAE).
        direction: ``"toward"`` (default) the target pattern's latent, or ``"away"`` from the artwork's own latent
            (untargeted; ``target`` and ``period`` unused).
        space: ``"latent"`` (default) compares latents; ``"pixel"`` compares the decoded VAE round trip with the
            target image.
    """

    name: ClassVar[str] = "encoder"
    summary: ClassVar[str] = "PhotoGuard / Mist textural: pull the VAE latent toward a target pattern's latent"
    needs: ClassVar[frozenset[str]] = frozenset({"vae"})

    def __init__(
        self,
        components: Components,
        target: str = "stripes",
        period: int = 16,
        direction: str = "toward",
        space: str = "latent",
    ) -> None:
        super().__init__(components)
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"`direction` ({self.name} option) must be one of {', '.join(DIRECTIONS)}, got {direction!r}."
            )
        if space not in SPACES:
            raise ConfigError(f"`space` ({self.name} option) must be one of {', '.join(SPACES)}, got {space!r}.")
        self.space = space
        check_target(target, period)
        self.target_name = target
        self.period = period
        self.sign = 1.0 if direction == "toward" else -1.0
        self._patterns: dict[tuple[object, ...], torch.Tensor] = {}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.components.require("vae")
        return vae_roundtrip(vae, x) if self.space == "pixel" else vae_latents(vae, x)

    @property
    def kept_targets(self) -> int:
        return 0 if self.sign < 0 else PATTERN_CACHE_SIZE  # "away" starts from each artwork's own latent

    def target(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.sign < 0:  # away from the artwork's own latent (or its round trip)
            return self._embed(x).detach()
        # The pattern depends only on the view's size: computed once per size (and precision) and kept.
        device = x.device.type
        key = (x.shape[-2:], x.device, x.dtype, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        found = self._patterns.get(key)
        if found is None:
            pattern = target_image(self.target_name, x.shape[-2], x.shape[-1], period=self.period)
            pattern = pattern.to(x.device, x.dtype)
            found = pattern if self.space == "pixel" else vae_latents(self.components.require("vae"), pattern).detach()
            if len(self._patterns) >= PATTERN_CACHE_SIZE:
                del self._patterns[next(iter(self._patterns))]  # the oldest size
            self._patterns[key] = found
        return found

    def loss(self, x_adv: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.sign * F.mse_loss(self._embed(x_adv).float(), target.float())
