"""Diffusion-based purifiers: DiffPure/SDEdit, GrIDPure, noisy upscaling, IMPRESS.

They take injected model parts (`cloak.models.Components`: the real SD-1.x, the testbed, or tiny test models) and
never load weights themselves. Any image size works. DiffPure and noisy upscaling work at the image's own size:
it is padded by edge replication to a multiple of ``8 x`` the VAE's scale factor (64 px for SD-1.x, so the UNet's
downsamplings divide the latent) and cropped back. GrIDPure and IMPRESS work at the model's resolution
(``components.resolution``), as the published attacks do on SD's 512 px images: GrIDPure resizes each tile to it,
IMPRESS seeks consistency on the image as the mimic's loader resizes it (`cloak.views`); their cost per image
is then nearly independent of its size. Inputs and outputs are ``(B, 3, H, W)`` in [0, 1] on the caller's device
and dtype; the models run on ``components.device`` in ``components.dtype``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import SEED_RANGE, Purifier, seeded
from cloak.errors import ConfigError
from cloak.specs import Param
from cloak.transforms import gaussian_noise
from cloak.units import eps_to_unit, from_vae, to_lpips, vae_latents, vae_roundtrip, vae_scale_factor
from cloak.views import plan_views, render_view

if TYPE_CHECKING:
    from cloak.models import Components

DIFFUSION_PARTS = frozenset({"vae", "unet", "text_encoder", "tokenizer", "scheduler"})
TILE_BATCH = 16  # GrIDPure tiles per model call: bounds memory, independent of the image size


def check_components(components: Components | None, needs: frozenset[str], where: str) -> Components:
    """Refuse missing components or parts, naming the purifier and the parts."""
    if components is None:
        raise ConfigError(
            f"`{where}` needs diffusion model components ({', '.join(sorted(needs))}); pass `components` "
            "(e.g. from cloak.models.load_components, or --model on the command line)."
        )
    missing = sorted(part for part in needs if getattr(components, part) is None)
    if missing:
        raise ConfigError(
            f"`{where}` needs the model parts {', '.join(sorted(needs))}; components {components.name!r} lack "
            f"{', '.join(missing)}."
        )
    return components


def _pad(x: Tensor, multiple: int) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def _multiple(components: Components) -> int:
    return vae_scale_factor(components.require("vae")) * 8


def prompt_embeddings(components: Components, prompt: str, batch: int) -> Tensor:
    """The text encoder's last hidden states for ``prompt``, padded to the tokenizer's maximum length.

    Returns:
        ``(batch, max_length, hidden)`` on ``components.device`` in ``components.dtype``.
    """
    tokenizer = components.require("tokenizer")
    ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(components.device)
    with torch.no_grad():
        hidden = components.require("text_encoder")(ids)[0]
    return hidden.to(components.dtype).expand(batch, -1, -1)


def _ddim_denoise(components: Components, z: Tensor, t_start: int, steps: int, embeds: Tensor) -> Tensor:
    """Deterministic DDIM (Song et al., ICLR 2021, eta = 0) from timestep ``t_start`` to the clean latent.

    Visits ``steps`` evenly spaced timesteps ``t_start, ..., t_start / steps``; the last step lands on the
    clean latent (alpha-bar = 1). Handles epsilon-, v- and sample-prediction UNets.
    """
    scheduler, unet = components.require("scheduler"), components.require("unet")
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    kind = scheduler.config["prediction_type"]
    timesteps = [round(t_start * (steps - i) / steps) for i in range(steps)]
    for i, t in enumerate(timesteps):
        a_t = float(alphas[t])
        a_prev = float(alphas[timesteps[i + 1]]) if i + 1 < steps else 1.0
        timestep = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        out = unet(z, timestep, encoder_hidden_states=embeds).sample
        if kind == "epsilon":
            eps = out
            x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        elif kind == "v_prediction":
            x0 = a_t**0.5 * z - (1 - a_t) ** 0.5 * out
            eps = a_t**0.5 * out + (1 - a_t) ** 0.5 * z
        elif kind == "sample":
            x0 = out
            eps = (z - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        else:
            raise ConfigError(
                f"Unsupported scheduler prediction_type {kind!r}; expected epsilon, v_prediction, sample."
            )
        z = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return z


def diffpure(
    x: Tensor,
    components: Components,
    t: float,
    num_inference_steps: int,
    generator: torch.Generator,
    prompt: str = "",
    prompt_embeds: Tensor | None = None,
) -> Tensor:
    """DiffPure / SDEdit in latent space: encode, diffuse to ``t * T``, denoise with DDIM, decode.

    Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022 (https://arxiv.org/abs/2205.07460);
    Meng et al., "SDEdit", ICLR 2022 (https://arxiv.org/abs/2108.01073). Targets the whole latent pipeline: the
    cloak must survive the VAE round trip and the denoiser. No classifier-free guidance (one UNet call a step).

    Args:
        x: ``(B, 3, H, W)`` in [0, 1], any size.
        components: needs vae, unet, text_encoder, tokenizer, scheduler.
        t: diffusion depth as a fraction of the training schedule, in (0, 1]; the start timestep is
            ``round(t * (T - 1))`` (T = 1000 for SD).
        num_inference_steps: DDIM steps from there to the clean latent, >= 1 (capped at the start timestep + 1).
        generator: draws the forward-diffusion noise, on ``components.device``.
        prompt: conditioning text; empty (unconditional) by default.
        prompt_embeds: ``(1, length, hidden)`` text-encoder states to use instead of encoding ``prompt`` (from
            `prompt_embeddings`; saves the text encoder when purifying many tiles).

    Returns:
        ``(B, 3, H, W)`` in [0, 1], on ``x``'s device and dtype.
    """
    h, w = x.shape[-2:]
    scheduler, vae = components.require("scheduler"), components.require("vae")
    if prompt_embeds is None:
        prompt_embeds = prompt_embeddings(components, prompt, 1)
    t_start = round(t * (scheduler.config["num_train_timesteps"] - 1))
    steps = min(num_inference_steps, t_start + 1)
    with torch.no_grad():
        image = _pad(x.to(components.device, components.dtype), _multiple(components))
        z0 = vae_latents(vae, image)
        noise = torch.randn(z0.shape, generator=generator, device=generator.device, dtype=z0.dtype).to(z0.device)
        a = float(scheduler.alphas_cumprod[t_start])
        z = a**0.5 * z0 + (1 - a) ** 0.5 * noise
        z = _ddim_denoise(components, z, t_start, steps, prompt_embeds.expand(z.shape[0], -1, -1))
        out = from_vae(vae.decode(z / vae.config["scaling_factor"]).sample)
    return out[..., :h, :w].to(x.device, x.dtype)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets from 0 in steps of ``stride``, plus one flush with the far border if needed."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def grid_geometry(height: int, width: int, tile: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """GrIDPure's tile side and stride for an image, px: by default half the short side and half the tile.

    The published grid (FIELD_NOTES section 4: 256 px tiles, stride 128, on SD's 512 px images) is a fraction of
    the image: a 3x3 grid of half-image tiles on a square image, whatever its pixel count. ``tile`` and
    ``stride`` fix them in px instead.

    Raises:
        ConfigError: ``stride`` larger than ``tile``.
    """
    tile = tile if tile is not None else max(1, (min(height, width) + 1) // 2)
    stride = stride if stride is not None else max(1, tile // 2)
    if stride > tile:
        raise ConfigError(f"`gridpure`: `stride` ({stride} px) must not exceed `tile` ({tile} px).")
    return tile, stride


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of ``(N, C, h, w)`` to ``size``; no copy when the size already matches."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def gridpure(
    x: Tensor,
    components: Components,
    t: float,
    num_inference_steps: int,
    iterations: int,
    gamma: float,
    tile: int,
    stride: int,
    generator: torch.Generator,
    prompt: str = "",
) -> Tensor:
    """GrIDPure: DiffPure on overlapping tiles at the model's resolution, averaged, blended with its input, repeated.

    Zhao et al., "Can Protective Perturbation Safeguard Personal Data from Being Exploited by Stable
    Diffusion?", CVPR 2024 (https://arxiv.org/abs/2312.00084); settings of FIELD_NOTES section 4: 256 px tiles,
    stride 128 on a 512 px image (a 3x3 grid of half-image tiles; `grid_geometry` scales it to any image), t = 10
    of 1000 steps, 20 iterations, blend gamma 0.1. Each iteration ``k`` computes
    ``x_{k+1} = (1 - gamma) * mean_over_tiles(up(DiffPure(down(tile of x_k)))) + gamma * x_k``, where ``down``
    resizes a tile (antialiased bicubic) so that its short side is the model's resolution
    (``components.resolution``), the size the diffusion model works at, and ``up`` resizes the result back. So
    the diffusion pass costs the same per tile whatever the image size: on a 512 px image with the 64 px testbed,
    9 tiles of 256 px run at 64 px (they are not cut into 961 tiles of 32 px); with SD-1.5 (512 px) they run at
    512 px. All tiles of a round go through the model together, `TILE_BATCH` at a time.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1], any size (a side shorter than ``tile`` is one tile of that side).
        components: as `diffpure`; ``components.resolution`` sets the size of the diffusion pass.
        t: diffusion depth of each DiffPure pass, fraction of the schedule, in (0, 1].
        num_inference_steps: DDIM steps of each pass.
        iterations: number of tile-purify-blend rounds, >= 1.
        gamma: share of the round's input kept, in [0, 1).
        tile: tile side in the image, px (`grid_geometry` gives the published one).
        stride: offset between tiles, px, <= ``tile``.
        generator: draws all diffusion noise, on ``components.device``.
        prompt: conditioning text.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], on ``x``'s device and dtype.
    """
    b, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    scale = components.resolution / min(th, tw)
    work = (max(1, round(th * scale)), max(1, round(tw * scale)))  # the tile as the model sees it, px
    boxes = [(y0, x0) for y0 in _starts(h, th, stride) for x0 in _starts(w, tw, stride)]
    current = x.to(components.device, components.dtype)
    embeds = prompt_embeddings(components, prompt, 1)
    for _ in range(iterations):
        tiles = torch.stack([current[..., y0 : y0 + th, x0 : x0 + tw] for y0, x0 in boxes], dim=1)
        tiles = _resize(tiles.reshape(b * len(boxes), 3, th, tw), work)  # (B * n_tiles, 3, *work), image-major
        purified = torch.cat(
            [
                diffpure(chunk, components, t, num_inference_steps, generator, prompt_embeds=embeds)
                for chunk in tiles.split(TILE_BATCH)
            ]
        )
        purified = _resize(purified, (th, tw)).reshape(b, len(boxes), 3, th, tw)
        total = torch.zeros_like(current)
        count = torch.zeros_like(current[:, :1])
        for i, (y0, x0) in enumerate(boxes):
            total[..., y0 : y0 + th, x0 : x0 + tw] += purified[:, i]
            count[..., y0 : y0 + th, x0 : x0 + tw] += 1
        current = (1 - gamma) * total / count + gamma * current
    return current.clamp(0, 1).to(x.device, x.dtype)


def noisy_upscale(
    x: Tensor,
    components: Components | None,
    sigma: float,
    t: float,
    num_inference_steps: int,
    noise_level: int,
    generator: torch.Generator,
    upscaler: Any = None,
    prompt: str = "",
) -> Tensor:
    """Noisy upscaling: add Gaussian noise, then let a diffusion upscaler redraw the image.

    Hoenig et al., "Adversarial Perturbations Cannot Reliably Protect Artists From Generative AI", ICLR 2025
    (https://arxiv.org/abs/2406.12027), the strongest single attack there: noise sigma 0.1, then the SD x4
    upscaler.

    With ``upscaler`` (an injected diffusers ``StableDiffusionUpscalePipeline``): the noisy image is upscaled
    x4 at ``noise_level`` with ``num_inference_steps`` steps, then resized back to ``(H, W)`` with antialiasing
    (upscaling a 512 px image makes a 2048 px one: slow on CPU). Without one: the noisy image is downscaled 2x
    and upscaled back (bicubic, antialiased), then an SDEdit pass (`diffpure` at depth ``t``) at ``(H, W)``
    redraws the detail, with ``components``.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        components: as `diffpure`; unused when ``upscaler`` is given.
        sigma: Gaussian noise sigma, [0, 1] units.
        t: SDEdit depth of the fallback, fraction of the schedule.
        num_inference_steps: denoising steps (upscaler or DDIM).
        noise_level: the upscaler's noise-augmentation level (its ``noise_level``, 0-350 for SD x4).
        generator: draws the noise, on its own device.
        upscaler: a ``StableDiffusionUpscalePipeline`` or None.
        prompt: conditioning text.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], on ``x``'s device and dtype.
    """
    h, w = x.shape[-2:]
    noisy = gaussian_noise(x, sigma, generator)
    if upscaler is not None:
        with torch.no_grad():
            big = upscaler(
                prompt=[prompt] * x.shape[0],
                image=noisy.to(upscaler.device, upscaler.dtype),
                noise_level=noise_level,
                num_inference_steps=num_inference_steps,
                guidance_scale=1.0,
                generator=generator,
                output_type="pt",
            ).images
        out = F.interpolate(big.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0, 1).to(x.device, x.dtype)
    small = (max(1, h // 2), max(1, w // 2))
    blurry = F.interpolate(noisy, size=small, mode="bicubic", antialias=True, align_corners=False)
    blurry = F.interpolate(blurry, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    components = check_components(components, DIFFUSION_PARTS, "noisy_upscale")  # the fallback needs the model
    return diffpure(blurry, components, t, num_inference_steps, generator, prompt)


def cosine_annealed(lr: float, step: int, steps: int) -> float:
    """Step ``step`` of ``steps`` on a cosine from ``lr`` down to ``lr / 1000`` (as IMPRESS's release anneals:
    torch's CosineAnnealingLR from 0.01 to 1e-5)."""
    floor = lr / 1000
    return floor + (lr - floor) * (1 + math.cos(math.pi * step / steps)) / 2


def impress(
    x: Tensor,
    components: Components,
    iterations: int,
    lr: float,
    eps: float,
    lpips_eps: float,
    alpha: float,
    lpips_model: Any = None,
    noise: float = 0.0,
    schedule: str = "constant",
    generator: torch.Generator | None = None,
) -> Tensor:
    """IMPRESS: make the image, as the model sees it, consistent under the VAE round trip, staying close to the input.

    Cao et al., "IMPRESS: Evaluating the Resilience of Imperceptible Perturbations Against Unauthorized Data Usage in
    Diffusion-Based Generative AI", NeurIPS 2023 (https://arxiv.org/abs/2310.19248). Targets the VAE: a cloak that
    moves the latent leaves ``x`` and ``D(E(x))`` apart; minimising ``||v(x') - D(E(v(x')))||^2`` pulls it back. Adam
    on ``x'`` from ``x`` (plus Gaussian noise of std ``noise`` when > 0, as the release starts), ``iterations`` steps
    (the paper goes up to 3000), the step size constant or annealed on a cosine to a thousandth of ``lr`` (the
    release's schedule). ``v`` renders the image as the mimic's data loader does (`cloak.views`: short side resized,
    antialiased, to ``components.resolution`` when larger; overlapping tiles of that when very elongated): the paper
    works on images at SD's 512 px, where ``v`` is the identity; on a larger image the fine-tune only ever sees
    ``v(x')``, so that is where the consistency is sought, and the gradient flows back through the resize to a
    full-resolution ``x'``. The closeness bound is on the full-resolution image: with ``lpips_model``, the paper's
    hinge penalty ``alpha * max(LPIPS(x', x) - lpips_eps, 0)``; without one, a hard L-inf projection to ``eps``/255
    around x.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        components: needs vae; ``components.resolution`` sets the views.
        iterations: Adam steps, >= 1.
        lr: Adam step size, [0, 1] pixel units.
        eps: L-inf bound, 0-255 units (used without ``lpips_model``).
        lpips_eps: LPIPS bound (used with ``lpips_model``; the paper uses 0.1).
        alpha: weight of the LPIPS hinge (with ``lpips_model``).
        lpips_model: a callable ``(a, b) -> distance`` on [-1, 1] images (an ``lpips.LPIPS``), or None.
        noise: std of the Gaussian noise added to the starting point, [0, 1] units; 0 starts from ``x``.
        schedule: ``"constant"`` or ``"cosine"`` (annealed from ``lr`` to ``lr / 1000`` over the steps).
        generator: draws the starting noise (needed when ``noise`` > 0), on its own device.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], on ``x``'s device and dtype.
    """
    h, w = x.shape[-2:]
    vae = components.require("vae")
    views = plan_views(h, w, resolution=components.resolution, multiple=vae_scale_factor(vae))
    target = x.detach().to(components.device, components.dtype)
    bound = eps_to_unit(eps)

    def project_(image: Tensor) -> None:
        if lpips_model is None:
            image.copy_(torch.minimum(torch.maximum(image, target - bound), target + bound))
        image.clamp_(0, 1)

    x_pur = target.clone()
    if noise > 0:
        if generator is None:
            raise ValueError("impress: a noisy start (noise > 0) needs a generator")
        x_pur += noise * torch.randn(x_pur.shape, generator=generator, device=generator.device).to(x_pur)
        project_(x_pur)
    x_pur.requires_grad_(True)
    optimiser = torch.optim.Adam([x_pur], lr=lr)
    with torch.enable_grad():  # callers often purify under no_grad; this optimisation needs gradients
        for step in range(iterations):
            if schedule == "cosine":
                optimiser.param_groups[0]["lr"] = cosine_annealed(lr, step, iterations)
            optimiser.zero_grad()
            loss = x_pur.new_zeros(())  # the views' reconstruction error, summed below
            for view in views:
                seen = render_view(x_pur, view)
                recon = vae_roundtrip(vae, seen)
                loss = loss + (recon - seen).pow(2).mean() / len(views)
            if lpips_model is not None:
                distance = lpips_model(to_lpips(x_pur), to_lpips(target)).mean()
                loss = loss + alpha * torch.relu(distance - lpips_eps)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                project_(x_pur)
    return x_pur.detach().to(x.device, x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Classes

_T = Param("t", float, 0.2, low=0, high=1, low_open=True)
_STEPS = Param("steps", int, 5, low=1, high=1000)


class DiffPure(Purifier):
    """DiffPure / SDEdit (`diffpure`): ``t`` depth in (0, 1] (default 0.2), ``steps`` DDIM steps (default 5)."""

    name = "diffpure"
    summary = "DiffPure / SDEdit: noise to depth t, denoise (needs a model)"
    differentiable = False
    random = True
    needs = DIFFUSION_PARTS
    params = (_T, _STEPS)

    def __init__(self, components: Components | None, *, prompt: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.components = check_components(components, self.needs, self.name)
        self.prompt = prompt

    def purify(self, x: Tensor, t: float, steps: int, seed: int) -> Tensor:
        return diffpure(x, self.components, t, steps, seeded(seed, self.components.device), self.prompt)


class GridPure(Purifier):
    """GrIDPure (`gridpure`). Defaults from FIELD_NOTES, scaled to the image and the model: ``tile`` = half the
    image's short side, ``stride`` = tile / 2 px (256 and 128 on a 512 px image: a 3x3 grid), each tile purified
    at the model's resolution; ``t`` = 0.01 (10 of 1000 steps), 1 DDIM step, ``iterations`` = 20,
    ``gamma`` = 0.1."""

    name = "gridpure"
    summary = "GrIDPure: tiled DiffPure, blended, iterated (needs a model)"
    differentiable = False
    random = True
    needs = DIFFUSION_PARTS
    params = (
        Param("t", float, 0.01, low=0, high=1, low_open=True),
        Param("steps", int, 1, low=1, high=1000),
        Param("iterations", int, 20, low=1),
        Param("gamma", float, 0.1, low=0, high=1, high_open=True),
        Param("tile", int, None, low=8, unit="px; default half the image's short side"),
        Param("stride", int, None, low=1, unit="px; default tile / 2"),
    )

    def __init__(self, components: Components | None, *, prompt: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.components = check_components(components, self.needs, self.name)
        self.prompt = prompt
        tile, stride = self.values["tile"], self.values["stride"]
        if isinstance(tile, int) and isinstance(stride, int):
            grid_geometry(tile, tile, tile, stride)  # refuse stride > tile now, not mid-run

    def purify(
        self,
        x: Tensor,
        t: float,
        steps: int,
        iterations: int,
        gamma: float,
        tile: int | None,
        stride: int | None,
        seed: int,
    ) -> Tensor:
        tile, stride = grid_geometry(x.shape[-2], x.shape[-1], tile, stride)
        generator = seeded(seed, self.components.device)
        return gridpure(x, self.components, t, steps, iterations, gamma, tile, stride, generator, self.prompt)


class NoisyUpscale(Purifier):
    """Noisy upscaling (`noisy_upscale`): ``sigma`` 0.1, then a diffusion upscaler at ``noise_level`` 320
    (FIELD_NOTES) or, without one, 2x down-up and an SDEdit pass at depth ``t`` (0.2); ``steps`` (5) is the
    denoising step count of either (diffusers runs the upscaler with 75 by default: give more with one).

    The upscaler is injected (``parse_spec(..., upscaler=...)``, which wins) or named by ``upscaler``: a hub id
    (Hoenig et al. use ``stabilityai/stable-diffusion-x4-upscaler``) or a local folder, loaded by
    ``cloak.models.load_upscaler`` (offline and not cached, this fails with one line). ``"none"`` (the default) is
    the SDEdit stand-in, which is what runs offline (docs/RESULTS.md, "How faithful the baselines and purifications
    are")."""

    name = "noisy_upscale"
    summary = "Gaussian noise then a diffusion upscaler or SDEdit (needs a model)"
    differentiable = False
    random = True
    needs = DIFFUSION_PARTS
    params = (
        Param("sigma", float, 0.1, low=0, high=1, unit="[0, 1] units"),
        _T,
        _STEPS,
        Param("noise_level", int, 320, low=0, high=350),
        Param("upscaler", str, "none", unit="a diffusers upscaler's hub id or folder, or none"),
    )

    def __init__(
        self, components: Components | None, *, pipeline: Any = None, prompt: str = "", **options: Any
    ) -> None:
        super().__init__(**options)
        if pipeline is None and self.values["upscaler"] != "none":
            from cloak.models import load_upscaler

            device, dtype = (components.device, components.dtype) if components is not None else ("auto", None)
            pipeline = load_upscaler(self.values["upscaler"], device=device, dtype=dtype)
        self.components = components if pipeline is not None else check_components(components, self.needs, self.name)
        self.upscaler = pipeline
        self.prompt = prompt

    def purify(
        self, x: Tensor, sigma: float, t: float, steps: int, noise_level: int, upscaler: str, seed: int
    ) -> Tensor:
        if self.upscaler is not None:
            device = self.upscaler.device
        else:
            assert self.components is not None  # checked in __init__ when there is no upscaler
            device = self.components.device
        return noisy_upscale(
            x, self.components, sigma, t, steps, noise_level, seeded(seed, device), self.upscaler, self.prompt
        )


class Impress(Purifier):
    """IMPRESS (`impress`): ``iterations`` (100), ``lr`` (0.004), L-inf ``eps`` (8, 0-255 units) or, with an
    LPIPS model, ``lpips_eps`` (0.1) and hinge weight ``alpha`` (0.025); a start ``noise`` std (0) and a step-size
    ``schedule`` (``constant``; or ``cosine``).

    The release (AAAAAAsuka/Impress, impress.py with scripts/new/test_all.sh's settings) works in [-1, 1]: 3000
    steps at lr 0.01, Gaussian start noise 0.1, cosine annealing, hinge weight 0.1 on LPIPS above 0.1 added to the
    MSE. In this function's [0, 1] units that is ``impress:lpips_net=vgg,iterations=3000,lr=0.005,noise=0.05,
    schedule=cosine`` with the default ``alpha`` (the release's 0.1 against an MSE four times this one's).

    The LPIPS model is injected (``parse_spec(..., lpips=...)``) or named by ``lpips_net``: ``"vgg"`` (the IMPRESS
    release's backbone) or ``"alex"`` loads it with ``cloak.models.load_lpips`` (its backbone weights come from
    torchvision's hub: offline this fails with one line). ``"none"`` (the default) keeps the L-inf box, which is
    what runs offline; the release bounds LPIPS instead, which allows far larger changes (docs/RESULTS.md, "How
    faithful the baselines and purifications are").
    """

    name = "impress"
    summary = "IMPRESS: VAE-consistency optimisation within a bound (needs a VAE)"
    differentiable = False
    needs = frozenset({"vae"})
    params = (
        Param("iterations", int, 100, low=1),
        Param("lr", float, 0.004, low=0, low_open=True, unit="[0, 1] units"),
        Param("eps", float, 8.0, low=1, high=255, unit="0-255 units"),
        Param("lpips_eps", float, 0.1, low=0, low_open=True),
        Param("alpha", float, 0.025, low=0, low_open=True),
        Param("lpips_net", str, "none", choices=("none", "vgg", "alex")),
        Param("noise", float, 0.0, low=0, high=1, unit="[0, 1] units"),
        Param("schedule", str, "constant", choices=("constant", "cosine")),
    )

    def __init__(self, components: Components | None, *, lpips: Any = None, **options: Any) -> None:
        super().__init__(**options)
        self.components = check_components(components, self.needs, self.name)
        if lpips is None and self.values["lpips_net"] != "none":
            from cloak.models import load_lpips

            lpips = load_lpips(self.components.device, net=self.values["lpips_net"])
        self.lpips = lpips

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        """As `Purifier.sample`, plus a seed for the starting noise when there is any (a noiseless IMPRESS is
        deterministic and draws nothing more, as before the option existed)."""
        drawn = super().sample(generator)
        if drawn["noise"] > 0:
            drawn["seed"] = int(torch.randint(SEED_RANGE, (1,), generator=generator, device=generator.device).item())
        return drawn

    def purify(
        self,
        x: Tensor,
        iterations: int,
        lr: float,
        eps: float,
        lpips_eps: float,
        alpha: float,
        lpips_net: str,
        noise: float,
        schedule: str,
        seed: int | None = None,
    ) -> Tensor:
        generator = seeded(seed, self.components.device) if seed is not None else None
        return impress(
            x, self.components, iterations, lr, eps, lpips_eps, alpha, self.lpips, noise, schedule, generator
        )
