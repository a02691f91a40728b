"""cloak: protect artworks from style mimicry by diffusion models.

The library is kept light to import: `import cloak` does not import torch. The heavy entry points live in
their modules (`cloak.protect`, `cloak.batch`, `cloak.models`, `cloak.methods`).
"""

from __future__ import annotations

__version__ = "0.3.0"
