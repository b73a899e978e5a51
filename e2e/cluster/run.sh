#!/usr/bin/env bash
# The cluster e2e suite: herald's operator on a real Kubernetes cluster.
#
# With kind and a running docker daemon it creates a kind cluster (deleted
# again at the end unless E2E_KEEP=1), builds the image from the project
# Dockerfile and loads it; with KUBECONFIG pointing at a reachable cluster it
# uses that cluster and the images named by E2E_IMAGE / E2E_CANARY_IMAGE
# (meant for a disposable cluster: it installs cluster-wide CRDs and RBAC).
# Then: install charts/herald with Helm 4, deploy the sandbox (and a Redis),
# apply config/samples, wait for the sample tier to be Ready, send messages
# through it, change a tier's image and watch the canary to promotion, freeze
# an agent pod and watch the operator heal it. Prints a pass/fail table;
# exits 1 if a check failed, 0 when all passed or when there is no cluster
# (the skip message says why), 2 on a usage error.
#
# Environment (all optional):
#   E2E_KIND_CLUSTER   kind cluster name (herald-e2e)
#   E2E_NAMESPACE      namespace of the tiers (herald-e2e)
#   E2E_IMAGE          image to test, repo:tag (kind: built as herald:e2e)
#   E2E_CANARY_IMAGE   the "new version" for the rollout (kind: herald:e2e-canary,
#                      the same build under another tag)
#   E2E_BROKEN_IMAGE   a canary that must be aborted: the image under test with
#                      HTTP_PROXY pointing nowhere, so its deliveries fail
#                      (kind: built as herald:e2e-broken)
#   E2E_SKIP_BUILD=1   kind: reuse an existing herald:e2e image
#   E2E_REDIS_IMAGE    redis image (redis:7-alpine)
#   E2E_KEEP=1         keep the kind cluster / the installed release
#   E2E_HELM           a Helm 4 binary to use (else scripts/install-helm.sh installs one)
#   E2E_READY_TIMEOUT, E2E_CANARY_TIMEOUT, E2E_HEAL_TIMEOUT  seconds (300, 600, 300)
#   E2E_NODE_CONTAINERD  the containerd socket of the cluster's node, when the
#                      node is this machine (e2e/k8s/up.sh --node): lets the
#                      healing check freeze an agent without kind
#   E2E_REQUIRE_ALL=1  a skipped check fails the run (CI sets it: a skip
#                      must never read as a pass)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
readonly here root

readonly KIND_NAME="${E2E_KIND_CLUSTER:-herald-e2e}"
readonly NS="${E2E_NAMESPACE:-herald-e2e}"
readonly OPERATOR_NS="herald-system"
readonly RELEASE="herald"
readonly REDIS_IMAGE="${E2E_REDIS_IMAGE:-redis:7-alpine}"
readonly READY_TIMEOUT="${E2E_READY_TIMEOUT:-300}"
readonly CANARY_TIMEOUT="${E2E_CANARY_TIMEOUT:-600}"
readonly HEAL_TIMEOUT="${E2E_HEAL_TIMEOUT:-300}"
# The sandbox accepts any token shaped <digits>:<secret>.
readonly BOT_TOKEN="123456:e2e-cluster-token"

log() { printf 'e2e/cluster: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------ which cluster

docker_answers() { have docker && timeout 20 docker info >/dev/null 2>&1; }
kube_answers() { have kubectl && timeout 20 kubectl version --request-timeout=15s >/dev/null 2>&1; }

mode=""
if [[ -n "${KUBECONFIG:-}" ]] && kube_answers; then
    mode="kubeconfig"
elif have kind && have kubectl && docker_answers; then
    mode="kind"
fi
if [[ -z "$mode" ]]; then
    why=()
    if [[ -n "${KUBECONFIG:-}" ]]; then why+=("KUBECONFIG is set but no API server answered"); else why+=("KUBECONFIG is not set"); fi
    have kind || why+=("kind is not installed")
    have docker || why+=("docker is not installed")
    if have docker && ! docker_answers; then why+=("no docker daemon answers"); fi
    have kubectl || why+=("kubectl is not installed")
    joined="$(printf '%s; ' "${why[@]}")"
    printf 'e2e/cluster: SKIP: no cluster to test against (%s).\n' "${joined%; }"
    printf 'e2e/cluster: needs KUBECONFIG pointing at a reachable cluster, or kind + kubectl + a running docker daemon.\n'
    exit 0
fi

for tool in kubectl curl python3; do
    have "$tool" || { log "error: $tool is required"; exit 2; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/herald-e2e-cluster.XXXXXX")"
readonly work
bg_pids=()
created_cluster=0
installed=0

cleanup() {
    local status=$?
    set +e
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${bg_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [[ "${E2E_KEEP:-0}" != 1 ]]; then
        if ((created_cluster)); then
            log "deleting kind cluster $KIND_NAME"
            kind delete cluster --name "$KIND_NAME" >/dev/null 2>&1
        elif ((installed)); then
            log "removing namespace $NS and release $RELEASE (CRDs stay)"
            kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1
            "${helm:-helm}" uninstall "$RELEASE" -n "$OPERATOR_NS" >/dev/null 2>&1
        fi
    else
        log "E2E_KEEP=1: leaving the cluster as it is (kubeconfig: ${KUBECONFIG:-default})"
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ results table

names=() results=() times=() details=()
failed=0
step_started=$SECONDS

begin() {
    step_started=$SECONDS
    log "== $1"
}

record() { # name PASS|FAIL|SKIP details
    names+=("$1")
    results+=("$2")
    times+=("$((SECONDS - step_started))s")
    details+=("$3")
    [[ "$2" != FAIL ]] || failed=$((failed + 1))
    log "   $2: $3"
}

print_table() {
    local i w=10
    for i in "${!names[@]}"; do ((${#names[i]} > w)) && w=${#names[i]}; done
    printf '\n%-*s  %-6s  %-6s  %s\n' "$w" scenario result time details
    printf '%-*s  %-6s  %-6s  %s\n' "$w" "$(printf '%*s' "$w" '' | tr ' ' -)" ------ ------ -------
    for i in "${!names[@]}"; do
        printf '%-*s  %-6s  %-6s  %s\n' "$w" "${names[i]}" "${results[i]}" "${times[i]}" "${details[i]}"
    done
    local skipped=0
    for i in "${!results[@]}"; do [[ "${results[i]}" != SKIP ]] || skipped=$((skipped + 1)); done
    if [[ "${E2E_REQUIRE_ALL:-0}" == 1 && $skipped -gt 0 ]]; then
        failed=$((failed + skipped))
        printf '\nE2E_REQUIRE_ALL=1: the %d skipped check(s) count as failed\n' "$skipped"
    fi
    printf '\ne2e/cluster (%s): %d failed, %d skipped of %d\n' "$mode" "$failed" "$skipped" "${#names[@]}"
}

# Ends the run: the remaining checks cannot run without this one.
abort_after() { # name details [remaining check names...]
    record "$1" FAIL "$2"
    shift 2
    local n
    for n in "$@"; do
        names+=("$n") results+=(SKIP) times+=(-) details+=("not run: an earlier step failed")
    done
    print_table
    exit 1
}

# ------------------------------------------------------------------ helpers

# wait_until SECONDS COMMAND...: true once COMMAND succeeds, false at the deadline.
wait_until() {
    local limit=$1
    shift
    local end=$((SECONDS + limit))
    while ((SECONDS < end)); do
        if "$@"; then return 0; fi
        sleep 3
    done
    "$@"
}

k() { kubectl -n "$NS" "$@"; }
tier_field() { k get tier "$1" -o "jsonpath=$2" 2>/dev/null; }
tier_phase_is() { [[ "$(tier_field "$1" '{.status.phase}')" == "$2" ]]; }

# port_forward TARGET REMOTE_PORT: sets pf_port and pf_pid (a loopback port).
pf_port="" pf_pid=""
port_forward() {
    local out
    out="$(mktemp "$work/pf.XXXXXX")"
    kubectl -n "$NS" port-forward --address 127.0.0.1 "$1" ":$2" >"$out" 2>&1 &
    pf_pid=$!
    bg_pids+=("$pf_pid")
    local _
    for _ in $(seq 1 75); do
        pf_port="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$out" | head -n 1)"
        [[ -n "$pf_port" ]] && return 0
        kill -0 "$pf_pid" 2>/dev/null || break
        sleep 0.2
    done
    log "port-forward to $1 failed: $(cat "$out")"
    return 1
}

post_message() { # port chat text
    curl -fsS -m 10 -o /dev/null -H 'content-type: application/json' \
        -d "{\"chat_id\": $2, \"text\": \"$3\"}" "http://127.0.0.1:$1/v1/messages"
}

# A trickle of messages (about 4/s) to a tier's Service until the stop file
# appears or the time is up; the canary analysis needs traffic on both tracks.
# The port-forward is renewed when the pod behind it goes away.
traffic() { # service seconds stopfile
    local svc=$1 end=$((SECONDS + $2)) stop=$3 i=0
    trap 'exit 0' TERM
    trap '[[ -z "$pf_pid" ]] || kill "$pf_pid" 2>/dev/null' EXIT
    pf_pid=""
    while ((SECONDS < end)) && [[ ! -e "$stop" ]]; do
        if [[ -z "$pf_pid" ]] || ! kill -0 "$pf_pid" 2>/dev/null; then
            port_forward "svc/$svc" 8080 || { sleep 2; continue; }
        fi
        if ! post_message "$pf_port" $((7000 + i % 500)) "canary-$i" 2>/dev/null; then
            kill "$pf_pid" 2>/dev/null || true
            pf_pid=""
        fi
        i=$((i + 1))
        sleep 0.25
    done
}

dump_state() {
    log "state of namespace $NS:"
    k get tier,deploy,pods -o wide >&2 2>&1 || true
    kubectl -n "$OPERATOR_NS" logs deploy/"$RELEASE"-operator --tail=30 >&2 2>&1 || true
}

# Why a workload of the suite's own did not come up: its pods, the
# namespace's latest events (probe failures, pulls, scheduling) and the
# pods' own last words.
dump_workload() { # label value of app.kubernetes.io/name
    log "pods of $1 in namespace $NS:"
    k get pods -l "app.kubernetes.io/name=$1" -o wide >&2 2>&1 || true
    k get events --sort-by=.lastTimestamp 2>&1 | tail -n 15 >&2 || true
    k logs -l "app.kubernetes.io/name=$1" --all-containers --tail=20 --prefix >&2 2>&1 || true
}

# ------------------------------------------------------------------ cluster

all_checks=(cluster image chart samples tier-ready delivery canary canary-abort healing redis-outage)

begin cluster
if [[ "$mode" == kind ]]; then
    export KUBECONFIG="$work/kubeconfig"
    if kind get clusters 2>/dev/null | grep -qx "$KIND_NAME"; then
        kind export kubeconfig --name "$KIND_NAME" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 ||
            abort_after cluster "kind cluster $KIND_NAME exists but its kubeconfig could not be exported" "${all_checks[@]:1}"
        record cluster PASS "reusing kind cluster $KIND_NAME"
    elif kind create cluster --name "$KIND_NAME" --kubeconfig "$KUBECONFIG" --wait 180s >"$work/kind.log" 2>&1; then
        created_cluster=1
        record cluster PASS "created kind cluster $KIND_NAME"
    else
        abort_after cluster "kind create cluster failed: $(tail -n 3 "$work/kind.log" | tr '\n' ' ')" "${all_checks[@]:1}"
    fi
else
    record cluster PASS "using $(kubectl config current-context 2>/dev/null || echo 'the current context')"
fi

# -------------------------------------------------------------------- image

begin image
kind_target=""
if [[ "$mode" == kind ]]; then
    kind_target="$KIND_NAME"
elif [[ -z "${E2E_IMAGE:-}" ]]; then
    context="$(kubectl config current-context 2>/dev/null || true)"
    if [[ "$context" == kind-* ]] && have kind && docker_answers; then
        kind_target="${context#kind-}"
    else
        abort_after image "set E2E_IMAGE and E2E_CANARY_IMAGE to images this cluster can pull" "${all_checks[@]:2}"
    fi
fi
if [[ -n "$kind_target" ]]; then
    image="herald:e2e"
    canary_image="herald:e2e-canary"
    if [[ "${E2E_SKIP_BUILD:-0}" == 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
        log "reusing the local image $image"
    elif ! docker build -t "$image" -f "$root/Dockerfile" "$root" >"$work/build.log" 2>&1; then
        abort_after image "docker build failed: $(tail -n 5 "$work/build.log" | tr '\n' ' ')" "${all_checks[@]:2}"
    fi
    docker tag "$image" "$canary_image"
    broken_image="herald:e2e-broken"
    printf 'FROM %s\nENV HTTP_PROXY=http://127.0.0.1:9\n' "$image" | docker build -q -t "$broken_image" - >/dev/null 2>&1 \
        || abort_after image "docker build of $broken_image failed" "${all_checks[@]:2}"
    if ! kind load docker-image --name "$kind_target" "$image" "$canary_image" "$broken_image" >"$work/load.log" 2>&1; then
        abort_after image "kind load failed: $(tail -n 3 "$work/load.log" | tr '\n' ' ')" "${all_checks[@]:2}"
    fi
    # Redis comes from a registry; preload it when the host can pull it.
    if docker pull -q "$REDIS_IMAGE" >/dev/null 2>&1; then
        kind load docker-image --name "$kind_target" "$REDIS_IMAGE" >/dev/null 2>&1 || true
    fi
    record image PASS "built $image, tagged $canary_image, loaded into kind/$kind_target"
else
    image="$E2E_IMAGE"
    canary_image="${E2E_CANARY_IMAGE:-}"
    broken_image="${E2E_BROKEN_IMAGE:-}"
    if [[ -z "$canary_image" || "$canary_image" == "$image" ]]; then
        abort_after image "E2E_CANARY_IMAGE must name a second tag of the image under test" "${all_checks[@]:2}"
    fi
    record image PASS "using $image (canary $canary_image)"
fi
readonly image canary_image broken_image
if [[ "${image##*/}" != *:* ]]; then
    abort_after chart "the image must be repo:tag, got $image" "${all_checks[@]:3}"
fi

# -------------------------------------------------------------------- chart

begin chart
if [[ -n "${E2E_HELM:-}" ]]; then
    helm="$E2E_HELM"
elif ! helm="$("$root/scripts/install-helm.sh" 2>"$work/helm-install.log")"; then
    abort_after chart "Helm 4 could not be installed: $(tail -n 2 "$work/helm-install.log" | tr '\n' ' ')" "${all_checks[@]:3}"
fi
readonly helm
installed=1
if "$helm" upgrade --install "$RELEASE" "$root/charts/herald" \
    --namespace "$OPERATOR_NS" --create-namespace \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --set operator.agent.pullPolicy=IfNotPresent \
    --set operator.statusInterval=15s \
    --wait --timeout 5m >"$work/helm.log" 2>&1; then
    record chart PASS "release $RELEASE in $OPERATOR_NS, operator available"
else
    kubectl -n "$OPERATOR_NS" get pods >&2 2>&1 || true
    abort_after chart "helm install failed: $(tail -n 3 "$work/helm.log" | tr '\n' ' ')" "${all_checks[@]:3}"
fi

# ------------------------------------------------------------------ samples

begin samples
apply_log="$work/apply.log"
applied() {
    kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - &&
        k create secret generic telegram-bot --from-literal=token="$BOT_TOKEN" --dry-run=client -o yaml | k apply -f - &&
        k create secret generic e2e-redis --from-literal=url="redis://redis:6379" --dry-run=client -o yaml | k apply -f - &&
        sed "s|HERALD_IMAGE|$image|" "$here/manifests/sandbox.yaml" | k apply -f - &&
        sed "s|REDIS_IMAGE|$REDIS_IMAGE|" "$here/manifests/redis.yaml" | k apply -f - &&
        k rollout status deploy/telegram-sandbox --timeout=180s &&
        k apply -f "$root/config/samples/herald_v1alpha1_ratelimitpolicy.yaml" \
            -f "$root/config/samples/herald_v1alpha1_circuitpolicy.yaml" \
            -f "$root/config/samples/herald_v1alpha1_degradationprofile.yaml" \
            -f "$root/config/samples/herald_v1alpha1_deliverytier.yaml" &&
        k patch tier telegram --type merge -p '{"spec":{
            "telegram":{"apiUrl":"http://telegram-sandbox:8081"},
            "healing":{"unhealthyAfter":"5s","backoff":"10s","maxBackoff":"1m"}}}' &&
        k apply -f "$here/manifests/rollout-tier.yaml"
}
if applied >"$apply_log" 2>&1; then
    record samples PASS "config/samples, the sandbox (running), Redis and the rollout tier applied"
else
    dump_workload telegram-sandbox
    abort_after samples "apply failed: $(tail -n 3 "$apply_log" | tr '\n' ' ')" "${all_checks[@]:4}"
fi

# --------------------------------------------------------------- tier ready

begin tier-ready
if wait_until "$READY_TIMEOUT" tier_phase_is telegram Ready; then
    record tier-ready PASS "tier telegram Ready ($(tier_field telegram '{.status.ready}') replicas)"
    k get tier >&2 || true
    tier_ready=1
else
    dump_state
    record tier-ready FAIL "tier telegram is $(tier_field telegram '{.status.phase}' || echo '?') after ${READY_TIMEOUT}s"
    tier_ready=0
fi

# ----------------------------------------------------------------- delivery

begin delivery
# counter NAME: one top-level number from the sandbox's counters, or nothing.
counter() {
    curl -fsS -m 5 "http://127.0.0.1:$sandbox_port/sandbox/counters" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1" 2>/dev/null || true
}
sandbox_has() {
    local n
    n="$(counter delivered)"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= $1))
}
if ((tier_ready)); then
    if port_forward svc/telegram-sandbox 8081; then
        sandbox_port=$pf_port
        before="$(counter delivered)"
        before="${before:-0}"
        sent=0
        if port_forward svc/telegram 8080; then
            for i in $(seq 1 20); do
                post_message "$pf_port" $((6000 + i)) "cluster-$i" && sent=$((sent + 1))
            done
        fi
        if ((sent == 20)) && wait_until 60 sandbox_has $((before + 20)); then
            rejected="$(counter rejected_429)"
            if [[ "$rejected" == 0 ]]; then
                record delivery PASS "20 messages through Service telegram reached the sandbox, 0 429s"
            else
                record delivery FAIL "20 messages delivered but the sandbox counts ${rejected:-?} 429s"
            fi
        else
            record delivery FAIL "accepted $sent/20; the sandbox counts $(counter delivered) deliveries (had $before)"
        fi
    else
        record delivery FAIL "no port-forward to the sandbox"
    fi
else
    record delivery SKIP "tier telegram is not Ready"
fi

# ------------------------------------------------------------------- canary

begin canary
stable_image() { k get deploy e2e-rollout-agent -o 'jsonpath={.spec.template.spec.containers[0].image}' 2>/dev/null; }
promoted() {
    local verdict
    verdict="$(tier_field e2e-rollout '{.status.canary.verdict}')"
    [[ "$verdict" == Aborted ]] && return 0
    [[ "$verdict" == Promoted && "$(stable_image)" == "$canary_image" ]]
}
if ! k rollout status deploy/redis --timeout=180s >"$work/redis.log" 2>&1; then
    dump_workload redis
    record canary FAIL "Redis did not start (can the cluster pull $REDIS_IMAGE? set E2E_REDIS_IMAGE)"
elif ! wait_until "$READY_TIMEOUT" tier_phase_is e2e-rollout Ready; then
    dump_state
    record canary FAIL "tier e2e-rollout (Redis store) is $(tier_field e2e-rollout '{.status.phase}' || echo '?') after ${READY_TIMEOUT}s, before any rollout"
else
    stop_file="$work/traffic.stop"
    traffic e2e-rollout "$CANARY_TIMEOUT" "$stop_file" &
    bg_pids+=("$!")
    k patch tier e2e-rollout --type merge -p "{\"spec\":{\"image\":\"$canary_image\"}}" >/dev/null
    log "   image of e2e-rollout set to $canary_image; watching status.canary"
    seen=""
    watch_canary() {
        local summary
        summary="$(tier_field e2e-rollout '{.status.canary.summary}')"
        if [[ -n "$summary" && "$summary" != "${seen##*, }" ]]; then
            seen="${seen:+$seen, }$summary"
            log "   canary: $summary"
        fi
        promoted
    }
    if wait_until "$CANARY_TIMEOUT" watch_canary && [[ "$(tier_field e2e-rollout '{.status.canary.verdict}')" == Promoted ]]; then
        record canary PASS "promoted: stable runs $canary_image (${seen:-no intermediate status seen})"
    else
        dump_state
        record canary FAIL "verdict $(tier_field e2e-rollout '{.status.canary.verdict}' || echo none), stable runs $(stable_image || echo '?'); seen: ${seen:-nothing}"
    fi
    touch "$stop_file"
fi

# ------------------------------------------------------------ canary abort

begin canary-abort
# A release whose canary cannot deliver (every request it makes goes to a
# proxy that is not there): the analysis must abort it, and the stable track
# must keep delivering what arrives meanwhile and after.
verdict_is() { [[ "$(tier_field e2e-rollout '{.status.canary.verdict}')" == "$1" ]]; }
if [[ -z "$broken_image" ]]; then
    record canary-abort SKIP "no E2E_BROKEN_IMAGE to roll out"
elif [[ "$(tier_field e2e-rollout '{.status.canary.verdict}')" != Promoted ]]; then
    record canary-abort SKIP "needs the promoted rollout of the canary check"
elif ! port_forward svc/telegram-sandbox 8081; then
    record canary-abort FAIL "no port-forward to the sandbox"
else
    sandbox_port=$pf_port
    good_image="$(stable_image)"
    stop_file="$work/traffic-abort.stop"
    traffic e2e-rollout "$CANARY_TIMEOUT" "$stop_file" &
    bg_pids+=("$!")
    k patch tier e2e-rollout --type merge -p "{\"spec\":{\"image\":\"$broken_image\"}}" >/dev/null
    log "   image of e2e-rollout set to $broken_image; watching status.canary"
    if wait_until "$CANARY_TIMEOUT" verdict_is Aborted; then
        reason="$(tier_field e2e-rollout '{.status.conditions[?(@.type=="CanaryAnalysis")].message}')"
        # After the abort every message must still arrive: the canary's
        # partitions are back with the stable agents.
        before="$(counter delivered)"
        before="${before:-0}"
        sleep 20
        after="$(counter delivered)"
        if [[ "$(stable_image)" != "$good_image" ]]; then
            record canary-abort FAIL "aborted, but the stable Deployment runs $(stable_image), not $good_image"
        elif [[ "$after" =~ ^[0-9]+$ ]] && ((after > before + 20)); then
            record canary-abort PASS "aborted ($reason); stable still on $good_image delivered $((after - before)) messages in the 20 s after"
        else
            dump_state
            record canary-abort FAIL "aborted, but the stable track delivered only $((${after:-0} - before)) messages in 20 s"
        fi
    else
        dump_state
        record canary-abort FAIL "verdict $(tier_field e2e-rollout '{.status.canary.verdict}' || echo none) after ${CANARY_TIMEOUT}s, not Aborted"
    fi
    touch "$stop_file"
    # Back to the image the stable track runs, for the checks after this one.
    k patch tier e2e-rollout --type merge -p "{\"spec\":{\"image\":\"$good_image\"}}" >/dev/null
fi

# ------------------------------------------------------------------ healing

begin healing
agent_pod() { k get pods -l app.kubernetes.io/name=herald,herald.dev/tier=telegram --field-selector=status.phase=Running -o 'jsonpath={.items[0].metadata.name}' 2>/dev/null; }
healed_by_operator() {
    [[ "$(tier_field telegram '{.status.lastRestart.pod}')" == "$victim" ]] &&
        ! k get pod "$victim" >/dev/null 2>&1 && tier_phase_is telegram Ready
}
# on_node NODE COMMAND...: runs a command on the node: in its kind
# container, or here when the node is this machine.
on_node() {
    local node=$1
    shift
    if [[ -n "${E2E_NODE_CONTAINERD:-}" ]]; then "$@"; else docker exec "$node" "$@"; fi
}
# The host pid of a container, by its CRI id.
container_pid() { # node id
    if [[ -n "${E2E_NODE_CONTAINERD:-}" ]]; then
        ctr --address "$E2E_NODE_CONTAINERD" -n k8s.io task ls 2>/dev/null | awk -v id="$2" '$1 == id { print $2 }'
    else
        docker exec "$1" crictl inspect --output go-template --template '{{.info.pid}}' "$2" 2>/dev/null
    fi
}
if ((!tier_ready)); then
    record healing SKIP "tier telegram is not Ready"
elif [[ -z "${E2E_NODE_CONTAINERD:-}" && "$mode" != kind && -z "$kind_target" ]]; then
    record healing SKIP "freezing a container needs node access (kind, or E2E_NODE_CONTAINERD)"
else
    victim="$(agent_pod)"
    node="$(k get pod "$victim" -o 'jsonpath={.spec.nodeName}')"
    cid="$(k get pod "$victim" -o 'jsonpath={.status.containerStatuses[0].containerID}')"
    restarts_before="$(k get pod "$victim" -o 'jsonpath={.status.containerStatuses[0].restartCount}')"
    pid="$(container_pid "$node" "${cid#*://}" || true)"
    if [[ -z "$victim" || ! "$pid" =~ ^[0-9]+$ ]]; then
        record healing FAIL "could not find the agent process of pod '${victim:-?}' on node '${node:-?}'"
    else
        # SIGSTOP from the node: probes time out, the pod turns unready; a
        # signal from inside the container could not stop its PID 1.
        on_node "$node" kill -STOP "$pid"
        log "   froze pod $victim (pid $pid on $node)"
        if wait_until "$HEAL_TIMEOUT" healed_by_operator; then
            record healing PASS "operator restarted frozen pod $victim ($(tier_field telegram '{.status.lastRestart.reason}')); tier Ready again"
        else
            restarts_now="$(k get pod "$victim" -o 'jsonpath={.status.containerStatuses[0].restartCount}' 2>/dev/null || echo gone)"
            dump_state
            record healing FAIL "no operator restart of $victim in ${HEAL_TIMEOUT}s (status.lastRestart: '$(tier_field telegram '{.status.lastRestart.pod}')'; container restarts $restarts_before -> $restarts_now)"
        fi
    fi
fi

# ------------------------------------------------------------- redis outage

begin redis-outage
# Redis (the e2e-rollout tier's shared queue) goes away for a while: the
# tier must say DependencyDegraded, the operator must restart nothing (the
# cause is shared, a restart cures nothing), and all must recover after.
dependency_degraded() { [[ "$(tier_field e2e-rollout '{.status.conditions[?(@.type=="DependencyDegraded")].status}')" == "$1" ]]; }
restart_counts() { k get pods -l herald.dev/tier=e2e-rollout -o 'jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount}{" "}{end}' 2>/dev/null; }
if ! tier_phase_is e2e-rollout Ready && ! wait_until 120 tier_phase_is e2e-rollout Ready; then
    record redis-outage SKIP "tier e2e-rollout is $(tier_field e2e-rollout '{.status.phase}' || echo '?'), not Ready"
else
    pods_before="$(restart_counts)"
    last_restart_before="$(tier_field e2e-rollout '{.status.lastRestart.pod}')"
    k scale deploy/redis --replicas=0 >/dev/null
    log "   Redis scaled to 0; watching DependencyDegraded"
    if wait_until 120 dependency_degraded True; then
        degraded_msg="$(tier_field e2e-rollout '{.status.conditions[?(@.type=="DependencyDegraded")].message}')"
        # Hold the outage past the healing threshold, to see no restart.
        sleep 30
        pods_during="$(restart_counts)"
        last_restart_during="$(tier_field e2e-rollout '{.status.lastRestart.pod}')"
        k scale deploy/redis --replicas=1 >/dev/null
        log "   Redis back; watching recovery"
        if wait_until 180 dependency_degraded False && wait_until 120 tier_phase_is e2e-rollout Ready; then
            if [[ "$pods_during" != "$pods_before" || "$last_restart_during" != "$last_restart_before" ]]; then
                record redis-outage FAIL "DependencyDegraded ($degraded_msg), but pods were restarted: $pods_before -> $pods_during (lastRestart '$last_restart_during')"
            else
                record redis-outage PASS "DependencyDegraded ($degraded_msg); no restart during 30 s of outage; Ready again after Redis returned"
            fi
        else
            dump_state
            record redis-outage FAIL "Redis returned but the tier did not recover (DependencyDegraded $(tier_field e2e-rollout '{.status.conditions[?(@.type=="DependencyDegraded")].status}'), phase $(tier_field e2e-rollout '{.status.phase}'))"
        fi
    else
        k scale deploy/redis --replicas=1 >/dev/null
        dump_state
        record redis-outage FAIL "Redis stopped, but DependencyDegraded stayed $(tier_field e2e-rollout '{.status.conditions[?(@.type=="DependencyDegraded")].status}' || echo '?') for 120 s"
    fi
fi

print_table
((failed == 0))
