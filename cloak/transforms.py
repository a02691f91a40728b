"""Differentiable image transforms for expectation over transformation (EOT).

EOT (Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018, https://arxiv.org/abs/1707.07397)
optimises a cloak through random transforms so that it survives them. Every function here is pure, takes a float
``(B, 3, H, W)`` tensor in ``[0, 1]``, is differentiable in it, and returns the same shape, dtype and device.
Real codecs for evaluation live in `attacks`; these are the differentiable stand-ins.

EOT specs use the grammar of `cloak.specs` (``"jpeg:quality=50..90"``, ``"blur:sigma=1.0"``, ``"noise:sigma=0.03"``,
``"resize:factor=0.5"``, ``"identity"``, chains with ``+``); `sample_eot` draws one transform per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from cloak.errors import ConfigError
from cloak.specs import Param, Range, draw_params, format_item, resolve_params, split_spec

# IJG standard quantisation tables (ITU-T T.81 Annex K, tables K.1 and K.2), row-major over (v, u).
_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


def _check_image(x: Tensor, where: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"`{where}` expects a float tensor (B, 3, H, W) in [0, 1], got {got}.")


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        kernel_size: odd kernel side, px, >= 3 (MetaCloak's EOT and FIELD_NOTES section 4 use 7).
        sigma: standard deviation, px, > 0.

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    _check_image(x, "gaussian_blur")
    if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ConfigError(f"`kernel_size` must be an odd int >= 3 (px), got {kernel_size!r}.")
    if not sigma > 0:
        raise ConfigError(f"`sigma` must be > 0 (px), got {sigma!r}.")
    radius = kernel_size // 2
    if radius >= min(x.shape[-2:]):
        raise ConfigError(f"`kernel_size` {kernel_size} is too large for a {x.shape[-2]}x{x.shape[-1]} image.")
    return _separable_gaussian(x, radius, sigma)


def lowpass(t: Tensor, sigma: float) -> Tensor:
    """Gaussian low-pass of any ``(B, C, H, W)`` float field (a perturbation, a gradient), reflect padding.

    The kernel reaches 3 sigma (cut to the image's size). Unlike :func:`gaussian_blur` the values need not be
    pixels and ``C`` may be 1 (a greyscale image's perturbation).
    """
    if not sigma > 0:
        raise ConfigError(f"`sigma` must be > 0 (px), got {sigma!r}.")
    radius = min(math.ceil(3.0 * sigma), min(t.shape[-2:]) - 1)
    return t if radius < 1 else _separable_gaussian(t, radius, sigma)


def _separable_gaussian(x: Tensor, radius: int, sigma: float) -> Tensor:
    channels, size = x.shape[1], 2 * radius + 1
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    k = k / k.sum()
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(channels, 1, 1, size), groups=channels)  # along W
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(channels, 1, size, 1), groups=channels)  # along H
    return y


_RESIZE_MODES = ("bilinear", "bicubic")


def resize_down_up(x: Tensor, factor: float, mode: str = "bilinear") -> Tensor:
    """Downscale by ``factor`` with antialiasing, then upscale back to exactly ``(H, W)``.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        factor: scale of the intermediate image, in (0, 1]; its side is ``round(side * factor)``, at least 1 px.
        mode: ``"bilinear"`` or ``"bicubic"`` (bicubic overshoots; the output is clamped to [0, 1]).

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    _check_image(x, "resize_down_up")
    if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ConfigError(f"`factor` must be a float in (0, 1], got {factor!r}.")
    if mode not in _RESIZE_MODES:
        raise ConfigError(f"`mode` must be one of {', '.join(map(repr, _RESIZE_MODES))}, got {mode!r}.")
    h, w = x.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    y = F.interpolate(x, size=small, mode=mode, align_corners=False, antialias=True)
    y = F.interpolate(y, size=(h, w), mode=mode, align_corners=False)
    return y.clamp(0.0, 1.0)


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Add i.i.d. Gaussian noise and clamp to [0, 1].

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        sigma: standard deviation in [0, 1] units (0.05 is 12.75/255; FIELD_NOTES section 4).
        generator: draws the noise, on its own device; the noise is then moved to ``x``'s device.

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    _check_image(x, "gaussian_noise")
    if not isinstance(sigma, (int, float)) or not 0 <= sigma <= 1:
        raise ConfigError(f"`sigma` must be a float in [0, 1] ([0, 1] units, 0.05 = 12.75/255), got {sigma!r}.")
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return (x + sigma * noise).clamp(0.0, 1.0)


def jpeg_quant_tables(quality: int) -> tuple[Tensor, Tensor]:
    """The luminance and chrominance quantisation tables libjpeg uses at ``quality``.

    libjpeg's ``jpeg_quality_scaling``: ``scale = 5000 / q`` below 50, else ``200 - 2 q``; each entry of the
    IJG table becomes ``(entry * scale + 50) // 100`` clamped to [1, 255] (baseline).

    Args:
        quality: int in [1, 100].

    Returns:
        Two ``(8, 8)`` float64 tensors indexed ``[v, u]`` (row frequency, column frequency).
    """
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ConfigError(f"`quality` must be an int in [1, 100], got {quality!r}.")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        q = [min(255, max(1, (b * scale + 50) // 100)) for b in base]
        tables.append(torch.tensor(q, dtype=torch.float64).view(8, 8))
    return tables[0], tables[1]


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    # Orthonormal 8-point DCT-II; JPEG's 2-D FDCT (T.81 A.3.3) is D @ block @ D.T with this D.
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = d[0] / math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _round_cubic(z: Tensor) -> Tensor:
    # Shin & Song, "JPEG-resistant Adversarial Images", NIPS 2017 Workshop on Machine Learning and Computer
    # Security: round(z) + (z - round(z))**3. Same values as rounding up to 0.125, a non-zero gradient.
    r = torch.round(z).detach()
    return r + (z - r) ** 3


def _blockwise(planes: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    # planes (B, C, H, W), H and W multiples of 8 -> blocks (B, C, H/8, W/8, 8, 8) -> fn -> back.
    b, c, h, w = planes.shape
    blocks = planes.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    out = fn(blocks)
    return out.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def jpeg_differentiable(x: Tensor, quality: int) -> Tensor:
    """A differentiable approximation of baseline JPEG (libjpeg defaults, as PIL saves) at ``quality``.

    Steps, following ITU-T T.81 and libjpeg: scale to 0-255; JFIF RGB -> YCbCr; 4:2:0 chroma subsampling by
    2x2 averaging; 8x8 block DCT of the level-shifted planes; quantisation with the IJG tables scaled by
    ``quality`` (`jpeg_quant_tables`) and the cubic rounding of Shin & Song (2017,
    https://machine-learning-and-security.github.io/papers/mlsec17_paper_54.pdf); dequantisation; inverse
    DCT; chroma upsampling with libjpeg's "fancy" triangle filter (bilinear, weights 3/4 and 1/4); YCbCr ->
    RGB; clamp. Sides that are not multiples of 16 are padded by edge replication (as libjpeg pads MCUs) and
    cropped back. It leaves out libjpeg's integer DCT and the final rounding to uint8.

    Measured against PIL's JPEG on 8-bit images (tests/test_transforms.py): mean absolute error below
    1.5/255 at quality 50, 75 and 90, a few times smaller than the codec's own error.

    Args:
        x: ``(B, 3, H, W)`` in [0, 1].
        quality: int in [1, 100], libjpeg's scale (75 is PIL's default).

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    _check_image(x, "jpeg_differentiable")
    luma_q, chroma_q = (t.to(device=x.device, dtype=x.dtype) for t in jpeg_quant_tables(quality))
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % 16, (-w) % 16
    rgb = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") * 255.0
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    # JFIF (ITU-T T.871) full-range YCbCr.
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    chroma = F.avg_pool2d(torch.cat([cb, cr], dim=1), 2)  # 4:2:0, (B, 2, H/2, W/2)

    d = _dct_matrix(x.dtype, x.device)

    def codec(table: Tensor) -> Callable[[Tensor], Tensor]:
        def fn(blocks: Tensor) -> Tensor:
            coeffs = d @ (blocks - 128.0) @ d.T
            coeffs = _round_cubic(coeffs / table) * table
            return d.T @ coeffs @ d + 128.0

        return fn

    y = _blockwise(y, codec(luma_q))
    chroma = _blockwise(chroma, codec(chroma_q))
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0:1] - 128.0, chroma[:, 1:2] - 128.0
    out = torch.cat([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], dim=1)
    return (out[..., :h, :w] / 255.0).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# EOT specs


@dataclass(frozen=True)
class _EOTKind:
    params: tuple[Param, ...]
    build: Callable[..., Callable[[Tensor], Tensor]]  # (**drawn params, generator) -> transform


def _build_noise(sigma: float, generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    # The noise is drawn from a seed taken now, so a sampled transform gives the same noise every time it runs.
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())

    def transform(x: Tensor) -> Tensor:
        return gaussian_noise(x, sigma, torch.Generator(device=generator.device).manual_seed(seed))

    return transform


EOT_TRANSFORMS: dict[str, _EOTKind] = {
    "identity": _EOTKind((), lambda generator: lambda x: x),
    "jpeg": _EOTKind(
        (Param("quality", int, 75, low=1, high=100),),
        lambda quality, generator: partial(jpeg_differentiable, quality=quality),
    ),
    "blur": _EOTKind(
        (
            Param("sigma", float, 1.0, low=0, low_open=True, unit="px"),
            Param("kernel", int, 7, low=3, odd=True, unit="px"),
        ),
        lambda sigma, kernel, generator: partial(gaussian_blur, kernel_size=kernel, sigma=sigma),
    ),
    "noise": _EOTKind((Param("sigma", float, 0.05, low=0, high=1, unit="[0, 1] units"),), _build_noise),
    "resize": _EOTKind(
        (
            Param("factor", float, 0.5, low=0, high=1, low_open=True),
            Param("mode", str, "bilinear", choices=_RESIZE_MODES),
        ),
        lambda factor, mode, generator: partial(resize_down_up, factor=factor, mode=mode),
    ),
}


@dataclass(frozen=True)
class EOTSpec:
    """A parsed EOT spec: one or more chained transforms with fixed values or `Range`s.

    Attributes:
        items: ``(name, values)`` per chained transform, values validated (scalars or `Range`).
    """

    items: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]

    @property
    def spec(self) -> str:
        """The canonical spec string (parameters at their defaults are left out)."""
        return "+".join(format_item(n, dict(v), EOT_TRANSFORMS[n].params) for n, v in self.items)

    def sample(self, generator: torch.Generator) -> Callable[[Tensor], Tensor]:
        """Draw the ranged parameters (and a seed for the noise) from ``generator``; return the transform."""
        fns = []
        for name, values in self.items:
            kind = EOT_TRANSFORMS[name]
            drawn = draw_params(dict(values), kind.params, generator)
            fns.append(kind.build(generator=generator, **drawn))

        def transform(x: Tensor) -> Tensor:
            for fn in fns:
                x = fn(x)
            return x

        return transform


def parse_eot(spec: str) -> EOTSpec:
    """Parse and validate one EOT spec, e.g. ``"jpeg:quality=50..90"`` or ``"blur:sigma=0.5..1.5+noise"``.

    Args:
        spec: the `cloak.specs` grammar over the names of `EOT_TRANSFORMS`: ``identity``;
            ``jpeg`` (quality int [1, 100], default 75); ``blur`` (sigma px > 0, default 1.0; kernel odd px,
            default 7); ``noise`` (sigma in [0, 1] units, default 0.05); ``resize`` (factor in (0, 1], default
            0.5; mode bilinear|bicubic).

    Returns:
        An `EOTSpec`.

    Raises:
        ConfigError: an unknown transform (the message lists the known ones), an unknown parameter or a bad
            value.
    """
    items = []
    for item in split_spec(spec):
        if item.name not in EOT_TRANSFORMS:
            known = ", ".join(EOT_TRANSFORMS)
            raise ConfigError(f"Unknown EOT transform {item.name!r} in {spec!r}; known: {known}.")
        values = resolve_params(item.name, item.options, EOT_TRANSFORMS[item.name].params)
        items.append((item.name, tuple(values.items())))
    return EOTSpec(tuple(items))


def sample_eot(specs: Sequence[str | EOTSpec], generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    """Draw one EOT transform: a spec uniformly from ``specs``, then its parameters, all from ``generator``.

    Args:
        specs: EOT spec strings (or parsed `EOTSpec`s), at least one.
        generator: the only source of randomness; the same generator state gives the same transform (and,
            for ``noise``, the same noise on the same input shape).

    Returns:
        A function ``(B, 3, H, W) -> (B, 3, H, W)`` on [0, 1], differentiable in its input.
    """
    if len(specs) == 0:
        raise ConfigError("`specs` must hold at least one EOT spec (e.g. ['identity', 'jpeg:quality=75']).")
    parsed = [s if isinstance(s, EOTSpec) else parse_eot(s) for s in specs]
    index = int(torch.randint(len(parsed), (1,), generator=generator, device=generator.device).item())
    return parsed[index].sample(generator)


__all__ = [
    "EOTSpec",
    "EOT_TRANSFORMS",
    "Range",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg_differentiable",
    "jpeg_quant_tables",
    "lowpass",
    "parse_eot",
    "resize_down_up",
    "sample_eot",
]
