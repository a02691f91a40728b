"""Image-difference metrics between a clean artwork and its cloaked (or purified) copy.

All take 8-bit images as saved, (H, W, 3) or (H, W) uint8 numpy arrays, so the figures describe the files an
artist posts. LPIPS takes tensors and a loaded model (its AlexNet weights need the internet once).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute pixel difference, 0-255 units (lower = less visible)."""
    _check_pair(a, b)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels, peak 255 (higher = less visible; inf if equal)."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004), Gaussian window 11 px, sigma 1.5, mean over channels.

    In [-1, 1], 1 = identical (higher = less visible). Filters one channel at a time with separable Gaussian
    filtering, so memory stays linear in the image size (a 4000x3000 image needs a few hundred MB).
    """
    from scipy.ndimage import gaussian_filter

    _check_pair(a, b)
    a3 = a.reshape(a.shape[0], a.shape[1], -1)
    b3 = b.reshape(b.shape[0], b.shape[1], -1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(t: np.ndarray) -> np.ndarray:
        return gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")  # radius 5: an 11 px window

    scores = []
    for c in range(a3.shape[2]):
        x, y = a3[..., c].astype(np.float64), b3[..., c].astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))


def lpips_distance(model, a: torch.Tensor, b: torch.Tensor) -> float:
    """LPIPS (Zhang et al. 2018) between (1, 3, H, W) images in [0, 1] (lower = more similar; about 0-1)."""
    from cloak.units import to_lpips

    with torch.no_grad():
        return float(model(to_lpips(a), to_lpips(b)).mean())
