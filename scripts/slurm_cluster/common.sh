# Shared names and helpers of up.sh and down.sh (sourced, not run).

BASE="${M2DIST_SLURM_BASE:-/tmp/m2dist-slurm}"
NODES="${M2DIST_SLURM_NODES:-2}"
SUBNET="${M2DIST_SLURM_SUBNET:-10.78.0}"
BRIDGE="m2sbr0"
NS_PREFIX="m2sn"
CONF="$BASE/etc/slurm.conf"
MUNGE_SOCKET="$BASE/munge/munge.sock"
# slurmctld decides it is the controller by comparing SlurmctldHost's name with its own hostname.
CTLD_HOST="$(hostname -s)"

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

node_name() { echo "node$1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
netns_name() { echo "${NS_PREFIX}$1"; }

# A daemon that exited stays a zombie for a while (PID 1 reaps lazily) and `kill -0` still succeeds
# on a zombie, so "alive" means: the process exists and is not in state Z.
alive() {
    local pid="$1" state
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
    [[ -n $state && $state != Z ]]
}

alive_from_pidfile() {
    [[ -s $1 ]] && alive "$(cat "$1")"
}

wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

# Stop the processes listed by their pids: SIGTERM, then SIGKILL after 2 s for those that ignore it
# (orphaned slurmstepd does).
stop_pids() {
    local pid left
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 1 20); do
        left=0
        for pid in "$@"; do alive "$pid" && left=1; done
        [[ $left -eq 0 ]] && return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

end_netns_processes() {
    local ns="$1" pids
    [[ -e /run/netns/$ns ]] || return 0
    pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
    if [[ -n ${pids// /} ]]; then
        log "ending leftover processes in $ns: $pids"
        # shellcheck disable=SC2086
        stop_pids $pids
    fi
}
