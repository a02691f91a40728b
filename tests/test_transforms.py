"""Tests for the differentiable EOT transforms (`cloak.transforms`) and the spec grammar (`cloak.specs`)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cloak.errors import ConfigError
from cloak.specs import Range, split_spec
from cloak.transforms import (
    EOT_TRANSFORMS,
    gaussian_blur,
    gaussian_noise,
    jpeg_differentiable,
    jpeg_quant_tables,
    parse_eot,
    resize_down_up,
    sample_eot,
)

# Bound on the mean absolute error of `jpeg_differentiable` to PIL's JPEG, 0-255 units, on the 8-bit images of
# `natural_ish` (smooth gradients + a flat patch + sensor-like noise) at quality 50, 75 and 90. Measured: 0.96 to
# 1.41; the codec's own error on these images is 7.8 to 9.2.
JPEG_MAE_BOUND = 1.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on this shared 2-core machine, 2 threads under load were many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def natural_ish(seed: int, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) uint8 image with smooth structure, an edge and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 30.0
    base = np.stack([np.sin(xx * (1 + seed) + yy), np.cos(yy * 2 - xx * 0.5), np.sin(xx * yy * 0.3)], -1)
    base = base * 0.35 + 0.5
    base[h // 3 : h // 2, w // 4 : w // 2] = [0.9, 0.2, 0.1]
    base += rng.normal(0, 0.04, base.shape)
    return (np.clip(base, 0, 1) * 255).round().astype(np.uint8)


def pil_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def to_tensor(rgb: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dtype) / 255.0


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_jpeg_differentiable_tracks_pil(quality):
    for seed, (h, w) in enumerate([(90, 117), (96, 128), (61, 83)]):
        rgb = natural_ish(seed, h, w)
        ref = pil_jpeg(rgb, quality).astype(np.float64)
        out = jpeg_differentiable(to_tensor(rgb, torch.float64), quality)[0].permute(1, 2, 0).numpy() * 255
        assert out.shape == ref.shape
        mae = np.abs(out - ref).mean()
        codec_error = np.abs(rgb.astype(np.float64) - ref).mean()
        assert mae < JPEG_MAE_BOUND, (quality, seed, mae)
        assert mae < codec_error / 4  # it models the codec, not the identity


def test_jpeg_quant_tables_follow_libjpeg_scaling():
    luma, chroma = jpeg_quant_tables(50)
    assert luma[0, 0] == 16 and luma[7, 7] == 99 and chroma[0, 0] == 17
    luma, _ = jpeg_quant_tables(75)  # scale 50: (16 * 50 + 50) // 100 = 8
    assert luma[0, 0] == 8 and luma[0, 1] == 6
    luma, _ = jpeg_quant_tables(100)
    assert torch.all(luma == 1)
    luma, _ = jpeg_quant_tables(1)  # scale 5000, clamped to 255
    assert torch.all(luma == 255)
    with pytest.raises(ConfigError, match=r"`quality` must be an int in \[1, 100\], got 0"):
        jpeg_quant_tables(0)


TRANSFORMS = {
    "blur": lambda x, g: gaussian_blur(x, 5, 1.2),
    "resize_bilinear": lambda x, g: resize_down_up(x, 0.5),
    "resize_bicubic": lambda x, g: resize_down_up(x, 0.7, mode="bicubic"),
    "noise": lambda x, g: gaussian_noise(x, 0.05, g),
    "jpeg": lambda x, g: jpeg_differentiable(x, 75),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_kept(name, dtype):
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = TRANSFORMS[name](x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_gradcheck(name):
    # Inputs away from 0 and 1 so that the final clamp is inactive; the fixed seed keeps the cubic rounding of
    # the JPEG away from its jumps at half-integers.
    g = torch.Generator().manual_seed(3)
    x = (0.25 + 0.5 * torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)).requires_grad_()
    noise_seed = 4

    def fn(t):
        return TRANSFORMS[name](t, torch.Generator().manual_seed(noise_seed))

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_blur_reduces_high_frequencies_and_keeps_mean():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = gaussian_blur(x, 7, 1.5)
    diff = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert diff(y) < 0.3 * diff(x)
    assert abs(y.mean() - x.mean()) < 0.01


def test_noise_is_seeded_and_scaled():
    x = torch.full((1, 3, 64, 64), 0.5)
    a = gaussian_noise(x, 0.05, torch.Generator().manual_seed(0))
    b = gaussian_noise(x, 0.05, torch.Generator().manual_seed(0))
    c = gaussian_noise(x, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a - x).std().item() - 0.05) < 0.003


def test_resize_keeps_smooth_images():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 50), indexing="ij")
    x = torch.stack([xx, yy, (xx + yy) / 2])[None]
    assert (resize_down_up(x, 0.5) - x).abs().max() < 0.03
    noisy = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    assert (resize_down_up(noisy, 0.5) - 0.5).abs().mean() < 0.5 * (noisy - 0.5).abs().mean()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: gaussian_blur(x, 4, 1.0), r"`kernel_size` must be an odd int >= 3 \(px\), got 4"),
        (lambda x: gaussian_blur(x, 5, 0.0), r"`sigma` must be > 0 \(px\), got 0.0"),
        (lambda x: resize_down_up(x, 1.5), r"`factor` must be a float in \(0, 1\], got 1.5"),
        (lambda x: resize_down_up(x, 0.5, mode="lanczos"), r"`mode` must be one of 'bilinear', 'bicubic'"),
        (lambda x: gaussian_noise(x, 8, torch.Generator()), r"`sigma` must be a float in \[0, 1\].*got 8"),
        (lambda x: jpeg_differentiable(x[0], 75), r"expects a float tensor \(B, 3, H, W\) in \[0, 1\], got \(3,"),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call(torch.rand(1, 3, 16, 16))


def test_split_spec_grammar():
    items = split_spec(" jpeg:quality=50..90 + blur : sigma=1 ,kernel=5+identity")
    assert [i.name for i in items] == ["jpeg", "blur", "identity"]
    assert items[0].options == {"quality": "50..90"}
    assert items[1].options == {"sigma": "1", "kernel": "5"}


def test_free_text_param_takes_any_non_empty_text_and_keeps_it_in_the_spec():
    from cloak.specs import Param, format_item, resolve_params

    params = (Param("model", str, "none", unit="a hub id or folder"),)
    values = resolve_params("thing", {"model": " org/name-v2 "}, params)
    assert values == {"model": "org/name-v2"} and format_item("thing", values, params) == "thing:model=org/name-v2"
    assert params[0].describe() == "a non-empty text (a hub id or folder)"
    with pytest.raises(ConfigError, match=r"`model` must be a non-empty text \(a hub id or folder\), got ' '"):
        resolve_params("thing", {"model": " "}, params)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", r"A spec must be a non-empty string"),
        ("jpeg+", r"has an empty item"),
        ("Jpeg", r"'Jpeg' is not a valid name"),
        ("jpeg:quality", r"expected `key=value` after 'jpeg:', got 'quality'"),
        ("jpeg:quality=1,quality=2", r"parameter `quality` of `jpeg` is given twice"),
        ("jpeg:", r"nothing after 'jpeg:'"),
        ("sharpen", r"Unknown EOT transform 'sharpen' in 'sharpen'; known: identity, jpeg, blur, noise, resize"),
        ("jpeg:q=75", r"`jpeg` has no parameter `q`; accepted: quality \(an int in \[1, 100\]\)"),
        ("jpeg:quality=high", r"`jpeg`: parameter `quality` must be an int in \[1, 100\], got 'high'"),
        ("jpeg:quality=75.5", r"`jpeg`: parameter `quality` must be an int in \[1, 100\], got '75.5'"),
        ("blur:kernel=4", r"parameter `kernel` must be an odd int in \[3, inf\) \(px\), got '4'"),
        ("blur:sigma=0", r"parameter `sigma` must be a float in \(0, inf\) \(px\), got '0'"),
        ("noise:sigma=0.2..0.1", r"range `sigma=0.2..0.1` has its low end above its high end"),
        ("noise:sigma=0.1..2", r"parameter `sigma` must be a float in \[0, 1\] \(\[0, 1\] units\), got '2'"),
        ("resize:mode=area", r"parameter `mode` must be one of 'bilinear', 'bicubic', got 'area'"),
    ],
)
def test_parse_eot_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_eot(spec)


def test_parse_eot_round_trips_and_ranges():
    spec = parse_eot("jpeg:quality=50..90+blur:sigma=1.5,kernel=5")
    assert spec.spec == "jpeg:quality=50..90+blur:sigma=1.5,kernel=5"
    assert dict(spec.items[0][1])["quality"] == Range(50, 90)
    assert parse_eot(spec.spec) == spec
    assert parse_eot("jpeg:quality=75").spec == "jpeg"  # defaults are left out


def test_sample_eot_is_seeded_and_uniform():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    specs = ["identity", "noise:sigma=0.05", "jpeg:quality=30..90", "blur:sigma=0.5..2", "resize:factor=0.3..0.9"]
    out_a = [sample_eot(specs, torch.Generator().manual_seed(s))(x) for s in range(40)]
    out_b = [sample_eot(specs, torch.Generator().manual_seed(s))(x) for s in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    distinct = {tuple(a.flatten()[:64].tolist()) for a in out_a}
    n_identity = sum(torch.equal(a, x) for a in out_a)
    assert len(distinct) >= 40 - n_identity - 2  # non-identity draws differ (ranges, noise; JPEG draws may repeat)
    assert 2 <= n_identity <= 16  # identity drawn about 1 time in 5


def test_sampled_noise_transform_replays():
    t = sample_eot(["noise:sigma=0.1"], torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t(x), t(x))


def test_sample_eot_needs_specs():
    with pytest.raises(ConfigError, match=r"`specs` must hold at least one EOT spec"):
        sample_eot([], torch.Generator())


def test_eot_registry_names():
    assert set(EOT_TRANSFORMS) == {"identity", "jpeg", "blur", "noise", "resize"}


def test_eot_transforms_are_differentiable():
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for name in EOT_TRANSFORMS:
        if name == "identity":
            continue
        y = parse_eot(name).sample(torch.Generator().manual_seed(0))(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert grad.abs().sum() > 0, name
