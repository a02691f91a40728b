"""``ace``: pull the UNet's noise prediction on the artwork toward a target pattern's latent (ACE, Mist v2).

Zheng et al., "Understanding and Improving Adversarial Attacks on Latent Diffusion Model", 2023,
https://arxiv.org/abs/2310.04687 (ACE; code: https://github.com/psyker-team/mist-v2, the ``lunet`` mode of
``attacks/mist.py``).

Targets the UNet through the VAE encoder. Objective (minimised): ``E_{t, eps} || eps_theta(z_t, t, c) - z_T ||^2``
with ``z = E(x + delta)`` (the posterior mean, as the release takes it), ``t ~ U{0, ..., T-1}``, ``eps ~ N(0, I)``
and ``z_T`` the scaled latent of a target pattern (``cloak.methods.encoder``'s, the same stripes). Where AdvDM makes
the model's noise prediction *wrong*, ACE makes it wrong in one consistent direction: a fine-tune on the cloaked
images then sees the same error on every image and at every timestep, and the paper reports that what it learns
carries the target's pattern.

Option ``weight`` (this project's variant, not the release's): add ``weight`` times the encoder attack's textural
term ``|| z - z_T ||^2``, so the latent itself is pulled toward the same target as the prediction. Default 0 (ACE).

Option ``timesteps = [lo, hi]`` (also this project's): draw ``t`` from ``lo, ..., hi - 1`` only, to test SimAC's
report (Wang et al., "SimAC: A Simple Anti-Customization Method for Protecting Face Privacy against Text-to-Image
Synthesis of Diffusion Models", 2024) that the larger timesteps matter most. On the testbed they do not
(docs/RESULTS.md): the noisier half protects as every timestep does, the cleaner half less.

Departures from the release: between its 5 rounds of 50 PGD steps it fine-tunes rank-4 LoRAs of the UNet and text
encoder for one pass over the cloaked images, one AdamW step an image at lr 1e-4 (``attacks/mist.py`` defaults), so
with N images the UNet of its last round has taken 4 N small LoRA steps from the pretrained one; here the pretrained
UNet is attacked throughout, as AdvDM and SDS(-) are, and each image is cloaked alone. Its target image is the
project's stripes pattern rather than the release's ``MIST.png``; its budget and steps are the shared ones (the
``mist-v2`` baseline, ``cloak.presets``, takes the release's). For a v-prediction model the release compares the raw
output with ``z_T``; here the output is turned into the noise it implies first, so the objective means the same for
both kinds of model.

On the testbed it protects as the encoder cloak does, 0.8 dB less visibly and at 1.6 times its time a step
(docs/RESULTS.md, "ACE, Mist v2's loss").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.methods.diffusion import (
    DIFFUSION_PARTS,
    add_noise,
    encode_prompt,
    non_negative,
    positive_int,
    predicted_noise,
    prediction_type,
    timestep_window,
    unet_prediction,
)
from cloak.methods.encoder import EncoderAttack
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components


class ACE(EncoderAttack):
    """Pull ``eps_theta(z_t, t, c)`` of the artwork's latent toward the target pattern's latent.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        target: a built-in pattern name (``cloak.targets.PATTERNS``) or an image path. Default ``"stripes"``.
        period: pattern period in px at the model's resolution. Default 16.
        prompt: the text condition ``c``. Default ``"a painting"``.
        samples: (t, eps) draws per loss evaluation, one UNet batch. Default 1 (the release's).
        weight: weight of the textural term ``|| z - z_T ||^2`` added to ACE's, >= 0. Default 0 (ACE alone).
        timesteps: ``[lo, hi]``: draw ``t`` from ``lo, ..., hi - 1`` only. Default ``None``, every timestep (the
            release's).
    """

    name: ClassVar[str] = "ace"
    summary: ClassVar[str] = "ACE (Mist v2): pull the UNet's noise prediction toward a target pattern's latent"
    needs: ClassVar[frozenset[str]] = DIFFUSION_PARTS
    setup_only: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer"})  # the prompt, encoded once

    def __init__(
        self,
        components: Components,
        target: str = "stripes",
        period: int = 16,
        prompt: str = "a painting",
        samples: int = 1,
        weight: float = 0.0,
        timesteps: list[int] | None = None,
    ) -> None:
        super().__init__(components, target=target, period=period)
        prediction_type(components.require("scheduler"))
        self.window = timestep_window(timesteps, components.require("scheduler"), self.name)
        self.weight = non_negative(weight, "weight", self.name)
        self.samples = positive_int(samples, "samples", self.name)
        te, tok = components.require("text_encoder"), components.require("tokenizer")
        self.prompt_embeds = encode_prompt(te, tok, prompt)  # c: (1, 77, D)

    def loss(self, x_adv: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.components
        scheduler = c.require("scheduler")
        z = vae_latents(c.require("vae"), x_adv)
        noised = add_noise(scheduler, z, generator, self.samples, self.window)
        eps_theta = predicted_noise(scheduler, noised, unet_prediction(c.require("unet"), noised, self.prompt_embeds))
        value = F.mse_loss(eps_theta.float(), target.float().expand_as(eps_theta))
        if self.weight:
            value = value + self.weight * F.mse_loss(z.float(), target.float())
        return value
