"""Tiny real Stable Diffusion 1.x components built from config, as diffusers' own tests do (no download).

Random weights seeded with `torch.manual_seed`; each network a few ten thousand parameters (the text
encoder's token embedding keeps the full 49408-token CLIP vocabulary so the real tokenizer works). Images are
32 px: the VAE has 2 blocks (scale factor 2) and the UNet samples 16 x 16 latents with 4 channels.
"""

from __future__ import annotations

import copy
import functools

import torch

from cloak.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from cloak.models import Components

TINY_RESOLUTION = 32  # px: unet sample_size 16 x vae scale factor 2
TINY_TEXT_DIM = 16  # text encoder hidden size = UNet cross-attention dim


@functools.cache
def _tokenizer():
    return build_clip_tokenizer()


def make_tiny_components(seed: int = 0) -> Components:
    """Fresh tiny SD-1.x components on CPU in float32, weights drawn after `torch.manual_seed(seed)`.

    Each call builds new modules, so a test may change their weights. Models are in eval mode with
    `requires_grad` off, as `cloak.models.load_components` returns them.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
    )
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=TINY_TEXT_DIM,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    # SD-1.x training noise schedule (its scheduler/scheduler_config.json): 1000 steps, scaled_linear betas.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    for model in (vae, unet, text_encoder):
        model.eval().requires_grad_(False)
    return Components(
        name="tiny",
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=copy.deepcopy(_tokenizer()),
        scheduler=scheduler,
        resolution=TINY_RESOLUTION,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def save_tiny_pipeline(components: Components, folder) -> None:
    """Write `components` as a diffusers StableDiffusionPipeline folder (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
