"""What is specific to each diffusion-based method, beyond the shared checklist in `test_methods.py`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import _image

from cloak.errors import ConfigError
from cloak.methods.ace import ACE
from cloak.methods.advdm import AdvDM
from cloak.methods.aspl import ASPL
from cloak.methods.mist import MIST_WEIGHT, Mist
from cloak.methods.sds import SDS
from cloak.methods.style import StyleCloak, procedural_decoy
from cloak.protect import CloakConfig, Cloaker
from cloak.units import vae_latents


def _x(h=32, w=48, seed=0) -> torch.Tensor:
    return torch.from_numpy(_image(h, w, seed)).permute(2, 0, 1)[None].float() / 255


def _gen(seed=7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _manual_denoising_mse(components, unet, x, prompt_embeds, seed, compare="trained") -> torch.Tensor:
    """The AdvDM quantity written out by hand: z ~ q(z|x), t ~ U{0..999}, eps ~ N(0, I), MSE(prediction, target).

    ``compare``: "trained" compares the UNet's output with what it is trained to predict (eps, or v for v-prediction);
    "noise" converts a v prediction to eps_theta first (what SDS uses).
    """
    g = _gen(seed)
    z = vae_latents(components.vae, x, g)
    t = torch.randint(0, 1000, (1,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    a = components.scheduler.alphas_cumprod[t]
    z_t = a.sqrt() * z + (1 - a).sqrt() * eps
    pred = unet(z_t, t, encoder_hidden_states=prompt_embeds).sample
    if components.scheduler.config.prediction_type == "epsilon":
        return F.mse_loss(pred, eps)
    if compare == "trained":
        return F.mse_loss(pred, a.sqrt() * eps - (1 - a).sqrt() * z)  # v = sqrt(a) eps - sqrt(1 - a) z
    return F.mse_loss(a.sqrt() * pred + (1 - a).sqrt() * z_t, eps)


# --- advdm ---------------------------------------------------------------------------------------------------------


def test_advdm_loss_is_the_negative_denoising_mse(tiny_components):
    obj = AdvDM(tiny_components)
    x = _x()
    with torch.no_grad():
        got = obj.loss(x, obj.target(x, _gen()), _gen(7))
        want = _manual_denoising_mse(tiny_components, tiny_components.unet, x, obj.prompt_embeds, 7)
    assert want > 0.1
    torch.testing.assert_close(got, -want, rtol=1e-5, atol=1e-6)


def test_advdm_minimise_descends_the_same_loss_with_the_full_gradient(tiny_components):
    """Error-minimising: +MSE, and (unlike sds) its gradient goes through the UNet: the two gradients differ."""
    x = _x()
    up, down = AdvDM(tiny_components), AdvDM(tiny_components, minimise=True)
    grads = []
    for obj in (up, down, SDS(tiny_components)):
        xa = x.clone().requires_grad_(True)
        value = obj.loss(xa, None, _gen(5))
        value.backward()
        grads.append((float(value.detach()), xa.grad))
    (v_up, g_up), (v_down, g_down), (v_sds, g_sds) = grads
    assert v_down == pytest.approx(-v_up) and v_down == pytest.approx(v_sds) and v_down > 0.1
    torch.testing.assert_close(g_down, -g_up)
    assert not torch.allclose(g_down, g_sds, rtol=1e-2, atol=0)  # the UNet Jacobian is kept
    with pytest.raises(ConfigError, match=r"`minimise` \(advdm option\) must be true or false, got 1"):
        AdvDM(tiny_components, minimise=1)


def test_advdm_prompt_and_samples(tiny_components):
    x = _x()
    a, b = AdvDM(tiny_components), AdvDM(tiny_components, prompt="a photo of a cat")
    assert not torch.equal(a.prompt_embeds, b.prompt_embeds)
    many = AdvDM(tiny_components, samples=8)
    with torch.no_grad():
        one = [float(a.loss(x, None, _gen(s))) for s in range(3)]
        eight = float(many.loss(x, None, _gen(0)))
    assert len(set(one)) == 3  # t and eps come from the generator
    assert eight != pytest.approx(one[0])
    with pytest.raises(ConfigError, match=r"`samples` \(advdm option\) must be a positive integer, got 0"):
        AdvDM(tiny_components, samples=0)


def test_unsupported_prediction_type_is_refused_early(tiny_components):
    from diffusers import DDPMScheduler

    odd = DDPMScheduler.from_config(tiny_components.scheduler.config, prediction_type="sample")
    with pytest.raises(ConfigError, match=r"`prediction_type` must be 'epsilon' or 'v_prediction', got 'sample'"):
        AdvDM(dataclasses.replace(tiny_components, scheduler=odd))


def test_v_prediction_models(tiny_components):
    """AdvDM attacks the v-prediction loss the model is trained with; SDS works on the implied noise prediction."""
    from diffusers import DDPMScheduler

    v = dataclasses.replace(
        tiny_components,
        scheduler=DDPMScheduler.from_config(tiny_components.scheduler.config, prediction_type="v_prediction"),
    )
    x = _x()
    advdm, sds = AdvDM(v), SDS(v)
    with torch.no_grad():
        want = _manual_denoising_mse(v, v.unet, x, advdm.prompt_embeds, 4, compare="trained")
        torch.testing.assert_close(advdm.loss(x, None, _gen(4)), -want, rtol=1e-5, atol=1e-6)
        want = _manual_denoising_mse(v, v.unet, x, sds.prompt_embeds, 4, compare="noise")
        torch.testing.assert_close(sds.loss(x, None, _gen(4)), want, rtol=1e-5, atol=1e-6)


# --- sds -----------------------------------------------------------------------------------------------------------


def _unet_grads(components, method, x) -> tuple[list, torch.Tensor]:
    """Backward through ``method``'s loss with the UNet's weights requiring grad; return their grads and x's."""
    components.unet.requires_grad_(True)
    try:
        obj = method(components)
        xa = x.clone().requires_grad_(True)
        obj.loss(xa, None, _gen()).backward()
        return [p.grad for p in components.unet.parameters()], xa.grad
    finally:
        components.unet.requires_grad_(False)
        components.unet.zero_grad(set_to_none=True)


def test_sds_never_backpropagates_through_the_unet(fresh_tiny_components):
    x = _x()
    seen = []
    hook = fresh_tiny_components.unet.register_forward_hook(lambda m, i, out: seen.append(out.sample.requires_grad))
    try:
        sds_param_grads, sds_x_grad = _unet_grads(fresh_tiny_components, SDS, x)
        advdm_param_grads, _ = _unet_grads(fresh_tiny_components, AdvDM, x)
    finally:
        hook.remove()
    assert seen == [False, True]  # the UNet's output carries a graph under AdvDM only
    assert all(g is None for g in sds_param_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in advdm_param_grads)  # the check can fail
    assert sds_x_grad is not None and sds_x_grad.abs().sum() > 0


def test_sds_value_and_gradient(tiny_components):
    """Value: the denoising MSE; gradient w.r.t. z: 2 (eps_theta - eps) / numel(z), the UNet Jacobian left out."""
    x = _x()
    minus, plus = SDS(tiny_components), SDS(tiny_components, minimise=False)
    with torch.no_grad():
        want = _manual_denoising_mse(tiny_components, tiny_components.unet, x, minus.prompt_embeds, 3)
        torch.testing.assert_close(minus.loss(x, None, _gen(3)), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(plus.loss(x, None, _gen(3)), -want, rtol=1e-5, atol=1e-6)
    # The gradient reaching x: the encoder's vector-Jacobian product with g, replaying the same draws.
    g = _gen(3)
    xr = x.clone().requires_grad_(True)
    z = vae_latents(tiny_components.vae, xr, g)
    t = torch.randint(0, 1000, (1,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    a = tiny_components.scheduler.alphas_cumprod[t]
    with torch.no_grad():
        eps_theta = tiny_components.unet(a.sqrt() * z + (1 - a).sqrt() * eps, t, minus.prompt_embeds).sample
    (want_grad,) = torch.autograd.grad(z, xr, grad_outputs=2 * (eps_theta - eps) / z.numel())
    xa = x.clone().requires_grad_(True)
    minus.loss(xa, None, _gen(3)).backward()
    assert want_grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, want_grad, rtol=1e-4, atol=1e-10)


def test_sds_minimise_option_is_validated(tiny_components):
    with pytest.raises(ConfigError, match=r"`minimise` \(sds option\) must be true or false, got 'yes'"):
        SDS(tiny_components, minimise="yes")


# --- aspl ----------------------------------------------------------------------------------------------------------


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def test_aspl_fine_tunes_private_copies_only(fresh_tiny_components):
    comp = fresh_tiny_components
    unet0, te0 = _state(comp.unet), _state(comp.text_encoder)
    cloaker = Cloaker(comp, CloakConfig(method="aspl", eps=8, steps=ASPL.update_every + 1, autocast=False))
    obj = cloaker.objective
    first = cloaker.protect(_image(), seed=1)
    # The shared components are untouched; the surrogate (f_sur) and the main copy (f) both moved.
    assert _same(comp.unet, unet0) and _same(comp.text_encoder, te0)
    assert not _same(obj.surrogate["unet"], unet0)
    assert not _same(obj.surrogate["text_encoder"], te0)
    assert not _same(obj._main["unet"], unet0)  # round 1 fine-tuned f on the perturbed views
    assert obj.unet is obj.surrogate["unet"]
    assert not any(p.requires_grad for p in obj.surrogate.parameters())
    # The next image starts from the pretrained weights again: the same input and seed give the same cloak.
    assert np.array_equal(cloaker.protect(_image(), seed=1).image, first.image)


def test_aspl_trains_float32_copies_of_a_unet_stored_in_bf16(fresh_tiny_components):
    from cloak.protect import store_unet_in_bf16

    comp = fresh_tiny_components
    store_unet_in_bf16(comp)
    obj = ASPL(comp, learning_rate=1e-3)
    x = _x()
    obj.target(x, _gen())
    obj.update([x], _gen())
    dtypes = {p.dtype for model in (obj._main, obj.surrogate) for p in model.parameters()}
    assert dtypes == {torch.float32}
    assert comp.unet.conv_in.weight.dtype == torch.bfloat16  # the shared UNet is left as it was


def test_aspl_loss_attacks_the_surrogate(fresh_tiny_components):
    comp = fresh_tiny_components
    obj = ASPL(comp, learning_rate=1e-3)
    x = _x()
    obj.target(x, _gen())
    obj.update([x], _gen())
    with torch.no_grad():
        got = obj.loss(x, None, _gen(5))
        want = _manual_denoising_mse(comp, obj.surrogate["unet"], x, obj.prompt_embeds, 5)
        shared = _manual_denoising_mse(comp, comp.unet, x, obj.prompt_embeds, 5)
    torch.testing.assert_close(got, -want, rtol=1e-5, atol=1e-6)
    assert float(want) != pytest.approx(float(shared))


def test_aspl_without_text_encoder_training_keeps_the_shared_condition(fresh_tiny_components):
    obj = ASPL(fresh_tiny_components, train_text_encoder=False, learning_rate=1e-3)
    before = obj.prompt_embeds.clone()
    x = _x()
    obj.target(x, _gen())
    obj.update([x], _gen())
    assert list(obj.surrogate.keys()) == ["unet"]
    torch.testing.assert_close(obj.prompt_embeds, before)


def test_aspl_options_are_validated(tiny_components):
    with pytest.raises(ConfigError, match=r"`learning_rate` \(aspl option\) must be a float in \(0, 1\), got 2"):
        ASPL(tiny_components, learning_rate=2)
    with pytest.raises(ConfigError, match=r"`finetune_steps` \(aspl option\) must be a positive integer, got 0"):
        ASPL(tiny_components, finetune_steps=0)


# --- ace -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ace_pulls_the_noise_prediction_toward_the_target_latent(tiny_components, kind):
    """ACE written out by hand: z the posterior mean, then t and eps drawn, MSE(eps_theta(z_t, t, c), z_T); for a
    v-prediction model eps_theta is the noise its output implies."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(tiny_components.scheduler.config, prediction_type=kind)
    c = dataclasses.replace(tiny_components, scheduler=scheduler)
    x = _x()
    ace = ACE(c)
    with torch.no_grad():
        target = ace.target(x, _gen())
        got = ace.loss(x, target, _gen(5))
        g = _gen(5)
        z = vae_latents(c.vae, x)  # the mean: nothing drawn for z
        t = torch.randint(0, 1000, (1,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        a = c.scheduler.alphas_cumprod[t]
        z_t = a.sqrt() * z + (1 - a).sqrt() * eps
        pred = c.unet(z_t, t, encoder_hidden_states=ace.prompt_embeds).sample
        if kind == "v_prediction":
            pred = a.sqrt() * pred + (1 - a).sqrt() * z_t
        want = F.mse_loss(pred, target)
        textural = F.mse_loss(z, target)
        with_textural = ACE(c, weight=2.0).loss(x, target, _gen(5))
    assert want > 0.1 and textural > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_textural, want + 2.0 * textural, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"`weight` \(ace option\) must be a number >= 0, got -1"):
        ACE(c, weight=-1)



def test_ace_timestep_window_draws_t_from_it_only(tiny_components):
    """``timesteps=[lo, hi]``: t drawn as ``randint(lo, hi)`` from the same generator, the rest as without it."""
    x = _x()
    ace = ACE(tiny_components, timesteps=[600, 1000])
    with torch.no_grad():
        target = ace.target(x, _gen())
        got = ace.loss(x, target, _gen(5))
        g = _gen(5)
        z = vae_latents(tiny_components.vae, x)
        t = torch.randint(600, 1000, (1,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        a = tiny_components.scheduler.alphas_cumprod[t]
        pred = tiny_components.unet(a.sqrt() * z + (1 - a).sqrt() * eps, t, encoder_hidden_states=ace.prompt_embeds)
        whole = ACE(tiny_components).loss(x, target, _gen(5))
    torch.testing.assert_close(got, F.mse_loss(pred.sample, target), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, whole)  # the same seed draws another t without the window
    refused = r"`timesteps` \(ace option\) must be \[lo, hi\] with 0 <= lo < hi <= 1000"
    for bad in ([500, 500], [-1, 10], [0, 1001], [0.1, 0.5], [10], "late", [True, 5]):
        with pytest.raises(ConfigError, match=refused):
            ACE(tiny_components, timesteps=bad)


# --- mist ----------------------------------------------------------------------------------------------------------


def test_mist_combines_textural_and_semantic_terms_with_the_documented_weight(tiny_components):
    assert MIST_WEIGHT == pytest.approx(1e4 / 16384) and round(MIST_WEIGHT, 2) == 0.61
    x = _x()
    mist, advdm = Mist(tiny_components), AdvDM(tiny_components)
    assert mist.weight == MIST_WEIGHT
    with torch.no_grad():
        target = mist.target(x, _gen())
        got = mist.loss(x, target, _gen(11))
        textural = F.mse_loss(vae_latents(tiny_components.vae, x, _gen(11)), target)  # the same posterior sample
        semantic = -advdm.loss(x, None, _gen(11))  # draws z, t, eps in the same order
    assert textural > 0 and semantic > 0
    torch.testing.assert_close(got, textural - MIST_WEIGHT * semantic, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(Mist(tiny_components, weight=0.0).loss(x, target, _gen(11)), textural)
    with pytest.raises(ConfigError, match=r"`weight` \(mist option\) must be a number >= 0, got -1"):
        Mist(tiny_components, weight=-1)


def test_mist_target_is_the_encoder_attacks_target(tiny_components):
    from cloak.methods.encoder import EncoderAttack

    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(
            Mist(tiny_components, target="checker").target(x, _gen()),
            EncoderAttack(tiny_components, target="checker").target(x, _gen()),
        )


def test_target_pattern_is_encoded_once_per_view_size_and_cloaks_do_not_change(tiny_components, monkeypatch):
    """A batch's cloaker encodes the target pattern once per size; each cloak is the one a fresh cloaker makes."""
    import cloak.methods.encoder as encoder

    sizes: list[tuple[int, int]] = []
    render = encoder.target_image

    def counted(name, h, w, **kwargs):
        sizes.append((h, w))
        return render(name, h, w, **kwargs)

    monkeypatch.setattr(encoder, "target_image", counted)
    config = CloakConfig(method="mist", eps=8, steps=2, options={"semantic": "sds-"})
    batch = Cloaker(tiny_components, config)
    images = [_image(32, 48, seed=1), _image(32, 48, seed=2), _image(32, 32, seed=3), _image(32, 48, seed=4)]
    cloaked = [batch.protect(rgb, seed=5).image for rgb in images]
    assert sizes == [(32, 48), (32, 32)]
    for rgb, image in zip(images, cloaked, strict=True):
        np.testing.assert_array_equal(image, Cloaker(tiny_components, config).protect(rgb, seed=5).image)
    assert len(sizes) == 2 + len(images)  # each fresh cloaker encoded its own


def test_encoder_away_pushes_the_latent_from_the_artworks_own(tiny_components):
    """``direction="away"``: the loss is minus the latent MSE to the clean image's latent, and the cloak raises it."""
    from cloak.methods.encoder import EncoderAttack
    from cloak.protect import CloakConfig, Cloaker

    x = _x()
    away = EncoderAttack(tiny_components, direction="away")
    with torch.no_grad():
        target = away.target(x, _gen())
        torch.testing.assert_close(target, vae_latents(tiny_components.vae, x))
        assert float(away.loss(x, target, _gen())) == 0.0
        shifted = (x + 0.03).clamp(0, 1)
        torch.testing.assert_close(
            away.loss(shifted, target, _gen()), -F.mse_loss(vae_latents(tiny_components.vae, shifted), target)
        )
    rgb = _image()
    cfg = CloakConfig(method="encoder", eps=8, steps=4, options={"direction": "away"})
    cloaked = Cloaker(tiny_components, cfg).protect(rgb, seed=0).image
    toward = Cloaker(tiny_components, CloakConfig(method="encoder", eps=8, steps=4)).protect(rgb, seed=0).image

    def moved(img):
        with torch.no_grad():
            z0 = vae_latents(tiny_components.vae, torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
            z1 = vae_latents(tiny_components.vae, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
        return float(F.mse_loss(z1, z0))

    assert moved(cloaked) > moved(toward)  # the untargeted form moves the latent further, in no set direction
    with pytest.raises(ConfigError, match=r"`direction` \(encoder option\) must be one of toward, away, got 'up'"):
        EncoderAttack(tiny_components, direction="up")



def test_encoder_pixel_space_compares_the_vae_round_trip_with_the_target_image(tiny_components):
    """``space="pixel"``: the target is the pattern image itself, the loss the MSE of D(E(x)) to it, and the cloak
    brings the round trip nearer the pattern."""
    from cloak.methods.encoder import EncoderAttack
    from cloak.targets import target_image
    from cloak.units import vae_roundtrip

    x = _x()
    pixel = EncoderAttack(tiny_components, space="pixel")
    with torch.no_grad():
        target = pixel.target(x, _gen())
        pattern = target_image("stripes", x.shape[-2], x.shape[-1], period=16)
        torch.testing.assert_close(target, pattern)
        torch.testing.assert_close(
            pixel.loss(x, target, _gen()), F.mse_loss(vae_roundtrip(tiny_components.vae, x), pattern)
        )
        away = EncoderAttack(tiny_components, space="pixel", direction="away")
        torch.testing.assert_close(away.target(x, _gen()), vae_roundtrip(tiny_components.vae, x))
    rgb = _image(32, 48)

    def roundtrip_error(img):
        with torch.no_grad():
            z = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            return float(F.mse_loss(vae_roundtrip(tiny_components.vae, z), target_image("stripes", *img.shape[:2])))

    cfg = CloakConfig(method="encoder", eps=16, steps=8, options={"space": "pixel"})
    assert roundtrip_error(Cloaker(tiny_components, cfg).protect(rgb, seed=0).image) < roundtrip_error(rgb)
    with pytest.raises(ConfigError, match=r"`space` \(encoder option\) must be one of latent, pixel, got 'rgb'"):
        EncoderAttack(tiny_components, space="rgb")


# --- pid -----------------------------------------------------------------------------------------------------------


def test_pid_loss_is_minus_the_posterior_moments_moved_and_the_cloak_moves_them(tiny_components):
    """PID's add-log loss: minus (MSE of the posterior means + MSE of the log-variances) to the clean image's;
    ``terms`` keeps one of them; the cloak moves the moments further than blind noise as large."""
    from cloak.methods.pid import PID, posterior_moments

    x = _x()
    with torch.no_grad():
        mean0, logvar0 = posterior_moments(tiny_components.vae, x)
        shifted = (x + 0.03).clamp(0, 1)
        mean1, logvar1 = posterior_moments(tiny_components.vae, shifted)
        moved_mean, moved_var = F.mse_loss(mean1, mean0), F.mse_loss(logvar1, logvar0)
        assert float(moved_mean) > 0 and float(moved_var) > 0
        for terms, expected in (("both", moved_mean + moved_var), ("mean", moved_mean), ("var", moved_var)):
            pid = PID(tiny_components, terms=terms)
            target = pid.target(x, _gen())
            assert float(pid.loss(x, target, _gen())) == 0.0
            torch.testing.assert_close(pid.loss(shifted, target, _gen()), -expected)
    rgb = _image(32, 48)
    clean = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    cloaked = Cloaker(tiny_components, CloakConfig(method="pid", eps=8, steps=4)).protect(rgb, seed=0).image
    noise = (clean + 8 / 255 * torch.randn(clean.shape, generator=_gen()).sign()).clamp(0, 1)  # same budget, blind
    pid = PID(tiny_components)
    with torch.no_grad():
        target = pid.target(clean, _gen())
        by_cloak = -float(pid.loss(torch.from_numpy(cloaked).permute(2, 0, 1)[None].float() / 255, target, _gen()))
        by_noise = -float(pid.loss(noise, target, _gen()))
    assert by_cloak > 2 * by_noise  # the optimised change moves the moments further than a blind one as large
    with pytest.raises(ConfigError, match=r"`terms` \(pid option\) must be one of both, mean, var, got 'kl'"):
        PID(tiny_components, terms="kl")

# --- style ---------------------------------------------------------------------------------------------------------


def test_style_sdedit_decoy_differs_from_the_input_and_ignores_the_cloak_seed(tiny_components):
    obj = StyleCloak(tiny_components, decoy="sdedit")
    assert obj.sdedit and obj.multiple == 4
    x = _x()
    with torch.no_grad():
        a, b = obj.target(x, _gen(1)), obj.target(x, _gen(2))
        other = StyleCloak(tiny_components, decoy="sdedit", decoy_seed=1).target(x, _gen(1))
    assert a.decoy.shape == x.shape and 0 <= a.decoy.min() and a.decoy.max() <= 1
    assert (a.decoy - x).abs().mean() > 0.05
    torch.testing.assert_close(a.decoy, b.decoy)
    assert not torch.equal(a.decoy, other.decoy)
    with torch.no_grad():  # the loss is zero at the decoy itself and positive at the artwork
        assert float(obj.loss(a.decoy, a, _gen())) < 1e-10 < float(obj.loss(x, a, _gen()))


def test_style_procedural_decoy_without_a_diffusion_model(tiny_components):
    vae_only = dataclasses.replace(tiny_components, unet=None, text_encoder=None, tokenizer=None, scheduler=None)
    obj = StyleCloak(vae_only)
    assert not obj.sdedit and obj.multiple == 2
    x = _x()
    decoy = obj.target(x, _gen()).decoy
    torch.testing.assert_close(decoy, procedural_decoy(x))
    assert decoy.shape == x.shape and (decoy - x).abs().mean() > 0.05
    # Composition is kept: the decoy is closer to its own image than to another one.
    assert (decoy - x).abs().mean() < (decoy - _x(seed=1).flip(-1)).abs().mean()
    result = Cloaker(vae_only, CloakConfig(method="style", eps=8, steps=4)).protect(_image(), seed=0)
    assert result.losses[-1] < result.losses[0]
    # The choice can be forced either way.
    forced = StyleCloak(tiny_components, decoy="procedural")
    assert not forced.sdedit and forced.multiple == 2
    torch.testing.assert_close(forced.target(x, _gen()).decoy, decoy)
    with pytest.raises(ConfigError, match=r"decoy='sdedit' needs the model parts \['scheduler', 'text_encoder', "):
        StyleCloak(vae_only, decoy="sdedit")


def test_style_clip_term(tiny_components, monkeypatch):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    import cloak.models
    from cloak.units import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    tiny_clip = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(layers=1, width=32, heads=2, context_length=16, vocab_size=100),
    ).eval()
    asked = []

    def load_open_clip(name, pretrained, device):
        asked.append((name, pretrained, device))
        return cloak.models.OpenClip(tiny_clip, CLIP_MEAN, CLIP_STD, image_size=(32, 32), interpolation="bicubic")

    monkeypatch.setattr(cloak.models, "load_open_clip", load_open_clip)
    with_clip = StyleCloak(tiny_components, clip_model="ViT-B-32", clip_pretrained="clip.pt", clip_weight=2.0)
    without = StyleCloak(tiny_components)
    assert asked == [("ViT-B-32", "clip.pt", "cpu")]
    x = _x()
    with torch.no_grad():
        target = with_clip.target(x, _gen())
        assert target.clip.shape == (1, 16) and float(target.clip.norm()) == pytest.approx(1.0)
        extra = float(with_clip.loss(x, target, _gen())) - float(without.loss(x, target, _gen()))
        cosine = float((with_clip._clip_features(x) * target.clip).sum())
    assert extra == pytest.approx(2.0 * (1.0 - cosine), rel=1e-4) and extra > 0


def test_style_options_are_validated(tiny_components):
    with pytest.raises(ConfigError, match=r"`strength` \(style option\) must be in \(0, 1\], got 1.5"):
        StyleCloak(tiny_components, strength=1.5)
    with pytest.raises(ConfigError, match=r"`decoy_seed` \(style option\) must be an integer >= 0, got -1"):
        StyleCloak(tiny_components, decoy_seed=-1)
    with pytest.raises(ConfigError, match=r"`decoy` \(style option\) must be one of auto, sdedit, procedural, got 'x"):
        StyleCloak(tiny_components, decoy="x")
    with pytest.raises(ConfigError, match=r"must be >= 1; got strength 0.01 and num_inference_steps 20"):
        StyleCloak(tiny_components, strength=0.01)


def test_style_default_decoy_does_not_depend_on_loaded_parts(tiny_components):
    """The CLI loads only `needs`, the web page loads everything: the default must give the same cloak."""
    assert not StyleCloak(tiny_components).sdedit


def test_mist_sds_minus_variant_adds_the_sds_term(tiny_components):
    """``semantic="sds-"``: textural + w * L_DM, whose gradient is the encoder's plus w times SDS(-)'s."""
    x = _x()
    hybrid, sds = Mist(tiny_components, semantic="sds-"), SDS(tiny_components)
    with torch.no_grad():
        target = hybrid.target(x, _gen())
        textural = F.mse_loss(vae_latents(tiny_components.vae, x, _gen(7)), target)
        torch.testing.assert_close(
            hybrid.loss(x, target, _gen(7)), textural + MIST_WEIGHT * sds.loss(x, None, _gen(7)), rtol=1e-5, atol=1e-6
        )
    xa, xs, xt = (x.clone().requires_grad_(True) for _ in range(3))
    hybrid.loss(xa, target, _gen(7)).backward()
    sds.loss(xs, None, _gen(7)).backward()
    F.mse_loss(vae_latents(tiny_components.vae, xt, _gen(7)), target).backward()
    assert xs.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xt.grad + MIST_WEIGHT * xs.grad, rtol=1e-4, atol=1e-9)
    with pytest.raises(ConfigError, match=r"`semantic` \(mist option\) must be one of advdm, sds-, got 'sds'"):
        Mist(tiny_components, semantic="sds")


# --- sdedit --------------------------------------------------------------------------------------------------------


def test_sdedit_loss_is_the_img2img_output_against_the_target(tiny_components):
    """The pixel loss is MSE(img2img(x), pattern) with the same noise draw; the latent loss compares latents."""
    from cloak.methods.diffusion import img2img
    from cloak.methods.sdedit import EditAttack
    from cloak.targets import target_image

    x = _x()
    obj = EditAttack(tiny_components, strength=0.5, num_inference_steps=4)
    pattern = target_image("stripes", 32, 48)
    with torch.no_grad():
        target = obj.target(x, _gen())
        torch.testing.assert_close(target, pattern)
        out = img2img(
            tiny_components, x, obj.prompt_embeds, obj.negative_embeds,
            strength=0.5, num_inference_steps=4, guidance_scale=5.0, generator=_gen(3),
        )  # fmt: skip
        torch.testing.assert_close(obj.loss(x, target, _gen(3)), F.mse_loss(out, pattern))
        assert float(obj.loss(x, target, _gen(3))) != float(obj.loss(x, target, _gen(4)))  # a fresh noise per draw
        latent = EditAttack(tiny_components, space="latent", strength=0.5, num_inference_steps=4)
        z_target = latent.target(x, _gen())
        torch.testing.assert_close(z_target, vae_latents(tiny_components.vae, pattern))
        z = img2img(
            tiny_components, x, obj.prompt_embeds, obj.negative_embeds, strength=0.5, num_inference_steps=4,
            guidance_scale=5.0, generator=_gen(3), decode=False,
        )  # fmt: skip
        assert z.shape == z_target.shape
        torch.testing.assert_close(latent.loss(x, z_target, _gen(3)), F.mse_loss(z, z_target))


def test_sdedit_gradient_reaches_the_image_through_the_unet_and_checkpointing_does_not_change_it(tiny_components):
    from cloak.methods.sdedit import EditAttack

    x = _x()
    grads = []
    for checkpoint in (False, True):
        obj = EditAttack(tiny_components, strength=0.5, num_inference_steps=4, checkpoint=checkpoint)
        xg = x.clone().requires_grad_(True)
        obj.loss(xg, obj.target(x, _gen()), _gen(3)).backward()
        grads.append(xg.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-9)

    def unet_calls(checkpoint: bool) -> int:
        calls = []
        hook = tiny_components.unet.register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute may stop early
        try:
            obj = EditAttack(tiny_components, strength=0.5, num_inference_steps=4, checkpoint=checkpoint)
            xg = x.clone().requires_grad_(True)
            obj.loss(xg, obj.target(x, _gen()), _gen(3)).backward()
        finally:
            hook.remove()
        return len(calls)

    assert unet_calls(False) == 2  # int(0.5 x 4) denoising steps, each one guided UNet call (a batch of 2)
    assert unet_calls(True) == 4  # checkpointing runs each again in the backward pass


def test_sdedit_with_several_strengths_draws_one_per_noise_draw(tiny_components):
    """A list of strengths: each draw runs one of them (int(s x steps) UNet calls), picked by the cloak's generator."""
    from cloak.methods.sdedit import EditAttack

    x = _x()
    obj = EditAttack(tiny_components, strength=[0.25, 0.75], num_inference_steps=4)
    assert obj.strengths == (0.25, 0.75)

    def calls_and_loss(seed: int) -> tuple[int, float]:
        calls = []
        hook = tiny_components.unet.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            with torch.no_grad():
                loss = float(obj.loss(x, obj.target(x, _gen()), _gen(seed)))
        finally:
            hook.remove()
        return len(calls), loss

    runs = [calls_and_loss(seed) for seed in range(12)]
    assert {n for n, _ in runs} == {1, 3}  # int(0.25 x 4) and int(0.75 x 4): both strengths are drawn
    assert calls_and_loss(5) == runs[5]  # the same generator seed, the same strength and noise
    single = EditAttack(tiny_components, strength=[0.5], num_inference_steps=4)
    with torch.no_grad():  # one strength spends no draw: the same loss as the plain number
        plain = EditAttack(tiny_components, strength=0.5, num_inference_steps=4)
        target = plain.target(x, _gen())
        torch.testing.assert_close(single.loss(x, target, _gen(3)), plain.loss(x, target, _gen(3)))


def test_sdedit_options_are_validated(tiny_components):
    from cloak.methods.sdedit import EditAttack

    with pytest.raises(ConfigError, match=r"`space` \(sdedit option\) must be one of pixel, latent, got 'x'"):
        EditAttack(tiny_components, space="x")
    with pytest.raises(ConfigError, match=r"`strength` \(sdedit option\) must be in \(0, 1\], got 0"):
        EditAttack(tiny_components, strength=0)
    with pytest.raises(ConfigError, match=r"`checkpoint` \(sdedit option\) must be true or false, got 1"):
        EditAttack(tiny_components, checkpoint=1)
    with pytest.raises(ConfigError, match=r"must be >= 1; got strength 0.05 and num_inference_steps 10"):
        EditAttack(tiny_components, strength=0.05)
    with pytest.raises(ConfigError, match=r"`samples` \(sdedit option\) must be a positive integer, got 0"):
        EditAttack(tiny_components, samples=0)
    with pytest.raises(ConfigError, match=r"`strength` \(sdedit option\) must be in \(0, 1\], got 1.5"):
        EditAttack(tiny_components, strength=[0.3, 1.5])
    with pytest.raises(ConfigError, match=r"must be a number or a non-empty list of numbers, got \[\]"):
        EditAttack(tiny_components, strength=[])
