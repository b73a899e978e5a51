#!/usr/bin/env bash
# herald's durable accept against BullMQ's `queue.add`, on this machine, in
# one sitting, alternated round by round so drift in machine load hits both.
#
#   scripts/bench-vs-bullmq.sh [ROUNDS] [JOBS]
#
# BullMQ: a private redis-server (Debian) with `appendonly yes` and
# `appendfsync always` — every add on disk before it is answered, as herald
# answers 202 only after its fsync — and BullMQ from npm
# (scripts/bench-vs-bullmq/package.json), 64 `queue.add` calls in flight,
# then 8 `addBulk(100)` calls in flight. No worker runs.
#
# herald: `herald bench --accept-only`, a real agent on its embedded store
# driven over loopback by herald's own generator (a separate process, the
# same one `herald bench` uses) with the same shapes: 64 single-message
# requests in flight, then 8 requests of 100. The agent also delivers what
# it accepts (to a null Bot API), which BullMQ's side does not. The
# generator's own lateness is in the JSON (`generator_lateness`).
#
# Prints each round and the median ratio herald / BullMQ. Needs
# redis-server, node and npm, and a release build (`cargo build --release`;
# HERALD_BIN overrides the path).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-3}"
jobs="${2:-100000}"
herald="${HERALD_BIN:-${CARGO_TARGET_DIR:-target}/release/herald}"
for tool in redis-server node npm; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done
[ -x "$herald" ] || { echo "no herald binary at $herald: cargo build --release" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/herald-vs-bullmq.XXXXXX")"
redis_pid=""
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cp scripts/bench-vs-bullmq/package.json scripts/bench-vs-bullmq/bullmq-add.mjs "$work/"
(cd "$work" && npm install --silent --no-audit --no-fund >/dev/null)

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

bullmq() { (cd "$work" && node bullmq-add.mjs "$port" "$jobs" "$1" "$2"); }
herald_accept() {
    "$herald" bench --accept-only --json --messages "$jobs" --producers "$1" --batch "$2" \
        --rate "$3" 2>/dev/null
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

single_ratios=()
bulk_ratios=()
for r in $(seq "$rounds"); do
    b1="$(bullmq 64 1)"
    b1_rate="$(field 'round(d["per_second"])' <<<"$b1")"
    # herald's latency run goes at half BullMQ's single-add rate.
    h1="$(herald_accept 64 1 $((b1_rate / 2)))"
    h1_rate="$(field 'round(d["accept_per_second_metrics_on"])' <<<"$h1")"
    h1_p99="$(field 'd["accept_latency"]["p99_ms"]' <<<"$h1")"
    b100="$(bullmq 8 100)"
    b100_rate="$(field 'round(d["per_second"])' <<<"$b100")"
    h100="$(herald_accept 8 100 $((b1_rate / 2)))"
    h100_rate="$(field 'round(d["accept_per_second_metrics_on"])' <<<"$h100")"
    echo "round $r: single  BullMQ $b1_rate jobs/s (p99 $(field 'round(d["p99_ms"],2)' <<<"$b1") ms)" \
        " herald $h1_rate msg/s (p99 at $((b1_rate / 2))/s: ${h1_p99} ms)"
    echo "round $r: bulk100 BullMQ $b100_rate jobs/s  herald $h100_rate msg/s"
    single_ratios+=("$(python3 -c "print($h1_rate / $b1_rate)")")
    bulk_ratios+=("$(python3 -c "print($h100_rate / $b100_rate)")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'herald / BullMQ, median of %s rounds: single %.2fx, bulk(100) %.2fx\n' \
    "$rounds" "$(median "${single_ratios[@]}")" "$(median "${bulk_ratios[@]}")"
