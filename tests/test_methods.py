"""The per-method checklist, parametrised over the registry: every method in METHODS must pass all of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloak.errors import ConfigError
from cloak.imageio import load_artwork, save_artwork
from cloak.methods import METHODS
from cloak.protect import CloakConfig, Cloaker
from cloak.views import plan_views, render_view

STEPS = 6


def _image(h=40, w=56, seed=0) -> np.ndarray:
    """A smooth image with some texture, so the VAE has something to encode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 7), 128 + 100 * np.cos(yy / 5), 128 + 60 * np.sin((xx + yy) / 9)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return request.param


def _cloak(components, method, seed=0, **kw):
    cfg = CloakConfig(method=method, eps=8, steps=STEPS, **kw)
    return Cloaker(components, cfg).protect(_image(), seed=seed)


def test_budget_holds_on_the_saved_file(tiny_components, method, tmp_path):
    from PIL import Image

    rgb = _image()
    Image.fromarray(rgb).save(tmp_path / "in.png")
    art = load_artwork(tmp_path / "in.png")
    result = Cloaker(tiny_components, CloakConfig(method=method, eps=8, steps=STEPS)).protect(art.rgb, seed=0)
    save_artwork(tmp_path / "out.png", result.image, art)
    saved = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    diff = np.abs(saved.astype(int) - rgb.astype(int))
    assert saved.shape == rgb.shape and saved.dtype == np.uint8
    assert diff.max() <= 8
    assert diff.max() >= 1, "the cloak changed nothing"
    assert result.linf == diff.max()


def test_psnr_floor_holds_on_the_saved_file(tiny_components, method):
    rgb = _image()
    result = Cloaker(tiny_components, CloakConfig(method=method, eps=8, steps=STEPS, min_psnr=38)).protect(rgb)
    assert result.psnr >= 38 and 1 <= result.linf <= 8
    if method == "encoder":  # deterministic objective: the loss must have gone down within the tighter budget
        assert result.losses[-1] < result.losses[0]


def test_loss_moves_the_intended_way(tiny_components, method):
    """Evaluated with the same generator seed, the objective is lower on the cloaked image than on the clean one."""
    cfg = CloakConfig(method=method, eps=8, steps=STEPS)
    cloaker = Cloaker(tiny_components, cfg)
    rgb = _image()
    result = cloaker.protect(rgb, seed=0)
    obj = cloaker.objective
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    xa = torch.from_numpy(result.image).permute(2, 0, 1)[None].float() / 255
    (view,) = plan_views(*rgb.shape[:2], resolution=tiny_components.resolution, multiple=obj.multiple)

    def value(img):
        total = 0.0
        for s in range(4):  # average over draws for objectives with random timesteps/noise
            g = torch.Generator().manual_seed(100 + s)
            with torch.no_grad():
                target = obj.target(render_view(x, view), g)
                total += float(obj.loss(render_view(img, view), target, g))
        return total

    assert value(xa) < value(x)


def test_deterministic_under_a_seed(tiny_components, method):
    a = _cloak(tiny_components, method, seed=3)
    b = _cloak(tiny_components, method, seed=3)
    c = _cloak(tiny_components, method, seed=4)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_size_kept_and_grey_stays_grey(tiny_components, method):
    grey = np.repeat(_image(33, 47)[..., :1], 3, axis=2)
    result = Cloaker(tiny_components, CloakConfig(method=method, eps=4, steps=2)).protect(grey, grey=True, seed=0)
    assert result.image.shape == (33, 47, 3)
    img = result.image
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert result.linf <= 4


def test_registry_entries_are_complete():
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.summary and len(cls.summary) < 120
        assert cls.needs <= {"vae", "unet", "text_encoder", "tokenizer", "scheduler"}


def test_unknown_method_message():
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; choose one of .*encoder"):
        CloakConfig(method="nope")


def test_options_are_checked_against_the_method_before_any_work(method):
    """Every method's options come from its constructor; one it does not take is refused when the config is made."""
    with pytest.raises(ConfigError, match=f"method `{method}` takes no option `colour`; its options are"):
        CloakConfig(method=method, options={"colour": "red"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eot": ("jpeg:quality=200",)}, "`quality` must be an int in \\[1, 100\\]"),
        ({"options": {"period": 0}}, "`period` must be a whole number of px, at least 2"),
        ({"options": {"target": "stripes", "period": 1}}, "`period` must be a whole number of px, at least 2"),
        ({"steps": True}, "`steps` must be a positive integer"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_made(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CloakConfig(method="encoder", **kwargs)


def test_numpy_numbers_are_taken_as_python_ones():
    cfg = CloakConfig(eps=np.float32(8.0), steps=np.int64(3), min_psnr=np.float64(35.0))
    assert (cfg.eps, cfg.steps, cfg.min_psnr) == (8.0, 3, 35.0)
    assert type(cfg.eps) is float and type(cfg.steps) is int and type(cfg.min_psnr) is float
    assert type(CloakConfig(eps=8).eps) is int  # Python numbers as given


def test_a_missing_target_file_is_refused_when_the_method_is_built(tiny_components):
    config = CloakConfig(options={"target": "no-such-target.png"})  # may be written later: not checked yet
    with pytest.raises(ConfigError, match="no such file"):
        Cloaker(tiny_components, config)


@pytest.mark.parametrize("seed", [-1, 1.5, 2**64, True])
def test_bad_seed_is_named(tiny_components, seed):
    with pytest.raises(ConfigError, match="`seed` must be a whole number"):
        Cloaker(tiny_components, CloakConfig(steps=1)).protect(_image(), seed=seed)


def test_eot_draws_a_fresh_transform_per_step_and_keeps_the_budget(tiny_components, monkeypatch):
    import cloak.transforms

    drawn = []
    real = cloak.transforms.sample_eot

    def counting(specs, generator):
        fn = real(specs, generator)
        drawn.append(fn)
        return fn

    monkeypatch.setattr(cloak.transforms, "sample_eot", counting)
    cfg = CloakConfig(eps=8, steps=3, eot=("jpeg:quality=75", "blur:kernel=3,sigma=1.0"))
    result = Cloaker(tiny_components, cfg).protect(_image(), seed=0)
    assert len(drawn) == 3 * result.views
    assert 1 <= result.linf <= 8


def test_smooth_is_in_model_pixels_and_keeps_the_budget(tiny_components, monkeypatch):
    import cloak.protect

    seen = []
    real = cloak.protect.pgd

    def recording(closure, x, config, generator, **kw):
        seen.append(config.smooth)
        return real(closure, x, config, generator, **kw)

    monkeypatch.setattr(cloak.protect, "pgd", recording)
    cfg = CloakConfig(eps=8, steps=2, smooth=0.7)
    small = Cloaker(tiny_components, cfg).protect(_image(24, 32))  # under the model's 32 px: seen as is
    large = Cloaker(tiny_components, cfg).protect(_image(96, 128))  # resized by 1/3 for the model
    assert seen == [pytest.approx(0.7), pytest.approx(0.7 * 3)]
    assert 1 <= small.linf <= 8 and 1 <= large.linf <= 8
    assert CloakConfig.from_preset("fast", smooth=1.5).pgd().smooth == 1.5


@pytest.mark.parametrize("method", ["mist", "advdm"])
def test_unet_stored_in_bf16_gives_the_same_cloak_under_autocast(method):
    # store_unet_in_bf16 is only sound because bf16 autocast already runs the UNet's layers in bf16.
    from tiny_models import make_tiny_components

    from cloak.protect import store_unet_in_bf16

    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    config = CloakConfig(method=method, eps=8, steps=3, autocast=True, options={"samples": 2})
    components = make_tiny_components(seed=0)
    reference = Cloaker(components, config).protect(rgb, seed=1)
    store_unet_in_bf16(components)
    assert components.unet.conv_in.weight.dtype == torch.bfloat16
    lean = Cloaker(components, config).protect(rgb, seed=1)
    np.testing.assert_array_equal(lean.image, reference.image)
    assert lean.losses == pytest.approx(reference.losses, rel=1e-6)


@pytest.mark.parametrize("method", ["mist", "advdm", "sds", "ace"])
def test_releasing_the_text_encoder_after_setup_gives_the_same_cloak(method):
    # `cloak protect` drops the parts a method used only to encode its prompt; the cloak must not change.
    from tiny_models import make_tiny_components

    from cloak.protect import release_setup_parts

    rgb = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    config = CloakConfig(method=method, eps=8, steps=3, options={"samples": 2})
    reference = Cloaker(make_tiny_components(seed=0), config).protect(rgb, seed=1)
    components = make_tiny_components(seed=0)
    cloaker = Cloaker(components, config)
    release_setup_parts(components, cloaker)
    assert components.text_encoder is None and components.tokenizer is None
    assert components.unet is not None and components.vae is not None
    lean = cloaker.protect(rgb, seed=1)
    np.testing.assert_array_equal(lean.image, reference.image)


def test_release_keeps_parts_a_method_uses_while_cloaking(tiny_components):
    # ASPL fine-tunes with the text encoder at every update; the encoder method has nothing to release.
    import dataclasses

    from cloak.protect import release_setup_parts

    for method in ("aspl", "encoder"):
        components = dataclasses.replace(tiny_components)
        release_setup_parts(components, Cloaker(components, CloakConfig(method=method, eps=8, steps=1)))
        assert components.text_encoder is tiny_components.text_encoder
