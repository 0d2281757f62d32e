import textwrap
from pathlib import Path

import pytest

from m2dist.config import Config, ConfigError, config_from_dict, config_to_dict, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path / "a.yaml", "trainer:\n  max_steps: 7\n"))
    assert isinstance(cfg, Config)
    assert cfg.trainer.max_steps == 7
    assert cfg.trainer.resume == "auto"
    assert cfg.parallel.tensor == 1


def test_extends_merges_in_order_and_file_wins(tmp_path):
    write(tmp_path / "base.yaml", """
        trainer: {max_steps: 10, seed: 1}
        optimizer: {lr: 0.1}
    """)
    write(tmp_path / "mid.yaml", """
        extends: base.yaml
        trainer: {seed: 2}
    """)
    top = write(tmp_path / "top.yaml", """
        extends: [mid.yaml]
        optimizer: {weight_decay: 0.0}
    """)
    cfg = load_config(top)
    assert (cfg.trainer.max_steps, cfg.trainer.seed) == (10, 2)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.1, 0.0)


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_config(
        write(tmp_path / "a.yaml", "{}"),
        ["trainer.max_steps=100", "parallel.tensor=2", "optimizer.lr=3e-4", "optimizer.betas=[0.9,0.98]",
         "checkpoint.dir=/tmp/x", "trainer.resume=none", "deepspeed.zero_stage=3"],
    )
    assert cfg.trainer.max_steps == 100 and cfg.parallel.tensor == 2
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.optimizer.betas == (0.9, 0.98)
    assert cfg.checkpoint.dir == "/tmp/x" and cfg.trainer.resume == "none"
    assert cfg.deepspeed.zero_stage == 3


def test_unknown_key_names_nearest_and_command_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.max_stepz=1"])
    msg = str(err.value)
    assert "trainer.max_stepz" in msg and "command line" in msg and "trainer.max_steps" in msg
    assert "\n" not in msg


def test_unknown_key_in_file_names_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "checkpoint:\n  evry: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "checkpoint.evry" in msg and "checkpoint.every" in msg


def test_unknown_key_in_base_file_names_the_base(tmp_path):
    base = write(tmp_path / "base.yaml", "trainer:\n  sed: 1\n")
    top = write(tmp_path / "top.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert str(base) in str(err.value) and "trainer.seed" in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [("trainer.max_steps=ten", "int"), ("trainer.compile=maybe", "bool"),
     ("deepspeed.precision=fp8", "'bf16'"), ("optimizer.betas=[1]", "tuple"), ("trainer=3", "mapping")],
)
def test_wrong_type_names_key_and_expected_type(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert override.split("=")[0] in str(err.value) and expected in str(err.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", "trainer:\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "invalid YAML" in str(err.value)


def test_missing_extends_and_cycles_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(write(tmp_path / "a.yaml", "extends: nope.yaml\n"))
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")


def test_round_trip_through_dict():
    cfg = load_config(None, ["trainer.max_steps=5", "optimizer.filter_lr=1e-5"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize("override", ["tranier.max_steps=5", "tranier.a.b=1"])
def test_unknown_section_from_the_command_line_says_so(tmp_path, override):
    # Issue 14.10: a mistyped section given on the command line was reported as coming "from the config".
    path = write(tmp_path / "a.yaml", "trainer:\n  max_steps: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    msg = str(err.value)
    assert "'tranier'" in msg and "(from the command line)" in msg and "did you mean 'trainer'" in msg, msg


def test_unknown_section_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "a.yaml", "tranier:\n  max_steps: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["trainer.seed=3"])
    assert f"'tranier' (from {path})" in str(err.value)


@pytest.mark.parametrize(
    "override, allowed",
    [("deepspeed.zero_stage=7", "one of 0, 1, 2, 3"), ("deepspeed.zero_stage=-1", "one of 0, 1, 2, 3"),
     ("parallel.tensor=0", "at least 1"), ("trainer.micro_batch_size=0", "at least 1"),
     ("trainer.global_batch_size=6", "a multiple of trainer.micro_batch_size=4"),
     ("optimizer.lr=0", "positive"), ("schedule.min_lr_ratio=1.5", "in [0.0, 1.0]"),
     ("data.mlm_probability=1.0", "in (0.0, 1.0)"), ("optimizer.betas=[0.9,1.0]", "two values in [0, 1)"),
     ("checkpoint.every=-5", "at least 0"), ("model.num_layers=0", "at least 1")],
)
def test_values_out_of_range_fail_at_load(override, allowed):
    # Issue 14.5: deepspeed.zero_stage=7 was accepted, then failed inside DeepSpeed with a pydantic traceback.
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    key = override.split("=")[0]
    assert f"config key '{key}' (from the command line) must be {allowed}" in msg and "\n" not in msg, msg


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "a.yaml", "deepspeed:\n  zero_stage: 4\n")
    with pytest.raises(ConfigError, match=rf"'deepspeed.zero_stage' \(from {path}\) must be one of"):
        load_config(path)


def test_every_range_rule_names_a_real_key():
    from m2dist.config.validate import RULES, _get

    cfg = Config()
    for key in RULES:
        _get(cfg, key)  # AttributeError if a rule names a key that does not exist


def test_data_kind_that_disagrees_with_the_arch_fails_at_load(tmp_path):
    # Issue 13.3: the task was chosen twice (data.kind, and the trainer from model.arch) and nothing checked that
    # they agree: an M2-BERT run on causal-LM data trained a bidirectional model on next-token targets.
    path = write(tmp_path / "a.yaml", "model:\n  arch: m2_bert\ndata:\n  kind: causal_lm\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"'data.kind' (from {path})" in msg and "'model.arch' (from" in msg
    assert "data.kind='causal_lm'" in msg and "model.arch='m2_bert'" in msg and "'mlm'" in msg
    with pytest.raises(ConfigError, match=r"'model.arch' \(from the command line\).*model.arch='m2_vit'"):
        load_config(path, ["model.arch=m2_vit"])
    # The same check guards a saved config rebuilt from its dict.
    data = config_to_dict(load_config(path, ["model.arch=gpt"]))
    data["data"]["kind"] = "image"
    with pytest.raises(ConfigError, match=r"data.kind='image' but model.arch='gpt'"):
        config_from_dict(data)


@pytest.mark.parametrize("arch, task", [("m2_gpt", "causal_lm"), ("gpt", "causal_lm"), ("m2_bert", "mlm"),
                                        ("bert", "mlm"), ("m2_vit", "image"), ("vit", "image")])
def test_data_kind_left_unset_is_the_arch_task_and_set_must_match(tmp_path, arch, task):
    # A model-only file (configs/models/*.yaml) leaves data.kind unset: it reads what the arch trains on.
    assert load_config(write(tmp_path / "m.yaml", f"model:\n  arch: {arch}\n")).data.kind == task
    assert load_config(None, [f"model.arch={arch}", f"data.kind={task}"]).data.kind == task


def test_every_arch_has_a_task():
    import typing

    from m2dist.config.model import TASK_OF_ARCH, Arch, Task

    assert set(TASK_OF_ARCH) == set(typing.get_args(Arch))
    assert set(TASK_OF_ARCH.values()) == set(typing.get_args(Task))


@pytest.mark.parametrize("override, clash", [
    ("trainer.activation_checkpointing=true", "trainer.activation_checkpointing=True"),
    ("trainer.compile=true", "trainer.compile=True"),
    ("parallel.tensor=2", "parallel.tensor=2"), ("parallel.context=2", "parallel.context=2"),
    ("deepspeed.zero_stage=3", "deepspeed.zero_stage=3"), ("trainer.device=cpu", "trainer.device='cpu'")])
def test_cuda_graphs_refuse_what_a_graph_cannot_capture_at_load(override, clash):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.arch=m2_gpt", "trainer.cuda_graphs=true", override])
    msg = str(err.value)
    assert "trainer.cuda_graphs=true (from the command line) does not work with " + clash in msg, msg
    assert "set trainer.cuda_graphs=false" in msg
