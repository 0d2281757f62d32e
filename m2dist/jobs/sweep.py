"""Scale-out sweeps: a YAML grid (model size x sequence length x TP/DP layout x nodes) -> one Slurm job each.

A spec (see ``sweeps/``)::

    name: gpt-scaling
    config: ../smoke/m2-gpt-tiny.yaml        # base run config, relative to the spec
    out_dir: runs/sweeps/gpt-scaling         # one run directory per point below it (relative to the cwd)
    overrides: [trainer.max_steps=50]        # for every point
    slurm: {time: "00:30:00", partition: null, gpus_per_node: 8, signal_seconds: 120, extra: []}
    grid:                                    # the cartesian product of the axes, in this order
      nodes: [1, 2, 4]                       # special axes: nodes, gpus_per_node, config (a run config file),
      model: [../models/m2-gpt-125m.yaml]    #   model (a model file: its model section as overrides)
      model.max_seq_len: [1024, 4096]        # a dotted config key: its values
      layout:                                # any other name: a list of mappings of the above
        - {parallel.tensor: 1}
        - {parallel.tensor: 2}

Each point's run directory is ``<out_dir>/<label>`` (e.g. ``n2-seq1024-tp2``) and its checkpoints go below
it. ``<out_dir>/sweep.json`` lists the points and their job ids for ``m2dist sweep report``.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from m2dist.config.loader import ConfigError
from m2dist.jobs.render import SbatchOptions

SLURM_AXES = ("nodes", "gpus_per_node")
CONFIG_AXIS = "config"
# A model file (configs/models/<preset>.yaml): its model section becomes model.* overrides of the base config.
MODEL_AXIS = "model"
SHORT_LABELS = {"nodes": "n", "gpus_per_node": "g", "parallel.tensor": "tp", "parallel.context": "cp",
                "model.max_seq_len": "seq",
                "model.hidden_size": "h", "model.num_layers": "l"}
SPEC_KEYS = {"name", "config", "out_dir", "overrides", "slurm", "grid"}
SLURM_KEYS = {"time", "partition", "gpus_per_node", "signal_seconds", "extra", "nodes"}


@dataclass
class SweepPoint:
    label: str
    config: str
    overrides: list[str]
    options: SbatchOptions
    params: dict[str, Any]
    run_dir: str
    job_id: Optional[str] = None


@dataclass
class Sweep:
    name: str
    spec: str
    out_dir: str
    points: list[SweepPoint] = field(default_factory=list)


def _label_part(key: str, value: Any) -> str:
    if key in (CONFIG_AXIS, MODEL_AXIS):
        return Path(str(value)).stem
    return f"{SHORT_LABELS.get(key, key.split('.')[-1])}{value}"


def _apply(key: str, value: Any, point: dict, where: str) -> None:
    if key in SLURM_AXES:
        point["slurm"][key] = value
    elif key == CONFIG_AXIS:
        point["config"] = str((Path(point["spec_dir"]) / str(value)).resolve())
    elif key == MODEL_AXIS:
        from m2dist.config.loader import resolve_dict

        model, _ = resolve_dict(Path(point["spec_dir"]) / str(value))
        for name, setting in (model.get("model") or {}).items():
            _apply(f"model.{name}", setting, point, where)
    elif "." in key:
        point["overrides"].append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    else:
        raise ConfigError(f"{where}: '{key}' is neither nodes, gpus_per_node, config, model nor a dotted config key")


def load_spec(path: str | Path) -> dict:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read sweep spec: {exc}") from None
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; expected {sorted(SPEC_KEYS)}")
    for key in ("name", "config", "grid"):
        if key not in spec:
            raise ConfigError(f"{path}: sweep spec needs '{key}'")
    unknown = set(spec.get("slurm") or {}) - SLURM_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown slurm keys {sorted(unknown)}; expected {sorted(SLURM_KEYS)}")
    if not isinstance(spec["grid"], dict) or not all(isinstance(v, list) and v for v in spec["grid"].values()):
        raise ConfigError(f"{path}: 'grid' must map each axis to a non-empty list")
    return spec


def expand(spec_path: str | Path, extra_overrides: list[str] = (), out_dir: Optional[str] = None) -> Sweep:
    """The grid's points in order (the first axis varies slowest); nothing is submitted or written."""
    from m2dist.config import load_config

    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)
    out_dir = Path(out_dir or spec.get("out_dir") or f"runs/sweeps/{spec['name']}").resolve()
    base_slurm = dict(spec.get("slurm") or {})
    sweep = Sweep(name=spec["name"], spec=str(spec_path), out_dir=str(out_dir))
    axes = list(spec["grid"].items())
    for combo in itertools.product(*(values for _, values in axes)):
        point = {"spec_dir": str(spec_path.parent), "slurm": copy.deepcopy(base_slurm),
                 "config": str((spec_path.parent / spec["config"]).resolve()),
                 "overrides": [str(o) for o in spec.get("overrides") or []]}
        labels, params = [], {}
        for (axis, _), value in zip(axes, combo):
            where = f"{spec_path}: grid.{axis}"
            if isinstance(value, dict):
                for key, sub in value.items():
                    if key != "name":
                        _apply(key, sub, point, where)
                        params[key] = sub
                labels.append(str(value.get("name") or "-".join(_label_part(k, v) for k, v in value.items())))
            else:
                _apply(axis, value, point, where)
                params[axis] = value
                labels.append(_label_part(axis, value))
        label = "-".join(labels)
        run_dir = out_dir / label
        overrides = point["overrides"] + list(extra_overrides) + [
            f"trainer.run_dir={run_dir}", f"checkpoint.dir={run_dir / 'checkpoints'}"]
        load_config(point["config"], overrides)  # fail on a bad key before anything is submitted
        slurm = point["slurm"]
        options = SbatchOptions(nodes=int(slurm.get("nodes", 1)), gpus_per_node=slurm.get("gpus_per_node"),
                                time=slurm.get("time"), partition=slurm.get("partition"),
                                job_name=f"{spec['name']}-{label}",
                                signal_seconds=int(slurm.get("signal_seconds", 300)),
                                extra=list(slurm.get("extra") or []))
        sweep.points.append(SweepPoint(label=label, config=point["config"], overrides=overrides, options=options,
                                       params=params, run_dir=str(run_dir)))
    labels = [p.label for p in sweep.points]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{spec_path}: two grid points have the same label; give mapping values a 'name'")
    return sweep


def write_manifest(sweep: Sweep) -> Path:
    path = Path(sweep.out_dir) / "sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(sweep), indent=2) + "\n")
    return path


def read_manifest(out_dir: Path) -> Optional[dict]:
    path = out_dir / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else None


def submit(sweep: Sweep) -> Sweep:
    """Submit every point (the manifest is rewritten after each, so a failure leaves an accurate one)."""
    from m2dist.jobs.submit import Submission, sbatch
    from m2dist.jobs.render import render

    for point in sweep.points:
        run_dir = Path(point.run_dir)
        script = render(point.config, point.overrides, point.options, run_dir)
        point.job_id = sbatch(Submission(run_dir=run_dir, script=script)).job_id
        write_manifest(sweep)
    return sweep
