#!/usr/bin/env bash
# Tear down the local test cluster made by up.sh: cancel jobs, stop slurmd/slurmctld/munged, end
# every process left in the node namespaces, remove namespaces, veths, bridge and the conf symlink.
# Safe to run when nothing (or only part) is up.
#
#   scripts/slurm_cluster/down.sh              # keep $M2DIST_SLURM_BASE (logs) for inspection
#   scripts/slurm_cluster/down.sh --purge      # also delete it
#   --keep-munge / --keep-net: used by up.sh to restart only the Slurm daemons.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

purge=0 keep_munge=0 keep_net=0
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        --keep-munge) keep_munge=1 ;;
        --keep-net) keep_net=1 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

if alive_from_pidfile "$BASE/run/slurmctld.pid"; then
    SLURM_CONF="$CONF" timeout 5 scancel --quiet --full --signal=KILL --state=RUNNING --user=root 2>/dev/null || true
fi

pidfile_pid() { [[ -s $1 ]] && alive "$(cat "$1")" && cat "$1"; }

pids=()
for pidfile in "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid"; do
    pid="$(pidfile_pid "$pidfile")" && pids+=("$pid")
done
stop_pids "${pids[@]}"

for ns_path in /run/netns/"${NS_PREFIX}"*; do
    [[ -e $ns_path ]] || continue
    end_netns_processes "$(basename "$ns_path")"
done

if [[ $keep_munge -eq 0 ]]; then
    pid="$(pidfile_pid "$BASE/run/munged.pid")" && stop_pids "$pid"
fi

if [[ $keep_net -eq 0 ]]; then
    for ns_path in /run/netns/"${NS_PREFIX}"*; do
        [[ -e $ns_path ]] || continue
        ip netns delete "$(basename "$ns_path")" 2>/dev/null || true
    done
    # Deleting a namespace destroys its veth end and so the pair; the bridge goes last.
    ip link delete "$BRIDGE" 2>/dev/null || true
    if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$CONF" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
fi

rm -f "$BASE"/run/slurm*.pid
[[ $purge -eq 1 ]] && rm -rf "$BASE"
log "cluster down"
exit 0
