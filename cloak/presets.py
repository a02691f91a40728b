"""Named settings for artists: ``fast``, ``default``, ``strong``.

A preset fixes the method, budget and number of steps; explicit options override it. Times are measured by
``python benchmarks/bench_protect.py`` (see the README); steps are each one VAE forward + backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloak.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """One preset.

    Attributes:
        method: registry key in ``cloak.methods.METHODS``.
        eps: L-inf budget, 0-255 units.
        steps: optimiser steps.
        description: one line for people.
    """

    method: str
    eps: float
    steps: int
    description: str


PRESETS: dict[str, Preset] = {
    "fast": Preset("encoder", 8.0, 4, "4 steps: a quick cloak, weaker; for large batches"),
    "default": Preset("encoder", 8.0, 16, "16 steps: the recommended balance of protection and time"),
    "strong": Preset("encoder", 12.0, 64, "64 steps at a larger budget: strongest, slower, slightly more visible"),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name, with a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.") from None
