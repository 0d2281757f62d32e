"""Presets: every one builds, the M2-BERT counts match the spec, the YAML mirrors agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from m2dist.config import load_config
from m2dist.models import build_model, count_parameters, from_preset, list_presets, preset_config
from m2dist.models.presets import main as presets_main

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
ISSUE_PRESETS = [
    "m2-bert-80m", "m2-bert-110m", "m2-bert-260m", "m2-bert-341m", "m2-gpt-125m", "m2-gpt-360m", "m2-vit-45m",
    "bert-base", "gpt-125m", "gpt-360m", "vit-b16",
    "m2-bert-tiny", "m2-gpt-tiny", "m2-vit-tiny", "bert-tiny", "gpt-tiny", "vit-tiny",
]


def test_all_issue_presets_exist():
    assert set(ISSUE_PRESETS) <= set(list_presets())


# Spec §2.2: analytic counts with vocab 30528 and l_max 128, head included.
@pytest.mark.parametrize("name,expected", [
    ("m2-bert-80m", 80.27e6), ("m2-bert-110m", 115.6e6), ("m2-bert-260m", 259.1e6), ("m2-bert-341m", 341.0e6),
])
def test_m2_bert_parameter_counts(name, expected):
    cfg = preset_config(name)
    assert (cfg.vocab_size, cfg.max_seq_len) == (30528, 128)
    with torch.device("meta"):
        count = count_parameters(build_model(cfg))
    assert abs(count - expected) / expected < 0.01, f"{name}: {count} vs {expected}"


def test_every_preset_builds_and_the_table_lists_it(capsys):
    presets_main(["--markdown"])  # builds every preset on the meta device
    table = capsys.readouterr().out
    for name in list_presets():
        assert f"`{name}`" in table


@pytest.mark.parametrize("name", list_presets())
def test_yaml_mirrors_preset(name):
    path = CONFIG_DIR / f"{name}.yaml"
    import yaml

    assert set(yaml.safe_load(path.read_text())) == {"model"}, "a model file holds only the model section"
    assert load_config(path).model == preset_config(name)


def test_every_model_yaml_is_a_preset():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(list_presets())


def test_overrides_and_unknown_names():
    cfg = preset_config("m2-gpt-tiny", num_layers=3)
    assert cfg.num_layers == 3 and dataclasses.replace(cfg, num_layers=2) == preset_config("m2-gpt-tiny")
    assert len(from_preset("gpt-tiny", num_layers=1).blocks) == 1
    with pytest.raises(ValueError, match="did you mean 'm2-gpt-tiny'"):
        preset_config("m2-gpt-tinyy")
    with pytest.raises(ValueError, match="num_layer"):
        preset_config("m2-gpt-tiny", num_layer=3)
    with pytest.raises(ValueError, match="vocab_size"):
        from_preset("m2-gpt-tiny", vocab_size=0)
