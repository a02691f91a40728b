"""``advdm``: maximise the diffusion model's denoising loss on the artwork (AdvDM).

Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via Adversarial
Examples", ICML'23, https://arxiv.org/abs/2302.04578 (AdvDM; the same paper introduces Mist, ``cloak.methods.mist``).

Targets the UNet (through the VAE encoder). Objective (maximised): the Monte Carlo estimate of
``E_{t, eps} || eps_theta(z_t, t, c) - eps ||^2`` with ``z = E(x + delta)`` a sample of the VAE posterior (as the
paper's code and every fine-tune do), ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)`` drawn from the caller's
generator, and ``c`` the text embedding of ``prompt``. An image whose latent the model cannot denoise gives a fine-tune
a training signal far from the artwork's style. :meth:`AdvDM.loss` returns the *negative* (the loop minimises).
``minimise=True`` descends the same loss instead, with its full gradient (through the UNet): error-minimising noise
(Huang et al., "Unlearnable Examples", ICLR'21, https://arxiv.org/abs/2101.04898) for a diffusion fine-tune, whose
learning signal is this residual; ``sds`` is its Jacobian-free approximation (SDS(-)).
Budget: the paper and its code use 16/255 and 100 steps (FIELD_NOTES section 2); this project's default is the shared
L-inf budget (8/255).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from cloak.errors import ConfigError
from cloak.methods.base import Objective
from cloak.methods.diffusion import DIFFUSION_PARTS, denoising_loss, encode_prompt, positive_int, prediction_type
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components


class AdvDM(Objective):
    """Push the artwork's latent where the UNet mispredicts the noise.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        prompt: the text condition ``c``. Default ``"a painting"`` (Mist's style template).
        samples: (t, eps) draws averaged per loss evaluation, run as one UNet batch. Default 1 (the paper's code);
            more lowers the gradient's variance at proportional cost.
        minimise: descend the denoising loss instead of ascending it (error-minimising). Default False (AdvDM).
    """

    name: ClassVar[str] = "advdm"
    summary: ClassVar[str] = "AdvDM: maximise the UNet's denoising loss at random timesteps"
    needs: ClassVar[frozenset[str]] = DIFFUSION_PARTS
    setup_only: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer"})  # the prompt, encoded once

    def __init__(
        self, components: Components, prompt: str = "a painting", samples: int = 1, minimise: bool = False
    ) -> None:
        super().__init__(components)
        prediction_type(components.require("scheduler"))
        self.samples = positive_int(samples, "samples", self.name)
        if not isinstance(minimise, bool):
            raise ConfigError(f"`minimise` ({self.name} option) must be true or false, got {minimise!r}.")
        self.minimise = minimise
        self.prompt = prompt
        self.unet: torch.nn.Module = components.require("unet")  # the model attacked (ASPL swaps in its surrogate)
        te, tok = components.require("text_encoder"), components.require("tokenizer")
        self.prompt_embeds = encode_prompt(te, tok, prompt)  # c: (1, 77, D)

    def target(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Nothing to precompute: the objective is untargeted."""
        return None

    def diffusion_loss(self, x_adv: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``L_DM``: the denoising MSE on a posterior sample of ``E(x_adv)``; draws z, then t, then eps."""
        z = vae_latents(self.components.require("vae"), x_adv, generator)
        scheduler = self.components.require("scheduler")
        return denoising_loss(self.unet, scheduler, z, self.prompt_embeds, generator, self.samples)

    def loss(self, x_adv: torch.Tensor, target: None, generator: torch.Generator) -> torch.Tensor:
        value = self.diffusion_loss(x_adv, generator)
        return value if self.minimise else -value
