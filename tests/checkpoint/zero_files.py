"""What a checkpoint's DeepSpeed files say about the ZeRO stage that wrote them: which files exist, how much of the
optimizer state each holds, and how big they are. A ZeRO test that only compares losses would also pass if the
stage were silently ignored (every stage gives the same fp32 trajectory); these checks would not."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import torch

# DeepSpeed pads each rank's flat partition (alignment, per param group and per parameter at ZeRO-3).
PADDING_SLACK = 512


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def trainable_numel(step_dir: Path) -> int:
    """Parameters of one tensor rank (tied ones once), from the checkpoint's own parameter list."""
    state = json.loads((Path(step_dir) / "trainer_state.json").read_text())
    return sum(math.prod(p["shape"]) for p in state["parameters"].values())


def assert_zero_stage_engaged(step_dir: Path, stage: int, dp: int, tp: int) -> dict:
    """Assert that ``step_dir`` was written by ZeRO ``stage`` at ``dp`` x ``tp``; returns {file: size}."""
    step_dir = Path(step_dir)
    n = trainable_numel(step_dir)
    names = sorted(os.path.basename(f) for f in glob.glob(str(step_dir / "*.pt")))
    sizes = {f: (step_dir / f).stat().st_size for f in names}
    optim = [f for f in names if f.endswith("_optim_states.pt")]
    if stage == 0:
        assert not optim, f"ZeRO-0 wrote ZeRO optimizer shards: {optim}"
        assert names == [f"mp_rank_{t:02d}_model_states.pt" for t in range(tp)], names
        for f in names:
            opt = _load(step_dir / f)["optimizer"]
            moments = sum(s["exp_avg"].numel() for s in opt["state"].values())
            assert moments == n, f"{f}: exp_avg covers {moments} of {n} parameters (ZeRO-0 holds all of them)"
        return sizes

    expected = {f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt" for d in range(dp) for t in range(tp)}
    assert set(optim) == expected, f"ZeRO-{stage} at DP={dp} x TP={tp}: optimizer files {optim}"
    for t in range(tp):
        parts = []
        for d in range(dp):
            f = f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
            osd = _load(step_dir / f)["optimizer_state_dict"]
            assert int(osd["zero_stage"]) == stage, f"{f}: written by ZeRO stage {int(osd['zero_stage'])}"
            flat = osd["fp32_flat_groups"] if stage == 3 else osd["single_partition_of_fp32_groups"]
            part = sum(x.numel() for x in flat)
            parts.append(part)
            # fp32 master weights + Adam's two moments of this rank's partition, and not much more: a file holding
            # the whole state (or a view of an unpartitioned buffer, which torch.save writes whole) is ~dp x bigger.
            assert sizes[f] <= 12 * part * 1.15 + 48 * 1024, f"{f}: {sizes[f]} bytes for a {part}-element partition"
        # Each data rank holds 1/dp of the optimizer state; together they hold all of it once.
        assert n <= sum(parts) <= n + PADDING_SLACK * dp, f"TP rank {t}: partitions {parts} of {n} parameters"
        assert max(parts) <= math.ceil(n / dp) + PADDING_SLACK, f"TP rank {t}: partitions {parts} of {n}"
    if stage == 3:
        # The parameters themselves are partitioned too: the model files hold none of them.
        models = [f for f in names if f.endswith("_model_states.pt")]
        assert set(models) == {f"zero_pp_rank_{d}_mp_rank_{t:02d}_model_states.pt"
                               for d in range(dp) for t in range(tp)}, models
        for f in models:
            module = _load(step_dir / f)["module"] or {}
            assert sum(v.numel() for v in module.values()) == 0, f"{f} holds unpartitioned parameters"
    else:
        models = [f for f in names if f.endswith("_model_states.pt")]
        assert models == [f"mp_rank_{t:02d}_model_states.pt" for t in range(tp)], models
    return sizes
