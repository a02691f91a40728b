"""Build the testbed from scratch: procedural data -> VAE -> style judge -> text encoder + UNet.

The result is a real diffusers Stable Diffusion folder (``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``model_index.json``) that ``StableDiffusionPipeline.from_pretrained`` loads, plus the style
judge in ``judge/``. The architecture and training objectives are SD's (Rombach et al., 2022,
https://arxiv.org/abs/2112.10752): a KL autoencoder with 4 latent channels, a text-conditioned UNet with
cross-attention trained on the epsilon-prediction loss under SD's scaled-linear DDPM schedule, a CLIP text
encoder and the real CLIP tokenizer, with 10% empty captions for classifier-free guidance. Only the sizes are
miniature (64 px images, 16x16x4 latents, a few million parameters) so the whole build runs on 2 CPU cores.

The base model sees only ``SEEN`` styles; ``HELD_OUT`` styles appear in the judge's training set only.
Everything is seeded; the same config and seed give the same weights on the same machine and torch version.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor

from cloak.errors import ConfigError
from cloak.testbed.artists import HELD_OUT, SEEN, STYLES, caption, paint
from cloak.testbed.judge import Judge, JudgeConfig, JudgeNet

if TYPE_CHECKING:
    # From their modules: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

Progress = Callable[[str, int, int], None]
"""Progress callback: (stage name, step done, total steps)."""


@dataclass(frozen=True)
class BuildConfig:
    """Sizes and training lengths of the testbed (defaults: the shipped build).

    Attributes:
        resolution: image side in px.
        vae_channels: ``block_out_channels`` of the VAE; ``len - 1`` downsamplings (3 -> 4x, 16x16x4 latents).
            Within this build's CPU time the 4x VAE stays well under 24 dB PSNR on the finely textured styles;
            ``(32, 64)`` (2x, 32x32x4 latents) reached 21.7-33.5 dB but doubles the UNet's cost.
        unet_channels: ``block_out_channels`` of the UNet.
        text_hidden: width of the CLIP text encoder (its 49408-token embedding dominates its size).
        text_layers: transformer layers of the text encoder.
        images_per_style: training images per style (seeds 0 .. n-1).
        vae_steps, vae_batch, vae_crop, vae_lr: VAE training (random square crops of ``vae_crop`` px).
        vae_kl_weight: weight of the KL term (SD's autoencoder uses about 1e-6: nearly a plain autoencoder).
        judge_steps, judge_batch, judge_lr: judge training.
        judge_widths: channels of the judge's conv stages.
        unet_steps, unet_batch, unet_lr: text encoder + UNet training.
        save_every: write the pipeline every this many UNet steps, so an interrupted build leaves a model.
        uncond_prob: probability of an empty caption (classifier-free guidance training).
        bf16: train under ``torch.autocast("cpu", bfloat16)`` (measured slower than fp32 at these sizes here).
        seed: master seed.
    """

    resolution: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (48, 96, 96)
    text_hidden: int = 32
    text_layers: int = 2
    images_per_style: int = 400
    vae_steps: int = 8000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    judge_steps: int = 400
    judge_batch: int = 32
    judge_lr: float = 2e-3
    judge_widths: tuple[int, ...] = (16, 32, 64)
    unet_steps: int = 2000
    unet_batch: int = 24
    unet_lr: float = 1e-3
    save_every: int = 200
    uncond_prob: float = 0.1
    bf16: bool = False
    seed: int = 0
    seen: tuple[str, ...] = field(default=SEEN)


MICRO = BuildConfig(
    vae_channels=(16, 32, 32),
    unet_channels=(32, 64),
    text_hidden=32,
    text_layers=1,
    images_per_style=4,
    vae_steps=8,
    vae_batch=4,
    judge_steps=8,
    judge_batch=16,
    judge_widths=(8, 16),
    unet_steps=8,
    unet_batch=4,
    save_every=0,
)
"""A micro build (well under a minute) for tests: same code paths, untrained quality."""


def _lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 5% of ``peak``."""
    warm = min(warmup, max(total // 10, 1))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(total - warm, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def _autocast(cfg: BuildConfig) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


def make_dataset(styles: tuple[str, ...], n: int, size: int, seed_offset: int = 0) -> tuple[Tensor, list[str], Tensor]:
    """Paint ``n`` images per style: images ``(S*n, 3, size, size)`` in [0, 1], captions, style indices."""
    images, captions, labels = [], [], []
    for style in styles:
        for s in range(seed_offset, seed_offset + n):
            p = paint(style, s, size)
            images.append(p.image.transpose(2, 0, 1))
            captions.append(p.caption)
            labels.append(STYLES.index(style))
    return torch.from_numpy(np.stack(images)), captions, torch.tensor(labels)


def make_vae(cfg: BuildConfig) -> AutoencoderKL:
    """An untrained ``AutoencoderKL`` with 4 latent channels."""
    from diffusers import AutoencoderKL as Vae  # the top-level name: diffusers' module layout may move

    n = len(cfg.vae_channels)
    vae = Vae(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16 if min(cfg.vae_channels) % 16 == 0 else 8,
        sample_size=cfg.resolution,
    )
    return cast("AutoencoderKL", vae)  # a type checker reads diffusers' top-level names as placeholder classes


def make_unet(cfg: BuildConfig) -> UNet2DConditionModel:
    """An untrained ``UNet2DConditionModel`` with cross-attention to the text encoder's hidden states."""
    from diffusers import UNet2DConditionModel as UNet  # the top-level name, as in make_vae

    n = len(cfg.unet_channels)
    factor = 2 ** (len(cfg.vae_channels) - 1)
    unet = UNet(
        sample_size=cfg.resolution // factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=cfg.unet_channels,
        # no attention at the full latent resolution (its 256-token self-attention is the costliest layer on a CPU);
        # cross-attention at the coarser levels and in the middle block carries the prompt
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        layers_per_block=1,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return cast("UNet2DConditionModel", unet)


def make_text_encoder(cfg: BuildConfig) -> CLIPTextModel:
    """An untrained ``CLIPTextModel`` over the full CLIP vocabulary (49408 tokens, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 4,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def make_schedulers() -> tuple[DDPMScheduler, DDIMScheduler]:
    """SD's training schedule (DDPM, 1000 steps, scaled-linear betas 0.00085..0.012) and its DDIM sampler."""
    from diffusers import DDIMScheduler as Ddim  # the top-level names, as in make_vae
    from diffusers import DDPMScheduler as Ddpm

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ddpm = Ddpm(**common, clip_sample=False)
    ddim = Ddim(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return cast("DDPMScheduler", ddpm), cast("DDIMScheduler", ddim)


def train_vae(vae: AutoencoderKL, images: Tensor, cfg: BuildConfig, gen: torch.Generator, progress: Progress) -> None:
    """Reconstruction (L1 + MSE on [-1, 1]) + a tiny KL, on random crops with flips."""
    with torch.no_grad():
        # Start the posterior narrow (std ~0.02): with diffusers' default init the latents are sampled with std ~1
        # and a short training spends most of its steps learning to shrink it (SD's trained VAE is narrow too).
        quant_conv = vae.quant_conv
        assert quant_conv is not None and quant_conv.bias is not None  # make_vae's VAE has one (diffusers' default)
        quant_conv.bias[vae.config["latent_channels"] :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    n, side, crop = images.shape[0], images.shape[-1], min(cfg.vae_crop, images.shape[-1])
    for step in range(cfg.vae_steps):
        _set_lr(opt, _lr_at(step, cfg.vae_steps, cfg.vae_lr))
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=gen)
        oy, ox = (int(v) for v in torch.randint(0, side - crop + 1, (2,), generator=gen))
        x = images[idx, :, oy : oy + crop, ox : ox + crop]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        x = x * 2 - 1
        with _autocast(cfg):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress("vae", step + 1, cfg.vae_steps)
    vae.eval()


@torch.no_grad()
def encode(vae: AutoencoderKL, images: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std ``(N, 4, h, w)`` of images in [0, 1] (unscaled latents)."""
    means, stds = [], []
    for i in range(0, images.shape[0], batch):
        post = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: Tensor, batch: int = 256) -> Tensor:
    """VAE decode(encode mean) of images in [0, 1], back in [0, 1]."""
    out = []
    for i in range(0, images.shape[0], batch):
        z = vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean
        out.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Judge augmentation: random flips, mild blur, mild Gaussian noise, brightness jitter (all per batch half)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    blur = torch.rand(b, generator=gen) < 0.3
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = torch.where(blur[:, None, None, None], blurred, x)
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.04
    x = x + sigma * torch.randn(x.shape, generator=gen)
    x = x * (0.85 + 0.3 * torch.rand(b, 1, 1, 1, generator=gen))
    return x.clamp(0, 1)


def train_judge(
    images: Tensor, labels: Tensor, recon: Tensor, cfg: BuildConfig, gen: torch.Generator, progress: Progress
) -> Judge:
    """Cross-entropy on clean and VAE-reconstructed images of every style, with augmentation."""
    config = JudgeConfig(style_names=STYLES, widths=cfg.judge_widths, resolution=cfg.resolution)
    net = JudgeNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.judge_lr, weight_decay=1e-4)
    pool = torch.cat([images, recon])
    pool_labels = torch.cat([labels, labels])
    net.train()
    for step in range(cfg.judge_steps):
        _set_lr(opt, _lr_at(step, cfg.judge_steps, cfg.judge_lr))
        idx = torch.randint(0, pool.shape[0], (cfg.judge_batch,), generator=gen)
        x = _augment(pool[idx], gen)
        with _autocast(cfg):
            logits = net(x).float()
        loss = torch.nn.functional.cross_entropy(logits, pool_labels[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress("judge", step + 1, cfg.judge_steps)
    return Judge(net, config)


def train_unet(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    ddpm: DDPMScheduler,
    latents: tuple[Tensor, Tensor],
    captions: list[str],
    scaling: float,
    cfg: BuildConfig,
    gen: torch.Generator,
    progress: Progress,
    checkpoint: Callable[[int], None],
) -> None:
    """SD's objective: MSE between the UNet's epsilon prediction and the added noise, text encoder trained too."""
    means, stds = latents
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    unet.train()
    text_encoder.train()
    n = means.shape[0]
    for step in range(cfg.unet_steps):
        _set_lr(opt, _lr_at(step, cfg.unet_steps, cfg.unet_lr, warmup=200))
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        if torch.rand((), generator=gen) < 0.5:
            z0 = z0.flip(-1)  # the latent grid is spatial: a flipped latent is the latent of the flipped image
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_prob
        tok = torch.where(drop[:, None], empty, ids[idx])
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, ddpm.config["num_train_timesteps"], (cfg.unet_batch,), generator=gen)
        # diffusers annotates timesteps as the legacy torch.IntTensor; randint's int64 tensor is what it takes
        zt = ddpm.add_noise(z0, noise, t)  # type: ignore[arg-type]
        with _autocast(cfg):
            emb = text_encoder(tok)[0]
            pred = unet(zt, t, emb).sample.float()
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        progress("unet", step + 1, cfg.unet_steps)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.unet_steps:
            unet.eval()
            text_encoder.eval()
            checkpoint(step + 1)
            unet.train()
            text_encoder.train()
    unet.eval()
    text_encoder.eval()


def build(
    out: str | Path,
    cfg: BuildConfig = BuildConfig(),
    progress: Progress | None = None,
    vae_from: str | Path | None = None,
) -> dict:
    """Build the whole testbed into ``out`` (a diffusers SD folder + ``judge/`` + ``build.json``).

    Args:
        out: destination folder (created; existing files of the same names are overwritten).
        cfg: sizes and training lengths; ``MICRO`` for a test-sized build.
        progress: called as ``progress(stage, done, total)``.
        vae_from: a finished build (a folder, or ``"testbed"`` for the shipped one) whose VAE and judge are reused:
            only the text encoder and UNet are trained (from ``cfg.seed``). Two UNets on one VAE, as SD-1.5 and
            SD-2.1 share SD's autoencoder, for measuring how a cloak made against one transfers to the other.

    Returns:
        The build record also written to ``build.json``: config, seconds per stage, VAE scaling factor.
    """
    from diffusers import StableDiffusionPipeline

    from cloak.clip_tokenizer import build_clip_tokenizer

    if cfg.resolution % 2 ** (len(cfg.vae_channels) - 1):
        raise ConfigError(f"`resolution` {cfg.resolution} must be divisible by the VAE's downsampling factor.")
    unknown = [s for s in cfg.seen if s not in STYLES or s in HELD_OUT]
    if unknown:
        raise ConfigError(f"`seen` styles must be in SEEN {SEEN}, got {unknown}.")
    progress = progress or (lambda stage, done, total: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # module initialisations draw from the global generator
    gen = torch.Generator().manual_seed(cfg.seed)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    seen_images, seen_captions, _ = make_dataset(cfg.seen, cfg.images_per_style, cfg.resolution)
    times["data"] = time.perf_counter() - t0

    if vae_from is None:
        vae = make_vae(cfg)
        train_vae(vae, seen_images, cfg, gen, progress)
        times["vae"] = time.perf_counter() - t0 - sum(times.values())

        # The judge sees every style, held-out ones included, clean and through the VAE.
        n_judge = max(cfg.images_per_style // 3, 8)
        all_images, _, all_labels = make_dataset(STYLES, n_judge, cfg.resolution, seed_offset=cfg.images_per_style)
        judge = train_judge(all_images, all_labels, reconstruct(vae, all_images), cfg, gen, progress)
        judge.save(out / "judge")
        times["judge"] = time.perf_counter() - t0 - sum(times.values())
        means, stds = encode(vae, seen_images)
        scaling = float(1.0 / means.std())  # SD's convention: scaled latents have unit variance
        vae.register_to_config(scaling_factor=scaling)
    else:
        from cloak.models import TESTBED, TESTBED_DIR

        src = TESTBED_DIR if str(vae_from) == TESTBED else Path(vae_from)
        vae, scaling = _reuse_vae_and_judge(src, out, cfg)
        means, stds = encode(vae, seen_images)
    vae.save_pretrained(out / "vae", safe_serialization=True)  # early, so the VAE can be checked mid-build
    tokenizer = build_clip_tokenizer()
    text_encoder = make_text_encoder(cfg)
    unet = make_unet(cfg)
    ddpm, ddim = make_schedulers()
    # A type checker sees diffusers' top-level names as its torch-less placeholder classes, hence the two ignores.
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )

    def checkpoint(step: int) -> None:
        pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
        (out / "build.json").write_text(json.dumps({"partial": True, "unet_step": step}) + "\n")

    train_unet(
        unet, text_encoder, tokenizer, ddpm, (means, stds), seen_captions, scaling, cfg, gen, progress, checkpoint
    )
    times["unet"] = time.perf_counter() - t0 - sum(times.values())
    pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    times["total"] = time.perf_counter() - t0
    record = {
        "config": asdict(cfg),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "scaling_factor": scaling,
        "seen": list(cfg.seen),
        "held_out": list(HELD_OUT),
        "vae_from": None if vae_from is None else str(vae_from),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _reuse_vae_and_judge(src: Path, out: Path, cfg: BuildConfig) -> tuple[AutoencoderKL, float]:
    """Load ``src``'s VAE (checked against ``cfg``) and copy its judge into ``out``; returns (vae, scaling)."""
    from diffusers import AutoencoderKL

    for part in ("vae", "judge"):
        if not (src / part).is_dir():
            raise ConfigError(f"--vae-from {src}: no `{part}/` folder there; expected a folder written by a build.")
    vae = AutoencoderKL.from_pretrained(src / "vae")
    if tuple(vae.config.block_out_channels) != tuple(cfg.vae_channels):
        raise ConfigError(
            f"--vae-from {src}: its VAE has channels {tuple(vae.config.block_out_channels)}, this build's config "
            f"{tuple(cfg.vae_channels)}; use the same config (--micro or not) as the build it came from."
        )
    if (out / "judge").resolve() != (src / "judge").resolve():
        shutil.copytree(src / "judge", out / "judge", dirs_exist_ok=True)
    return vae.eval(), float(vae.config.scaling_factor)


def config_for(micro: bool, seed: int) -> BuildConfig:
    """The shipped config, or ``MICRO``, with ``seed``."""
    return replace(MICRO if micro else BuildConfig(), seed=seed)


__all__ = ["MICRO", "BuildConfig", "build", "caption", "config_for", "encode", "make_dataset", "reconstruct"]
