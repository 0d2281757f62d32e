"""A ZeRO-0 checkpoint cut for another tensor-parallel size: the model and optimizer files merged over the saved
tensor ranks and cut again with the tensor-parallel plan (m2dist.parallel.sharding), loadable natively."""

from __future__ import annotations

import os
import shutil

import torch

from m2dist.checkpoint.files import read_config, read_trainer_state
from m2dist.utils.logging import get_logger

log = get_logger(__name__)


def optimizer_group_names(engine) -> list[dict]:
    """The live optimizer's groups as ``[{"name": group name, "params": [parameter names in order]}]``."""
    names = {id(p): n for n, p in engine.module.named_parameters()}
    return [{"name": g.get("name"), "params": [names[id(p)] for p in g["params"]]}
            for g in engine.optimizer.param_groups]


def reshard_zero0(path: str, out: str, tensor_parallel: int, data_parallel: int, group_names: list[dict]) -> None:
    """ZeRO-0 checkpoint ``path`` (any tensor-parallel size) -> DeepSpeed's ZeRO-0 files for ``tensor_parallel``
    tensor ranks in ``out``, loadable natively.

    At ZeRO-0 each tensor rank's ``mp_rank_XX_model_states.pt`` holds its slice of the model and the torch AdamW
    state of those slices (moments shaped like their parameters; ``step`` per parameter). Parameters and moments
    are merged over the saved tensor ranks and cut for the new ones with m2dist.parallel.sharding's plan (exact
    concatenation and slicing, strided layouts included). The optimizer state is keyed by position: a saved group's
    positions are its parameters in the saved model's parameter order (``trainer_state.json``), restricted to the
    names the live optimizer puts in that group (group membership depends on the parameter, not the layout); the
    new files use the live optimizer's order. Shapes are checked against the saved model slices."""
    import glob

    from m2dist.parallel.sharding import REPLICATED, gather_tensor, shard_plan, shard_state_dict, shard_tensor

    files = sorted(glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")))
    shards = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    order = list(read_trainer_state(path)["parameters"])
    plan = shard_plan(read_config(path).model)
    membership = {g["name"]: set(g["params"]) for g in group_names}

    per_rank = []  # per saved tensor rank: {parameter name: its AdamW state}
    for f, shard in zip(files, shards):
        by_name = {}
        for group in shard["optimizer"]["param_groups"]:
            if group.get("name") not in membership:
                raise RuntimeError(f"{f}: optimizer group {group.get('name')!r} is not one of the live optimizer's")
            names = [n for n in order if n in membership[group["name"]]]
            if len(names) != len(group["params"]):
                raise RuntimeError(f"{f}: optimizer group {group['name']!r} has {len(group['params'])} parameters, "
                                   f"the model {len(names)}")
            for name, index in zip(names, group["params"]):
                st = shard["optimizer"]["state"].get(index)
                if st is None:
                    continue
                for key, value in st.items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape != shard["module"][name].shape:
                        raise RuntimeError(f"{f}: optimizer state {key} of {name} is {tuple(value.shape)}, the "
                                           f"parameter {tuple(shard['module'][name].shape)}")
                by_name[name] = st
        per_rank.append(by_name)

    def merge(name, key):
        values = [r[name][key] for r in per_rank]
        if not torch.is_tensor(values[0]) or values[0].dim() == 0:
            return values[0]
        return gather_tensor(values, plan.get(name, REPLICATED))

    full_module = {k: gather_tensor([s["module"][k] for s in shards], plan.get(k, REPLICATED))
                   for k in shards[0]["module"]}
    full_state = {n: {k: merge(n, k) for k in per_rank[0][n]} for n in per_rank[0]}

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    log.info("cutting ZeRO-0 checkpoint %s (tensor parallel %d) for tensor parallel %d in %s", path, len(shards),
             tensor_parallel, out)
    for rank in range(tensor_parallel):
        state, groups, index = {}, [], 0
        for saved_group, live in zip(shards[0]["optimizer"]["param_groups"], group_names):
            ids = []
            for name in live["params"]:
                if name in full_state:
                    state[index] = {k: (shard_tensor(v, plan.get(name, REPLICATED), rank, tensor_parallel)
                                        if torch.is_tensor(v) and v.dim() > 0 else
                                        (v.clone() if torch.is_tensor(v) else v))
                                    for k, v in full_state[name].items()}
                ids.append(index)
                index += 1
            groups.append({**saved_group, "params": ids})
        new = dict(shards[0])
        new["module"] = shard_state_dict(full_module, rank, tensor_parallel, plan)
        new["optimizer"] = {"state": state, "param_groups": groups}
        new["mp_world_size"], new["dp_world_size"] = tensor_parallel, data_parallel
        torch.save(new, os.path.join(tmp, f"mp_rank_{rank:02d}_model_states.pt"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
