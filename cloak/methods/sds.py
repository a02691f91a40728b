"""``sds``: the denoising loss optimised with the score-distillation gradient (no backward through the UNet).

Xue et al., "Toward Effective Protection Against Diffusion-Based Mimicry through Score Distillation", ICLR'24,
https://arxiv.org/abs/2311.12832 (code: https://github.com/xavihart/Diff-Protect).

Targets the VAE encoder, steered by the UNet. The paper finds the encoder, not the denoiser, is the weak point, so it
replaces the gradient of the diffusion loss ``L_DM = E_{t, eps} ||eps_theta(z_t, t, c) - eps||^2`` with respect to
``z = E(x + delta)`` by the score-distillation (SDS) estimate of Poole et al. (DreamFusion,
https://arxiv.org/abs/2209.14988): the UNet Jacobian ``d eps_theta / d z_t`` is dropped, leaving ``(eps_theta - eps)``
(weighting 1, as the paper's code), back-propagated through the encoder only. The UNet runs forward under
``no_grad``: about 2x faster and half the memory of ``advdm`` (FIELD_NOTES section 3). ``minimise=True`` is SDS(-),
the paper's recommendation: "counterintuitively minimizing the semantic loss" gives a robust protection with more
natural-looking perturbations than maximising it (SDS(+), the AdvDM direction).

The loss returned has the value of ``L_DM`` (so it can be logged and compared) and the SDS gradient:
``L_DM.detach() + <g, z - z.detach()>`` with ``g = 2 (eps_theta - eps) / numel(z)`` held constant; SDS(+) negates it.
Budget: 16/255 and 100 steps in the paper (FIELD_NOTES section 2); this project's default is the shared L-inf budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from cloak.methods.advdm import AdvDM
from cloak.methods.diffusion import add_noise, predicted_noise, unet_prediction
from cloak.units import vae_latents

if TYPE_CHECKING:
    # From its module: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    from cloak.models import Components


class SDS(AdvDM):
    """Score-distillation protection: SDS(-) by default.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        prompt: the text condition ``c``. Default ``"a painting"``.
        samples: (t, eps) draws averaged per loss evaluation, one UNet batch. Default 1 (the paper's code).
        minimise: ``True`` (default, SDS(-), the paper's recommendation) descends the diffusion loss; ``False``
            (SDS(+)) ascends it, like AdvDM.
    """

    name: ClassVar[str] = "sds"
    summary: ClassVar[str] = "SDS(-): score-distillation gradient of the denoising loss, no UNet backward"

    def __init__(
        self, components: Components, prompt: str = "a painting", samples: int = 1, minimise: bool = True
    ) -> None:
        super().__init__(components, prompt=prompt, samples=samples, minimise=minimise)

    def loss(self, x_adv: torch.Tensor, target: None, generator: torch.Generator) -> torch.Tensor:
        z = vae_latents(self.components.require("vae"), x_adv, generator).float()  # the only graph: x_adv -> E -> z
        scheduler = self.components.require("scheduler")
        surrogate = sds_surrogate(self.unet, scheduler, z, self.prompt_embeds, generator, self.samples)
        return surrogate if self.minimise else -surrogate


def sds_surrogate(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    z: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator,
    samples: int = 1,
) -> torch.Tensor:
    """``L_DM`` at ``z`` with the score-distillation gradient: its value is the denoising MSE over ``samples``
    (t, eps) draws, its gradient w.r.t. ``z`` is ``2 (eps_theta - eps) / numel(z)`` (the UNet runs under no_grad).

    Args:
        unet: the denoiser.
        scheduler: the noise schedule (``cloak.methods.diffusion``).
        z: (1, C, h, w) latents carrying the graph to the image.
        prompt_embeds: the text condition (1, 77, D).
        generator: draws t and eps.
        samples: draws averaged, one UNet batch.
    """
    with torch.no_grad():
        noised = add_noise(scheduler, z.detach(), generator, samples)
        eps_theta = predicted_noise(scheduler, noised, unet_prediction(unet, noised, prompt_embeds))
        residual = eps_theta.float() - noised.noise.float()  # (n, C, h, w): eps_theta - eps per draw
        value = residual.pow(2).mean()  # L_DM
        g = 2.0 * residual.mean(0, keepdim=True) / z.numel()  # dL_DM/dz with the UNet Jacobian taken as identity
    return value + (g * (z.float() - z.detach().float())).sum()
