"""The short spec strings that name an image transform or a purifier with its parameters.

One grammar is shared by the EOT transforms (`cloak.transforms`), the purifiers (`attacks`), the CLI, the eval
config and the web page, so that ``jpeg:quality=75`` means the same thing everywhere::

    chain  := item ("+" item)*                   e.g. "jpeg:quality=75+blur:sigma=1"
    item   := name [":" param ("," param)*]       e.g. "resize:factor=0.5,filter=bicubic"
    param  := key "=" value
    value  := scalar | scalar ".." scalar         a range: drawn uniformly on every call, e.g. "quality=50..90"

Names and keys are lower-case identifiers; spaces around tokens are ignored. Integer ranges are drawn uniformly
over the integers of ``[low, high]``, float ranges uniformly over ``[low, high)``. Every draw takes an explicit
``torch.Generator`` (`Range.draw`).

This module parses and validates only; what a name means is decided by the registry that calls `resolve_params`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cloak.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Range:
    """A closed parameter range ``[low, high]``; a fresh value is drawn from it on every call."""

    low: float
    high: float

    def draw(self, kind: type, generator: torch.Generator) -> float | int:
        """Draw one value: integers uniform over ``low..high`` inclusive, floats uniform over ``[low, high)``."""
        if kind is int:
            return int(
                torch.randint(
                    int(self.low), int(self.high) + 1, (1,), generator=generator, device=generator.device
                ).item()
            )
        u = float(torch.rand(1, generator=generator, device=generator.device, dtype=torch.float64).item())
        return float(self.low + (self.high - self.low) * u)


@dataclass(frozen=True)
class Param:
    """One accepted parameter of a spec item.

    Attributes:
        name: the key in the spec string.
        kind: ``int``, ``float`` or ``str``.
        default: the value when the spec does not give one (``None`` when the owner derives it, e.g. from the
            model's resolution; the owner's docstring says how).
        low: smallest accepted value (numbers only), ``None`` for no bound.
        high: largest accepted value (numbers only), ``None`` for no bound.
        low_open: ``low`` itself is excluded.
        high_open: ``high`` itself is excluded.
        choices: the accepted strings (``str`` only); empty accepts any non-empty text (a model id or a path).
        odd: integers must be odd (kernel sizes).
        unit: what the number measures, for messages (e.g. ``"px"``, ``"0-255 units"``).
    """

    name: str
    kind: type
    default: object
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    odd: bool = False
    unit: str = ""

    def describe(self) -> str:
        """What this parameter accepts, in words: ``an int in [1, 100]``, ``one of 'bilinear', 'bicubic'``."""
        if self.kind is str:
            if not self.choices:
                return "a non-empty text" + (f" ({self.unit})" if self.unit else "")
            return "one of " + ", ".join(repr(c) for c in self.choices)
        article = "an odd int" if self.odd else ("an int" if self.kind is int else "a float")
        lo = "-inf" if self.low is None else _fmt(self.low)
        hi = "inf" if self.high is None else _fmt(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{article} in {left}{lo}, {hi}{right}{unit}"

    def check(self, value: object, where: str) -> float | int | str | Range | None:
        """Validate a value given in Python or as the text of a spec; return it typed.

        Args:
            value: a number, a string from a spec (``"75"``, ``"0.5..1.5"``), a `Range`, or ``None`` when the
                default is ``None``.
            where: the spec item, for the message (e.g. ``"jpeg"``).

        Returns:
            The value as ``kind``, or a `Range` whose ends have been checked.
        """
        if value is None and self.default is None:
            return None
        if isinstance(value, str) and self.kind is not str and ".." in value:
            low_text, high_text = value.split("..", 1)
            low, high = self._number(low_text, where), self._number(high_text, where)
            if low > high:
                raise ConfigError(f"`{where}`: range `{self.name}={value}` has its low end above its high end.")
            return Range(low, high) if low != high else low
        if isinstance(value, Range):
            return self.check(f"{_fmt(value.low)}..{_fmt(value.high)}", where)
        return self._scalar(value, where)

    def _scalar(self, value: object, where: str) -> float | int | str:
        expected = f"`{where}`: parameter `{self.name}` must be {self.describe()}, got {value!r}."
        if self.kind is str:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(expected)
            if self.choices and value.strip() not in self.choices:
                raise ConfigError(expected)
            return value.strip()
        return self._number(value, where)

    def _number(self, value: object, where: str) -> float | int:
        expected = f"`{where}`: parameter `{self.name}` must be {self.describe()}, got {value!r}."
        if isinstance(value, bool):
            raise ConfigError(expected)
        if isinstance(value, str):
            text = value.strip()
            try:
                number: float | int = int(text) if self.kind is int else float(text)
            except ValueError:
                raise ConfigError(expected) from None
        elif isinstance(value, (int, float)):
            number = value
        else:
            raise ConfigError(expected)
        if self.kind is int:
            if isinstance(number, float) and not number.is_integer():
                raise ConfigError(expected)
            number = int(number)
        else:
            number = float(number)
            if not math.isfinite(number):
                raise ConfigError(expected)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            raise ConfigError(expected)
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            raise ConfigError(expected)
        if self.odd and number % 2 == 0:
            raise ConfigError(expected)
        return number


@dataclass(frozen=True)
class SpecItem:
    """One parsed, not yet validated ``name:key=value,...`` item."""

    name: str
    options: dict[str, str]


def split_spec(spec: str) -> list[SpecItem]:
    """Parse a spec string into its chain items, checking only the syntax.

    Args:
        spec: e.g. ``"jpeg:quality=75"``, ``"jpeg:quality=50..90+blur:sigma=1"``, ``"identity"``.

    Returns:
        One `SpecItem` per ``+``-separated item, in order.

    Raises:
        ConfigError: empty spec or item, a malformed ``key=value``, a repeated key, a bad name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"A spec must be a non-empty string like 'jpeg:quality=75', got {spec!r}.")
    items = []
    for part in spec.split("+"):
        text = part.strip()
        if not text:
            raise ConfigError(f"Spec {spec!r} has an empty item; items are joined by '+', e.g. 'jpeg+blur'.")
        name, _, rest = text.partition(":")
        name = name.strip()
        if not _NAME_RE.match(name):
            raise ConfigError(f"Spec {spec!r}: {name!r} is not a valid name (lower-case letters, digits, '_').")
        options: dict[str, str] = {}
        if rest.strip():
            for pair in rest.split(","):
                key, eq, value = pair.partition("=")
                key, value = key.strip(), value.strip()
                if not eq or not _NAME_RE.match(key) or not value:
                    raise ConfigError(
                        f"Spec {spec!r}: expected `key=value` after '{name}:', got {pair.strip()!r} "
                        f"(e.g. '{name}:quality=75')."
                    )
                if key in options:
                    raise ConfigError(f"Spec {spec!r}: parameter `{key}` of `{name}` is given twice.")
                options[key] = value
        elif rest or text.endswith(":"):
            raise ConfigError(f"Spec {spec!r}: nothing after '{name}:'; drop the ':' or add key=value pairs.")
        items.append(SpecItem(name, options))
    return items


def resolve_params(where: str, options: Mapping[str, object], params: Sequence[Param]) -> dict[str, Any]:
    """Validate options against the accepted parameters and fill in the defaults.

    Args:
        where: the item's name, for messages (e.g. ``"jpeg"``).
        options: given values, as spec text or Python values.
        params: the accepted parameters.

    Returns:
        ``{name: value}`` for every accepted parameter; values are typed scalars, `Range`s or ``None``.

    Raises:
        ConfigError: an unknown parameter (the message lists the accepted ones) or a bad value (the message
            says the expected type and range).
    """
    by_name = {p.name: p for p in params}
    for key in options:
        if key not in by_name:
            accepted = ", ".join(f"{p.name} ({p.describe()})" for p in params) or "none"
            raise ConfigError(f"`{where}` has no parameter `{key}`; accepted: {accepted}.")
    resolved: dict[str, Any] = {}  # each value of its parameter's kind (see `Param.check`)
    for p in params:
        value = options.get(p.name, p.default)
        resolved[p.name] = p.check(value, where)
    return resolved


def draw_params(values: Mapping[str, object], params: Sequence[Param], generator: torch.Generator) -> dict:
    """Replace every `Range` in resolved values by one draw from ``generator`` (in the order of ``params``)."""
    kinds = {p.name: p.kind for p in params}
    return {k: (v.draw(kinds[k], generator) if isinstance(v, Range) else v) for k, v in values.items()}


def format_item(name: str, values: Mapping[str, object], params: Sequence[Param]) -> str:
    """The canonical spec text of one item: every parameter that differs from its default, in declared order."""
    parts = []
    for p in params:
        value = values[p.name]
        if value == p.default:
            continue
        if isinstance(value, Range):
            parts.append(f"{p.name}={_fmt(value.low)}..{_fmt(value.high)}")
        else:
            parts.append(f"{p.name}={_fmt(value)}")
    return name + (":" + ",".join(parts) if parts else "")


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value) if not isinstance(value, float) else repr(value)
