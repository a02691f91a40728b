"""Classical purifiers: codecs, resampling, filters and noise, as a mimicker applies them before fine-tuning.

Settings seen in the literature (FIELD_NOTES section 4; Hoenig et al., "Adversarial Perturbations Cannot
Reliably Protect Artists From Generative AI", ICLR 2025, https://arxiv.org/abs/2406.12027): Gaussian noise
sigma 0.05, JPEG quality 70-90 (also 50, 75), crop 10 % + resize, Gaussian blur k = 7, resize down and up,
bilateral + guided filtering ("AdverseCleaner").

Codecs (JPEG, WebP) and the PIL resampling run on 8-bit pixels, as a real mimicker's tools do, so they are not
differentiable; their differentiable stand-ins for EOT are in `cloak.transforms`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from attacks.base import Purifier, seeded
from attacks.filters import bilateral_filter, guided_filter
from cloak.specs import Param
from cloak.transforms import gaussian_blur, gaussian_noise


def _on_uint8(x: Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """Run ``fn`` ((H, W, 3) uint8 -> (H, W, 3) uint8) on each image of the batch, as 8-bit pixels."""
    out = []
    for image in x.detach():
        rgb = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.append(torch.from_numpy(np.array(fn(rgb), dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype) / 255.0


def _pil_codec(rgb: np.ndarray, fmt: str, **options: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(x: Tensor, quality: int) -> Tensor:
    """PIL (libjpeg) JPEG round trip at ``quality`` with PIL's defaults (4:2:0 chroma), on 8-bit pixels."""
    return _on_uint8(x, lambda rgb: _pil_codec(rgb, "JPEG", quality=quality))


def webp(x: Tensor, quality: int) -> Tensor:
    """PIL (libwebp) lossy WebP round trip at ``quality``, on 8-bit pixels."""
    return _on_uint8(x, lambda rgb: _pil_codec(rgb, "WEBP", quality=quality))


PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize(x: Tensor, factor: float, filter: str = "bicubic") -> Tensor:
    """Resize down by ``factor`` and back up to the original size with PIL (antialiased), on 8-bit pixels.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        factor: intermediate scale in (0, 1]; intermediate side ``round(side * factor)``, at least 1 px.
        filter: a key of `PIL_FILTERS`, used both ways.
    """
    h, w = x.shape[-2:]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    resample = PIL_FILTERS[filter]

    def fn(rgb: np.ndarray) -> np.ndarray:
        im = Image.fromarray(rgb).resize(small, resample).resize((w, h), resample)
        return np.asarray(im)

    return _on_uint8(x, fn)


def crop(x: Tensor, fraction: float, top: float, left: float) -> Tensor:
    """Crop away ``fraction`` of each side's length, then resize back bilinearly (differentiable).

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        fraction: share of the height and of the width removed, in [0, 0.5] (0.1 keeps 90 % x 90 %).
        top: where the crop sits vertically, in [0, 1] (0 = at the top edge, 1 = at the bottom edge).
        left: where the crop sits horizontally, in [0, 1].
    """
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * (1 - fraction))), max(1, round(w * (1 - fraction)))
    y0, x0 = round(top * (h - ch)), round(left * (w - cw))
    window = x[..., y0 : y0 + ch, x0 : x0 + cw]
    return F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def median(x: Tensor, size: int) -> Tensor:
    """Median filter over a ``size`` x ``size`` window per channel, borders mirrored."""
    r = size // 2
    b, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), size)  # (B, C*size*size, H*W)
    return patches.view(b, c, size * size, h, w).median(dim=2).values


def bitdepth(x: Tensor, bits: int) -> Tensor:
    """Quantise each channel to ``2**bits`` evenly spaced levels in [0, 1] (feature squeezing, Xu et al. 2018)."""
    levels = 2**bits - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


def adverse_cleaner(
    x: Tensor,
    bilateral_passes: int = 64,
    diameter: int = 5,
    sigma_color: float = 8.0,
    sigma_space: float = 8.0,
    guided_passes: int = 4,
    radius: int = 4,
    eps: float = 16.0,
) -> Tensor:
    """AdverseCleaner: repeated bilateral filtering, then guided filtering with the input as guide.

    Recipe and defaults of lllyasviel/AdverseCleaner (2023, https://github.com/lllyasviel/AdverseCleaner): 64
    bilateral passes (d 5, sigma colour 8, sigma space 8), then 4 guided passes (radius 4, eps 16), 0-255 units.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        bilateral_passes: number of bilateral passes.
        diameter: bilateral neighbourhood diameter, px.
        sigma_color: bilateral colour sigma, 0-255 units.
        sigma_space: bilateral spatial sigma, px.
        guided_passes: number of guided-filter passes, each guided by the input ``x``.
        radius: guided-filter window radius, px.
        eps: guided-filter regularisation, squared 0-255 units.
    """
    y = x
    for _ in range(bilateral_passes):
        y = bilateral_filter(y, diameter, sigma_color, sigma_space)
    for _ in range(guided_passes):
        y = guided_filter(x, y, radius, eps)
    return y.clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Classes


class Identity(Purifier):
    """No purification: the baseline row of every table."""

    name = "identity"
    summary = "no purification (baseline)"
    differentiable = True

    def purify(self, x: Tensor) -> Tensor:
        return x


class JPEG(Purifier):
    """JPEG round trip with PIL (libjpeg, 4:2:0 chroma) at ``quality`` in [1, 100] (default 75)."""

    name = "jpeg"
    summary = "JPEG round trip (PIL, 4:2:0)"
    differentiable = False
    params = (Param("quality", int, 75, low=1, high=100),)

    def purify(self, x: Tensor, quality: int) -> Tensor:
        return jpeg(x, quality)


class WebP(Purifier):
    """Lossy WebP round trip with PIL (libwebp) at ``quality`` in [1, 100] (default 75)."""

    name = "webp"
    summary = "lossy WebP round trip (PIL)"
    differentiable = False
    params = (Param("quality", int, 75, low=1, high=100),)

    def purify(self, x: Tensor, quality: int) -> Tensor:
        return webp(x, quality)


class Resize(Purifier):
    """Resize down by ``factor`` in (0, 1] (default 0.5) and back up, PIL ``filter`` (default bicubic)."""

    name = "resize"
    summary = "resize down and up (PIL)"
    differentiable = False
    params = (
        Param("factor", float, 0.5, low=0, high=1, low_open=True),
        Param("filter", str, "bicubic", choices=tuple(PIL_FILTERS)),
    )

    def purify(self, x: Tensor, factor: float, filter: str) -> Tensor:
        return resize(x, factor, filter)


class Crop(Purifier):
    """Crop ``fraction`` of each side (default 0.1) at a random position, resize back bilinearly."""

    name = "crop"
    summary = "random crop + resize back"
    differentiable = True
    params = (Param("fraction", float, 0.1, low=0, high=0.5),)

    def sample(self, generator: torch.Generator) -> dict:
        drawn = super().sample(generator)
        top, left = torch.rand(2, generator=generator, device=generator.device, dtype=torch.float64).tolist()
        return {**drawn, "top": top, "left": left}

    def purify(self, x: Tensor, fraction: float, top: float, left: float) -> Tensor:
        return crop(x, fraction, top, left)


class Blur(Purifier):
    """Gaussian blur (`cloak.transforms.gaussian_blur`): ``kernel`` odd px (default 7), ``sigma`` px (1.0)."""

    name = "blur"
    summary = "Gaussian blur"
    differentiable = True
    params = (
        Param("sigma", float, 1.0, low=0, low_open=True, unit="px"),
        Param("kernel", int, 7, low=3, odd=True, unit="px"),
    )

    def purify(self, x: Tensor, sigma: float, kernel: int) -> Tensor:
        return gaussian_blur(x, kernel, sigma)


class Noise(Purifier):
    """Additive Gaussian noise (`cloak.transforms.gaussian_noise`), ``sigma`` in [0, 1] units (default 0.05)."""

    name = "noise"
    summary = "additive Gaussian noise"
    differentiable = True
    random = True
    params = (Param("sigma", float, 0.05, low=0, high=1, unit="[0, 1] units"),)

    def purify(self, x: Tensor, sigma: float, seed: int) -> Tensor:
        return gaussian_noise(x, sigma, seeded(seed, x.device))


class Median(Purifier):
    """Median filter over ``size`` x ``size`` px (odd, default 3)."""

    name = "median"
    summary = "median filter"
    differentiable = False
    params = (Param("size", int, 3, low=3, high=15, odd=True, unit="px"),)

    def purify(self, x: Tensor, size: int) -> Tensor:
        return median(x, size)


class BitDepth(Purifier):
    """Reduce each channel to ``bits`` in [1, 8] bits (default 4)."""

    name = "bitdepth"
    summary = "bit-depth reduction"
    differentiable = False
    params = (Param("bits", int, 4, low=1, high=8),)

    def purify(self, x: Tensor, bits: int) -> Tensor:
        return bitdepth(x, bits)


class AdverseCleaner(Purifier):
    """Bilateral then guided filtering, AdverseCleaner's recipe (`adverse_cleaner`; its defaults)."""

    name = "adverse_cleaner"
    summary = "bilateral + guided filtering (AdverseCleaner)"
    differentiable = True
    params = (
        Param("bilateral_passes", int, 64, low=0),
        Param("diameter", int, 5, low=1, high=15, unit="px"),
        Param("sigma_color", float, 8.0, low=0, low_open=True, unit="0-255 units"),
        Param("sigma_space", float, 8.0, low=0, low_open=True, unit="px"),
        Param("guided_passes", int, 4, low=0),
        Param("radius", int, 4, low=1, unit="px"),
        Param("eps", float, 16.0, low=0, low_open=True, unit="squared 0-255 units"),
    )

    def purify(
        self,
        x: Tensor,
        bilateral_passes: int,
        diameter: int,
        sigma_color: float,
        sigma_space: float,
        guided_passes: int,
        radius: int,
        eps: float,
    ) -> Tensor:
        return adverse_cleaner(x, bilateral_passes, diameter, sigma_color, sigma_space, guided_passes, radius, eps)
