"""``sdedit``: PhotoGuard's diffusion attack: pull what img2img makes of the image toward a target pattern.

Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML'23, https://arxiv.org/abs/2302.06588.

Targets the whole img2img (SDEdit, Meng et al., ICLR'22) pipeline: VAE encoder, a few DDIM denoising steps of the
UNet with classifier-free guidance, VAE decoder. Objective (minimised): ``|| f(x + delta) - x_T ||_2^2`` (mean over
pixels), where ``f`` is that pipeline at ``strength`` and ``x_T`` a target pattern at the view's size (PhotoGuard's
own target is a grey image; here the ``encoder`` method's stripes by default). The paper calls this the diffusion
attack and finds it stronger than its encoder attack against editing, at the price of back-propagating through the
denoising steps; it made it against img2img and inpainting, not against fine-tuning. Each loss evaluation draws a
fresh starting noise from the cloak's generator, so the optimiser sees the expectation over the attacker's noise
(PhotoGuard averages its gradient over several draws; ``samples`` does so here). The attacker's strength is unknown
to the artist: given several ``strength`` values, each draw also picks one of them at random, an expectation over
strengths (EOT, Athalye et al., ICML'18) instead of PhotoGuard's single anticipated strength.

Cost per step: ``samples x int(strength x num_inference_steps)`` guided UNet calls (each a batch of 2; the mean over
the strengths when there are several) forward and backward, one VAE encode and one decode; with ``checkpoint``
(default) the UNet activations are recomputed in the backward pass rather than kept, so memory is that of one
denoising step. A researcher's method, not a preset: at SD's 512 px a step takes about ten times the ``default``'s.
PhotoGuard's own diffusion attack runs on the inpainting pipeline, so this is its objective applied to img2img, not a
baseline at published settings. On the testbed at 8/255 it stops img2img no better than the encoder attack does
(docs/RESULTS.md, ``img2img8-sdedit``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.methods.base import Objective
from cloak.methods.diffusion import (
    DIFFUSION_PARTS,
    encode_prompt,
    img2img,
    positive_int,
    prediction_type,
    sdedit_settings,
)
from cloak.targets import check_target, target_image
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components

#: Where the pipeline's result is compared with the target: the decoded image (PhotoGuard) or the denoised latent.
SPACES = ("pixel", "latent")


class EditAttack(Objective):
    """Pull the image's img2img output toward a target pattern (PhotoGuard's diffusion attack).

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        target: a built-in pattern name (``cloak.targets.PATTERNS``) or an image path. Default ``"stripes"``.
        period: pattern period in px at the model's resolution. Default 16.
        prompt: the img2img prompt the cloak anticipates. Default ``"a painting"``.
        strength: the img2img strength the cloak anticipates, in (0, 1], or a list of them, one drawn uniformly
            per noise draw. Default 0.4.
        num_inference_steps: DDIM steps of the full schedule (``int(strength x num_inference_steps)`` are run).
            Default 10.
        guidance_scale: classifier-free guidance weight. Default 5.0.
        samples: starting-noise draws averaged per loss evaluation. Default 1.
        checkpoint: recompute UNet activations in the backward pass (gradient checkpointing). Default True.
        space: ``"pixel"`` (default, PhotoGuard's) compares the decoded img2img output with the target image;
            ``"latent"`` compares the denoised latent with the target's latent (the ``encoder`` method's objective,
            moved past the denoising steps; no decoder pass).
    """

    name: ClassVar[str] = "sdedit"
    summary: ClassVar[str] = "PhotoGuard diffusion attack: pull the img2img output toward a target pattern"
    needs: ClassVar[frozenset[str]] = DIFFUSION_PARTS
    setup_only: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer"})

    def __init__(
        self,
        components: Components,
        target: str = "stripes",
        period: int = 16,
        prompt: str = "a painting",
        strength: float | list[float] = 0.4,
        num_inference_steps: int = 10,
        guidance_scale: float = 5.0,
        samples: int = 1,
        checkpoint: bool = True,
        space: str = "pixel",
    ) -> None:
        super().__init__(components)
        prediction_type(components.require("scheduler"))
        strengths = strength if isinstance(strength, (list, tuple)) else [strength]
        if not strengths:
            raise ConfigError("`strength` (sdedit option) must be a number or a non-empty list of numbers, got [].")
        settings = [sdedit_settings(s, num_inference_steps, guidance_scale, self.name) for s in strengths]
        self.strengths = tuple(s for s, _, _ in settings)
        _, self.num_inference_steps, self.guidance_scale = settings[0]
        self.samples = positive_int(samples, "samples", self.name)
        if not isinstance(checkpoint, bool):
            raise ConfigError(f"`checkpoint` (sdedit option) must be true or false, got {checkpoint!r}.")
        if space not in SPACES:
            raise ConfigError(f"`space` (sdedit option) must be one of {', '.join(SPACES)}, got {space!r}.")
        check_target(target, period)
        self.target_name, self.period, self.checkpoint, self.space = target, period, checkpoint, space
        te, tok = components.require("text_encoder"), components.require("tokenizer")
        self.prompt_embeds = encode_prompt(te, tok, prompt)
        self.negative_embeds = encode_prompt(te, tok, "")

    def target(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pattern = target_image(self.target_name, x.shape[-2], x.shape[-1], period=self.period).to(x.device, x.dtype)
        if self.space == "pixel":
            return pattern
        return vae_latents(self.components.require("vae"), pattern).detach()

    def draw_strength(self, generator: torch.Generator) -> float:
        """The strength of one noise draw: the only one, or one of several uniformly (no draw is spent on one)."""
        if len(self.strengths) == 1:
            return self.strengths[0]
        pick = torch.randint(len(self.strengths), (1,), generator=generator, device=generator.device)
        return self.strengths[int(pick)]

    def loss(self, x_adv: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        losses = [
            F.mse_loss(
                img2img(
                    self.components,
                    x_adv,
                    self.prompt_embeds,
                    self.negative_embeds,
                    strength=self.draw_strength(generator),
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    checkpoint=self.checkpoint,
                    decode=self.space == "pixel",
                ).float(),
                target.float(),
            )
            for _ in range(self.samples)
        ]
        return torch.stack(losses).mean()
