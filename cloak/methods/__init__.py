"""Protection methods: one objective class per file, one registry.

``METHODS`` is the single list the CLI choices, the web page's dropdown and the tests read.
"""

from __future__ import annotations

from cloak.methods.ace import ACE
from cloak.methods.advdm import AdvDM
from cloak.methods.aspl import ASPL
from cloak.methods.base import Objective
from cloak.methods.encoder import EncoderAttack
from cloak.methods.mist import Mist
from cloak.methods.pid import PID
from cloak.methods.sdedit import EditAttack
from cloak.methods.sds import SDS
from cloak.methods.style import StyleCloak

METHODS: dict[str, type[Objective]] = {
    EncoderAttack.name: EncoderAttack,
    StyleCloak.name: StyleCloak,
    AdvDM.name: AdvDM,
    ASPL.name: ASPL,
    SDS.name: SDS,
    Mist.name: Mist,
    EditAttack.name: EditAttack,
    PID.name: PID,
    ACE.name: ACE,
}

__all__ = ["METHODS", "Objective"]
