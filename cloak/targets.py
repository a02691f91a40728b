"""Target images for targeted latent attacks (``encoder``, ``mist``).

A targeted encoder attack pulls the VAE latent of the artwork toward the latent of a target image, so that a model
fine-tuned on the cloaked artwork learns the target's texture instead of the artist's style (Mist's "textural loss",
Liang et al., ICML'23, https://arxiv.org/abs/2302.04578). The built-in targets are procedural high-contrast
patterns whose period is tied to the latent grid, so they occupy the latent space's detail channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cloak.errors import ConfigError

PATTERNS = ("stripes", "checker", "grey")


def check_target(name: str, period: int = 16, *, must_exist: bool = True) -> None:
    """Refuse a target that is neither a built-in pattern nor an image file, and a period under 2 px.

    Args:
        must_exist: also check that a target file exists now. Settings made before their target image (an eval
            config naming a file that a benchmark script writes) check the file when the method is built.

    Raises:
        ConfigError: naming the choices.
    """
    if not isinstance(name, (str, Path)) or (
        must_exist and name not in PATTERNS and not Path(name).is_file()
    ):
        raise ConfigError(f"target must be one of {list(PATTERNS)} or an image file, got {name!r} (no such file).")
    if isinstance(period, bool) or not isinstance(period, int) or period < 2:
        raise ConfigError(f"`period` must be a whole number of px, at least 2, got {period!r}.")


def target_image(name: str, height: int, width: int, *, period: int = 16) -> torch.Tensor:
    """Render a built-in target pattern or load a user image, at (height, width).

    Args:
        name: one of :data:`PATTERNS`, or the path of an image file (resized to cover, then centre-cropped).
        height: px.
        width: px.
        period: pattern period, px (for the built-in patterns).

    Returns:
        (1, 3, height, width) float32 in [0, 1].
    """
    if name in PATTERNS:
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        if name == "stripes":
            # Diagonal stripes in complementary colours: strong, non-axis-aligned structure.
            phase = ((xx + yy) % period < period // 2).float()
            img = torch.stack([phase, 1 - phase, 0.5 + 0.5 * (2 * phase - 1) * 0.8])
        elif name == "checker":
            phase = (((xx // (period // 2)) + (yy // (period // 2))) % 2).float()
            img = phase.expand(3, height, width)
        else:
            img = torch.full((3, height, width), 0.5)
        return img.unsqueeze(0).float()
    check_target(name, period)
    path = Path(name)
    from cloak.imageio import load_artwork, to_tensor

    img = to_tensor(load_artwork(path).rgb)
    scale = max(height / img.shape[-2], width / img.shape[-1])
    size = (max(height, round(img.shape[-2] * scale)), max(width, round(img.shape[-1] * scale)))
    img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return img[..., top : top + height, left : left + width].contiguous()


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, for previews."""
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
