"""``pid``: Prompt-Independent Defence: push the VAE posterior's mean and variance away from the artwork's own.

Li, Mo, Li and Wang, "PID: Prompt-Independent Data Protection Against Latent Diffusion Models", ICML'24,
https://arxiv.org/abs/2406.15305 (code: https://github.com/PKU-ML/Diffusion-PID-Protection).

Targets the VAE encoder only, so it needs no prompt and no UNet. A latent diffusion fine-tune trains on samples
``z = mu(x) + sigma(x) * n`` of the encoder's posterior; PID changes both moments. Objective (minimised), PID's
``add-log`` loss, the one its release runs: ``-( || mu(x + delta) - mu(x) ||^2 + || log sigma^2(x + delta) - log
sigma^2(x) ||^2 )`` (means over latent elements, the posterior's own unscaled moments). Option ``terms`` keeps one
term: ``"mean"`` (the untargeted encoder attack, as ``encoder`` with ``direction="away"`` up to the latent scale) or
``"var"`` (only the log-variance). Budget in the release: 12.75/255 (0.05 in [0, 1]), 1000 sign steps of 1/255
(the ``pid`` baseline); here the shared L-inf budget and optimiser.

How far a small change can move the variance depends on the VAE: on the testbed's (posterior std about 0.02 against
a latent RMS near 1), 16 steps at 8/255 of the variance term alone change log sigma by 2-4 % RMS
(``python benchmarks/probe_posterior.py``), so there the mean term is nearly all of PID's effect (docs/RESULTS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.methods.base import Objective
from cloak.units import to_vae

if TYPE_CHECKING:
    # From its module: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    from cloak.models import Components

#: Values of the ``terms`` option.
TERMS = ("both", "mean", "var")


def posterior_moments(vae: AutoencoderKL, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance (unscaled, float32) of the VAE posterior q(z|x) of a [0, 1] image batch."""
    dist = vae.encode(to_vae(x)).latent_dist
    return dist.mean.float(), dist.logvar.float()


class PID(Objective):
    """Push the posterior mean and log-variance of the artwork's latent away from the clean image's.

    Args:
        components: needs ``vae``.
        terms: ``"both"`` (default, PID's ``add-log``), ``"mean"`` or ``"var"``.
    """

    name: ClassVar[str] = "pid"
    summary: ClassVar[str] = "PID: push the VAE posterior's mean and log-variance from the artwork's own (no prompt)"
    needs: ClassVar[frozenset[str]] = frozenset({"vae"})

    def __init__(self, components: Components, terms: str = "both") -> None:
        super().__init__(components)
        if terms not in TERMS:
            raise ConfigError(f"`terms` ({self.name} option) must be one of {', '.join(TERMS)}, got {terms!r}.")
        self.use_mean = terms in ("both", "mean")
        self.use_var = terms in ("both", "var")

    def target(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = posterior_moments(self.components.require("vae"), x)
        return mean.detach(), logvar.detach()

    def loss(
        self, x_adv: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        mean, logvar = posterior_moments(self.components.require("vae"), x_adv)
        total = mean.new_zeros(())
        if self.use_mean:
            total = total + F.mse_loss(mean, target[0])
        if self.use_var:
            total = total + F.mse_loss(logvar, target[1])
        return -total
