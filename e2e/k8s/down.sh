#!/usr/bin/env bash
# Stops the control plane (and node) that up.sh started from a state dir, by
# the pids it recorded: SIGTERM, then SIGKILL after 10 s. The state dir stays
# for inspection (logs/), except the pid files.
#
# Usage: e2e/k8s/down.sh [--dir DIR]   (default ${TMPDIR:-/tmp}/herald-k8s)
set -euo pipefail

dir="${TMPDIR:-/tmp}/herald-k8s"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) printf 'e2e/k8s: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
done
[[ -d "$dir/pids" ]] || exit 0

# A node first: the kubelet must not restart what is stopped next, and the
# containers live in the runtime's shims, not under these pids.
if [[ -f "$dir/node.env" ]]; then
    if [[ -f "$dir/pids/kubelet" ]]; then kill -KILL "$(cat "$dir/pids/kubelet")" 2>/dev/null || true; fi
    # Every process of every pod: they sit in the kubelet's cgroups.
    # shellcheck disable=SC2038 # xargs reads pids, not file names
    find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null \
        | xargs -r kill -KILL 2>/dev/null || true
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $dir/containerd.sock" 2>/dev/null || true
fi

pids=()
for f in "$dir"/pids/*; do
    [[ -f "$f" ]] || continue
    # The watchdog is what may be running this script: leave it be.
    [[ "$(basename "$f")" == watchdog && "$(cat "$f")" == "$PPID" ]] && continue
    pid="$(cat "$f")"
    # Each component leads its own session (setsid): stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
done
for _ in $(seq 1 50); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.2
done
for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
done
if [[ -f "$dir/node.env" ]]; then
    # shellcheck source=/dev/null
    source "$dir/node.env"
    # What the node leaves behind: mounts under the state dir, the pods'
    # network namespaces, kube-proxy's rules, the bridge, empty cgroups.
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ { print $1 }'); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    if [[ -x "${bin:-}/kube-proxy" ]]; then "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    ip link delete herald0 2>/dev/null || true
    for c in /sys/fs/cgroup/*/kubepods; do
        if [[ -d "$c" ]]; then find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
    rm -f "$dir/node.env"
fi
rm -rf "$dir/pids"
printf 'e2e/k8s: stopped the processes of %s\n' "$dir" >&2
