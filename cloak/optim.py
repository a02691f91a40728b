"""The one projected-gradient loop every protection method uses.

Methods only define a loss (``cloak.methods``); random start, the step schedule, the L-inf projection, clamping to
valid pixels, seeding and progress reporting live here, once.

The step rule is signed gradient descent (PGD, Madry et al. 2018, https://arxiv.org/abs/1706.06083) with a cosine
step-size schedule: large steps first to move fast with few model evaluations, small steps last to settle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cloak.errors import ConfigError
from cloak.units import eps_to_unit


@dataclass(frozen=True)
class PGDConfig:
    """Settings of the projected-gradient loop.

    Attributes:
        eps: L-inf budget in 0-255 units (8 means 8/255), enforced on the saved 8-bit file.
        steps: number of gradient steps (each one model forward + backward per view).
        step_size: first step size in 0-255 units; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``, which
            lets a short run cross the budget and a long one refine. Decays with a cosine to a tenth.
        random_start: start from uniform noise in the budget instead of zero (breaks symmetric gradients).
    """

    eps: float = 8.0
    steps: int = 16
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        eps_to_unit(self.eps)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"`steps` must be a positive integer, got {self.steps!r}.")
        if self.step_size is not None and not 0 < self.step_size <= 255:
            raise ConfigError(f"`step_size` must be in (0, 255] (0-255 units), got {self.step_size}.")

    def step_at(self, i: int) -> float:
        """Step size of step ``i`` (0-based), in [0, 1] units."""
        first = self.step_size if self.step_size is not None else max(self.eps / 4, 2.5 * self.eps / self.steps)
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
    """Minimise ``closure`` over an L-inf-bounded perturbation of ``x``.

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
        delta = (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * eps
        delta = delta.to(device=x.device, dtype=x.dtype)
    else:
        delta = torch.zeros(shape, device=x.device, dtype=x.dtype)
    delta = _project(x, delta, eps)
    losses: list[float] = []
    for i in range(config.steps):
        delta.requires_grad_(True)
        loss = closure((x + delta).clamp(0.0, 1.0))
        losses.append(float(loss))
        if delta.grad is None:
            raise RuntimeError("the loss does not depend on the image: no gradient reached the perturbation")
        with torch.no_grad():
            delta = delta - config.step_at(i) * delta.grad.sign()
            delta = _project(x, delta, eps)
        if callback is not None:
            callback(i + 1, config.steps, losses[-1])
    return PGDResult(delta=delta.detach(), losses=losses)


def _project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps and onto valid pixels ``x + delta`` in [0, 1].

    A one-channel ``delta`` (greyscale image, whose three channels are equal) is clamped against channel 0.
    """
    xs = x[:, : delta.shape[1]]
    return ((xs + delta.clamp(-eps, eps)).clamp(0.0, 1.0) - xs).detach()
