#!/usr/bin/env bash
# Counts the instructions the agent spends per message, accepted in batches
# of 100 and delivered to a null Bot API, with metrics on and off, under
# valgrind's callgrind. Instruction counts do not depend on what else the
# machine is doing, so they can tell apart costs (such as metrics) smaller
# than the run-to-run noise of `herald bench`'s msg/s on a shared machine.
#
# Usage: scripts/instructions-per-message.sh [MESSAGES] [REPEATS]
#   MESSAGES defaults to 5000, REPEATS to 3. Needs valgrind, python3, curl,
#   and a release build with line tables (cargo build --profile profiling). Uses loopback ports 18601
#   (agent) and 18602 (null API).
# Prints one line per run and the mean per message for each setting; each
# run's count has the count of an agent that started and stopped with no
# message taken off it.
set -euo pipefail

messages=${1:-5000}
repeats=${2:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
herald="${CARGO_TARGET_DIR:-$repo/target}/profiling/herald"
[ -x "$herald" ] || { echo "build first: cargo build --profile profiling" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The null Bot API: every call succeeds at once.
python3 - <<'PY' &
import http.server, json
class Null(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    n = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Null.n += 1
        body = json.dumps({"ok": True, "result": {"message_id": Null.n, "date": 0, "chat": {"id": 1}}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18602), Null).serve_forever()
PY

# run METRICS COUNT: the agent's total instruction count for one run.
run() {
    local metrics=$1 count=$2 dir
    dir=$(mktemp -d "$work/run.XXXX")
    mkdir -p "$dir/secrets/bot"
    printf '100000:bench-token' > "$dir/secrets/bot/token"
    cat > "$dir/agent.yaml" <<YAML
apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {name: instructions}
spec:
  listen: 127.0.0.1:18601
  entryTier: null-api
  storePath: $dir/queue.redb
  secrets: {dir: $dir/secrets}
  metrics: {enabled: $metrics}
---
apiVersion: herald.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: unbounded}
spec:
  global: {rate: 1000000, period: 1s, burst: 1000}
  perChat: {rate: 1000000, period: 1s, burst: 1000}
  perGroup: {rate: 1000000, period: 1s, burst: 1000}
  pacing: {guardPercent: 0, chatGuardPercent: 0}
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {name: null-api}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {name: bot, key: token}
    apiUrl: http://127.0.0.1:18602
  rateLimitPolicyRef: {name: unbounded}
  priority: 100
YAML
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$herald" run -f "$dir/agent.yaml" > "$dir/agent.log" 2>&1 &
    local agent=$!
    for _ in $(seq 1 600); do
        curl -sf http://127.0.0.1:18601/readyz > /dev/null && break
        sleep 0.1
    done
    python3 - "$count" <<'PY'
import json, sys, time, urllib.request
count, sent = int(sys.argv[1]), 0
while sent < count:
    k = min(100, count - sent)
    batch = [{"chat_id": 1000 + (sent + i) % 500, "text": f"m{sent + i}"} for i in range(k)]
    req = urllib.request.Request("http://127.0.0.1:18601/v1/messages",
                                 data=json.dumps({"messages": batch}).encode(),
                                 headers={"content-type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
    sent += k
# Until every message is delivered (bounded: 5 minutes).
for _ in range(1200):
    store = json.load(urllib.request.urlopen("http://127.0.0.1:18601/healthz/details"))["dependencies"]["store"]
    if sum(store["pending_by_priority"].values()) + store["in_flight"] == 0:
        break
    time.sleep(0.25)
else:
    sys.exit("the agent did not deliver every message within 5 minutes")
PY
    kill -TERM "$agent"
    wait "$agent" || true
    awk '/^summary:/ {print $2}' "$dir/callgrind.out"
}

for metrics in true false; do
    base=$(run "$metrics" 0)
    total=0
    for r in $(seq 1 "$repeats"); do
        n=$(run "$metrics" "$messages")
        per=$(( (n - base) / messages ))
        echo "metrics $metrics, run $r: $per instructions per message"
        total=$(( total + per ))
    done
    echo "metrics $metrics: mean $(( total / repeats )) instructions per message (idle start and stop: $base)"
done
