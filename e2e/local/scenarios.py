#!/usr/bin/env python3
"""The local e2e suite: herald's whole data path with real processes on
loopback, one fresh sandbox and agent (or a fleet of agents on a fresh
redis-server, or a webhook receiver beside them) per scenario.

Owns: the scenarios, their verdicts and the pass/fail table.
Leaves: process handling, HTTP and waiting to `harness.py`.
Invariant: each scenario runs under its own time budget and in its own temp
dir; every process it started is ended before the next one begins; the exit
status is 0 only when no scenario failed (skipped ones do not count).

Usage: scenarios.py --bin PATH/TO/herald [--only NAME,...] [--list]
Python 3 standard library only.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402 (after the line above on purpose)
from harness import Deadline, Timeout, agent_config, max_in_window  # noqa: E402

# Telegram's limits, as the sandbox judges them by default.
PER_BOT_PER_SECOND = 30
PER_CHAT_PER_SECOND = 1
# The Redis scenarios' queue partitions.
FLEET_PARTITIONS = 16


class Failed(Exception):
    """A scenario's expectation did not hold."""


def check(ok, message):
    if not ok:
        raise Failed(message)


class Context:
    """What a scenario gets: its dir, its budget, and constructors that
    register every process with the suite."""

    def __init__(self, herald, workdir, budget):
        self.herald = herald
        self.dir = workdir
        self.deadline = Deadline(budget)
        self.procs = harness.Processes()
        self.notes = []

    def sandbox(self, config_yaml=None):
        return harness.Sandbox(self.procs, self.herald, self.dir, config_yaml)

    def agent(self, config_text):
        return harness.Agent(self.procs, self.herald, self.dir, config_text)

    def webhook(self):
        return harness.WebhookReceiver(self.procs, self.dir)

    def redis(self):
        return harness.RedisServer(self.procs, self.dir)

    def fleet(self, sandbox, redis, n):
        """`n` agents on `redis`, waited for until they have split the
        partitions; returns (fleet, seconds from the first start to settled)."""
        started = time.monotonic()
        fleet = harness.Fleet(
            self.procs, self.herald, self.dir, sandbox.url, redis, n, FLEET_PARTITIONS
        )
        try:
            self.wait("the %d agents to split the partitions" % n, fleet.settled, limit=30, every=0.2)
        except Timeout as e:
            raise Failed("%s: %s" % (e, fleet.summary()))
        return fleet, time.monotonic() - started

    def wait(self, what, check_fn, limit=None, every=0.2):
        return self.deadline.wait(what, check_fn, limit, every)


def texts_of(messages):
    return [m.get("text", "") for m in messages]


# ----------------------------------------------------------------- scenarios


def limits(ctx):
    """A burst of 300 messages over 30 chats against the strict sandbox:
    all delivered once, in per-chat order, with no 429 and no 1-s window
    above 30."""
    n, chats = 300, 30
    sb = ctx.sandbox()
    agent = ctx.agent(agent_config(ctx.dir, sb.url))
    sent = [{"chat_id": 2000 + i % chats, "text": "limits-%d" % i} for i in range(n)]
    ids = agent.send(sent)
    check(len(ids) == n, "accepted %d of %d" % (len(ids), n))
    ctx.wait("%d deliveries at the sandbox" % n, lambda: sb.delivered() >= n, limit=60, every=0.5)
    ctx.wait(
        "every message delivered according to the agent",
        lambda: agent.states(ids).get("delivered") == n,
        limit=20,
        every=1,
    )
    c = sb.counters()
    got = sb.messages()
    texts = texts_of(got)
    missing = {m["text"] for m in sent} - set(texts)
    check(not missing, "never reached the sandbox: %s" % sorted(missing)[:5])
    check(len(texts) == n, "%d deliveries for %d messages (duplicates)" % (len(texts), n))
    check(c.get("rejected_429") == 0, "429s: %s" % c.get("rejected_429_by_cause"))
    window = max_in_window(sorted(m["arrival_ns"] for m in got))
    check(window <= PER_BOT_PER_SECOND, "%d sends in one 1-s window" % window)
    check(
        c.get("max_per_bot_per_1s", 99) <= PER_BOT_PER_SECOND
        and c.get("max_per_chat_per_1s", 99) <= PER_CHAT_PER_SECOND,
        "sandbox maxima: bot %s/s, chat %s/s"
        % (c.get("max_per_bot_per_1s"), c.get("max_per_chat_per_1s")),
    )
    last = {}
    for m in got:
        k = int(m["text"].rsplit("-", 1)[1])
        check(last.get(m["chat_id"], -1) < k, "chat %s out of order at %s" % (m["chat_id"], k))
        last[m["chat_id"]] = k
    span = (got[-1]["arrival_ns"] - got[0]["arrival_ns"]) / 1e9
    return "%d/%d delivered over %.1fs, 0x429, max 1-s window %d, max per chat %s/s" % (
        n,
        n,
        span,
        window,
        c.get("max_per_chat_per_1s"),
    )


def failover(ctx):
    """The sandbox goes dark: every message fails over to the webhook tier,
    whose receiver records it (signed); none is lost."""
    n, chats = 100, 50
    sb = ctx.sandbox()
    hook = ctx.webhook()
    agent = ctx.agent(
        agent_config(
            ctx.dir, sb.url, "  fallbackTiers: [hook]\n", harness.webhook_tier(hook.url)
        )
    )
    sb.set_faults({"dark": True})
    ids = agent.send([{"chat_id": 3000 + i % chats, "text": "failover-%d" % i} for i in range(n)])

    def received():
        return {r.get("message_id") for r in hook.records()}

    ctx.wait("all %d messages at the webhook receiver" % n, lambda: set(ids) <= received(), limit=90, every=0.5)
    ctx.wait(
        "every message delivered according to the agent",
        lambda: agent.states(ids).get("delivered") == n,
        limit=20,
        every=1,
    )
    tiers = {agent.message(i).get("tier") for i in ids}
    check(tiers == {"hook"}, "delivered through tiers %s" % sorted(map(str, tiers)))
    records = hook.records()
    by_id = [r for r in records if r.get("message_id") in set(ids)]
    unsigned = [r["message_id"] for r in by_id if r.get("signature_ok") is not True]
    check(not unsigned, "bad or missing signature on %s" % unsigned[:3])
    bodies = {
        str((r.get("json") or {}).get("params", {}).get("text")) for r in by_id
    }
    missing = {"failover-%d" % i for i in range(n)} - bodies
    check(not missing, "texts missing from the webhook bodies: %s" % sorted(missing)[:5])
    c = sb.counters()
    check(c.get("delivered") == 0, "the dark sandbox delivered %s" % c.get("delivered"))
    check(c.get("dark_502", 0) > 0, "the sandbox saw no attempt while dark")

    # Telegram is back. The breaker closes only through probe sends, so a
    # trickle of traffic keeps coming, as producers' would.
    sb.set_faults({})
    back_at = time.monotonic()
    trickle = []

    def telegram_again():
        trickle.extend(agent.send([{"chat_id": 3500 + len(trickle), "text": "after-%d" % len(trickle)}]))
        return sb.delivered() > 0

    ctx.wait("the Telegram tier to take traffic again", telegram_again, limit=45, every=0.5)
    recovered = time.monotonic() - back_at
    ctx.wait(
        "every message sent during the recovery delivered",
        lambda: agent.states(trickle).get("delivered") == len(trickle),
        limit=30,
        every=1,
    )
    arrived = set(texts_of(sb.messages())) | {
        str((r.get("json") or {}).get("params", {}).get("text")) for r in hook.records()
    }
    lost = {"after-%d" % i for i in range(len(trickle))} - arrived
    check(not lost, "lost during the recovery: %s" % sorted(lost)[:5])
    return (
        "%d/%d at the webhook (%d POSTs, all signed), %d attempts refused while dark; "
        "Telegram used again %.0fs after the outage, %d recovery messages all delivered"
        % (len(set(ids) & received()), n, len(by_id), c.get("dark_502", 0), recovered, len(trickle))
    )


def kill_9(ctx):
    """kill -9 of the agent mid-drain, restart on the same store: every
    accepted message is delivered; duplicates at most what one second of
    sends could have had in flight."""
    n, chats = 400, 80
    sb = ctx.sandbox()
    agent = ctx.agent(agent_config(ctx.dir, sb.url))
    ids = agent.send([{"chat_id": 4000 + i % chats, "text": "kill-%d" % i} for i in range(n)])
    ctx.wait("a third of the burst delivered", lambda: sb.delivered() >= n // 3, limit=40, every=0.2)
    _, details = harness.http("GET", agent.url + "/healthz/details")
    in_flight = ((details or {}).get("dependencies", {}).get("store", {}) or {}).get("in_flight", "?")
    agent.proc.kill9()
    at_kill = sb.delivered()
    check(at_kill < n, "everything was delivered before the kill (%d)" % at_kill)
    agent.start()

    def all_arrived():
        return len(set(texts_of(sb.messages())) & {"kill-%d" % i for i in range(n)}) == n

    ctx.wait("every message at the sandbox after the restart", all_arrived, limit=60, every=1)
    ctx.wait(
        "every message delivered according to the restarted agent",
        lambda: agent.states(ids).get("delivered") == n,
        limit=20,
        every=1,
    )
    texts = texts_of(sb.messages())
    duplicates = len(texts) - len(set(texts))
    check(duplicates <= PER_BOT_PER_SECOND, "%d duplicates" % duplicates)
    c = sb.counters()
    check(c.get("rejected_429") == 0, "429s after the restart: %s" % c.get("rejected_429_by_cause"))
    return "killed at %d/%d delivered (%s in flight); after restart %d/%d, %d duplicate(s), 0x429" % (
        at_kill,
        n,
        in_flight,
        n,
        n,
        duplicates,
    )


def dead_letters(ctx):
    """A chat that blocked the bot (403) ends as a dead letter whose reason
    shows in the admin API and `herald dlq list`; `herald dlq retry`
    re-queues it, and with the block lifted it is delivered."""
    blocked_chat = 4242
    sb = ctx.sandbox("faults:\n  blocked_chats: [%d]\n" % blocked_chat)
    agent = ctx.agent(agent_config(ctx.dir, sb.url))
    others = agent.send([{"chat_id": 5000 + i, "text": "dlq-ok-%d" % i} for i in range(5)])
    [blocked] = agent.send([{"chat_id": blocked_chat, "text": "dlq-blocked"}])
    ctx.wait(
        "the blocked chat's message to be dead-lettered",
        lambda: agent.message(blocked).get("state") == "dead_lettered",
        limit=30,
    )
    ctx.wait(
        "the other messages delivered",
        lambda: agent.states(others).get("delivered") == len(others),
        limit=20,
    )
    detail = agent.message(blocked)
    reason = str(detail.get("dead_reason") or "")
    check(reason, "no dead_reason on %s" % detail)
    why = (reason + " " + str(detail.get("last_error"))).lower()
    check(
        any(w in why for w in ("block", "403", "forbidden", "unreachable")),
        "the reason does not name the block: %r" % reason,
    )
    status, listing = agent.admin("GET", "/dlq")
    listed = [d for d in (listing or {}).get("dead_letters", []) if d.get("id") == blocked]
    check(status == 200 and listed, "GET /admin/dlq (%s) does not list %s" % (status, blocked))
    check(listed[0].get("dead_reason") == reason, "admin API shows %r" % listed[0].get("dead_reason"))
    code, out = agent.cli("dlq", "list")
    check(code == 0 and blocked in out, "herald dlq list (exit %d) does not show it:\n%s" % (code, out))
    sb.set_faults({})
    code, out = agent.cli("dlq", "retry", "--id", blocked)
    check(code == 0, "herald dlq retry exited %d:\n%s" % (code, out))
    ctx.wait(
        "the retried message delivered",
        lambda: agent.message(blocked).get("state") == "delivered",
        limit=30,
    )
    arrived = [m for m in sb.messages() if m.get("chat_id") == blocked_chat]
    check([m["text"] for m in arrived] == ["dlq-blocked"], "the sandbox got %s" % arrived)
    status, listing = agent.admin("GET", "/dlq")
    check(
        not [d for d in (listing or {}).get("dead_letters", []) if d.get("id") == blocked],
        "still listed as dead after delivery",
    )
    return "dead-lettered (%s), listed by API and CLI, retried, delivered" % reason


def reload(ctx):
    """Editing the config file to lower the global rate from 30/s to 10/s
    shows in what the sandbox receives within a few seconds."""
    high, low = 30, 10
    sb = ctx.sandbox()
    agent = ctx.agent(agent_config(ctx.dir, sb.url, harness.rate_limit_policy(high)))
    agent.send([{"chat_id": 6000 + i, "text": "reload-%d" % i} for i in range(600)])
    ctx.wait("the drain to run at full rate", lambda: sb.delivered() >= 3 * high, limit=20)
    reloaded_at = time.time()
    agent.write_config(agent_config(ctx.dir, sb.url, harness.rate_limit_policy(low)))
    ctx.wait("the agent to log the reload", lambda: "configuration reloaded" in agent.proc.log(), limit=10)
    settle, measure = 3.0, 4.0
    remaining = reloaded_at + settle + measure + 0.5 - time.time()
    check(remaining < ctx.deadline.left(), "no time left to measure")
    time.sleep(max(0.0, remaining))
    got = sb.messages()
    at_ms = [m["arrival_unix_ms"] / 1000.0 for m in got]
    before = [t for t in at_ms if reloaded_at - 2.0 <= t < reloaded_at]
    after = [t for t in at_ms if reloaded_at + settle <= t < reloaded_at + settle + measure]
    rate_before, rate_after = len(before) / 2.0, len(after) / measure
    # When the new rate took hold: the last arrival whose trailing second
    # still held more than `low` sends.
    stamps = sorted(m["arrival_ns"] for m in got)
    offset = at_ms[-1] - stamps[-1] / 1e9 if stamps else 0.0
    last_over, lo = reloaded_at, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] + 1_000_000_000 <= t:
            lo += 1
        if hi - lo + 1 > low + 1:
            last_over = max(last_over, t / 1e9 + offset)
    took = last_over - reloaded_at
    check(rate_before >= 0.8 * high, "only %.1f/s before the reload" % rate_before)
    check(rate_after <= low + 0.5, "still %.1f/s %.0fs after the reload" % (rate_after, settle))
    check(rate_after >= 0.7 * low, "rate collapsed to %.1f/s" % rate_after)
    check(took <= settle, "windows above %d/s until %.1fs after the reload" % (low + 1, took))
    check(sb.counters().get("rejected_429") == 0, "429s during the reload")
    return "%.1f/s before, %.1f/s from %.0fs after the edit (settled after %.1fs)" % (
        rate_before,
        rate_after,
        settle,
        max(0.0, took),
    )


# --------------------------------------------------------------------- Redis
# Several `herald run` agents of one tier on one real redis-server: one shared
# queue (16 partitions, leased), one shared limiter (30/s for the bot), and a
# local share of the limit while Redis does not answer.


def fleet_messages(prefix, n, chats, first_chat):
    """`n` messages over `chats` chats; texts `<prefix>-<i>` in accept order."""
    return [{"chat_id": first_chat + i % chats, "text": "%s-%d" % (prefix, i)} for i in range(n)]


def distinct_arrived(sb, sent):
    return len(set(texts_of(sb.messages())) & {m["text"] for m in sent})


def check_fleet_delivery(sb, sent, max_duplicates):
    """Every message of `sent` reached the sandbox, the first arrival of each
    chat's messages keeps accept order (a repeat after a takeover may come
    later), within the bot's and the chats' limits and without a 429.
    Returns (arrivals, counters, max 1-s window, duplicates)."""
    got = sb.messages()
    texts = texts_of(got)
    missing = {m["text"] for m in sent} - set(texts)
    check(not missing, "%d never reached the sandbox: %s" % (len(missing), sorted(missing)[:5]))
    duplicates = len(texts) - len(set(texts))
    check(
        duplicates <= max_duplicates,
        "%d duplicate deliveries (at most %d allowed)" % (duplicates, max_duplicates),
    )
    seen, last = set(), {}
    for m in got:
        if m["text"] in seen:
            continue
        seen.add(m["text"])
        k = int(m["text"].rsplit("-", 1)[1])
        check(last.get(m["chat_id"], -1) < k, "chat %s out of order at %s" % (m["chat_id"], k))
        last[m["chat_id"]] = k
    c = sb.counters()
    check(c.get("rejected_429") == 0, "429s: %s" % c.get("rejected_429_by_cause"))
    window = max_in_window(sorted(m["arrival_ns"] for m in got))
    check(window <= PER_BOT_PER_SECOND, "%d sends in one 1-s window" % window)
    check(
        c.get("max_per_bot_per_1s", 99) <= PER_BOT_PER_SECOND
        and c.get("max_per_chat_per_1s", 99) <= PER_CHAT_PER_SECOND,
        "sandbox maxima: bot %s/s, chat %s/s"
        % (c.get("max_per_bot_per_1s"), c.get("max_per_chat_per_1s")),
    )
    return got, c, window, duplicates


def wait_all_arrived(ctx, sb, sent):
    ctx.wait(
        "%d messages at the sandbox" % len(sent),
        lambda: distinct_arrived(sb, sent) == len(sent),
        limit=60,
        every=0.5,
    )


def all_delivered_state(ctx, agent, ids):
    """Waits until `agent` (any of the fleet: the queue is shared) reports
    every id `delivered`."""
    ctx.wait(
        "every message delivered according to %s" % agent.name,
        lambda: agent.states(ids).get("delivered") == len(ids),
        limit=20,
        every=1,
    )


def span_of(got):
    return max(1e-9, (got[-1]["arrival_ns"] - got[0]["arrival_ns"]) / 1e9)


def redis_shared_limit(ctx):
    """Two agents on one Redis drain 450 messages accepted by both: all
    delivered once, in per-chat order, both agents deliver, and the bot
    stays within 30/s in total with no 429."""
    n, chats = 450, 45
    redis = ctx.redis()
    sb = ctx.sandbox()
    fleet, settled = ctx.fleet(sb, redis, 2)
    held = [(d.get("fleet") or {}).get("partitions_held") for d in fleet.details()]
    sent = fleet_messages("shared", n, chats, 7000)
    ids = fleet.send(sent)
    check(len(ids) == n, "accepted %d of %d" % (len(ids), n))
    wait_all_arrived(ctx, sb, sent)
    all_delivered_state(ctx, fleet.agents[1], ids)
    got, c, window, _ = check_fleet_delivery(sb, sent, max_duplicates=0)
    by_agent = [a.delivered_total() for a in fleet.agents]
    check(all(k > 0 for k in by_agent), "not every agent delivered: %s" % by_agent)
    check(sum(by_agent) == n, "the agents count %s deliveries for %d messages" % (by_agent, n))
    span = span_of(got)
    return (
        "%d/%d over %.1fs (%.1f msg/s, %.0f%% of 30/s), delivered %s by 2 agents holding %s "
        "partitions (settled %.1fs after start), 0x429, max 1-s window %d, max per chat %s/s"
        % (n, n, span, (n - 1) / span, 100 * (n - 1) / span / PER_BOT_PER_SECOND,
           "+".join(map(str, by_agent)), "+".join(map(str, held)), settled, window,
           c.get("max_per_chat_per_1s"))
    )  # fmt: skip


def redis_agent_loss(ctx):
    """kill -9 of one of three agents mid-drain: the two survivors take all
    16 partitions once its leases run out (3 s), and every accepted message
    is delivered, within the limits, with no 429; duplicates at most one
    second of sends."""
    n, chats = 300, 60
    redis = ctx.redis()
    sb = ctx.sandbox()
    fleet, _ = ctx.fleet(sb, redis, 3)
    sent = fleet_messages("loss", n, chats, 8000)
    ids = fleet.send(sent)
    check(len(ids) == n, "accepted %d of %d" % (len(ids), n))
    ctx.wait("60 deliveries before the kill", lambda: sb.delivered() >= 60, limit=30, every=0.1)
    victim = fleet.agents[1]
    victim_held = (victim.details().get("fleet") or {}).get("partitions_held")
    victim.proc.kill9()
    killed_at = time.monotonic()
    at_kill = sb.delivered()
    check(at_kill < n, "everything was delivered before the kill (%d)" % at_kill)
    try:
        ctx.wait("the survivors to take every partition", fleet.settled, limit=20, every=0.1)
    except Timeout as e:
        raise Failed("%s: %s" % (e, fleet.summary()))
    takeover = time.monotonic() - killed_at
    after = [(d.get("fleet") or {}).get("partitions_held") for d in fleet.details()]
    wait_all_arrived(ctx, sb, sent)
    all_delivered_state(ctx, fleet.live()[0], ids)
    got, c, window, duplicates = check_fleet_delivery(sb, sent, max_duplicates=PER_BOT_PER_SECOND)
    return (
        "killed %s (%s partitions) at %d/%d delivered; the 2 survivors held all %d (%s) "
        "%.1fs after the kill; %d/%d delivered over %.1fs (%.1f msg/s), %d duplicate(s), "
        "0x429, max 1-s window %d"
        % (victim.name, victim_held, at_kill, n, FLEET_PARTITIONS, "+".join(map(str, after)),
           takeover, n, n, span_of(got), (len(got) - 1) / span_of(got), duplicates, window)
    )  # fmt: skip


def redis_outage(ctx):
    """redis-server frozen (SIGSTOP) for 8 s mid-drain, then continued: the
    agents switch to their local share of the limit and send until their
    leases lapse (3 s), then return to the shared queue; messages sent to
    each agent meanwhile are accepted into its spill and delivered once
    after; every message delivered, no 429, no 1-s window above 30, Redis
    ok again on both."""
    n, chats, frozen, lease = 450, 45, 8.0, harness.LEASE_TTL_S
    redis = ctx.redis()
    sb = ctx.sandbox()
    fleet, _ = ctx.fleet(sb, redis, 2)
    sent = fleet_messages("outage", n, chats, 9000)
    ids = fleet.send(sent)
    check(len(ids) == n, "accepted %d of %d" % (len(ids), n))
    ctx.wait("60 deliveries before the outage", lambda: sb.delivered() >= 60, limit=30, every=0.1)
    check(ctx.deadline.left() > frozen + 30, "no time left for the outage")
    redis.pause()
    paused_at, paused_wall = time.monotonic(), time.time()
    at_pause = sb.delivered()
    # Ingest during the outage: each agent gets its own chats (per-chat
    # order is promised per agent); its first batch waits out one Redis
    # command timeout (5 s) before spilling, so they run alongside.
    spilled = {
        a.name: [
            {"chat_id": 9100 + 10 * k + i % 10, "text": "spill%d-%d" % (k, i)} for i in range(20)
        ]
        for k, a in enumerate(fleet.agents)
    }
    spill_ids = {}

    def post(agent):
        try:
            spill_ids[agent.name] = agent.send(spilled[agent.name])
        except Exception as e:  # noqa: BLE001 (reported below)
            spill_ids[agent.name] = e

    posts = [threading.Thread(target=post, args=(a,)) for a in fleet.agents]
    for t in posts:
        t.start()
    # What each agent's readyz says while Redis is away.
    modes = {a.name: set() for a in fleet.agents}
    ingest = {a.name: set() for a in fleet.agents}
    try:
        while time.monotonic() - paused_at < frozen:
            for a in fleet.agents:
                _, body = harness.http("GET", a.url + "/readyz", timeout=2)
                if isinstance(body, dict):
                    modes[a.name].add(body.get("limiter"))
                    ingest[a.name].add(body.get("ingest"))
            time.sleep(0.5)
        for t in posts:
            t.join(timeout=15)
    finally:
        redis.resume()
    resumed_at, resumed_wall = time.monotonic(), time.time()
    held_out = resumed_at - paused_at
    lost = [k for k, v in sorted(modes.items()) if "local-share" not in v]
    check(not lost, "%s never reported limiter local-share while Redis was stopped" % lost)
    for a in fleet.agents:
        got_ids = spill_ids.get(a.name)
        check(
            isinstance(got_ids, list) and len(got_ids) == 20,
            "%s did not accept during the outage: %s" % (a.name, got_ids),
        )
        check("spill" in ingest[a.name], "%s never reported ingest spill: %s" % (a.name, ingest[a.name]))
    spill_sent = [m for a in fleet.agents for m in spilled[a.name]]
    ids += [i for a in fleet.agents for i in spill_ids[a.name]]
    sent = sent + spill_sent

    def redis_ok_everywhere():
        d = fleet.details()
        return len(d) == 2 and all(
            ((x.get("dependencies") or {}).get("redis") or {}).get("status") == "ok" for x in d
        )

    try:
        ctx.wait("both agents to report Redis ok", redis_ok_everywhere, limit=30, every=0.2)
    except Timeout as e:
        raise Failed("%s: %s" % (e, fleet.summary()))
    back = time.monotonic() - resumed_at
    wait_all_arrived(ctx, sb, sent)
    all_delivered_state(ctx, fleet.agents[0], ids)
    try:
        ctx.wait("the fleet to settle again", fleet.settled, limit=20)
    except Timeout as e:
        raise Failed("%s: %s" % (e, fleet.summary()))
    # Only what was sent while Redis could not record it may be sent twice.
    at_ms = [m["arrival_unix_ms"] / 1000.0 for m in sb.messages()]
    early = sum(1 for t in at_ms if paused_wall <= t < paused_wall + lease)
    late = sum(1 for t in at_ms if paused_wall + lease <= t < resumed_wall)
    got, c, window, duplicates = check_fleet_delivery(sb, sent, max_duplicates=early + late)
    arrivals = texts_of(got)
    twice = [m["text"] for m in spill_sent if arrivals.count(m["text"]) != 1]
    check(not twice, "spilled messages not delivered exactly once: %s" % twice[:5])
    first_after = min((t for t in at_ms if t >= resumed_wall), default=resumed_wall) - resumed_wall
    return (
        "Redis stopped at %d/%d for %.1fs: both agents went local-share; %d sent in its "
        "first %.0fs (%.1f/s), %d after the leases lapsed; %d accepted into the spills meanwhile, "
        "each delivered once; Redis ok on both %.1fs and sending again %.1fs after SIGCONT; "
        "%d/%d delivered, %d duplicate(s), 0x429, max 1-s window %d"
        % (at_pause, n, held_out, early, lease, early / lease, late, len(spill_sent), back,
           first_after, len(sent), len(sent), duplicates, window)
    )  # fmt: skip


# -------------------------------------------------------------------- runner

# (name, function, time budget in seconds, skip reason or None)
SCENARIOS = [
    ("limits", limits, 75, None),
    ("failover", failover, 100, None),
    ("kill-9", kill_9, 100, None),
    ("dead-letters", dead_letters, 75, None),
    ("reload", reload, 45, None),
    ("redis-shared-limit", redis_shared_limit, 90, None),
    ("redis-agent-loss", redis_agent_loss, 90, None),
    ("redis-outage", redis_outage, 90, None),
]


def run_one(herald, root, name, fn, budget, keep):
    workdir = os.path.join(root, name)
    os.makedirs(os.path.join(workdir, "secrets"))
    ctx = Context(herald, workdir, budget)
    started = time.monotonic()
    try:
        details = fn(ctx)
        result = "PASS"
    except (Failed, Timeout, harness.MissingTool) as e:
        result, details = "FAIL", str(e)
    except Exception as e:  # noqa: BLE001 (a crash is a failed scenario, not a crashed suite)
        result, details = "FAIL", "%s: %s" % (type(e).__name__, e)
        traceback.print_exc()
    finally:
        logs = [(p.name, p.log_path, p.tail()) for p in ctx.procs.procs]
        ctx.procs.kill_all()
    elapsed = time.monotonic() - started
    if result == "FAIL":
        for who, path, tail in logs:
            if tail:
                print("  --- last lines of %s (%s):" % (who, path))
                print("    " + tail.replace("\n", "\n    "))
    elif not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result, elapsed, details


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        if r is rows[0]:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description="herald local e2e suite")
    parser.add_argument("--bin", required=True, help="the herald binary")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--keep", action="store_true", help="keep every scenario's temp dir")
    args = parser.parse_args()

    if args.list:
        for name, fn, budget, skip in SCENARIOS:
            doc = (fn.__doc__ or "").split("\n")[0] if fn else "SKIP: " + skip
            print("%-20s %s" % (name, doc))
        return 0
    herald = os.path.abspath(args.bin)
    if not os.access(herald, os.X_OK):
        print("e2e/local: %s is not an executable herald binary (cargo build first)" % herald)
        return 2
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = wanted - {s[0] for s in SCENARIOS}
    if unknown:
        print("e2e/local: unknown scenario(s): %s" % ", ".join(sorted(unknown)))
        return 2

    harness.exit_on_signals()
    root = tempfile.mkdtemp(prefix="herald-e2e-")
    rows = [("scenario", "result", "time", "details")]
    failed = 0
    suite_start = time.monotonic()
    try:
        for name, fn, budget, skip in SCENARIOS:
            if wanted and name not in wanted:
                continue
            if skip:
                rows.append((name, "SKIP", "-", skip))
                continue
            print("== %s" % name, flush=True)
            result, elapsed, details = run_one(herald, root, name, fn, budget, args.keep)
            failed += result == "FAIL"
            print("   %s in %.1fs: %s" % (result, elapsed, details), flush=True)
            rows.append((name, result, "%.1fs" % elapsed, details))
    except KeyboardInterrupt:
        print("e2e/local: interrupted; children stopped")
        return 130
    finally:
        if not failed and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    print()
    total = time.monotonic() - suite_start
    ran = sum(1 for r in rows[1:] if r[1] != "SKIP")
    print(
        "e2e/local: %d passed, %d failed, %d skipped in %.0fs%s"
        % (ran - failed, failed, len(rows) - 1 - ran, total, "" if not failed else "; logs kept in " + root)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
