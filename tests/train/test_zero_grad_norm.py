"""``m2dist.train.zero_grad_norm``: DeepSpeed ZeRO-1/2's gradient norm through ``torch._foreach_norm`` equals
DeepSpeed's own per-parameter loop and the dense definition, and the trainer installs it. (The TP2 trainer test's
logged grad norm, ZeRO-1 against ZeRO-0's own norm, covers the tensor-parallel counting in a real run.)"""

from __future__ import annotations

import json
import subprocess
import sys

from m2dist_run import REPO, base_env

SCRIPT = r"""
import json, types, torch
from launch.distributed import init_distributed
init_distributed("cpu")  # the trainer's: one gloo process, DeepSpeed's comm set up (its shm op not built)
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from m2dist.train import zero_grad_norm
before = DeepSpeedZeroOptimizer.get_grad_norm_direct
zero_grad_norm.install_zero_grad_norm(); zero_grad_norm.install_zero_grad_norm()  # idempotent
g = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(7,), (3, 5), (64, 33), (1,)]]
grads = [torch.randn(p.shape, generator=g) * 10.0 ** i for i, p in enumerate(params)]
fake = types.SimpleNamespace(model_parallel_rank=0, dp_process_group=None, device="cpu",
                             _model_parallel_all_reduce=lambda tensor, op: None)
cls = DeepSpeedZeroOptimizer
out = dict(patched=float(cls.get_grad_norm_direct(fake, grads, params)),
           original=float(before(fake, grads, params)),
           dense=float(torch.cat([x.flatten().double() for x in grads]).norm()),
           installed=cls.get_grad_norm_direct is zero_grad_norm.foreach_grad_norm_direct,
           inf_norm=float(cls.get_grad_norm_direct(fake, grads, params, norm_type=float("inf"))),
           dense_inf=float(max(x.abs().max() for x in grads)))
print(json.dumps(out))
from launch.distributed import destroy_distributed
destroy_distributed()  # as the trainer ends: a live gloo group aborts the interpreter's teardown
"""


def test_foreach_norm_equals_deepspeeds_loop_and_the_dense_norm(tmp_path):
    from m2dist_run import free_port

    env = base_env(tmp_path)
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["installed"]
    for key in ("patched", "original"):
        assert abs(got[key] - got["dense"]) <= 1e-6 * got["dense"], got
    assert abs(got["inf_norm"] - got["dense_inf"]) <= 1e-6 * got["dense_inf"], got  # other norms: DeepSpeed's own


CLIP_SCRIPT = r"""
import json, types, torch
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from m2dist.train import zero_grad_norm
original = DeepSpeedZeroOptimizer.unscale_and_clip_grads
zero_grad_norm.install_zero_grad_norm()
patched = DeepSpeedZeroOptimizer.unscale_and_clip_grads
g = torch.Generator().manual_seed(0)
out = dict(installed=patched is zero_grad_norm.device_side_clip, cases=[])
for clip_grad, loss_scale, norm in [(1.0, 1.0, 3.5), (1.0, 1.0, 0.25), (0.5, 4.0, 9.0), (1.0, 1.0, -1.0),
                                    (1.0, 1.0, float("nan")), (1.0, 1.0, float("inf")), (0.0, 1.0, 3.0)]:
    fake = types.SimpleNamespace(clip_grad=clip_grad, loss_scale=loss_scale, device="cpu")
    grads = [torch.randn(40, generator=g), [torch.randn(8, generator=g), torch.randn(3, generator=g)]]
    copy = [grads[0].clone(), [t.clone() for t in grads[1]]]
    original(fake, copy, torch.tensor(norm))
    # The patched clip may not read a device value on the host: a bool() of a tensor is a sync on a GPU.
    bool_of_tensor = torch.Tensor.__bool__
    def refuse(self):
        raise RuntimeError("host sync: bool() of a tensor")
    torch.Tensor.__bool__ = refuse
    try:
        patched(fake, grads, torch.tensor(norm))
    finally:
        torch.Tensor.__bool__ = bool_of_tensor
    flat = lambda gs: torch.cat([gs[0], *gs[1]])
    out["cases"].append([norm, float((flat(grads) - flat(copy)).abs().max()), float(flat(copy).abs().max())])
print(json.dumps(out))
"""


def test_device_side_clip_scales_as_deepspeeds_without_reading_the_norm_on_the_host(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CLIP_SCRIPT], cwd=REPO, env=base_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["installed"]
    for norm, diff, scale in got["cases"]:  # the same gradients as DeepSpeed's clip, to fp32 rounding
        assert diff <= 1e-6 * max(scale, 1e-30), (norm, diff, scale)


SKIP_SCRIPT = r"""
import json, sys, torch, deepspeed
from launch.distributed import init_distributed, destroy_distributed
init_distributed("cpu")
patched = sys.argv[1] == "patched"
if patched:
    from m2dist.train import zero_grad_norm
    zero_grad_norm.install_zero_grad_norm()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1, fused=True)  # the trainer's on a GPU
config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 1}, "steps_per_print": 1 << 30}
engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
flat = lambda ts: torch.cat([t.detach().flatten().float() for t in ts]).tolist()
record = []
for step, factor in enumerate([1.0, float("nan"), 1.0, 1.0]):  # step 1: every gradient NaN
    loss = engine(x).square().mean() * factor
    engine.backward(loss)
    bool_of_tensor = torch.Tensor.__bool__
    if patched:  # a bool() of a device tensor is a host sync on a GPU: the patched step may not take one
        def refuse(self):
            raise RuntimeError("host sync: bool() of a tensor")
        torch.Tensor.__bool__ = refuse
    try:
        engine.step()
    finally:
        torch.Tensor.__bool__ = bool_of_tensor
    states = [opt.state[p] for g in opt.param_groups for p in g["params"] if p in opt.state]
    record.append(dict(params=flat(model.parameters()), exp_avg=flat(s["exp_avg"] for s in states),
                       exp_avg_sq=flat(s["exp_avg_sq"] for s in states),
                       steps=[float(s["step"]) for s in states], norm=float(engine.get_global_grad_norm())))
print(json.dumps(dict(record=record, skipped=engine.skipped_steps)))
destroy_distributed()
# as m2dist's commands end: the interpreter's teardown of DeepSpeed and gloo aborted this child now and then
# ("terminate called without an active exception") after its result was printed
from m2dist.cli.exit import exit_process
exit_process(0)
"""


def test_device_side_skip_leaves_the_step_as_deepspeeds_skip_does_without_a_host_sync(tmp_path):
    """A NaN gradient: DeepSpeed's step reads the invalid norm on the host and skips; the patched one hands it to the
    fused AdamW as found_inf. The parameters, both moments and the step count match DeepSpeed's run after every step
    (finite steps to 1e-6 of the scale), the skipped step leaves them exactly as they were, and the norm reads inf.
    The one documented difference: the engine does not know that the patched run skipped."""
    from m2dist_run import free_port

    runs = {}
    for name in ("deepspeed", "patched"):
        env = base_env(tmp_path)
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        proc = subprocess.run([sys.executable, "-c", SKIP_SCRIPT, name], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    ds, ours = runs["deepspeed"]["record"], runs["patched"]["record"]
    for rec in (ds, ours):
        assert rec[1]["norm"] == float("inf")
        for key in ("params", "exp_avg", "exp_avg_sq", "steps"):
            assert rec[1][key] == rec[0][key], key  # the NaN step changed nothing
        assert rec[2]["params"] != rec[1]["params"]  # and the next step trains again
    for a, b in zip(ds, ours):
        for key in ("params", "exp_avg", "exp_avg_sq", "steps"):
            scale = max(max(abs(v) for v in a[key]), 1e-30)
            assert max(abs(u - v) for u, v in zip(a[key], b[key])) <= 1e-6 * scale, key
        assert a["norm"] == b["norm"] or abs(a["norm"] - b["norm"]) <= 1e-6 * abs(a["norm"])
    assert runs["deepspeed"]["skipped"] == 1 and runs["patched"]["skipped"] == 0
