#!/usr/bin/env bash
# One per node, started by slurm/train.sbatch through `srun --ntasks-per-node=1`: run torchrun for
# this node's training processes and report a preemption as exit code 85.
#
# How a preemption signal travels: Slurm delivers SIGUSR1 (--signal=USR1@T, `scancel --signal=USR1`)
# and SIGTERM (cancel, time limit) to *every* process of the step (proctrack walks the process tree),
# so each trainer receives it directly. torchrun must survive it: by default SIGUSR1 would kill the
# agent, and on SIGTERM the agent kills its workers after 30 s, possibly mid-save. So the agent starts
# with both ignored and just waits for its workers. torchrun reports any worker exit code other than
# 0 (including 85) as 1, so after a signal this script looks for <run_dir>/PREEMPTED, which the
# trainer writes after its checkpoint is committed, and exits 85.
#
# Reads (exported by train.sbatch): M2DIST_PYTHON RUN_DIR NNODES NPROC_PER_NODE MASTER_ADDR MASTER_PORT.
# Arguments: CONFIG [key=value ...], passed to `m2dist train`.
set -uo pipefail

REQUEUE_EXIT_CODE=85
# How long to wait, after a preemption signal, for the marker that rank 0 writes once the checkpoint
# is committed (ranks on other nodes may finish first).
MARKER_WAIT_S="${M2DIST_MARKER_WAIT_S:-120}"

signal_seen=""
trap '[[ -n $signal_seen ]] || signal_seen=USR1' USR1
trap '[[ -n $signal_seen ]] || signal_seen=TERM' TERM

echo "m2dist node $(hostname) (node $SLURM_NODEID of $NNODES): torchrun --nproc-per-node=$NPROC_PER_NODE, rendezvous $MASTER_ADDR:$MASTER_PORT"
# A torchrun with --signals-to-handle installs its handlers from it (the default includes SIGTERM);
# older ones handle SIGTERM unconditionally and give workers 30 s, which then has to do.
torch_dir="$("$M2DIST_PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')"
signal_flags=()
grep -q -- '--signals-to-handle' "$torch_dir/distributed/run.py" && signal_flags=(--signals-to-handle=SIGINT,SIGHUP,SIGQUIT)
(
    trap '' USR1 TERM
    exec "$M2DIST_PYTHON" -m torch.distributed.run "${signal_flags[@]}" \
        --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" \
        --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
        --max-restarts=0 --monitor-interval=1 \
        -m m2dist train --config "$@"
) &
agent_pid=$!

# A SIGUSR1 that comes while the trainers are still starting (before they install their handler) is lost: they
# inherit it ignored from the agent. Slurm's --signal=USR1@S can come that early (its timer is coarse, and a short
# --time leaves little room), and the job would then run into its time limit. So after a SIGUSR1 this script sends
# it again to the agent's children (this node's trainers) every M2DIST_SIGNAL_REPEAT_S seconds until the
# checkpoint is committed (the marker) or they exit; a trainer that already has it just keeps its flag.
repeat_signal() {
    while kill -0 "$agent_pid" 2>/dev/null && [[ ! -f $RUN_DIR/PREEMPTED ]]; do
        sleep "${M2DIST_SIGNAL_REPEAT_S:-5}"
        for pid in $(pgrep -P "$agent_pid"); do kill -USR1 "$pid" 2>/dev/null; done
    done
}
repeater_pid=""
wait "$agent_pid"
rc=$?
while ((rc > 128)) && kill -0 "$agent_pid" 2>/dev/null; do # wait returns early when a trap runs
    if [[ $signal_seen == USR1 && -z $repeater_pid ]]; then
        repeat_signal &
        repeater_pid=$!
    fi
    wait "$agent_pid"
    rc=$?
done
[[ -z $repeater_pid ]] || kill "$repeater_pid" 2>/dev/null

if ((rc != 0)) && [[ -n $signal_seen ]]; then
    for ((i = 0; i < MARKER_WAIT_S; i++)); do
        [[ -f $RUN_DIR/PREEMPTED ]] && break
        sleep 1
    done
fi
if ((rc != 0)) && [[ -f $RUN_DIR/PREEMPTED ]]; then
    echo "m2dist node $(hostname): preempted (SIG${signal_seen:-?}), checkpoint committed"
    exit "$REQUEUE_EXIT_CODE"
fi
echo "m2dist node $(hostname): torchrun exited with $rc"
exit "$rc"
