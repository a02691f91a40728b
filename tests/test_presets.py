"""Presets and published baselines: each one builds a working objective, overrides behave, bad names fail clearly."""

from __future__ import annotations

import pytest

from cloak.errors import ConfigError
from cloak.methods import METHODS
from cloak.presets import BASELINES, PRESETS, get_preset, parse_option
from cloak.protect import CloakConfig


@pytest.mark.parametrize("name", [*PRESETS, *BASELINES])
def test_every_preset_builds_its_objective(name, tiny_components):
    config = CloakConfig.from_preset(name)
    preset = get_preset(name)
    assert (config.method, config.eps, config.steps) == (preset.method, preset.eps, preset.steps)
    assert config.options == preset.options and config.lpips_bound == preset.lpips_bound
    assert config.min_psnr == preset.min_psnr
    assert (config.step_size, config.schedule, config.random_start) == (
        preset.step_size, preset.schedule, preset.random_start
    )
    objective = METHODS[config.method](tiny_components, **config.options)  # options are ones the method takes
    assert objective.name == config.method


def test_baselines_carry_their_published_budgets():
    # FIELD_NOTES section 2: budgets converted to the 0-255 scale of the saved file
    assert {n: b.eps for n, b in BASELINES.items()} == {
        "photoguard": 7.7,
        "mist": 16.0,
        "advdm": 16.0,
        "aspl": 6.4,
        "sds": 16.0,
        "pid": 12.75,
        "mist-v2": 4.0,
        "glaze-like": 16.0,
    }
    assert BASELINES["glaze-like"].lpips_bound == 0.05
    assert all(b.reference for b in BASELINES.values())


def test_baselines_carry_their_published_step_rules():
    # (first step in 0-255 units, schedule, random start), from each method's release (presets.BASELINES' references)
    assert {n: (b.step_size, b.schedule, b.random_start) for n, b in BASELINES.items()} == {
        "photoguard": (2.55, "linear", True),
        "mist": (1.0, "constant", True),
        "advdm": (1.0, "constant", True),
        "aspl": (0.6375, "constant", False),
        "sds": (1.0, "constant", False),
        "pid": (1.0, "constant", True),
        "mist-v2": (0.6375, "constant", False),
        "glaze-like": (None, "cosine", True),  # Glaze is no PGD: the project's rule
    }
    # the artist presets keep the project's rule
    assert {(p.step_size, p.schedule, p.random_start) for p in PRESETS.values()} == {(None, "cosine", True)}


def test_overrides_win_and_a_new_method_drops_the_presets_options():
    c = CloakConfig.from_preset("photoguard", eps=8, steps=10, method=None)
    assert (c.eps, c.steps, c.options) == (8, 10, {"target": "grey"})
    c = CloakConfig.from_preset("photoguard", options={"period": 8})
    assert c.options == {"target": "grey", "period": 8}
    c = CloakConfig.from_preset("sds", method="encoder")
    assert c.method == "encoder" and c.options == {}


def test_a_new_method_drops_the_baselines_step_rule_but_keeps_budget_and_steps():
    aspl = CloakConfig.from_preset("aspl")
    assert (aspl.step_size, aspl.schedule, aspl.random_start) != (None, "cosine", True)
    c = CloakConfig.from_preset("aspl", method="encoder")
    assert (c.step_size, c.schedule, c.random_start) == (None, "cosine", True)
    assert (c.eps, c.steps) == (aspl.eps, aspl.steps)
    c = CloakConfig.from_preset("aspl", method="encoder", schedule="constant", step_size=1.0)
    assert (c.step_size, c.schedule, c.random_start) == (1.0, "constant", True)
    assert CloakConfig.from_preset("aspl", method="aspl") == aspl  # the same method keeps everything


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'glaze'.*fast, default, strong.*glaze-like"):
        get_preset("glaze")


def test_option_text_reads_numbers_and_flags_as_json_and_the_rest_as_text():
    assert parse_option("samples=2") == ("samples", 2)
    assert parse_option("weight=0.5") == ("weight", 0.5)
    assert parse_option("minimise=true") == ("minimise", True)
    assert parse_option("semantic=sds-") == ("semantic", "sds-")
    assert parse_option(" target =a=b.png") == ("target", "a=b.png")  # only the first "=" splits
    for bad in ("samples", "=2", ""):
        with pytest.raises(ConfigError, match="--option takes KEY=VALUE"):
            parse_option(bad)
