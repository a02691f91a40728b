"""Load the model parts a protection method needs: diffusers components, open_clip, lpips.

Only the requested parts are loaded. When weights are neither cached nor reachable, the loaders fail fast with
one `ModelNotFoundError` line that names the model, the cache folder and how to pass a local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cloak.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class Components:
    """The parts of a Stable Diffusion 1.x model that a method asked for; parts not asked for are None.

    Models are in eval mode with `requires_grad` off: a cloak optimises the image, not the model.
    """

    name: str  # what the user passed ("testbed", a hub id, a folder, a file)
    vae: AutoencoderKL | None
    unet: UNet2DConditionModel | None
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer | None
    scheduler: DDPMScheduler | None  # the training noise scheduler
    resolution: int  # the resolution the model is trained at, px (512 for SD-1.5)
    device: torch.device
    dtype: torch.dtype


def resolve_device(device: str) -> torch.device:
    """Turn a device name into a `torch.device`.

    Args:
        device: "auto" (CUDA if available, then Apple MPS, then CPU), "cpu", "cuda" (also "cuda:N") or "mps".

    Returns:
        The device.

    Raises:
        ConfigError: the name is not one of the above or the device is not available on this machine.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = device.partition(":")
    if kind not in DEVICES[1:] or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"`device` must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"`device` is {device!r} but CUDA is not available here (no NVIDIA GPU or a CPU-only torch build); "
            "use --device cpu or auto."
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"`device` is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"`device` is {device!r} but Apple MPS is not available here; use --device cpu or auto.")
    return torch.device(device)
