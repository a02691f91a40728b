"""Edge-preserving filters in torch: bilateral, guided, and the AdverseCleaner recipe built from them.

AdverseCleaner (lllyasviel, 2023, https://github.com/lllyasviel/AdverseCleaner, ``clean.py``) removes adversarial
noise with no learned model: 64 passes of OpenCV's ``bilateralFilter(d=5, sigmaColor=8, sigmaSpace=8)``, then
4 passes of ``cv2.ximgproc.guidedFilter(guide=input, radius=4, eps=16)``, all on 0-255 pixel values. The filters
are re-implemented here (no OpenCV dependency) after OpenCV's definitions; all are differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bilateral_filter(x: Tensor, diameter: int, sigma_color: float, sigma_space: float) -> Tensor:
    """Bilateral filter (Tomasi & Manduchi, ICCV 1998) as OpenCV's ``bilateralFilter`` defines it for colour.

    Weight of neighbour q for pixel p: ``exp(-|p - q|^2 / (2 sigma_space^2)) * exp(-c^2 / (2 sigma_color^2))``
    with ``c`` the sum over channels of the absolute colour differences (0-255 units); neighbours within a
    disc of radius ``diameter // 2``; borders mirrored without repeating the edge (OpenCV's BORDER_REFLECT_101).

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        diameter: neighbourhood diameter, px, >= 1.
        sigma_color: colour sigma, 0-255 units.
        sigma_space: spatial sigma, px.

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    radius = diameter // 2
    b, c, h, w = x.shape
    offsets = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    ]
    padded = F.pad(x, (radius,) * 4, mode="reflect") * 255.0
    center = x * 255.0
    num = torch.zeros_like(center)
    den = torch.zeros_like(center[:, :1])
    for dy, dx in offsets:
        q = padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
        color = (q - center).abs().sum(dim=1, keepdim=True)
        weight = torch.exp(-(color**2) / (2 * sigma_color**2) - (dy * dy + dx * dx) / (2 * sigma_space**2))
        num = num + weight * q
        den = den + weight
    return num / den / 255.0


def _box_mean(t: Tensor, radius: int) -> Tensor:
    # Mean over a (2r+1)^2 window, borders mirrored; t (N, C, H, W).
    return F.avg_pool2d(F.pad(t, (radius,) * 4, mode="reflect"), 2 * radius + 1, stride=1)


def guided_filter(guide: Tensor, src: Tensor, radius: int, eps: float) -> Tensor:
    """Guided filter with a colour guide (He, Sun & Tang, "Guided Image Filtering", TPAMI 2013, section 3.5).

    Per window, ``src`` is fitted as an affine function ``a^T I + b`` of the 3-channel guide ``I``, with ridge
    term ``eps``; the coefficients are averaged over the windows covering each pixel.

    Args:
        guide: ``(B, 3, H, W)`` in [0, 1].
        src: ``(B, 3, H, W)`` in [0, 1], filtered channel by channel.
        radius: window radius, px (window side ``2 radius + 1``).
        eps: regularisation in squared 0-255 units (OpenCV's convention on 8-bit images; 16 = a sigma of 4/255).

    Returns:
        ``(B, 3, H, W)``, not clamped (the affine fit can overshoot slightly).
    """
    radius = min(radius, min(guide.shape[-2:]) - 1)
    i, p = guide * 255.0, src * 255.0
    b, _, h, w = i.shape
    mean_i = _box_mean(i, radius)  # (B, 3, H, W)
    mean_p = _box_mean(p, radius)  # (B, 3, H, W)
    # Second moments: products of every guide channel with every guide / source channel.
    ii = (i[:, :, None] * i[:, None, :]).reshape(b, 9, h, w)
    ip = (i[:, :, None] * p[:, None, :]).reshape(b, 9, h, w)
    cov_ii = _box_mean(ii, radius).reshape(b, 3, 3, h, w) - mean_i[:, :, None] * mean_i[:, None, :]
    cov_ip = _box_mean(ip, radius).reshape(b, 3, 3, h, w) - mean_i[:, :, None] * mean_p[:, None, :]
    eye = torch.eye(3, dtype=i.dtype, device=i.device)
    sigma = cov_ii.permute(0, 3, 4, 1, 2) + eps * eye  # (B, H, W, 3 guide, 3 guide)
    a = torch.linalg.solve(sigma, cov_ip.permute(0, 3, 4, 1, 2))  # (B, H, W, 3 guide, 3 src)
    a = a.permute(0, 3, 4, 1, 2)  # (B, 3 guide, 3 src, H, W)
    bias = mean_p - (a * mean_i[:, :, None]).sum(dim=1)  # (B, 3 src, H, W)
    mean_a = _box_mean(a.reshape(b, 9, h, w), radius).reshape(b, 3, 3, h, w)
    mean_b = _box_mean(bias, radius)
    return ((mean_a * i[:, :, None]).sum(dim=1) + mean_b) / 255.0
