"""Shared fixtures: no hub access, few threads, tiny real diffusers components (see `tiny_models.py`).

Tests that change weights call `make_tiny_components(seed)` (importable as `from tiny_models import
make_tiny_components`) or use the `fresh_tiny_components` fixture instead of the shared session copy.
"""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import make_tiny_components, save_tiny_pipeline

from cloak.models import Components

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """No test can reach a model hub: the Hugging Face libraries' offline switches are on for the session."""
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    # huggingface_hub reads HF_HUB_OFFLINE once at import; reflect it when it was imported before this ran.
    import huggingface_hub.constants as hub_constants

    saved_constant = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    # One intra-op thread: tiny models gain nothing from more, and on a busy 2-core machine two threads
    # spin-wait on each other (measured 10-100x slower test files).
    torch.set_num_threads(1)
    yield
    hub_constants.HF_HUB_OFFLINE = saved_constant
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_components() -> Components:
    """Shared tiny SD-1.x components (seed 0, CPU, float32, 32 px). Do not change their weights."""
    return make_tiny_components(seed=0)


@pytest.fixture
def fresh_tiny_components() -> Components:
    """A private copy of the tiny components for a test that changes weights."""
    return make_tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory):
    """A diffusers StableDiffusionPipeline folder holding `tiny_components` (about 7 MB)."""
    folder = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    save_tiny_pipeline(tiny_components, folder)
    return folder
