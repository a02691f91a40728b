"""Cloak one image: views + objective + the PGD loop, with the budget enforced on the 8-bit pixels.

``Cloaker`` holds the loaded model parts and the method across many images (load once, cloak a folder).
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cloak import metrics
from cloak.errors import ConfigError
from cloak.imageio import to_tensor
from cloak.methods import METHODS
from cloak.optim import PGDConfig, pgd
from cloak.presets import get_preset
from cloak.targets import check_target
from cloak.views import plan_views, render_view

if TYPE_CHECKING:
    from cloak.models import Components


STEP_RULE = ("step_size", "schedule", "random_start")
"""The `CloakConfig` fields that make the optimiser's step rule; a published baseline's belong to its method."""


@dataclass(frozen=True)
class CloakConfig:
    """Everything that decides a cloak, besides the model and the seed.

    Attributes:
        method: registry key in ``cloak.methods.METHODS``.
        eps: L-inf budget, 0-255 units, enforced on the saved 8-bit file.
        steps: optimiser steps (each one forward + backward per view).
        step_size: first step, 0-255 units; ``None`` = the optimiser's default schedule.
        random_start: start from uniform noise inside the budget.
        schedule: ``"cosine"`` (the project's step sizes, decaying to a tenth), ``"constant"`` or ``"linear"``
            (the published methods' rules, ``cloak.optim.SCHEDULES``).
        eot: expectation-over-transforms specs (``cloak.transforms``), e.g. ``("jpeg:quality=75", "blur:sigma=1")``;
            one is drawn per view and step. Empty: optimise against the image as is.
        lpips_bound: optional perceptual budget: a hinge ``lpips_weight * max(LPIPS - lpips_bound, 0)`` is added
            (Glaze's p = 0.05). Needs an LPIPS model passed to :class:`Cloaker`.
        lpips_weight: weight of that hinge.
        max_side: largest view side evaluated at once, px; bounds memory (``cloak.views``).
        autocast: run the model under bf16 autocast; ``None`` = on for CPUs with native bf16 (2.4x faster there).
        min_psnr: optional PSNR floor, dB, on top of ``eps`` (``cloak.optim``), enforced on the saved 8-bit file.
        smooth: optional Gaussian sigma, px as the model sees the image, by which the optimiser low-passes its
            random start and gradients (``cloak.optim``), so that blur and downscaling leave more of the cloak.
        options: method-specific keyword arguments, e.g. ``{"target": "checker"}``.
    """

    method: str = "encoder"
    eps: float = 8.0
    steps: int = 16
    step_size: float | None = None
    random_start: bool = True
    schedule: str = "cosine"
    eot: tuple[str, ...] = ()
    lpips_bound: float | None = None
    lpips_weight: float = 10.0
    max_side: int = 768
    autocast: bool | None = None
    min_psnr: float | None = None
    smooth: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # numpy scalars (np.float32(8.0), np.int64(16)) are numbers too; stored as Python ones, so records stay JSON.
        for name, kind in (("eps", numbers.Real), ("steps", numbers.Integral), ("min_psnr", numbers.Real),
                           ("smooth", numbers.Real), ("lpips_bound", numbers.Real), ("step_size", numbers.Real)):
            value = getattr(self, name)
            if isinstance(value, bool) or type(value) in (int, float):
                continue  # Python numbers stay as given (8 stays 8: eval's fingerprints hash the settings)
            if kind is numbers.Integral and isinstance(value, numbers.Integral):
                object.__setattr__(self, name, int(value))
            elif kind is numbers.Real and isinstance(value, numbers.Real):
                object.__setattr__(self, name, float(value))
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        self.pgd()  # validates eps, steps, step_size
        if self.max_side < 64:
            raise ConfigError(f"`max_side` must be at least 64 px, got {self.max_side}.")
        # Checked here, before any model is loaded or image cloaked, so that a typo is a usage error, not a failure
        # reported once per file after minutes of work.
        check_options(self.method, self.options)
        from cloak.transforms import parse_eot

        for spec in self.eot:
            parse_eot(spec)
        if "target" in self.options or "period" in self.options:
            check_target(self.options.get("target", "stripes"), self.options.get("period", 16), must_exist=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CloakConfig:
        """A preset's settings, with ``overrides`` (those not ``None``) on top.

        Another ``method`` than the preset's drops what belongs to the preset's method: its options and its step
        rule (a baseline's released ``step_size``, ``schedule`` and ``random_start``), which return to this class's
        defaults unless also overridden; the budget and the step count stay.
        """
        p = get_preset(name)
        base = cls(
            method=p.method,
            eps=p.eps,
            steps=p.steps,
            lpips_bound=p.lpips_bound,
            min_psnr=p.min_psnr,
            smooth=p.smooth,
            step_size=p.step_size,
            random_start=p.random_start,
            schedule=p.schedule,
            options=dict(p.options),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "method" in overrides and overrides["method"] != p.method:
            fresh: dict[str, Any] = {f.name: f.default for f in fields(cls) if f.name in STEP_RULE}
            base = replace(base, options={}, **fresh)
        if "options" in overrides:
            overrides["options"] = {**base.options, **overrides["options"]}
        return replace(base, **overrides)

    def pgd(self) -> PGDConfig:
        return PGDConfig(
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            min_psnr=self.min_psnr,
            smooth=self.smooth,
            schedule=self.schedule,
        )


def check_options(method: str, options: dict[str, Any]) -> None:
    """Refuse options that ``method``'s constructor does not take, naming those it does.

    Raises:
        ConfigError: e.g. ``target`` for ``advdm``, which has no target.
    """
    params = inspect.signature(METHODS[method].__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [name for name in params if name not in ("self", "components")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"method `{method}` takes no option {', '.join(f'`{u}`' for u in unknown)}; its options are "
            f"{', '.join(accepted) or 'none'}."
        )


@dataclass
class CloakResult:
    """A cloaked image and how it was made.

    Attributes:
        image: the cloaked pixels exactly as they are to be saved, (H, W, 3) uint8.
        delta: ``image - original`` in 0-255 units, (H, W, 3) int16; ``abs(delta).max() <= eps``.
        losses: objective value before each step.
        linf: measured L-inf, 0-255 units, on the 8-bit pixels.
        psnr: dB, to the original.
        ssim: to the original, in [-1, 1].
        seconds: wall time of the optimisation.
        views: number of views evaluated per step.
    """

    image: np.ndarray
    delta: np.ndarray
    losses: list[float]
    linf: int
    psnr: float
    ssim: float
    seconds: float
    views: int


def default_autocast(device: torch.device) -> bool:
    """bf16 autocast pays on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere stay in the model's dtype."""
    if device.type != "cpu":
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def store_unet_in_bf16(components: Components) -> None:
    """Keep the UNet's convolution and linear weights in bf16, in place, for cloaking under bf16 autocast.

    Under bf16 autocast (:attr:`Cloaker.autocast`) those layers cast their float32 weights and biases to bf16 at
    every call, so storing them in bf16 gives the same output (``tests/test_methods.py``) with about half the memory
    and without the per-call casts (the `default` on SD-1.5 at 512 px: 7.09 -> 5.33 GiB, 109.7 -> 93.4 s;
    ``benchmarks/bench_protect.py --float32-unet``). Normalisation layers, which autocast runs in float32,
    keep their float32 weights. Only for components that nothing fine-tunes in place: the evaluation, whose mimics
    fine-tune the loaded UNet, keeps float32.
    """
    if components.unet is None:
        return
    for module in components.unet.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.to(torch.bfloat16)


def release_setup_parts(components: Components, cloaker: Cloaker) -> None:
    """Drop, in place, the parts that ``cloaker``'s method used only while it was built (its ``setup_only``).

    The UNet methods encode their prompt once, so the text encoder (0.46 GiB in float32 for SD-1.5) need not stay
    in memory while they cloak. Only for components that nothing else will use: a web page that builds a new
    :class:`Cloaker` for each preset keeps them.
    """
    for part in cloaker.objective.setup_only:
        setattr(components, part, None)


def slim_for_cloaking(components: Components, cloaker: Cloaker, *, bf16_unet: bool = True) -> None:
    """What `cloak protect` does to components that serve one :class:`Cloaker` only: the UNet's weights in bf16 when
    it runs under bf16 autocast (:func:`store_unet_in_bf16`; ``bf16_unet=False`` keeps float32, to measure what that
    saves), and the parts its method used only while it was built dropped (:func:`release_setup_parts`). The cloak
    is unchanged."""
    if cloaker.autocast and bf16_unet:
        store_unet_in_bf16(components)
    release_setup_parts(components, cloaker)


def check_seed(seed: Any) -> int:
    """``seed`` as a Python int, if it is a whole number (numpy integers too) from 0 to 2^63 - 1.

    Raises:
        ConfigError: otherwise (a float, a bool, a negative number, one that overflows torch's generator).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise ConfigError(f"`seed` must be a whole number from 0 to 2^63 - 1, got {seed!r}.")
    return int(seed)


class Cloaker:
    """Cloak images with one method and one set of loaded model parts.

    Args:
        components: loaded model parts (must include the method's ``needs``).
        config: the cloak's settings.
        lpips_model: an ``lpips.LPIPS`` model, needed when ``config.lpips_bound`` is set.
    """

    def __init__(
        self, components: Components, config: CloakConfig, *, lpips_model: torch.nn.Module | None = None
    ) -> None:
        if config.lpips_bound is not None and lpips_model is None:
            raise ConfigError("`lpips_bound` is set but no LPIPS model was given (cloak.models.load_lpips).")
        self.components = components
        self.config = config
        self.objective = METHODS[config.method](components, **config.options)
        self.lpips_model = lpips_model
        self.autocast = default_autocast(components.device) if config.autocast is None else config.autocast

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.components.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def protect(
        self,
        rgb: np.ndarray,
        *,
        grey: bool = False,
        seed: int = 0,
        callback: Callable[[int, int, float], None] | None = None,
    ) -> CloakResult:
        """Cloak one image.

        Args:
            rgb: (H, W, 3) uint8, any size.
            grey: the image is greyscale (three equal channels): the perturbation is kept grey too.
            seed: seeds every random draw (random start, EOT, noise in the objective).
            callback: called after each step with (step, steps, loss).

        Returns:
            A :class:`CloakResult` whose ``image`` respects the budget exactly.
        """
        start = time.perf_counter()
        cfg = self.config
        device = self.components.device
        seed = check_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        x = to_tensor(rgb).to(device)
        views = plan_views(
            x.shape[-2],
            x.shape[-1],
            resolution=self.components.resolution,
            multiple=self.objective.multiple,
            max_side=cfg.max_side,
        )
        with torch.no_grad(), self._autocast():
            clean_views = [render_view(x, v) for v in views]
            targets = [self.objective.target(cv, generator) for cv in clean_views]
        eot_specs = None
        if cfg.eot:
            from cloak.transforms import parse_eot, sample_eot

            eot_specs = [parse_eot(spec) for spec in cfg.eot]
        calls = 0

        def closure(x_adv: torch.Tensor) -> float:
            nonlocal calls
            if self.objective.update_every and calls % self.objective.update_every == 0:
                self.objective.update([render_view(x_adv.detach(), v) for v in views], generator)
            calls += 1
            # Back-propagate view by view into a detached copy (memory: one view's graph), then once into delta.
            leaf = x_adv.detach().requires_grad_(True)
            total = 0.0
            for view, target, clean in zip(views, targets, clean_views, strict=True):
                xv = render_view(leaf, view)
                if eot_specs is not None:
                    xv = sample_eot(eot_specs, generator)(xv)  # a fresh transform per view and step
                with self._autocast():
                    loss = self.objective.loss(xv, target, generator)
                    if cfg.lpips_bound is not None:
                        from cloak.units import to_lpips

                        assert self.lpips_model is not None  # __init__ refuses an lpips_bound without a model
                        dist = self.lpips_model(to_lpips(render_view(leaf, view)), to_lpips(clean)).mean()
                        loss = loss + cfg.lpips_weight * torch.relu(dist - cfg.lpips_bound)
                loss.backward()
                total += float(loss.detach())
            x_adv.backward(leaf.grad)
            return total / len(views)

        shape = (1, 1, *x.shape[-2:]) if grey else tuple(x.shape)
        pgd_config = cfg.pgd()
        if cfg.smooth is not None:  # sigma as the model sees the image -> px of the file
            pgd_config = replace(pgd_config, smooth=cfg.smooth * x.shape[-2] / views[0].size[0])
        result = pgd(closure, x, pgd_config, generator, delta_shape=shape, callback=callback)
        image, delta = quantise(rgb, result.delta, cfg.eps, min_psnr=cfg.min_psnr)
        return CloakResult(
            image=image,
            delta=delta,
            losses=result.losses,
            linf=metrics.linf(rgb, image),
            psnr=metrics.psnr(rgb, image),
            ssim=metrics.ssim(rgb, image),
            seconds=time.perf_counter() - start,
            views=len(views),
        )


def quantise(
    rgb: np.ndarray, delta: torch.Tensor, eps: float, *, min_psnr: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a float perturbation to 8-bit pixels so that the saved file respects the budget exactly.

    Args:
        rgb: (H, W, 3) uint8 original.
        delta: (1, C, H, W) in [0, 1] units, C in {1, 3}.
        eps: budget, 0-255 units; the integer part bounds every pixel change.
        min_psnr: optional PSNR floor, dB: if rounding pushed the file below it, the perturbation is shrunk until
            the file meets it.

    Returns:
        ``(image, delta)``: (H, W, 3) uint8 and the applied (H, W, 3) int16 change.
    """
    cap = math.floor(eps)
    scaled = delta.detach().float().cpu() * 255.0
    for _ in range(20):
        d = torch.round(scaled).clamp(-cap, cap)[0].permute(1, 2, 0).numpy()
        d = np.broadcast_to(d, rgb.shape).astype(np.int16)
        image = np.clip(rgb.astype(np.int16) + d, 0, 255).astype(np.uint8)
        shortfall = 0.0 if min_psnr is None else min_psnr - metrics.psnr(rgb, image)
        if shortfall <= 0:
            break
        scaled = scaled * 10.0 ** (-(shortfall + 0.01) / 20.0)  # shrink the RMS by the missing dB
    else:
        # Each pass shrinks the change by the missing dB plus 0.01 dB; rounding would have to undo that 20 times.
        raise RuntimeError(f"could not meet the PSNR floor of {min_psnr} dB in 20 passes")
    return image, image.astype(np.int16) - rgb.astype(np.int16)
