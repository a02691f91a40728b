"""``style``: Glaze-like style cloak: pull the artwork's features toward those of a decoy-style rendering of it.

Shan et al., "Glaze: Protecting Artists from Style Mimicry by Text-to-Image Models", USENIX Security'23,
https://arxiv.org/abs/2302.04222.

Targets the VAE encoder (Glaze's feature extractor is the generator's image encoder) and, optionally, a CLIP image
encoder. Glaze first renders the artwork in a decoy style with the model itself, ``x_d = Omega(x, T)``, then
minimises ``|| Phi(x + delta) - Phi(x_d) ||^2 + a * max(LPIPS(x + delta, x) - p, 0)``: a mimic that fine-tunes on the
cloaked image learns the decoy style where the artist's should be. Here:

- the decoy ``x_d``, computed once per view in :meth:`StyleCloak.target`: an SDEdit/img2img pass of the view under
  ``decoy_prompt`` at ``strength`` (``cloak.methods.diffusion.img2img``) with ``decoy="sdedit"`` (or ``"auto"`` when
  the UNet, text encoder, tokenizer and scheduler are loaded); by default a procedural decoy
  (:func:`procedural_decoy`: a posterised, smoothed rendering with diagonal brush-stroke ridges). SDEdit's noise
  comes from a generator seeded with ``decoy_seed``, not from the cloak's generator, so an artwork always gets the
  same decoy whatever the cloak's seed (Glaze's decoy is a fixed function of the artwork and the target style);
- ``Phi``: the VAE latent (posterior mean), mean squared error; plus, with ``clip_model``, ``clip_weight`` times the
  cosine distance of open_clip image embeddings;
- Glaze's LPIPS hinge is the shared ``CloakConfig.lpips_bound`` / ``lpips_weight`` (p = 0.05 in the paper), applied
  by ``cloak.protect`` to every method, plus the L-inf cap; it is not part of this loss.

Budget: Glaze uses the LPIPS bound p = 0.05 (about 41 dB PSNR) instead of an L-inf budget (FIELD_NOTES section 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.methods.base import Objective
from cloak.methods.diffusion import (
    DIFFUSION_PARTS,
    encode_prompt,
    img2img,
    non_negative,
    prediction_type,
    sdedit_settings,
)
from cloak.targets import target_image
from cloak.transforms import gaussian_blur
from cloak.units import to_clip, vae_latents, vae_scale_factor

if TYPE_CHECKING:
    from cloak.models import Components


def procedural_decoy(x: torch.Tensor, period: int = 16, levels: int = 5) -> torch.Tensor:
    """A decoy style without a diffusion model: flat posterised colour under diagonal brush-stroke ridges.

    The artwork's own fine detail (its brushwork, line quality) is blurred away (Gaussian, sigma ``period / 4`` px),
    its colours are quantised to ``levels`` per channel (flat poster areas), and the luminance is modulated by the
    diagonal ``stripes`` pattern of ``cloak.targets`` (thick parallel strokes, period ``period`` px): composition and
    palette stay, the style changes.

    Args:
        x: (1, 3, h, w) in [0, 1], at least ``period`` px on each side.
        period: stroke period, px (16 = two SD latent cells).
        levels: colour levels per channel, >= 2.

    Returns:
        (1, 3, h, w) in [0, 1].
    """
    sigma = period / 4
    radius = min(int(2 * sigma), min(x.shape[-2:]) - 1)
    smooth = gaussian_blur(x, 2 * radius + 1, sigma)
    poster = torch.round(smooth * (levels - 1)) / (levels - 1)
    strokes = target_image("stripes", x.shape[-2], x.shape[-1], period=period)[:, :1].to(x.device, x.dtype)
    return (poster * (0.8 + 0.4 * strokes)).clamp(0.0, 1.0)


#: Values of the ``decoy`` option.
DECOYS = ("auto", "sdedit", "procedural")


@dataclass
class StyleTarget:
    """What the loss pulls toward, for one view.

    Attributes:
        decoy: the decoy-style rendering ``x_d``, (1, 3, h, w) in [0, 1].
        latent: its VAE latent (posterior mean, scaled), (1, C, h/f, w/f).
        clip: its unit-norm CLIP image embedding (1, D), or None without ``clip_model``.
    """

    decoy: torch.Tensor
    latent: torch.Tensor
    clip: torch.Tensor | None


class StyleCloak(Objective):
    """Pull VAE (and optionally CLIP) features of the artwork toward a decoy-style rendering.

    Args:
        components: needs ``vae``; SDEdit decoys also need ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        decoy: how the decoy is rendered: ``"procedural"`` (default, :func:`procedural_decoy`), ``"sdedit"``, or
            ``"auto"``: SDEdit when those parts are loaded, else procedural. The default does not depend on which
            parts the caller loaded, so the CLI (which loads only ``needs``) and the web page (which loads every
            part) make the same files.
        decoy_prompt: the decoy style. Default ``"an impressionist oil painting with thick brush strokes"``.
        strength: SDEdit noise level, fraction of the schedule in (0, 1]. Default 0.5.
        num_inference_steps: DDIM steps of the full schedule; ``int(strength x num_inference_steps)`` (>= 1) are run.
            Default 20.
        guidance_scale: classifier-free guidance weight of the decoy prompt. Default 7.5.
        decoy_seed: seeds the SDEdit noise. Default 0.
        clip_model: an open_clip model name for an extra CLIP image-feature term (``cloak.models.load_open_clip``),
            e.g. ``"ViT-B-32"``, or None (default) for the VAE term only.
        clip_pretrained: the CLIP weights: an open_clip tag or a local checkpoint file. Default ``"openai"``.
        clip_weight: weight of the CLIP cosine distance against the latent MSE. Default 1.0.
    """

    name: ClassVar[str] = "style"
    summary: ClassVar[str] = "Glaze-like: pull VAE (and CLIP) features toward a decoy-style rendering of the image"
    needs: ClassVar[frozenset[str]] = frozenset({"vae"})

    def __init__(
        self,
        components: Components,
        decoy: str = "procedural",
        decoy_prompt: str = "an impressionist oil painting with thick brush strokes",
        strength: float = 0.5,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        decoy_seed: int = 0,
        clip_model: str | None = None,
        clip_pretrained: str | None = "openai",
        clip_weight: float = 1.0,
    ) -> None:
        super().__init__(components)
        clip_weight = non_negative(clip_weight, "clip_weight", self.name)
        self.strength, self.num_inference_steps, self.guidance_scale = sdedit_settings(
            strength, num_inference_steps, guidance_scale, self.name
        )
        self.clip_weight = clip_weight
        if not isinstance(decoy_seed, int) or isinstance(decoy_seed, bool) or decoy_seed < 0:
            raise ConfigError(f"`decoy_seed` (style option) must be an integer >= 0, got {decoy_seed!r}.")
        self.decoy_seed = decoy_seed
        if decoy not in DECOYS:
            raise ConfigError(f"`decoy` (style option) must be one of {', '.join(DECOYS)}, got {decoy!r}.")
        missing = sorted(part for part in DIFFUSION_PARTS if getattr(components, part) is None)
        if decoy == "sdedit" and missing:
            raise ConfigError(f"style option decoy='sdedit' needs the model parts {missing}, which were not loaded.")
        self.sdedit = decoy == "sdedit" or (decoy == "auto" and not missing)
        if self.sdedit:
            prediction_type(components.require("scheduler"))
            te, tok = components.require("text_encoder"), components.require("tokenizer")
            self.decoy_embeds = encode_prompt(te, tok, decoy_prompt)
            self.negative_embeds = encode_prompt(te, tok, "")
        self.clip = None
        if clip_model is not None:
            from cloak.models import load_open_clip

            self.clip = load_open_clip(clip_model, pretrained=clip_pretrained, device=str(components.device))

    @property
    def multiple(self) -> int:
        """The VAE factor; times the UNet's when the decoy is rendered by SDEdit."""
        factor = vae_scale_factor(self.components.require("vae"))
        if self.sdedit:
            factor *= 2 ** (len(self.components.require("unet").config["block_out_channels"]) - 1)
        return factor

    def decoy(self, x: torch.Tensor) -> torch.Tensor:
        """The decoy-style rendering ``x_d`` of a clean view ``x`` (1, 3, h, w) in [0, 1]; same shape and range."""
        if not self.sdedit:
            return procedural_decoy(x)
        with torch.no_grad():
            return img2img(
                self.components,
                x,
                self.decoy_embeds,
                self.negative_embeds,
                strength=self.strength,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=torch.Generator().manual_seed(self.decoy_seed),
            )

    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embedding of (1, 3, h, w) in [0, 1], resized and normalised as the model expects."""
        clip = self.clip
        assert clip is not None  # callers check self.clip
        mode = "bilinear" if clip.interpolation == "bilinear" else "bicubic"
        x = F.interpolate(x, size=clip.image_size, mode=mode, align_corners=False, antialias=True)
        # torch types a Module's attributes as Tensor | Module; encode_image is a method of open_clip's CLIP
        image = to_clip(x, mean=clip.mean, std=clip.std)
        return F.normalize(clip.model.encode_image(image).float(), dim=-1)  # type: ignore[operator]

    def target(self, x: torch.Tensor, generator: torch.Generator) -> StyleTarget:
        decoy = self.decoy(x)
        latent = vae_latents(self.components.require("vae"), decoy)
        clip = self._clip_features(decoy) if self.clip is not None else None
        return StyleTarget(decoy=decoy.detach(), latent=latent.detach(), clip=clip)

    def loss(self, x_adv: torch.Tensor, target: StyleTarget, generator: torch.Generator) -> torch.Tensor:
        loss = F.mse_loss(vae_latents(self.components.require("vae"), x_adv).float(), target.latent.float())
        if self.clip is not None:
            assert target.clip is not None  # `target` sets it when there is a CLIP model
            loss = loss + self.clip_weight * (1.0 - (self._clip_features(x_adv) * target.clip).sum())
        return loss
