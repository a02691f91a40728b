"""What the mimic sees: the image resized to the model's training resolution, cut into overlapping tiles.

A DreamBooth/LoRA fine-tune resizes every training image so that its short side equals the model's resolution
(diffusers' DreamBooth scripts: ``Resize(resolution)`` then a crop). A perturbation optimised only at the native
pixels of a 4000x3000 file is mostly averaged away by that resize. So the objective is evaluated on *views*: the
whole image resized (differentiably, antialiased) to what the model sees, and, when that is still larger than
``max_side``, overlapping tiles of it. The gradient flows back through the resize to the full-resolution
perturbation, so the saved file keeps its native size while the cloak is shaped for the model's input. Memory is
bounded by one view, whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class View:
    """One region of the image as the model sees it.

    Attributes:
        size: ``(height, width)`` in px the whole image is resized to (equal to the native size when no resize).
        box: ``(top, left, height, width)`` of the tile inside the resized image, px.
    """

    size: tuple[int, int]
    box: tuple[int, int, int, int]


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering ``[0, length)`` with at least ``overlap`` px shared between neighbours."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    # Spread the tiles evenly so the last one ends exactly at the border.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_views(height: int, width: int, *, resolution: int, multiple: int = 8, max_side: int = 768) -> list[View]:
    """Plan the views on which the objective is evaluated.

    Args:
        height: image height, px.
        width: image width, px.
        resolution: the model's training resolution, px (512 for SD-1.5). Images whose short side exceeds it are
            resized so that the short side equals it, as the mimic's data loader does.
        multiple: view sizes are rounded up to a multiple of this (8 for a VAE, 64 for a UNet), px.
        max_side: the largest side evaluated at once, px; larger resized images are cut into overlapping tiles of
            ``resolution`` px (a quarter overlap). Bounds memory.

    Returns:
        The views, covering every pixel of the resized image.
    """
    scale = min(1.0, resolution / min(height, width))
    h = _round_up(round(height * scale), multiple)
    w = _round_up(round(width * scale), multiple)
    if max(h, w) <= max_side:
        return [View(size=(h, w), box=(0, 0, h, w))]
    tile = min(_round_up(resolution, multiple), max_side)
    overlap = _round_up(tile // 4, multiple)
    tile_h, tile_w = min(tile, h), min(tile, w)
    return [
        View(size=(h, w), box=(top, left, tile_h, tile_w))
        for top in _starts(h, tile_h, overlap)
        for left in _starts(w, tile_w, overlap)
    ]


def render_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """Differentiably render one view of ``x`` ((B, C, H, W) in [0, 1]): antialiased resize, then crop."""
    if tuple(x.shape[-2:]) != view.size:
        x = F.interpolate(x, size=view.size, mode="bilinear", align_corners=False, antialias=True)
    top, left, h, w = view.box
    return x[..., top : top + h, left : left + w]
