"""Protection methods: one objective class per file, one registry.

``METHODS`` is the single list the CLI choices, the web page's dropdown and the tests read.
"""

from __future__ import annotations

from cloak.methods.base import Objective
from cloak.methods.encoder import EncoderAttack

METHODS: dict[str, type[Objective]] = {
    EncoderAttack.name: EncoderAttack,
}

__all__ = ["METHODS", "Objective"]
