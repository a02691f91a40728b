"""The house style's type checker runs with the tests, so CI refuses what `mypy` would (settings: pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cloak", "attacks", "eval", "gradio_app")


def test_mypy_finds_nothing():
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the `test` extra)")
    # mypy's cache (.mypy_cache) makes a rerun take seconds instead of the first run's minute.
    result = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
