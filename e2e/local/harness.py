"""Real processes on loopback for the local e2e suite: the herald sandbox,
herald agents (alone or as a fleet on one Redis), `redis-server` and the
webhook receiver, plus HTTP and bounded waiting.

Owns: starting each process with its output in a log file under the run's
temp dir, reading the address it announces, talking HTTP to it, and killing
every process it started (`Processes.kill_all`, also on SIGINT/SIGTERM).
Leaves: what to send and what to expect to `scenarios.py`.
Invariant: everything binds 127.0.0.1 (port 0 where the program supports it,
so there is no race for a port; redis-server gets a port just released by
the OS and is retried on another when it loses that race); every wait has a
deadline; no process outlives the suite, stopped (SIGSTOP) ones included.
Python 3 standard library only.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

# Test credentials: the sandbox accepts any token shaped <digits>:<secret>.
BOT_TOKEN = "123456:e2e-bot-token"
ADMIN_TOKEN = "e2e-admin-token"
WEBHOOK_KEY = "e2e-webhook-key"

HERE = os.path.dirname(os.path.abspath(__file__))


class Timeout(Exception):
    """A bounded wait ran out."""


class MissingTool(Exception):
    """A program the suite needs is not installed (a failure, never a skip)."""


class Deadline:
    """A scenario's time budget; every wait inside it is cut to what is left."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def wait(self, what, check, limit=None, every=0.2):
        """Poll `check` until it returns a truthy value and return that, or
        raise Timeout after `limit` seconds (or when the budget is spent)."""
        limit = self.left() if limit is None else min(limit, self.left())
        end = time.monotonic() + limit
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= end:
                raise Timeout("timed out after %.0fs waiting for %s" % (limit, what))
            time.sleep(every)


# ---------------------------------------------------------------- processes


class Proc:
    def __init__(self, name, popen, log_path):
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, lines=15):
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_line(self, marker, limit):
        """The first log line containing `marker`; fails early if the process dies."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            for line in self.log().splitlines():
                if marker in line:
                    return line
            if not self.alive():
                raise RuntimeError(
                    "%s exited (%s) before printing %r:\n%s"
                    % (self.name, self.popen.returncode, marker, self.tail())
                )
            time.sleep(0.05)
        raise Timeout("%s did not print %r within %ss" % (self.name, marker, limit))

    def kill9(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace=3.0):
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if not self.alive():
            return
        try:
            # A stopped process acts on nothing but SIGKILL until continued.
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        except ProcessLookupError:
            pass


class Processes:
    """Every child of the suite, so that all of them can be ended at exit."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path, env=None):
        full_env = dict(os.environ)
        full_env["NO_COLOR"] = "1"  # plain log files
        full_env.update(env or {})
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        finally:
            log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for p in self.procs:
            if p.alive():
                try:
                    # A stopped process acts on nothing but SIGKILL until continued.
                    p.popen.send_signal(signal.SIGCONT)
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 3
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)
        self.procs = [p for p in self.procs if p.alive()]


def exit_on_signals():
    """SIGTERM/SIGHUP unwind like Ctrl-C, so `finally` blocks kill the children."""

    def handler(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


# --------------------------------------------------------------------- HTTP


def http(method, url, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text); status 0 when nothing answered."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


# ----------------------------------------------------------------- programs


class Sandbox:
    """`herald sandbox` on a port of its own choosing."""

    def __init__(self, procs, herald, workdir, config_yaml=None):
        argv = [herald, "sandbox", "--port", "0"]
        if config_yaml:
            path = os.path.join(workdir, "sandbox.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(config_yaml)
            argv += ["-f", path]
        self.proc = procs.start(
            "sandbox", argv, os.path.join(workdir, "sandbox.log"), {"RUST_LOG": "warn"}
        )
        line = self.proc.wait_line("counters at http://", 30)
        self.url = line.split("counters at ", 1)[1].strip().rsplit("/sandbox/", 1)[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def counters(self):
        status, c = http("GET", self.url + "/sandbox/counters")
        return c if status == 200 and isinstance(c, dict) else {}

    def delivered(self):
        return self.counters().get("delivered", 0)

    def messages(self):
        """Every delivered message in arrival order (the log keeps 100,000)."""
        status, page = http("GET", self.url + "/sandbox/messages?since=0", timeout=30)
        return page.get("messages", []) if status == 200 and isinstance(page, dict) else []

    def set_faults(self, faults):
        status, body = http("POST", self.url + "/sandbox/faults", faults)
        if status != 200:
            raise RuntimeError("sandbox refused faults %r: %s %s" % (faults, status, body))


class WebhookReceiver:
    """webhook_receiver.py, recording to a JSON-lines file."""

    def __init__(self, procs, workdir, status=200):
        self.path = os.path.join(workdir, "webhook.jsonl")
        argv = [
            sys.executable,
            os.path.join(HERE, "webhook_receiver.py"),
            "--out",
            self.path,
            "--status",
            str(status),
        ]
        self.proc = procs.start(
            "webhook",
            argv,
            os.path.join(workdir, "webhook.log"),
            {"E2E_WEBHOOK_KEY": WEBHOOK_KEY},
        )
        line = self.proc.wait_line("listening on 127.0.0.1:", 15)
        self.port = int(line.rsplit(":", 1)[1])
        self.url = "http://127.0.0.1:%d/herald" % self.port

    def records(self):
        out = []
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        out.append(json.loads(line))
        except (OSError, ValueError):
            pass
        return out


class Agent:
    """`herald run -f DIR/config.yaml`, its store whatever the config names;
    `name` labels its logs (DIR/<name>-<start>.log), `env` is added to its
    environment."""

    def __init__(self, procs, herald, workdir, config_text, name="agent", env=None):
        self.procs = procs
        self.herald = herald
        self.dir = workdir
        self.name = name
        self.env = dict(env or {})
        self.config = os.path.join(workdir, "config.yaml")
        self.starts = 0
        self.write_config(config_text)
        self.start()

    def write_config(self, text):
        # Write then rename, so the watcher never reads a half-written file.
        tmp = self.config + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def start(self):
        self.starts += 1
        log = os.path.join(self.dir, "%s-%d.log" % (self.name, self.starts))
        env = {
            "HERALD_SECRET_BOT_TOKEN": BOT_TOKEN,
            "HERALD_SECRET_ADMIN_TOKEN": ADMIN_TOKEN,
            "HERALD_SECRET_HOOK_KEY": WEBHOOK_KEY,
            "RUST_LOG": "info",
            "HERALD_LOG_FORMAT": "text",
        }
        env.update(self.env)
        self.proc = self.procs.start(self.name, [self.herald, "run", "-f", self.config], log, env)
        line = self.proc.wait_line("herald agent on http://", 30)
        self.url = line[line.index("http://") :].split()[0]
        Deadline(30).wait("agent /readyz", lambda: http("GET", self.url + "/readyz")[0] == 200)

    def send(self, messages):
        """Accept `messages` in batches of 500; returns their ids in order."""
        ids = []
        for i in range(0, len(messages), 500):
            status, body = http(
                "POST", self.url + "/v1/messages", {"messages": messages[i : i + 500]}, timeout=30
            )
            if status != 202:
                raise RuntimeError("ingest answered %s: %s" % (status, body))
            ids += [a["id"] for a in body["accepted"]]
        return ids

    def message(self, msg_id):
        status, body = http("GET", self.url + "/v1/messages/" + msg_id)
        return body if status == 200 and isinstance(body, dict) else {}

    def states(self, ids):
        """{state: count} over `ids`."""
        out = {}
        for i in ids:
            s = self.message(i).get("state", "unknown")
            out[s] = out.get(s, 0) + 1
        return out

    def details(self):
        """`GET /healthz/details` as a dict ({} when it does not answer)."""
        status, body = http("GET", self.url + "/healthz/details")
        return body if status in (200, 503) and isinstance(body, dict) else {}

    def delivered_total(self):
        """This agent's `herald_messages_delivered_total`, summed over its labels."""
        status, text = http("GET", self.url + "/metrics")
        if status != 200 or not isinstance(text, str):
            return 0
        total = 0.0
        for line in text.splitlines():
            if line.startswith("herald_messages_delivered_total"):
                try:
                    total += float(line.rsplit(None, 1)[1])
                except (IndexError, ValueError):
                    pass
        return int(total)

    def admin(self, method, path, body=None):
        return http(
            method,
            self.url + "/admin" + path,
            body,
            headers={"Authorization": "Bearer " + ADMIN_TOKEN},
        )

    def cli(self, *args):
        """Run a herald client command against this agent: (exit code, stdout+stderr)."""
        r = subprocess.run(
            [self.herald, *args, "--url", self.url],
            env=dict(os.environ, HERALD_ADMIN_TOKEN=ADMIN_TOKEN),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.returncode, r.stdout + r.stderr


class RedisServer:
    """`redis-server` on 127.0.0.1, data in DIR/redis, log in DIR/redis.log.

    The port is one the OS just handed out and released; when another
    process takes it first, redis-server exits and a new port is tried."""

    def __init__(self, procs, workdir, appendonly=False, attempts=5):
        binary = shutil.which("redis-server")
        if not binary:
            raise MissingTool(
                "redis-server is not on PATH: the Redis scenarios need a real one and fail "
                "without it, they never skip (Debian/Ubuntu: apt-get install -y redis-server)"
            )
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        log = os.path.join(workdir, "redis.log")
        why = "no attempt"
        for _ in range(attempts):
            port = free_port()
            argv = [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "yes" if appendonly else "no",
                "--dir", self.dir,
            ]  # fmt: skip
            proc = procs.start("redis", argv, log)
            end = time.monotonic() + 10
            while proc.alive() and time.monotonic() < end and not redis_ping(port):
                time.sleep(0.05)
            if proc.alive() and redis_ping(port):
                self.proc, self.port = proc, port
                self.url = "redis://127.0.0.1:%d/" % port
                return
            why = "port %d: %s" % (port, proc.tail(3) or "no answer to PING within 10s")
            proc.stop()
        raise RuntimeError("redis-server did not start (%s)" % why)

    def pause(self):
        """SIGSTOP: Redis keeps its connections but answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def ping(self):
        return redis_ping(self.port)


def free_port():
    """A loopback port the OS just handed out (and that is free again now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port, timeout=0.5):
    """One inline PING over a plain socket; True on +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Fleet:
    """`n` agents of one tier on one Redis queue: agent i runs in
    DIR/e2e-agent-i with HERALD_POD_NAME=e2e-agent-i and reads the Redis URL
    from its secrets dir (secrets/redis/url)."""

    def __init__(self, procs, herald, workdir, sandbox_url, redis, n, partitions=16):
        self.partitions = partitions
        self.agents = []
        for i in range(n):
            name = "e2e-agent-%d" % i
            d = os.path.join(workdir, name)
            os.makedirs(os.path.join(d, "secrets", "redis"))
            with open(os.path.join(d, "secrets", "redis", "url"), "w", encoding="utf-8") as f:
                f.write(redis.url)
            config = fleet_agent_config(d, sandbox_url, n, partitions)
            self.agents.append(Agent(procs, herald, d, config, name, {"HERALD_POD_NAME": name}))

    def live(self):
        return [a for a in self.agents if a.proc.alive()]

    def details(self):
        return [a.details() for a in self.live()]

    def settled(self):
        """Every live agent sees all the others, each holds some partitions,
        and together they hold every partition."""
        d = self.details()
        n = len(d)
        fleets = [x.get("fleet") or {} for x in d]
        return (
            n > 0
            and all(f.get("live_agents") == n for f in fleets)
            and all((f.get("partitions_held") or 0) > 0 for f in fleets)
            and sum(f.get("partitions_held") or 0 for f in fleets) == self.partitions
        )

    def summary(self):
        """One line per live agent: name, live agents seen, partitions held,
        limit divisor, Redis status (for failure messages and details)."""
        out = []
        for d in self.details():
            f = d.get("fleet") or {}
            r = (d.get("dependencies") or {}).get("redis") or {}
            out.append(
                "%s: live %s, held %s/%s, divisor %s, redis %s"
                % (
                    f.get("agent"),
                    f.get("live_agents"),
                    f.get("partitions_held"),
                    f.get("partitions"),
                    f.get("limit_divisor"),
                    r.get("status"),
                )
            )
        return "; ".join(out) or "no agent answers"

    def send(self, messages, batch=100):
        """Accepts `messages` in batches taken in turn by each live agent;
        returns their ids in order."""
        agents = self.live()
        ids = []
        for k, i in enumerate(range(0, len(messages), batch)):
            ids += agents[k % len(agents)].send(messages[i : i + batch])
        return ids


# A fleet agent's lease: short, so that a lost agent's partitions move
# within seconds.
LEASE_TTL_S = 3


def fleet_agent_config(workdir, sandbox_url, replicas, partitions):
    """A fleet agent's config: tier `tg` on the Redis store, `replicas`
    agents, a RateLimitPolicy whose limiter lives in Redis and falls back to
    this agent's share of it while Redis is away."""
    return """apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: e2e}}
spec:
  listen: 127.0.0.1:0
  entryTier: tg
  storePath: {store}
  leaseTtl: {ttl}s
  adminTokenRef: {{name: admin, key: token}}
  secrets: {{dir: {secrets}, envPrefix: HERALD_SECRET_}}
  shutdownGrace: 5s
---
apiVersion: herald.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: bot-limits}}
spec:
  global: {{rate: 30, period: 1s, burst: 1}}
  perChat: {{rate: 1, period: 1s, burst: 1}}
  perGroup: {{rate: 20, period: 1m, burst: 1}}
  backend: redis
  fallback: local-share
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: tg}}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {{name: bot, key: token}}
    apiUrl: {api}
  priority: 200
  replicas: {replicas}
  rateLimitPolicyRef: {{name: bot-limits}}
  store:
    type: redis
    redis:
      urlSecretRef: {{name: redis, key: url}}
      partitions: {partitions}
""".format(
        store=os.path.join(workdir, "spill.redb"),
        ttl=LEASE_TTL_S,
        secrets=os.path.join(workdir, "secrets"),
        api=sandbox_url,
        replicas=replicas,
        partitions=partitions,
    )


def agent_config(workdir, sandbox_url, tier_extra="", extra_docs=""):
    """One Agent document and a Telegram tier `tg` aimed at the sandbox;
    `tier_extra` is appended to the tier's spec, `extra_docs` to the file."""
    return """apiVersion: herald.dev/v1alpha1
kind: Agent
metadata: {{name: e2e}}
spec:
  listen: 127.0.0.1:0
  entryTier: tg
  storePath: {store}
  adminTokenRef: {{name: admin, key: token}}
  secrets: {{dir: {secrets}, envPrefix: HERALD_SECRET_}}
  shutdownGrace: 5s
---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: tg}}
spec:
  channel: telegram
  telegram:
    tokenSecretRef: {{name: bot, key: token}}
    apiUrl: {api}
  priority: 200
{tier_extra}
{extra_docs}""".format(
        store=os.path.join(workdir, "queue.redb"),
        secrets=os.path.join(workdir, "secrets"),
        api=sandbox_url,
        tier_extra=tier_extra,
        extra_docs=extra_docs,
    )


def webhook_tier(url):
    return """---
apiVersion: herald.dev/v1alpha1
kind: DeliveryTier
metadata: {{name: hook}}
spec:
  channel: webhook
  webhook:
    url: {url}
    hmacSecretRef: {{name: hook, key: key}}
  priority: 100
""".format(url=url)


def rate_limit_policy(global_rate):
    """A tier field plus the RateLimitPolicy document it names."""
    return """  rateLimitPolicyRef: {{name: limits}}
---
apiVersion: herald.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limits}}
spec:
  global: {{rate: {rate}, period: 1s}}
  perChat: {{rate: 1, period: 1s}}
""".format(rate=global_rate)


def max_in_window(stamps_ns, window_ns=1_000_000_000):
    """Most stamps in any half-open window of `window_ns` (sorted input)."""
    best, lo = 0, 0
    for hi, t in enumerate(stamps_ns):
        while stamps_ns[lo] + window_ns <= t:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
