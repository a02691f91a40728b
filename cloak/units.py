"""The one place where units and value ranges change.

Public tensors are float ``(B, 3, H, W)`` in ``[0, 1]``. Users give L-inf budgets in 0-255 units (``8`` means
8/255 on the saved 8-bit file); they become floats here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cloak.errors import ConfigError

if TYPE_CHECKING:
    # From its module: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

# CLIP's image normalisation (OpenAI CLIP and open_clip's OpenAI-pretrained models).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def eps_to_unit(eps: float, name: str = "eps") -> float:
    """Convert an L-inf budget from 0-255 units to [0, 1] units, validating it.

    Args:
        eps: budget in 0-255 units, in (0, 255].
        name: the parameter's name, for the error message.

    Returns:
        ``eps / 255``.
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise ConfigError(f"`{name}` must be a number in (0, 255] (0-255 units), got {eps!r}.")
    if not 0 < eps <= 255:
        raise ConfigError(f"`{name}` must be in (0, 255] (0-255 units), got {eps}.")
    if eps < 1:
        raise ConfigError(
            f"`{name}` must be in (0, 255] (0-255 units) and at least 1 to change an 8-bit file, got {eps}. "
            f"Did you mean {round(eps * 255)} for {round(eps * 255)}/255?"
        )
    return float(eps) / 255.0


def to_vae(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> the VAE's [-1, 1] input."""
    return x * 2.0 - 1.0


def from_vae(x: torch.Tensor) -> torch.Tensor:
    """The VAE decoder's [-1, 1] output -> [0, 1] image (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def to_clip(x: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """[0, 1] image -> CLIP's normalised input (resizing is the caller's job)."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def to_lpips(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> LPIPS' [-1, 1] input."""
    return x * 2.0 - 1.0


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell of a diffusers ``AutoencoderKL`` (8 for SD-1.x)."""
    return 2 ** (len(vae.config["block_out_channels"]) - 1)


def vae_latents(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode a [0, 1] image to the diffusion model's latent space (scaled as the UNet sees it).

    Args:
        vae: a diffusers ``AutoencoderKL``.
        x: (B, 3, H, W) in [0, 1]; H and W multiples of the VAE scale factor.
        generator: draw ``z ~ q(z|x)`` with it, as training does; ``None`` takes the posterior mean.

    Returns:
        (B, C, H/f, W/f) latents times ``vae.config.scaling_factor``.
    """
    dist = vae.encode(to_vae(x)).latent_dist
    z = dist.mean if generator is None else dist.sample(generator=generator)
    return z * vae.config["scaling_factor"]


def vae_roundtrip(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """``D(E[q(z|x)])``: a [0, 1] image through the VAE and back (differentiable; not clamped), as IMPRESS compares.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        x: (B, 3, H, W) in [0, 1]; H and W multiples of the VAE scale factor.
    """
    return from_vae(vae.decode(vae_latents(vae, x) / vae.config["scaling_factor"]).sample)
