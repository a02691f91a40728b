"""``gradmatch``: make a fine-tune's first gradient on the artwork the gradient of learning the target pattern.

Geiping et al., "Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching", ICLR'21,
https://arxiv.org/abs/2009.02276, applied here to a diffusion fine-tune (this project's experiment, not a published
protection).

A mimic learns whatever the gradient of its denoising loss on the artist's images points to. This objective aims at
that gradient directly: with ``g(z) = grad_theta L_DM(theta; z, c)`` the gradient of the denoising loss (the
DreamBooth instance loss under the prompt ``c``) with respect to the UNet's weights, drawn at the same timesteps and
noise for both, it minimises ``1 - cos(g(E(x + delta)), g(z_T))`` with ``z_T`` the latent of the target pattern
(``cloak.methods.encoder``'s stripes): a fine-tune's step on the cloaked image is then, as far as the budget allows,
the step it would take to learn the stripes. Differentiating through ``g`` is a second-order derivative through the
UNet (about three UNet passes and the UNet's weights' gradients a step), so this is a method for small models and
research; its attention runs on PyTorch's math kernel, the only one on CPU with a second derivative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.methods.diffusion import (
    DIFFUSION_PARTS,
    add_noise,
    encode_prompt,
    positive_int,
    prediction_type,
    training_target,
    unet_prediction,
)
from cloak.methods.encoder import EncoderAttack
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components


class GradientMatch(EncoderAttack):
    """Align the UNet's weight gradient on the artwork with its gradient on the target pattern.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        target: a built-in pattern name (``cloak.targets.PATTERNS``) or an image path. Default ``"stripes"``.
        period: pattern period in px at the model's resolution. Default 16.
        prompt: the fine-tune's instance prompt ``c``. Default ``"a painting in sks style"`` (DreamBooth's rare
            token, as ``aspl``).
        samples: (t, eps) draws per gradient, one UNet batch. Default 4.
    """

    name: ClassVar[str] = "gradmatch"
    summary: ClassVar[str] = "Gradient matching: a fine-tune's weight gradient on x+d aligned with learning the target"
    needs: ClassVar[frozenset[str]] = DIFFUSION_PARTS
    setup_only: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer"})  # the prompt, encoded once

    def __init__(
        self,
        components: Components,
        target: str = "stripes",
        period: int = 16,
        prompt: str = "a painting in sks style",
        samples: int = 4,
    ) -> None:
        super().__init__(components, target=target, period=period)
        prediction_type(components.require("scheduler"))
        self.samples = positive_int(samples, "samples", self.name)
        te, tok = components.require("text_encoder"), components.require("tokenizer")
        self.prompt_embeds = encode_prompt(te, tok, prompt)  # c: (1, 77, D)

    def _weight_gradient(self, z: torch.Tensor, draws: torch.Generator, create_graph: bool) -> list[torch.Tensor]:
        """``grad_theta L_DM`` at ``z``, the UNet's weights as the leaves; t and eps from ``draws``."""
        unet, scheduler = self.components.require("unet"), self.components.require("scheduler")
        noised = add_noise(scheduler, z, draws, self.samples)
        prediction = unet_prediction(unet, noised, self.prompt_embeds)
        loss = F.mse_loss(prediction.float(), training_target(scheduler, noised).float())
        return list(torch.autograd.grad(loss, list(unet.parameters()), create_graph=create_graph))

    def loss(self, x_adv: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        unet = self.components.require("unet")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        z = vae_latents(self.components.require("vae"), x_adv, generator)
        was = [p.requires_grad for p in unet.parameters()]
        unet.requires_grad_(True)
        try:  # the weight gradients are needed even where the caller only evaluates the loss (no_grad)
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                wanted = self._weight_gradient(target, self._draws(seed, generator), create_graph=False)
                got = self._weight_gradient(z, self._draws(seed, generator), create_graph=True)
        finally:
            for p, flag in zip(unet.parameters(), was, strict=True):
                p.requires_grad_(flag)
        dot = sum((a.float() * b.float()).sum() for a, b in zip(got, wanted, strict=True))
        norm_got = torch.sqrt(sum(a.float().pow(2).sum() for a in got))
        norm_wanted = torch.sqrt(sum(b.float().pow(2).sum() for b in wanted))
        return 1 - dot / (norm_got * norm_wanted + 1e-12)

    @staticmethod
    def _draws(seed: int, like: torch.Generator) -> torch.Generator:
        """A generator on ``like``'s device seeded with ``seed``: the same (t, eps) draws for both gradients."""
        return torch.Generator(device=like.device).manual_seed(seed)
