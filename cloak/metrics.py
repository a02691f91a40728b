"""Image-difference metrics between a clean artwork and its cloaked (or purified) copy.

All take 8-bit images as saved, (H, W, 3) or (H, W) uint8 numpy arrays, so the figures describe the files an
artist posts. LPIPS takes tensors and a loaded model (its AlexNet weights need the internet once).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cloak.errors import ConfigError


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


def lpips_distance(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """LPIPS (Zhang et al. 2018) between (1, 3, H, W) images in [0, 1] (lower = more similar; about 0-1)."""
    from cloak.units import to_lpips

    with torch.no_grad():
        return float(model(to_lpips(a), to_lpips(b)).mean())


def frechet_distance(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula, any feature space).

    ``||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))`` (Heusel et al., NeurIPS 2017,
    https://arxiv.org/abs/1706.08500). With centred features A (N, D) and B (M, D), the non-zero eigenvalues of
    ``S_a S_b`` are the squared singular values of ``A B^T / sqrt((N-1)(M-1))``, and those of ``A B^T`` are those
    of ``R_a R_b^T`` (QR factors), so the trace term costs a QR of each set and one SVD no larger than
    ``min(N, D) x min(M, D)``: exact, and fast for the small sets of a mimicry study (16 generations in 512-d
    CLIP space) where a ``D x D`` matrix square root would dominate.

    Args:
        feats_a: ``(N, D)`` features, N >= 2.
        feats_b: ``(M, D)`` features, M >= 2.

    Returns:
        >= 0 in squared feature units; lower = closer distributions, 0 for identical sets. Biased for small
        sets: compare figures computed with the same set sizes.
    """
    a = np.asarray(feats_a.detach().cpu() if isinstance(feats_a, Tensor) else feats_a, dtype=np.float64)
    b = np.asarray(feats_b.detach().cpu() if isinstance(feats_b, Tensor) else feats_b, dtype=np.float64)
    for name, f in (("feats_a", a), ("feats_b", b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ConfigError(f"`{name}` must be (N, D) with N >= 2, got shape {f.shape}.")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sizes differ: feats_a has D={a.shape[1]}, feats_b has D={b.shape[1]}.")
    (n, _), (m, _) = a.shape, b.shape
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    # numpy's stubs type qr as the (Q, R) pair in every mode; mode="r" returns R alone
    ra: np.ndarray = np.linalg.qr(ca, mode="r")  # type: ignore[assignment]
    rb: np.ndarray = np.linalg.qr(cb, mode="r")  # type: ignore[assignment]
    tr_sqrt = np.linalg.svd(ra @ rb.T, compute_uv=False).sum() / math.sqrt((n - 1) * (m - 1))
    value = ((mu_a - mu_b) ** 2).sum() + (ca**2).sum() / (n - 1) + (cb**2).sum() / (m - 1) - 2 * tr_sqrt
    return max(float(value), 0.0)
