"""The shared machinery: view planning, the PGD loop, budget quantisation, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cloak import metrics
from cloak.errors import ConfigError
from cloak.optim import PGDConfig, pgd
from cloak.protect import quantise
from cloak.units import eps_to_unit
from cloak.views import plan_views, render_view


def test_small_image_is_one_native_view():
    (view,) = plan_views(40, 64, resolution=512, multiple=8)
    assert view.size == (40, 64) and view.box == (0, 0, 40, 64)


def test_large_image_is_resized_like_the_mimics_loader():
    # 4000x3000 landscape: the short side becomes the model's 512 px, aspect kept (to a multiple of 8).
    (view,) = plan_views(3000, 4000, resolution=512, multiple=8)
    assert view.size == (512, 688)


@pytest.mark.parametrize("shape", [(512, 4096), (3000, 100), (2000, 300)])
def test_tiles_cover_everything_and_bound_memory(shape):
    views = plan_views(*shape, resolution=256, multiple=8, max_side=300)
    h, w = views[0].size
    covered = np.zeros((h, w), bool)
    for v in views:
        top, left, th, tw = v.box
        assert th <= 300 and tw <= 300
        assert top + th <= h and left + tw <= w
        covered[top : top + th, left : left + tw] = True
    assert covered.all()
    assert len(views) > 1


def test_render_view_is_differentiable_and_sized():
    x = torch.rand(1, 3, 100, 60, requires_grad=True)
    (v,) = plan_views(100, 60, resolution=32, multiple=8)
    y = render_view(x, v)
    assert y.shape[-2:] == v.size
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eps_errors_say_what_was_meant():
    with pytest.raises(ConfigError, match=r"Did you mean 8 for 8/255"):
        eps_to_unit(0.03)
    with pytest.raises(ConfigError, match=r"\(0, 255\]"):
        eps_to_unit(300)
    with pytest.raises(ConfigError, match="positive integer"):
        PGDConfig(steps=0)


def test_pgd_minimises_within_the_budget():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 8, 8, generator=g)
    target = (x + 0.5).clamp(0, 1)

    def closure(x_adv):
        loss = ((x_adv - target) ** 2).mean()
        loss.backward()
        return float(loss.detach())

    res = pgd(closure, x, PGDConfig(eps=8, steps=20), torch.Generator().manual_seed(1))
    assert res.losses[-1] < res.losses[0]
    assert res.delta.abs().max() <= 8 / 255 + 1e-7
    assert ((x + res.delta) >= 0).all() and ((x + res.delta) <= 1).all()
    # Moving toward a brighter target: the perturbation saturates upward wherever there is room.
    assert (res.delta > 0).float().mean() > 0.9


def test_psnr_floor_bounds_the_rms_and_spends_it_where_the_gradient_is():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 0.5 + 0.25
    weight = torch.full_like(x, 0.05)
    weight[..., :4, :] = 1.0  # the top four rows matter twenty times more to the loss

    def closure(x_adv):
        loss = (weight * (x_adv - 1.0) ** 2).mean()
        loss.backward()
        return float(loss.detach())

    cfg = PGDConfig(eps=8, steps=20, min_psnr=35, random_start=False)
    res = pgd(closure, x, cfg, torch.Generator().manual_seed(1))
    rms = float(res.delta.pow(2).mean().sqrt())
    assert rms <= cfg.max_rms * (1 + 1e-5)
    assert math.isclose(cfg.max_rms, 10 ** (-35 / 20))
    assert res.delta.abs().max() <= 8 / 255 + 1e-7
    assert res.losses[-1] < res.losses[0]
    # Signed steps would spread the budget evenly (every gradient has the same sign here); normalised-gradient steps
    # put it into the rows that matter first (up to the L-inf cap), and only what is left into the others.
    top, rest = res.delta[..., :4, :].abs().mean(), res.delta[..., 4:, :].abs().mean()
    assert top > 0.95 * 8 / 255
    assert top > 3 * rest
    assert rms > 0.95 * cfg.max_rms  # the budget is spent
    signed = pgd(closure, x, PGDConfig(eps=8, steps=20, random_start=False), torch.Generator().manual_seed(1))
    assert torch.allclose(signed.delta[..., :4, :].abs().mean(), signed.delta[..., 4:, :].abs().mean())


def test_psnr_floor_is_validated():
    with pytest.raises(ConfigError, match="between 20 and 60 dB"):
        PGDConfig(min_psnr=80)
    with pytest.raises(ConfigError, match="number of dB"):
        PGDConfig(min_psnr=True)
    assert PGDConfig().max_rms is None


def _high_frequency_share(delta: torch.Tensor) -> float:
    """Share of the perturbation's energy above a quarter of the sampling frequency."""
    spectrum = torch.fft.fft2(delta).abs() ** 2
    f = torch.fft.fftfreq(delta.shape[-1]).abs()
    high = (f.view(-1, 1) > 0.25) | (f.view(1, -1) > 0.25)
    return float(spectrum[..., high].sum() / spectrum.sum())


def test_smooth_builds_a_low_frequency_perturbation_that_still_minimises():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g) * 0.5 + 0.25
    noise = torch.randn(1, 3, 32, 32, generator=g)  # a loss whose raw gradient is white noise

    def closure(x_adv):
        loss = (noise * x_adv).mean()
        loss.backward()
        return float(loss.detach())

    plain = pgd(closure, x, PGDConfig(eps=8, steps=8), torch.Generator().manual_seed(1))
    smooth = pgd(closure, x, PGDConfig(eps=8, steps=8, smooth=1.0), torch.Generator().manual_seed(1))
    assert smooth.delta.abs().max() <= 8 / 255 + 1e-7
    assert smooth.losses[-1] < smooth.losses[0]
    assert _high_frequency_share(plain.delta) > 0.6  # sign of white noise: as white
    assert _high_frequency_share(smooth.delta) < 0.5 * _high_frequency_share(plain.delta)
    # greyscale perturbations (one channel) are low-passed too
    grey = pgd(closure, x, PGDConfig(eps=8, steps=2, smooth=1.0), torch.Generator(), delta_shape=(1, 1, 32, 32))
    assert grey.delta.shape == (1, 1, 32, 32)


@pytest.mark.parametrize("bad", [0, -1.0, True, "1"])
def test_smooth_is_validated(bad):
    with pytest.raises(ConfigError, match="`smooth` must be a positive Gaussian sigma"):
        PGDConfig(smooth=bad)


def test_quantise_meets_the_psnr_floor_after_rounding():
    rgb = np.full((8, 8, 3), 128, np.uint8)
    # 0.6/255 everywhere rounds up to 1/255 (48.1 dB); a 50 dB floor must shrink it until rounding leaves it met.
    delta = torch.full((1, 3, 8, 8), 0.6 / 255)
    delta[..., 0, 0] = 5 / 255
    image, d = quantise(rgb, delta, eps=8, min_psnr=50)
    assert metrics.psnr(rgb, image) >= 50
    assert np.abs(d).max() >= 1, "shrinking went further than needed: nothing is left"
    unbounded, _ = quantise(rgb, delta, eps=8)
    assert metrics.psnr(rgb, unbounded) < 50


def test_step_schedule_decays():
    cfg = PGDConfig(eps=8, steps=10)
    sizes = [cfg.step_at(i) for i in range(10)]
    assert sizes == sorted(sizes, reverse=True)
    assert math.isclose(sizes[-1], sizes[0] * 0.1)


def test_the_published_methods_step_rules():
    constant = PGDConfig(eps=16, steps=100, step_size=1.0, schedule="constant")
    assert {constant.step_at(i) for i in range(100)} == {1.0 / 255}
    linear = PGDConfig(eps=7.7, steps=1000, step_size=2.55, schedule="linear")  # PhotoGuard: down to a hundredth
    sizes = [linear.step_at(i) for i in range(1000)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 2.55 / 255
    assert math.isclose(sizes[-1], 2.55 / 255 * (0.01 + 0.99 / 1000))
    with pytest.raises(ConfigError, match="`schedule` must be one of cosine, constant, linear, got 'step'"):
        PGDConfig(schedule="step")


def test_quantise_enforces_integer_budget_on_8bit_pixels():
    rgb = np.array([[[0, 128, 255]]], dtype=np.uint8)
    delta = torch.tensor([0.9, 0.9, 0.9]).view(1, 3, 1, 1) * (7.6 / 255)
    image, d = quantise(rgb, delta, eps=7.6)
    assert np.abs(d).max() <= 7  # floor(7.6): 7.6/255 would round to 8 on the file
    assert image.tolist() == [[[7, 135, 255]]]


def test_metrics_known_values():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert metrics.linf(a, b) == 255
    assert math.isclose(metrics.psnr(a, b), 10 * math.log10(255**2 / (255**2 / (16 * 16 * 3))))
    assert metrics.psnr(a, a) == math.inf
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, noisy) < 0.9
