"""Shared pieces of the methods that use the diffusion model (``advdm``, ``aspl``, ``sds``, ``mist``, ``style``).

Written once here: the text embedding of a prompt, the forward noising ``z_t = sqrt(a_t) z + sqrt(1 - a_t) eps`` at
random timesteps, the denoising loss the model is trained with (Ho et al., "Denoising Diffusion Probabilistic
Models", NeurIPS'20, https://arxiv.org/abs/2006.11239, the "simple" loss; Stable Diffusion trains on it in the VAE's
latent space), the model's noise prediction, and an SDEdit/img2img pass (Meng et al., ICLR'22,
https://arxiv.org/abs/2108.01073). Symbols follow the papers: ``z`` the scaled VAE latent, ``t`` the timestep,
``eps`` the Gaussian noise, ``eps_theta(z_t, t, c)`` the UNet's prediction under the text condition ``c``.

Every random draw takes the caller's ``torch.Generator`` and is made on the generator's device, then moved to the
latents' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cloak.errors import ConfigError
from cloak.units import from_vae, vae_latents

if TYPE_CHECKING:
    # From its module: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from cloak.models import Components

#: The model parts every diffusion-loss method needs.
DIFFUSION_PARTS = frozenset({"vae", "unet", "text_encoder", "tokenizer", "scheduler"})


def positive_int(value: object, name: str, method: str) -> int:
    """Validate a count option of a method: a positive ``int`` (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"`{name}` ({method} option) must be a positive integer, got {value!r}.")
    return value


def non_negative(value: object, name: str, method: str) -> float:
    """Validate a weight option of a method: a number >= 0 (not a bool, not NaN), as a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ConfigError(f"`{name}` ({method} option) must be a number >= 0, got {value!r}.")
    return float(value)


def prompt_ids(tokenizer: CLIPTokenizer, prompt: str) -> torch.Tensor:
    """Token ids of ``prompt``, padded/truncated to the tokenizer's length (77 for CLIP): (1, 77) long, on CPU."""
    if not isinstance(prompt, str):
        raise ConfigError(f"`prompt` must be a string, got {prompt!r}.")
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_prompt(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str) -> torch.Tensor:
    """The text condition ``c``: the text encoder's last hidden states for ``prompt``, (1, 77, D), no grad."""
    with torch.no_grad():
        return text_encoder(prompt_ids(tokenizer, prompt).to(text_encoder.device))[0]


@dataclass
class Noised:
    """Latents noised at random timesteps (one row per draw).

    Attributes:
        latents: the clean latents ``z``, broadcast to (n, C, h, w).
        noisy: ``z_t``, (n, C, h, w).
        noise: ``eps``, (n, C, h, w).
        timesteps: ``t``, (n,) long, in [0, num_train_timesteps).
    """

    latents: torch.Tensor
    noisy: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


def timestep_window(value: object, scheduler: DDPMScheduler, method: str) -> tuple[int, int] | None:
    """Validate a ``timesteps`` option: ``None`` (all of them) or ``[lo, hi]``, ``0 <= lo < hi <= T``, as a tuple."""
    if value is None:
        return None
    n_train = int(scheduler.config["num_train_timesteps"])
    pair = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else []
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair) or not pair or not (
        0 <= pair[0] < pair[1] <= n_train
    ):
        raise ConfigError(
            f"`timesteps` ({method} option) must be [lo, hi] with 0 <= lo < hi <= {n_train} (t is drawn from "
            f"lo, ..., hi - 1), got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def add_noise(
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    generator: torch.Generator,
    samples: int = 1,
    window: tuple[int, int] | None = None,
) -> Noised:
    """Draw ``samples`` pairs ``t ~ U{0, ..., T-1}``, ``eps ~ N(0, I)`` and noise ``latents`` (1, C, h, w) with each.

    ``window = (lo, hi)`` draws ``t`` from ``lo, ..., hi - 1`` instead. Draw order (t first, then eps) is fixed so
    that methods sharing a generator seed draw the same values.
    """
    shape = (samples, *latents.shape[1:])
    lo, hi = window if window is not None else (0, scheduler.config["num_train_timesteps"])
    t = torch.randint(lo, hi, shape[:1], generator=generator, device=generator.device)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    t, eps = t.to(latents.device), eps.to(latents.device, latents.dtype)
    z = latents.expand(shape)
    # diffusers annotates timesteps as the legacy torch.IntTensor; randint's int64 tensor is what it takes
    return Noised(latents=z, noisy=scheduler.add_noise(z, eps, t), noise=eps, timesteps=t)  # type: ignore[arg-type]


def prediction_type(scheduler: DDPMScheduler) -> str:
    """What the UNet predicts, ``"epsilon"`` or ``"v_prediction"`` (SD-2.x 768), validated."""
    kind = scheduler.config["prediction_type"]
    if kind not in ("epsilon", "v_prediction"):
        raise ConfigError(f"scheduler `prediction_type` must be 'epsilon' or 'v_prediction', got {kind!r}.")
    return kind


def training_target(scheduler: DDPMScheduler, noised: Noised) -> torch.Tensor:
    """What the UNet is trained to predict: ``eps``, or ``v = sqrt(a_t) eps - sqrt(1 - a_t) z`` for v-prediction."""
    if prediction_type(scheduler) == "epsilon":
        return noised.noise
    # diffusers annotates timesteps as the legacy torch.IntTensor; the int64 timesteps are what it takes
    return scheduler.get_velocity(noised.latents, noised.noise, noised.timesteps)  # type: ignore[arg-type]


def unet_prediction(unet: torch.nn.Module, noised: Noised, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """The UNet's raw output for ``noised`` under the condition ``prompt_embeds`` (1, 77, D): (n, C, h, w)."""
    c = prompt_embeds.expand(noised.noisy.shape[0], -1, -1)
    return unet(noised.noisy, noised.timesteps, encoder_hidden_states=c).sample


def predicted_noise(scheduler: DDPMScheduler, noised: Noised, prediction: torch.Tensor) -> torch.Tensor:
    """``eps_theta`` from the UNet's output: itself, or ``sqrt(a_t) v + sqrt(1 - a_t) z_t`` for v-prediction."""
    if prediction_type(scheduler) == "epsilon":
        return prediction
    a = scheduler.alphas_cumprod.to(noised.noisy.device)[noised.timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * prediction.float() + (1 - a).sqrt() * noised.noisy.float()


def denoising_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator,
    samples: int = 1,
) -> torch.Tensor:
    """The diffusion training loss ``E_{t, eps} ||eps_theta(z_t, t, c) - eps||^2`` (mean over draws and elements).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        scheduler: the training noise scheduler (``DDPMScheduler``).
        latents: ``z`` (1, C, h, w), scaled as the UNet sees it (``cloak.units.vae_latents``).
        prompt_embeds: ``c`` (1, 77, D).
        generator: draws ``t`` and ``eps`` (see :func:`add_noise`).
        samples: Monte Carlo draws of (t, eps), evaluated as one batch.

    Returns:
        A float32 scalar, differentiable in ``latents`` (and in the UNet's weights if they require grad).
    """
    noised = add_noise(scheduler, latents, generator, samples)
    prediction = unet_prediction(unet, noised, prompt_embeds)
    return F.mse_loss(prediction.float(), training_target(scheduler, noised).float())


def sdedit_settings(
    strength: object, num_inference_steps: object, guidance_scale: object, method: str
) -> tuple[float, int, float]:
    """Validate a method's SDEdit options: ``(strength, num_inference_steps, guidance_scale)`` as (float, int, float).

    ``strength`` in (0, 1], ``num_inference_steps`` a positive int, ``guidance_scale`` >= 1, and at least one
    denoising step run (``int(strength * num_inference_steps) >= 1``).
    """
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 < strength <= 1:
        raise ConfigError(f"`strength` ({method} option) must be in (0, 1], got {strength!r}.")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 1:
        raise ConfigError(f"`guidance_scale` ({method} option) must be a number >= 1, got {guidance_scale!r}.")
    steps = positive_int(num_inference_steps, "num_inference_steps", method)
    if int(strength * steps) < 1:
        raise ConfigError(
            f"{method}'s SDEdit runs int(strength x num_inference_steps) denoising steps, which must be >= 1; got "
            f"strength {strength} and num_inference_steps {steps}."
        )
    return float(strength), steps, float(guidance_scale)


def img2img(
    components: Components,
    x: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    *,
    strength: float,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    checkpoint: bool = False,
    decode: bool = True,
) -> torch.Tensor:
    """SDEdit: noise the image's latent to ``strength`` of the schedule and denoise it under a prompt (DDIM, eta 0).

    Timesteps as diffusers' img2img pipeline picks them; classifier-free guidance (Ho & Salimans 2022,
    https://arxiv.org/abs/2207.12598) with ``negative_embeds`` as the unconditional branch. Differentiable in ``x``
    when gradients are enabled (``sdedit``, PhotoGuard's diffusion attack, back-propagates through it); call it under
    ``torch.no_grad()`` to only render.

    Args:
        components: needs ``vae``, ``unet``, ``scheduler``.
        x: (1, 3, h, w) in [0, 1]; h and w multiples of the VAE x UNet downsampling.
        prompt_embeds: the condition (1, 77, D).
        negative_embeds: the unconditional condition (1, 77, D), usually the empty prompt.
        strength: fraction of the noise schedule, in (0, 1]; 1 ignores the image.
        num_inference_steps: DDIM steps of the full schedule; ``int(strength * num_inference_steps)`` (>= 1) are run.
        guidance_scale: classifier-free guidance weight (1: none).
        generator: draws the starting noise.
        checkpoint: with gradients enabled, keep no UNet activations for the backward pass and recompute them
            there (gradient checkpointing): memory of one denoising step instead of all, for one more UNet forward
            each.
        decode: return the image; ``False`` returns the denoised latent instead (scaled as the UNet sees it).

    Returns:
        (1, 3, h, w) in [0, 1], or the latent (1, C, h/f, w/f) without ``decode``.
    """
    from diffusers import DDIMScheduler
    from torch.utils.checkpoint import checkpoint as recompute

    vae, unet = components.require("vae"), components.require("unet")
    ddim = DDIMScheduler.from_config(components.require("scheduler").config)
    ddim.set_timesteps(num_inference_steps, device=x.device)
    start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
    timesteps = ddim.timesteps[start:]
    embeds = torch.cat([negative_embeds, prompt_embeds])

    def guided(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        uncond, cond = unet(torch.cat([z, z]), t, encoder_hidden_states=embeds).sample.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    z0 = vae_latents(vae, x).float()  # the scheduler's arithmetic stays in float32, even under autocast
    eps = torch.randn(z0.shape, generator=generator, device=generator.device, dtype=torch.float32)
    z = ddim.add_noise(z0, eps.to(z0.device), timesteps[:1])
    for t in timesteps:
        if checkpoint and torch.is_grad_enabled():
            noise = recompute(guided, z, t, use_reentrant=False)
        else:
            noise = guided(z, t)
        z = ddim.step(noise, t, z).prev_sample
    if not decode:
        return z
    return from_vae(vae.decode(z / vae.config["scaling_factor"]).sample)
