//! The bad-document table: documents a user could write, each wrong in one
//! way, with the field path an answer must name. `tests/validate.rs` checks
//! that `herald validate` names it (and its line); `tests/control_plane.rs`
//! checks that a real API server refuses the same document naming the same
//! path, so the CRDs' schema and CEL rules and herald's own validation
//! cannot drift apart.
#![allow(dead_code)]

pub const RLP: &str =
    "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: p\n";
pub const CBP: &str =
    "apiVersion: herald.dev/v1alpha1\nkind: CircuitPolicy\nmetadata:\n  name: c\n";
pub const DGP: &str =
    "apiVersion: herald.dev/v1alpha1\nkind: DegradationProfile\nmetadata:\n  name: d\n";
pub const TIER: &str =
    "apiVersion: herald.dev/v1alpha1\nkind: DeliveryTier\nmetadata:\n  name: t\n";
pub const TG: &str =
    "spec:\n  channel: telegram\n  telegram:\n    tokenSecretRef: {name: s, key: k}\n";

/// Every bad document of the table, in the order a reader meets the kinds.
pub fn cases() -> Vec<BadDocument> {
    vec![
        case("per-chat above global", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  perChat:\n    rate: 40\n    period: 1s\n"), "spec.perChat.rate", Some(8), Server::Refuses),
        case("per-group above global", format!("{RLP}spec:\n  global: {{rate: 1, period: 1m}}\n  perChat: {{rate: 1, period: 1m}}\n  perGroup: {{rate: 20, period: 1m}}\n"), "spec.perGroup.rate", None, Server::Refuses),
        case("burst zero", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s, burst: 0}}\n"), "spec.global.burst", Some(6), Server::Refuses),
        case("rate is a string", format!("{RLP}spec:\n  global: {{rate: fast, period: 1s}}\n"), "spec.global.rate", None, Server::Refuses),
        case("bad duration", format!("{RLP}spec:\n  global: {{rate: 30, period: 1 second}}\n"), "spec.global.period", None, Server::Refuses),
        case("zero period", format!("{RLP}spec:\n  global: {{rate: 30, period: 0s}}\n"), "spec.global.period", None, Server::Refuses),
        case("unknown field", format!("{RLP}spec:\n  global: {{rate: 30, period: 1s}}\n  turbo: true\n"), "spec.turbo", Some(7), Server::Refuses),
        case("unknown backend", format!("{RLP}spec:\n  backend: etcd\n"), "spec.backend", Some(6), Server::Refuses),
        case("guard too large", format!("{RLP}spec:\n  pacing: {{guardPercent: 50}}\n"), "spec.pacing.guardPercent", None, Server::Refuses),
        case("retry maxDelay below initialDelay", format!("{CBP}spec:\n  retry:\n    initialDelay: 10s\n    maxDelay: 1s\n"), "spec.retry.maxDelay", Some(8), Server::Refuses),
        case("failure threshold over 100", format!("{CBP}spec:\n  breaker: {{failureRateThreshold: 150}}\n"), "spec.breaker.failureRateThreshold", None, Server::Refuses),
        case("max open below open", format!("{CBP}spec:\n  breaker: {{openDuration: 20s, maxOpenDuration: 16s}}\n"), "spec.breaker.maxOpenDuration", None, Server::Refuses),
        case("unknown jitter", format!("{CBP}spec:\n  retry: {{jitter: wobbly}}\n"), "spec.retry.jitter", None, Server::Refuses),
        case("duplicate bulkhead", format!("{CBP}spec:\n  bulkheads:\n    - {{messageType: a, maxConcurrent: 1}}\n    - {{messageType: a, maxConcurrent: 2}}\n"), "spec.bulkheads[1]", Some(8), Server::Refuses),
        case("overall below per-attempt", format!("{CBP}spec:\n  timeouts: {{perAttempt: 1m, overall: 10s}}\n"), "spec.timeouts.overall", None, Server::Refuses),
        case("levels out of order", format!("{DGP}spec:\n  levels:\n    - level: SEVERE\n      entry: {{queueDepth: 10}}\n    - level: MINOR\n      entry: {{queueDepth: 5}}\n"), "spec.levels", Some(6), Server::Refuses),
        case("exit above entry", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{queueDepth: 10}}\n      exit: {{queueDepth: 20}}\n"), "spec.levels[0].exit.queueDepth", Some(9), Server::Refuses),
        case("exit age above entry age", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{oldestAge: 1m}}\n      exit: {{oldestAge: 2m}}\n"), "spec.levels[0].exit.oldestAge", None, Server::Refuses),
        case("level without entry threshold", format!("{DGP}spec:\n  levels:\n    - level: MINOR\n      entry: {{}}\n"), "spec.levels[0].entry", None, Server::Refuses),
        case("unknown level", format!("{DGP}spec:\n  levels:\n    - level: APOCALYPSE\n      entry: {{queueDepth: 1}}\n"), "spec.levels[0].level", None, Server::Refuses),
        case("telegram without token", format!("{TIER}spec:\n  channel: telegram\n"), "spec.telegram", None, Server::Refuses),
        case("webhook without url", format!("{TIER}spec:\n  channel: webhook\n  webhook: {{}}\n"), "spec.webhook", None, Server::Refuses),
        case("spool without path", format!("{TIER}spec:\n  channel: spool\n"), "spec.spool", None, Server::Refuses),
        case("replicas without redis", format!("{TIER}{TG}  replicas: 3\n"), "spec.store.type", None, Server::Refuses),
        case("canary weights not increasing", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 50}}, {{weight: 10}}, {{weight: 100}}]\n"), "spec.rollout.steps", None, Server::Refuses),
        case("canary not ending at 100", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 10}}, {{weight: 50}}]\n"), "spec.rollout.steps", None, Server::Refuses),
        case("canary weight over 100", format!("{TIER}{TG}  store: {{type: redis, redis: {{urlSecretRef: {{name: r, key: u}}}}}}\n  rollout:\n    steps: [{{weight: 150}}]\n"), "spec.rollout.steps[0].weight", None, Server::Refuses),
        case("redis store without settings", format!("{TIER}{TG}  store: {{type: redis}}\n"), "spec.store.redis", None, Server::Refuses),
        case("falls back to itself", format!("{TIER}{TG}  fallbackTiers: [t]\n"), "spec.fallbackTiers", None, Server::Refuses),
        case("dangling policy reference", format!("{TIER}{TG}  rateLimitPolicyRef: {{name: nowhere}}\n"), "spec.rateLimitPolicyRef.name", Some(9), Server::Accepts("a reference to another object: the API server judges one object at a time; the operator reports it as the tier's ResolvedRefs condition")),
        case("dangling fallback tier", format!("{TIER}{TG}  fallbackTiers: [ghost]\n"), "spec.fallbackTiers[0]", Some(9), Server::Accepts("a reference to another object: the API server judges one object at a time; the operator reports it as the tier's ResolvedRefs condition")),
        case("reserved pod label", format!("{TIER}{TG}  podTemplate:\n    metadata:\n      labels: {{herald.dev/tier: other}}\n"), "spec.podTemplate.metadata.labels", None, Server::Refuses),
        case("reserved pod annotation", format!("{TIER}{TG}  podTemplate:\n    metadata:\n      annotations: {{herald.dev/pod-revision: x}}\n"), "spec.podTemplate.metadata.annotations", None, Server::Refuses),
        case("pod volume named like herald's", format!("{TIER}{TG}  podTemplate:\n    volumes:\n      - {{name: config, emptyDir: {{}}}}\n"), "spec.podTemplate.volumes", None, Server::Refuses),
        case("mount over the config", format!("{TIER}{TG}  podTemplate:\n    volumes: [{{name: x, emptyDir: {{}}}}]\n    volumeMounts:\n      - {{name: x, mountPath: /etc/herald}}\n"), "spec.podTemplate.volumeMounts", None, Server::Refuses),
        case("HERALD_ variable in pod env", format!("{TIER}{TG}  podTemplate:\n    env:\n      - {{name: HERALD_TRACK, value: canary}}\n"), "spec.podTemplate.env", None, Server::Refuses),
        case("unknown podTemplate field", format!("{TIER}{TG}  podTemplate:\n    nodeSelecter: {{pool: a}}\n"), "spec.podTemplate.nodeSelecter", Some(10), Server::Refuses),
        case("empty priority class", format!("{TIER}{TG}  podTemplate:\n    priorityClassName: \"\"\n"), "spec.podTemplate.priorityClassName", Some(10), Server::Refuses),
        case("unknown field in a Kubernetes type", format!("{TIER}{TG}  podTemplate:\n    securityContext:\n      runAsUsr: 1000\n"), "spec.podTemplate.securityContext.runAsUsr", Some(11), Server::Refuses),
        case("bad api url", format!("{TIER}spec:\n  channel: telegram\n  telegram:\n    tokenSecretRef: {{name: s, key: k}}\n    apiUrl: ftp://x\n"), "spec.telegram.apiUrl", Some(9), Server::Refuses),
        case("missing channel", format!("{TIER}spec:\n  priority: 1\n"), "spec.channel", None, Server::Refuses),
        case("missing spec", TIER.to_owned(), "spec", None, Server::Refuses),
        case("bad name", "apiVersion: herald.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n".to_owned(), "metadata.name", Some(4), Server::Refuses),
        case("tier name not a DNS label", format!("{TIER}{TG}").replace("name: t\n", "name: t.v2\n"), "", None, Server::Refuses),
        case("unknown herald kind", "apiVersion: herald.dev/v1alpha1\nkind: Tier\nmetadata: {name: x}\nspec: {}\n".to_owned(), "kind", Some(2), Server::RefusesKind),
        case("wrong version", "apiVersion: herald.dev/v1\nkind: DeliveryTier\nmetadata: {name: x}\n".to_owned(), "apiVersion", Some(1), Server::RefusesKind),
    ]
}

/// One bad document.
pub struct BadDocument {
    /// What is wrong with it, in words.
    pub what: &'static str,
    pub doc: String,
    /// The field path both herald validate and the API server must name
    /// ("" for the object as a whole).
    pub path: &'static str,
    /// The line herald validate must report, where the test pins it.
    pub line: Option<usize>,
    pub server: Server,
}

/// What a real API server answers for the document.
pub enum Server {
    /// It refuses the document with an error naming `path`.
    Refuses,
    /// It refuses the document because no such kind is served; there is no
    /// field to name.
    RefusesKind,
    /// It accepts the document; the reason says why only herald can judge it.
    Accepts(&'static str),
}

fn case(
    what: &'static str,
    doc: String,
    path: &'static str,
    line: Option<usize>,
    server: Server,
) -> BadDocument {
    BadDocument {
        what,
        doc,
        path,
        line,
        server,
    }
}
