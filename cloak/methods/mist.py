"""``mist``: Mist's fused loss: pull the latent toward a target pattern while maximising the denoising loss.

Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via Adversarial
Examples" (Mist), ICML'23, https://arxiv.org/abs/2302.04578 (code: https://github.com/psyker-team/mist).

Targets the VAE encoder and the UNet. Objective (minimised), Mist's fused mode:
``|| z - E(x_T) ||^2 - w * E_{t, eps} || eps_theta(z_t, t, c) - eps ||^2`` with ``z = E(x + delta)``: the
textural term of ``cloak.methods.encoder`` (same target pattern ``x_T``, whose latent comes from
:meth:`EncoderAttack.target`) minus ``w`` times AdvDM's semantic term (``cloak.methods.advdm``). As in Mist's code one
posterior sample ``z`` feeds both terms (one encoder pass).

Option ``semantic="sds-"`` (this project's variant, not Mist's): the semantic term is SDS(-) instead, *minimised*
with the score-distillation gradient (``cloak.methods.sds``, Xue et al. ICLR'24):
``|| z - E(x_T) ||^2 + w * L_DM(z)``. The target pattern is what a long fine-tune learns from the cloak, and the
error-minimising term what a short one is held back by (docs/RESULTS.md); the UNet runs forward only.

The weight: Mist v1 uses ``rate = 10^4`` against a textural MSE *summed* over SD's 4 x 64 x 64 latent at 512 px and a
semantic MSE averaged over elements. Here both terms are means over elements, so the same balance is
``w = 10^4 / 16384 = 0.61``, and it stays the same at any view size. Budget: Mist v1 uses 16/255 and 100 steps
(FIELD_NOTES section 2); this project's default is the shared L-inf budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.methods.diffusion import (
    DIFFUSION_PARTS,
    denoising_loss,
    encode_prompt,
    non_negative,
    positive_int,
    prediction_type,
)
from cloak.methods.encoder import EncoderAttack
from cloak.methods.sds import sds_surrogate
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components

#: The semantic terms ``mist`` can fuse with the textural one.
SEMANTIC_TERMS = ("advdm", "sds-")

#: Mist v1's fusion weight 10^4 per summed 4x64x64 latent, expressed per latent element.
MIST_WEIGHT = 1e4 / (4 * 64 * 64)


class Mist(EncoderAttack):
    """Textural (target latent) plus semantic (denoising loss) attack.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        target: a built-in pattern name (``cloak.targets.PATTERNS``) or an image path. Default ``"stripes"``.
        period: pattern period in px at the model's resolution. Default 16.
        prompt: the text condition ``c`` of the semantic term. Default ``"a painting"`` (Mist's style template).
        weight: ``w``, the semantic term's weight against the textural one, both per-element means, >= 0.
            Default 0.61 (Mist v1's balance, see the module docstring); 0 gives the encoder attack on a sample.
        samples: (t, eps) draws per loss evaluation, one UNet batch. Default 1.
        semantic: ``"advdm"`` (default, Mist: maximise the denoising loss, full gradient) or ``"sds-"`` (minimise
            it with the score-distillation gradient; see the module docstring).
    """

    name: ClassVar[str] = "mist"
    summary: ClassVar[str] = "Mist fused: pull the latent toward a target pattern and maximise the denoising loss"
    needs: ClassVar[frozenset[str]] = DIFFUSION_PARTS
    setup_only: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer"})  # the prompt, encoded once

    def __init__(
        self,
        components: Components,
        target: str = "stripes",
        period: int = 16,
        prompt: str = "a painting",
        weight: float = MIST_WEIGHT,
        samples: int = 1,
        semantic: str = "advdm",
    ) -> None:
        super().__init__(components, target=target, period=period)
        prediction_type(components.require("scheduler"))
        self.weight = non_negative(weight, "weight", self.name)
        self.samples = positive_int(samples, "samples", self.name)
        if semantic not in SEMANTIC_TERMS:
            choices = ", ".join(SEMANTIC_TERMS)
            raise ConfigError(f"`semantic` (mist option) must be one of {choices}, got {semantic!r}.")
        self.semantic = semantic
        te, tok = components.require("text_encoder"), components.require("tokenizer")
        self.prompt_embeds = encode_prompt(te, tok, prompt)  # c: (1, 77, D)

    def loss(self, x_adv: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.components
        unet, scheduler = c.require("unet"), c.require("scheduler")
        z = vae_latents(c.require("vae"), x_adv, generator)  # one posterior sample for both terms
        textural = F.mse_loss(z.float(), target.float())
        if self.semantic == "sds-":
            sds = sds_surrogate(unet, scheduler, z, self.prompt_embeds, generator, self.samples)
            return textural + self.weight * sds
        semantic = denoising_loss(unet, scheduler, z, self.prompt_embeds, generator, self.samples)
        return textural - self.weight * semantic
