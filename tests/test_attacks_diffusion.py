"""GrIDPure and IMPRESS at the model's resolution: the geometry and cost that make a 512 px image take seconds.

The shared purifier checklist (shape, range, determinism, spec round trip) is in `test_attacks.py`; these tests
pin what is specific to large images: GrIDPure's grid is a fraction of the image and its tiles run at the model's
resolution in one batch, IMPRESS sees the image as the mimic's loader resizes it while its bound holds at full
resolution.
"""

from __future__ import annotations

import pytest
import torch

from attacks import parse_spec
from attacks.diffusion import TILE_BATCH, cosine_annealed, grid_geometry, gridpure, impress
from cloak.errors import ConfigError
from cloak.units import from_vae, vae_latents
from cloak.views import plan_views, render_view


def smooth_image(h: int, w: int, seed: int = 0, noise: float = 0.02) -> torch.Tensor:
    """A smooth random image (bilinear upsampling of an 8x8 grid of colours) plus pixel noise of sigma ``noise``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


class Recorder:
    """Forward pre-hook recording the shape of a module's first input."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.handle = module.register_forward_pre_hook(lambda _, args: self.shapes.append(tuple(args[0].shape)))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_grid_geometry_is_the_published_grid_scaled_to_the_image():
    assert grid_geometry(512, 512) == (256, 128)  # FIELD_NOTES: 256 px tiles, stride 128 on SD's 512 px
    assert grid_geometry(64, 64) == (32, 16)
    assert grid_geometry(2048, 1024) == (512, 256)  # half the short side
    assert grid_geometry(512, 512, tile=100) == (100, 50)
    assert grid_geometry(512, 512, stride=64) == (256, 64)


def test_gridpure_at_512_runs_nine_tiles_at_the_model_resolution_in_one_batch(tiny_components):
    # The tiny model works at 32 px (VAE factor 2, 16x16 latents). A 512 px image is a 3x3 grid of 256 px tiles,
    # each resized to 32 px: one UNet call of 9 latents of 16x16 per DDIM step, not 961 tiles of 16 px.
    assert tiny_components.resolution == 32 and TILE_BATCH >= 9
    x = smooth_image(512, 512)
    with Recorder(tiny_components.unet) as unet, Recorder(tiny_components.vae.encoder) as encoder:
        tile, stride = grid_geometry(512, 512)
        y = gridpure(x, tiny_components, 0.05, 1, 2, 0.1, tile, stride, torch.Generator().manual_seed(0))
    assert unet.shapes == [(9, 4, 16, 16)] * 2  # 2 iterations x 1 step
    assert encoder.shapes == [(9, 3, 32, 32)] * 2
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    assert not torch.equal(y, x)


def test_gridpure_non_square_image_grid(tiny_components):
    # 96x160: tiles of 48 px (half the short side), stride 24 -> 3 rows x 6 columns, each run at 32 px.
    x = smooth_image(96, 160)
    with Recorder(tiny_components.unet) as unet:
        y = parse_spec("gridpure:iterations=1,t=0.05", tiny_components)(x, torch.Generator().manual_seed(0))
    assert sorted(unet.shapes) == sorted([(TILE_BATCH, 4, 16, 16), (18 - TILE_BATCH, 4, 16, 16)])
    assert y.shape == x.shape


def test_gridpure_with_an_identity_diffusion_pass_keeps_a_smooth_image(tiny_components, monkeypatch):
    # With the diffusion pass replaced by the identity only the tile resizes (128 -> 32 -> 128 px here) and the
    # overlap-average remain: on a smooth image they must give it back closely (no seams, no shift).
    from attacks import diffusion

    monkeypatch.setattr(diffusion, "diffpure", lambda chunk, *args, **kwargs: chunk)
    x = smooth_image(128, 128, noise=0)
    tile, stride = grid_geometry(128, 128)
    y = gridpure(x, tiny_components, 0.05, 1, 3, 0.1, tile, stride, torch.Generator())
    assert (y - x).abs().mean() < 0.005  # measured 0.0025; shifting this image by 1 px alone costs 0.016


def test_gridpure_stride_checked_against_the_image_tile(tiny_components):
    purifier = parse_spec("gridpure:stride=20", tiny_components)  # the tile depends on the image: checked later
    with pytest.raises(ConfigError, match=r"`stride` \(20 px\) must not exceed `tile` \(12 px\)"):
        purifier(smooth_image(24, 28), torch.Generator())


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("gridpure:t=0.01", "gridpure"),  # the defaults, left out of the canonical spec
        ("gridpure:t=0.02,tile=64,stride=32", "gridpure:t=0.02,tile=64,stride=32"),
        ("impress:iterations=100", "impress"),
        ("impress:iterations=300,eps=4", "impress:iterations=300,eps=4"),
    ],
)
def test_specs_still_parse(spec, canonical, tiny_components):
    assert parse_spec(spec, tiny_components).spec == canonical


def inconsistency(vae, image: torch.Tensor) -> float:
    with torch.no_grad():
        recon = from_vae(vae.decode(vae_latents(vae, image) / vae.config.scaling_factor).sample)
        return float((recon - image).pow(2).mean())


def test_impress_on_a_large_image_works_on_the_view_and_bounds_the_full_image(tiny_components):
    # 128x96 with a 32 px model: the VAE sees the image resized to 44x32 px (short side 32, 42.7 rounded up to
    # a multiple of the VAE factor 2); the output keeps 128x96 px and the L-inf bound holds on every pixel of it.
    vae = tiny_components.vae
    x = smooth_image(128, 96)
    with Recorder(vae.encoder) as encoder, torch.no_grad():
        y = impress(x, tiny_components, iterations=20, lr=0.004, eps=8, lpips_eps=0.1, alpha=10.0)
    assert set(encoder.shapes) == {(1, 3, 44, 32)} and len(encoder.shapes) == 20
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().max() <= 8 / 255 + 1e-6
    assert (y - x).abs().max() > 4 / 255  # it moved: the bound is used, not a no-op
    (view,) = plan_views(128, 96, resolution=32, multiple=2)
    assert inconsistency(vae, render_view(y, view)) < inconsistency(vae, render_view(x, view))


def test_impress_lpips_on_the_full_resolution_image(tiny_components):
    sizes = []

    def fake_lpips(a, b):  # LPIPS' interface: [-1, 1] images in, (B, 1, 1, 1) out
        sizes.append(tuple(a.shape[-2:]))
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    x = smooth_image(80, 64)
    y = parse_spec("impress:iterations=2,lpips_eps=0.01", tiny_components, lpips=fake_lpips)(x, torch.Generator())
    assert sizes == [(80, 64)] * 2 and y.shape == x.shape


def test_impress_small_image_is_its_own_view(tiny_components):
    # An image no larger than the model's resolution is not resized: the VAE sees it at its own size.
    with Recorder(tiny_components.vae.encoder) as encoder:
        impress(smooth_image(32, 24), tiny_components, iterations=2, lr=0.004, eps=8, lpips_eps=0.1, alpha=10.0)
    assert encoder.shapes == [(1, 3, 32, 24)] * 2


def test_impress_lpips_net_loads_that_lpips_and_drops_the_box(tiny_components, monkeypatch):
    import cloak.models

    asked = []

    def fake_load(device, net="alex", **kwargs):  # the real one needs torchvision's backbone weights
        asked.append(net)
        return lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(cloak.models, "load_lpips", fake_load)
    x = smooth_image(32, 32)
    purifier = parse_spec("impress:lpips_net=vgg,iterations=30,lr=0.05,eps=1", tiny_components)
    assert asked == ["vgg"] and purifier.spec == "impress:iterations=30,lr=0.05,eps=1,lpips_net=vgg"
    y = purifier(x, torch.Generator())
    assert (y - x).abs().max() > 1 / 255  # bound by LPIPS, not by the 1/255 box
    boxed = parse_spec("impress:iterations=30,lr=0.05,eps=1", tiny_components)(x, torch.Generator())
    assert (boxed - x).abs().max() <= 1 / 255 + 1e-6 and asked == ["vgg"]


def test_impress_lpips_net_without_its_weights_fails_with_the_loaders_line(tiny_components, monkeypatch):
    import cloak.models
    from cloak.errors import ModelNotFoundError

    def offline(device, net="alex", **kwargs):
        raise ModelNotFoundError(f"LPIPS ({net}) needs its backbone weights, which are not on this machine.")

    monkeypatch.setattr(cloak.models, "load_lpips", offline)
    with pytest.raises(ModelNotFoundError, match=r"LPIPS \(vgg\) needs its backbone weights"):
        parse_spec("impress:lpips_net=vgg", tiny_components)
    with pytest.raises(ConfigError, match="`lpips_net` must be one of 'none', 'vgg', 'alex'"):
        parse_spec("impress:lpips_net=squeeze", tiny_components)


def test_cosine_annealed_runs_from_lr_down_to_a_thousandth():
    steps = [cosine_annealed(0.01, i, 100) for i in range(100)]
    assert steps[0] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))
    assert steps[50] == pytest.approx((0.01 + 1e-5) / 2)
    assert 1e-5 < steps[-1] < 2e-5


def test_impress_noisy_start_is_seeded_bounded_and_only_drawn_when_asked(tiny_components):
    x = smooth_image(32, 32)
    quiet, noisy = parse_spec("impress:iterations=2", tiny_components), parse_spec(
        "impress:iterations=2,noise=0.05,eps=16", tiny_components
    )
    assert "seed" not in quiet.sample(torch.Generator().manual_seed(0))  # as before the option: nothing drawn
    params = noisy.sample(torch.Generator().manual_seed(0))
    assert params["noise"] == 0.05 and "seed" in params
    a, again = noisy.apply(x, params), noisy.apply(x, dict(params))
    other = noisy.apply(x, noisy.sample(torch.Generator().manual_seed(1)))
    assert torch.equal(a, again) and not torch.equal(a, other)
    assert (a - x).abs().max() <= 16 / 255 + 1e-6
    # Two Adam steps of 0.004 cannot move a pixel 8/255 from x; the noisy start does.
    assert (a - x).abs().max() > 12 / 255
    assert (quiet.apply(x, quiet.sample(torch.Generator())) - x).abs().max() < 9 / 255


def test_impress_cosine_schedule_changes_the_steps(tiny_components):
    x = smooth_image(32, 32)
    constant = parse_spec("impress:iterations=6,lr=0.01", tiny_components)(x, torch.Generator())
    cosine = parse_spec("impress:iterations=6,lr=0.01,schedule=cosine", tiny_components)
    assert cosine.spec == "impress:iterations=6,lr=0.01,schedule=cosine"
    assert not torch.equal(cosine(x, torch.Generator()), constant)
    with pytest.raises(ValueError, match="noisy start"):
        impress(x, tiny_components, 1, 0.004, 8, 0.1, 0.025, noise=0.1)
