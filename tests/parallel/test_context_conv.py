"""Context-parallel M2 mixer core (m2dist/parallel/context_conv.py) against the single-device ``mixer_core``.

One torchrun job per CP size (CP=2 and CP=4 gloo ranks, context_worker.py) runs every case and writes a JSON report;
the tests assert on it: forward and every gradient (z, u, short-conv weight/bias, k_fwd, k_rev, D, residual filter,
and the ImplicitFilter parameters through ``ImplicitFilter(length, channels)``), causal and bidirectional, with and without the
residual long conv and a padding mask, several lengths divisible by CP; the bytes each rank sends equal the volume
model of method (a); the error lines.

Tolerances relative to the largest reference value: fp64 1e-12 (the CP path computes the same FFTs on fewer
channels and sums replicated-parameter gradients in another order: differences are a few ulps, ~1e-15 seen);
fp32 1e-5 (the dtype the CPU reference trains in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from m2dist.parallel.context_conv import context_channels, split_sequence
from m2dist.parallel.context_volume import context_comm_volume

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LENGTHS = {2: [8, 12, 20], 4: [8, 16, 24]}  # L/CP from 2 (= the halo, k-1) to 10 tokens per rank
TOL = {"fp64": 1e-12, "fp32": 1e-5}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4], ids=["cp2", "cp4"])
def report(request, tmp_path_factory):
    cp = request.param
    out = tmp_path_factory.mktemp(f"cp{cp}") / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cp}", f"--master_port={_free_port()}",
           os.path.join(HERE, "context_worker.py"), str(out), ",".join(map(str, LENGTHS[cp]))]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    with open(out) as f:
        rep = json.load(f)
    assert "exception" not in rep, rep["exception"]
    return rep


def test_forward_and_every_gradient_match(report):
    cases = report["cases"]
    mixer_cases = [n for n in cases if not n.startswith("filter_module")]
    # 3 lengths x causal/bidir x residual x mask, plus 2 fp32 (and one CP=2 subgroup case at CP=4).
    assert len(mixer_cases) == 24 + 2 + (report["cp"] == 4)
    bad = {}
    for name in mixer_cases:
        tol = TOL["fp32" if name.startswith("fp32") else "fp64"]
        errs = cases[name]["errors"]
        expected = {"y", "grad_z", "grad_w", "grad_b", "grad_kf", "grad_D"}
        if "res=True" in name:
            expected |= {"grad_u", "grad_rkf", "grad_rD"}
        if "bidir" in name:
            expected |= {"grad_kr"} | ({"grad_rkr"} if "res=True" in name else set())
        assert expected <= set(errs), (name, sorted(errs))
        bad.update({f"{name}:{k}": v for k, v in errs.items() if not v <= tol})
    assert not bad, bad


def test_filter_generated_per_rank_matches(report):
    for kind in ("causal", "bidir"):
        case = report["cases"][f"filter_module,{kind}"]
        errs = case["errors"]
        # (L, order, this rank's channels) per MLP
        assert case["entered"] == [[8, 8, 8 // report["cp"]]] * (1 if kind == "causal" else 2)
        assert errs["taps"] <= TOL["fp64"] and errs["y"] <= TOL["fp64"]
        grads = {k: v for k, v in errs.items() if k.startswith("grad_")}
        # z, freq, three hidden layers' weight+bias, the output layer, D: per MLP (two when bidirectional).
        assert len(grads) == (3 + 7 if kind == "causal" else 3 + 14), sorted(grads)
        assert all(v <= TOL["fp64"] for v in grads.values()), grads


def test_sent_bytes_equal_the_volume_model(report):
    for name, case in report["cases"].items():
        if name.startswith("filter_module"):
            continue
        assert case["volume_match"], (name, case["counted_rank"], case["model_rank"])
        assert case["counted_rank"]["forward"] > 0


def test_point_to_point_all_to_all_equals_the_collective(report):
    assert report["p2p_equals_collective"]


def test_error_lines(report):
    cp = report["cp"]
    err = report["errors_raised"]
    assert err["channels"] == (f"hidden size {cp + 1} (per tensor-parallel rank) is not divisible by "
                               f"parallel.context={cp}")
    assert "1 tokens per rank" in err["halo"] and "halo of 2" in err["halo"]
    assert f"has 8 taps, the global sequence length is {8 * cp}" in err["filter_length"]
    assert "has 9 channels; expected all 8 or this rank's" in err["filter_channels"]
    assert err["u_without_filter"] == "context_parallel_mixer_core: u and residual_filt must be given together"


def test_sequence_and_channel_split_errors():
    import torch

    with pytest.raises(ValueError, match=r"^sequence length 10 is not divisible by parallel.context=4$"):
        split_sequence(torch.zeros(1, 10), 1, 0, 4)
    with pytest.raises(ValueError, match="hidden size 6 .* not divisible by parallel.context=4"):
        context_channels(6, 0, 4)
    with pytest.raises(ValueError, match="sequence length 100 is not divisible by parallel.context=8"):
        context_comm_volume("a", 1, 100, 1024, 8)
    with pytest.raises(ValueError, match="method must be one of"):
        context_comm_volume("d", 1, 64, 1024, 8)
    assert split_sequence(torch.arange(12).view(1, 12), 1, 2, 4).tolist() == [[6, 7, 8]]


def test_volume_model_closed_forms():
    """The model against the doc's closed forms (docs/context_parallel.md), independent of its per-rank loop."""
    b, length, h, cp, e = 2, 1 << 16, 1024, 4, 2
    block = b * length // cp * h * e
    halo = 2 * b * 3 * h * e
    a = context_comm_volume("a", b, length, h, cp, e, residual_long_conv=True)
    assert a["total"] == 2 * 4 * block * (cp - 1) // cp + 2 * halo  # interior rank: halo both ways
    assert context_comm_volume("a", b, length, h, 2, e)["total"] == 4 * (b * length // 2 * h * e) // 2 + halo
    c_bi = context_comm_volume("c", b, length, h, cp, e, bidirectional=True)
    assert c_bi["total"] == 2 * (cp - 1) * block + 2 * halo
    c_causal = context_comm_volume("c", b, length, h, cp, e)
    assert c_causal["total"] == (2 * cp - 3) * block + 2 * halo and c_causal["rank"] == cp - 2
    bv = context_comm_volume("b", b, length, h, cp, e, fft_bytes=4)
    spectrum, taps = b * length // cp * h * 8, h * length // cp * 4
    assert bv["total"] == 2 * ((2 * block + 2 * spectrum + taps + 2 * taps) * (cp - 1) // cp) + 2 * halo
