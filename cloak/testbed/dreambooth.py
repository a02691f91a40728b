"""A minimal DreamBooth fine-tune and a sampler, for the testbed's mimicry gate.

DreamBooth (Ruiz et al., CVPR 2023, https://arxiv.org/abs/2208.12242) fine-tunes the denoiser on a handful of
images paired with a prompt holding a rare token ("a painting in sks style"), with the ordinary diffusion
loss: encode with the VAE, add DDPM noise at a uniformly drawn timestep, regress the noise (MSE on epsilon).
This is the recipe of diffusers' ``train_dreambooth.py`` without prior preservation (AdamW, weight decay 1e-2,
gradient clipping at 1.0, the text encoder frozen). The evaluation suite builds the full-featured mimics
(LoRA, prior preservation, text-encoder training); this one is small, correct, and quick on the testbed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from cloak.errors import ConfigError
from cloak.models import Components
from cloak.units import to_vae

SKS_PROMPT = "a painting in sks style"
"""The DreamBooth prompt of the testbed's mimicry gate."""


def _require(components: Components, parts: tuple[str, ...]) -> None:
    missing = [p for p in parts if getattr(components, p) is None]
    if missing:
        raise ConfigError(f"`components` of {components.name!r} lacks {', '.join(missing)}; load it with these parts.")


@torch.no_grad()
def encode_prompt(components: Components, prompts: list[str]) -> Tensor:
    """Text encoder hidden states ``(B, 77, D)`` of ``prompts`` (padded to the tokenizer's max length)."""
    _require(components, ("tokenizer", "text_encoder"))
    tok = components.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return components.text_encoder(ids.input_ids.to(components.device))[0]


def dreambooth(
    components: Components,
    images: Tensor,
    prompt: str = SKS_PROMPT,
    steps: int = 400,
    lr: float = 1e-4,
    batch_size: int = 4,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> torch.nn.Module:
    """Fine-tune a copy of the UNet on ``images`` with ``prompt`` (DreamBooth's loss, no prior preservation).

    Args:
        components: loaded with vae, unet, text_encoder, tokenizer and scheduler (the DDPM training schedule);
            left unchanged.
        images: ``(N, 3, H, W)`` in [0, 1] at the model's resolution.
        prompt: the instance prompt.
        steps: optimiser steps, >= 1.
        lr: AdamW learning rate.
        batch_size: images per step (drawn with replacement), >= 1.
        generator: the source of every random draw (batch, latent sample, noise, timestep); a fresh
            ``torch.Generator`` seeded 0 when None.
        progress: called as ``progress(step_done, steps, loss)``.

    Returns:
        The fine-tuned UNet (a copy, in eval mode with ``requires_grad`` off); swap it into a ``Components`` (e.g.
        ``dataclasses.replace(components, unet=unet)``) to sample from it.
    """
    _require(components, ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ConfigError(f"`images` must be (N, 3, H, W) in [0, 1] with N >= 1, got shape {tuple(images.shape)}.")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise ConfigError(f"`images` must be in [0, 1], got [{float(images.min()):.3f}, {float(images.max()):.3f}].")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"`steps` and `batch_size` must be >= 1, got steps={steps}, batch_size={batch_size}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = components.device, components.dtype
    vae, scheduler = components.vae, components.scheduler
    with torch.no_grad():
        post = vae.encode(to_vae(images.to(device=device, dtype=dtype))).latent_dist
        mean, std = post.mean, post.std
    emb = encode_prompt(components, [prompt])  # (1, 77, D), frozen text encoder
    unet = copy.deepcopy(components.unet).train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    scale = vae.config.scaling_factor
    n_train = scheduler.config.num_train_timesteps
    for step in range(steps):
        idx = torch.randint(0, mean.shape[0], (batch_size,), generator=generator)
        # z0 ~ q(z | x): a fresh posterior sample each step, as diffusers' script does with latent_dist.sample()
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator).to(device)) * scale
        noise = torch.randn(z0.shape, generator=generator).to(device=device, dtype=dtype)  # epsilon
        t = torch.randint(0, n_train, (batch_size,), generator=generator).to(device)
        zt = scheduler.add_noise(z0, noise, t)
        pred = unet(zt, t, emb.expand(batch_size, -1, -1)).sample
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress(step + 1, steps, float(loss))
    return unet.eval().requires_grad_(False)


@torch.no_grad()
def generate(
    components: Components,
    prompt: str,
    n: int,
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> Tensor:
    """Sample ``n`` images for ``prompt`` with diffusers' ``StableDiffusionPipeline`` and a DDIM scheduler.

    Args:
        components: loaded with vae, unet, text_encoder, tokenizer and scheduler.
        prompt: the text prompt.
        n: number of images, >= 1.
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free guidance scale (1 disables it).
        generator: the source of the initial noise; a fresh one seeded 0 when None.
        batch_size: images per pipeline call.

    Returns:
        ``(n, 3, R, R)`` in [0, 1] on ``components.device``, R = ``components.resolution``.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    _require(components, ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    if n < 1:
        raise ConfigError(f"`n` must be >= 1, got {n}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    r = components.resolution
    out = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        # initial latents drawn here from the caller's generator on CPU, so results do not depend on the device
        shape = (k, components.unet.config.in_channels, r // pipe.vae_scale_factor, r // pipe.vae_scale_factor)
        latents = torch.randn(shape, generator=generator).to(device=components.device, dtype=components.dtype)
        result = pipe(
            [prompt] * k,
            height=r,
            width=r,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            latents=latents,
            output_type="pt",
        )
        out.append(result.images)
    return torch.cat(out)
