"""The one projected-gradient loop every protection method uses.

Methods only define a loss (``cloak.methods``); random start, the step schedule, the L-inf projection, clamping to
valid pixels, seeding and progress reporting live here, once.

The step rule is signed gradient descent (PGD, Madry et al. 2018, https://arxiv.org/abs/1706.06083) with a cosine
step-size schedule: large steps first to move fast with few model evaluations, small steps last to settle. The
published methods run as baselines (``cloak.presets.BASELINES``) take their own rule instead: a constant step
(``schedule="constant"``) or PhotoGuard's linear decay to a hundredth (``"linear"``), with or without a random start.

With a PSNR floor (``min_psnr``) the perturbation is also held to an L2 ball (RMS = 10^(-min_psnr / 20)) inside the
L-inf one. Signed steps would spread the change evenly over every pixel and waste that budget, so the step becomes
the gradient normalised to unit RMS: pixels where the loss is most sensitive get most of the change (the L2 form of
PGD, Madry et al. 2018), and the L-inf cap still bounds any one pixel.

With ``smooth`` (a Gaussian sigma, px) the random start and every step's gradient are low-passed before the step
is taken, so the perturbation is built from structures a few pixels wide instead of pixel-to-pixel noise: blur,
downscaling and JPEG, which remove the finest frequencies, leave more of it. On the testbed that keeps more of the
encoder's pull toward its target but does not stop more mimicry (docs/RESULTS.md), so no preset uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cloak.errors import ConfigError
from cloak.transforms import lowpass
from cloak.units import eps_to_unit

#: Step-size schedules of :class:`PGDConfig`.
SCHEDULES = ("cosine", "constant", "linear")


@dataclass(frozen=True)
class PGDConfig:
    """Settings of the projected-gradient loop.

    Attributes:
        eps: L-inf budget in 0-255 units (8 means 8/255), enforced on the saved 8-bit file.
        steps: number of gradient steps (each one model forward + backward per view).
        step_size: first step size in 0-255 units; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``, which
            lets a short run cross the budget and a long one refine. Decays with a cosine to a tenth.
        random_start: start from uniform noise in the budget instead of zero (breaks symmetric gradients).
        min_psnr: optional PSNR floor in dB (peak 255) on top of the L-inf budget; ``None`` = L-inf only.
        smooth: optional Gaussian sigma, px of the perturbation, by which the random start and each gradient are
            low-passed; ``None`` = none.
        schedule: ``"cosine"`` (the project's rule: from the first step down to a tenth of it), ``"constant"``
            (every step the first one's size: the usual PGD of the published methods) or ``"linear"`` (from the
            first step down to a hundredth of it: PhotoGuard's).
    """

    eps: float = 8.0
    steps: int = 16
    step_size: float | None = None
    random_start: bool = True
    min_psnr: float | None = None
    smooth: float | None = None
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        eps_to_unit(self.eps)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"`schedule` must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"`steps` must be a positive integer, got {self.steps!r}.")
        if self.step_size is not None and not 0 < self.step_size <= 255:
            raise ConfigError(f"`step_size` must be in (0, 255] (0-255 units), got {self.step_size}.")
        if self.min_psnr is not None:
            if isinstance(self.min_psnr, bool) or not isinstance(self.min_psnr, (int, float)):
                raise ConfigError(f"`min_psnr` must be a number of dB, got {self.min_psnr!r}.")
            # Below 20*log10(255/eps) the L-inf budget is the tighter bound; above ~60 dB nothing survives rounding.
            if not 20.0 <= self.min_psnr <= 60.0:
                raise ConfigError(f"`min_psnr` must be between 20 and 60 dB, got {self.min_psnr}.")
        if self.smooth is not None:
            if isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float)) or not self.smooth > 0:
                raise ConfigError(f"`smooth` must be a positive Gaussian sigma in px, got {self.smooth!r}.")

    @property
    def max_rms(self) -> float | None:
        """The RMS change the PSNR floor allows, [0, 1] units (``None`` without a floor)."""
        return None if self.min_psnr is None else 10.0 ** (-self.min_psnr / 20.0)

    def step_at(self, i: int) -> float:
        """Step size of step ``i`` (0-based), in [0, 1] units."""
        first = self.step_size if self.step_size is not None else max(self.eps / 4, 2.5 * self.eps / self.steps)
        if self.schedule == "constant":
            return first / 255.0
        if self.schedule == "linear":  # PhotoGuard's pgd: first - (first - first / 100) * i / steps
            return first / 255.0 * (1.0 - 0.99 * i / self.steps)
        frac = i / max(1, self.steps - 1)
        return first / 255.0 * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


# closure(x_adv) computes the loss to minimise at x_adv, calls backward on it (possibly in pieces, to bound memory),
# and returns its value. Gradients reach the perturbation through x_adv.
Closure = Callable[[torch.Tensor], float]
Callback = Callable[[int, int, float], None]  # (step done, total steps, loss)


@dataclass
class PGDResult:
    """Outcome of :func:`pgd`.

    Attributes:
        delta: the perturbation, same shape as the ``delta_shape`` asked for, in [-eps, eps] ([0, 1] units), with
            ``x + delta`` in [0, 1].
        losses: the loss before each step.
    """

    delta: torch.Tensor
    losses: list[float]


def pgd(
    closure: Closure,
    x: torch.Tensor,
    config: PGDConfig,
    generator: torch.Generator,
    *,
    delta_shape: tuple[int, ...] | None = None,
    callback: Callback | None = None,
) -> PGDResult:
    """Minimise ``closure`` over an L-inf-bounded perturbation of ``x`` (also RMS-bounded with ``min_psnr``).

    Args:
        closure: see :data:`Closure`.
        x: clean image (B, 3, H, W) in [0, 1].
        config: budget and schedule.
        generator: draws the random start (a CPU generator; the noise is moved to ``x``'s device).
        delta_shape: shape of the optimised perturbation, broadcast onto ``x``; (B, 1, H, W) keeps a greyscale
            image grey. Defaults to ``x.shape``.
        callback: called after every step with (step, steps, loss).

    Returns:
        A :class:`PGDResult`.
    """
    eps = eps_to_unit(config.eps)
    shape = tuple(delta_shape) if delta_shape is not None else tuple(x.shape)
    if config.random_start:
        noise = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1
        if config.smooth is not None:  # smooth noise, stretched back to fill the budget
            noise = lowpass(noise, config.smooth)
            noise = noise / noise.abs().amax().clamp_min(1e-12)
        delta = (noise * eps).to(device=x.device, dtype=x.dtype)
    else:
        delta = torch.zeros(shape, device=x.device, dtype=x.dtype)
    delta = _project(x, delta, eps, config.max_rms)
    losses: list[float] = []
    for i in range(config.steps):
        delta.requires_grad_(True)
        loss = closure((x + delta).clamp(0.0, 1.0))
        losses.append(float(loss))
        if delta.grad is None:
            raise RuntimeError("the loss does not depend on the image: no gradient reached the perturbation")
        with torch.no_grad():
            grad = delta.grad if config.smooth is None else lowpass(delta.grad, config.smooth)
            if config.max_rms is None:
                direction = grad.sign()
            else:
                direction = grad / _rms(grad).clamp_min(1e-12)
            delta = delta - config.step_at(i) * direction
            delta = _project(x, delta, eps, config.max_rms)
        if callback is not None:
            callback(i + 1, config.steps, losses[-1])
    return PGDResult(delta=delta.detach(), losses=losses)


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Root mean square per image, shaped to broadcast over ``t``."""
    return t.float().pow(2).mean(dim=tuple(range(1, t.dim())), keepdim=True).sqrt().to(t.dtype)


def _project(x: torch.Tensor, delta: torch.Tensor, eps: float, max_rms: float | None = None) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps and onto valid pixels ``x + delta`` in [0, 1], then (with
    ``max_rms``) shrink each image's perturbation to that RMS. Shrinking toward zero keeps both earlier constraints.

    A one-channel ``delta`` (greyscale image, whose three channels are equal) is clamped against channel 0; its RMS
    is the three channels' RMS.
    """
    xs = x[:, : delta.shape[1]]
    delta = (xs + delta.clamp(-eps, eps)).clamp(0.0, 1.0) - xs
    if max_rms is not None:
        delta = delta * (max_rms / _rms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta.detach()
