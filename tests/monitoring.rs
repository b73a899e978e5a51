//! The monitoring artefacts against the processes that feed them: the
//! PrometheusRule in config/prometheus/rules.yaml passes `promtool check
//! rules` and its unit tests (config/prometheus/rules_test.yaml, with a
//! firing and a quiet case for every alert), every alert links to its own
//! section of docs/troubleshooting.md, and every metric name and selector
//! label used by the rules and by the Grafana dashboard
//! (config/grafana/herald-dashboard.json) is one the agent's or the
//! operator's metrics registry (`herald::agent::metrics::Metrics`,
//! `herald::operator::metrics::Metrics`) really exposes.
//!
//! What the rules alert on is their own business; this file only pins that
//! they are valid and speak the agent's and operator's vocabulary.
//! Invariant: nothing here skips — without `promtool` the tests fail and
//! say how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use herald::agent::metrics::Metrics;
use herald::operator::metrics::{Metrics as OperatorMetrics, PHASES, PREFIX};
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde_json::Value;

/// Where every alert's `runbook_url` points, followed by `#<anchor>`; the
/// chart's `prometheusRule.runbookBaseUrl` replaces it.
const RUNBOOK_BASE: &str =
    "https://git.example.com/your-org/herald/blob/main/docs/troubleshooting.md";

/// Labels a scrape adds to every series (Prometheus itself, the Prometheus
/// Operator, and the pod labels config/prometheus/monitor.yaml copies).
const TARGET_LABELS: [&str; 9] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "endpoint",
    "container",
    "herald_dev_tier",
    "herald_dev_track",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rules_path() -> PathBuf {
    root().join("config/prometheus/rules.yaml")
}

fn dashboard_path() -> PathBuf {
    root().join("config/grafana/herald-dashboard.json")
}

/// The PrometheusRule document.
fn rule_resource() -> Value {
    serde_saphyr::from_str(&read(&rules_path())).unwrap()
}

/// Every rule of every group.
fn rules() -> Vec<Value> {
    rule_resource()["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&dashboard_path())).unwrap()
}

// ---------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------

/// `promtool` (or `$HERALD_PROMTOOL`), checked once.
fn promtool() -> &'static str {
    static PROMTOOL: OnceLock<String> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        let tool = std::env::var("HERALD_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
        match Command::new(&tool).arg("--version").output() {
            Ok(out) if out.status.success() => tool,
            Ok(out) => panic!(
                "`{tool} --version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "`{tool}` could not be started ({e}). The alerting rules are tested with \
                 Prometheus' promtool: install it with `apt-get install -y prometheus` (CI's \
                 .ci/run must do so), or set HERALD_PROMTOOL to a promtool binary."
            ),
        }
    })
}

fn run_promtool(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rule file promtool reads: the PrometheusRule's `spec`, as JSON (which
/// is YAML), written next to a copy of rules_test.yaml under the name that
/// file expects.
fn promtool_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = &rule_resource()["spec"];
    std::fs::write(
        dir.path().join("herald-rules.yaml"),
        serde_json::to_string_pretty(spec).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        root().join("config/prometheus/rules_test.yaml"),
        dir.path().join("rules_test.yaml"),
    )
    .unwrap();
    dir
}

#[test]
fn promtool_accepts_the_rules() {
    let dir = promtool_dir();
    let out = run_promtool(&["check", "rules", "herald-rules.yaml"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn promtool_unit_tests_pass() {
    let dir = promtool_dir();
    let out = run_promtool(&["test", "rules", "rules_test.yaml"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_unit_tests_read_the_extracted_rule_file() {
    let tests: Value =
        serde_saphyr::from_str(&read(&root().join("config/prometheus/rules_test.yaml"))).unwrap();
    assert_eq!(
        tests["rule_files"],
        serde_json::json!(["herald-rules.yaml"]),
        "rules_test.yaml must name the file this test extracts from rules.yaml"
    );
}

/// Every alert has a unit test in which it fires and one in which it is
/// quiet, a severity and the annotations a receiver shows.
#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let tests: Value =
        serde_saphyr::from_str(&read(&root().join("config/prometheus/rules_test.yaml"))).unwrap();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().expect("alertname").to_owned();
            let expected = a["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    let mut alerts = BTreeSet::new();
    for r in rules() {
        let Some(name) = r["alert"].as_str() else {
            continue;
        };
        alerts.insert(name.to_owned());
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: annotation {key}"
            );
        }
    }
    // The alerts users asked for, by what they watch.
    for want in [
        "HeraldDeliverySuccessSLOBurn",
        "HeraldSendLatencySLOBurn",
        "HeraldSendErrorSLOBurn",
        "HeraldCircuitBreakerOpen",
        "HeraldBulkheadSaturated",
        "HeraldSlowResponseTime",
        "HeraldDeadLettersGrowing",
        "HeraldRateLimited",
        "HeraldDegradationSevere",
        "HeraldOperatorNoLeader",
        "HeraldOperatorReconcileErrors",
        "HeraldTierFailed",
        "HeraldTierDegraded",
        "HeraldRolloutAborted",
    ] {
        assert!(alerts.contains(want), "alert {want} is missing");
    }
    for a in &alerts {
        assert!(firing.contains(a), "{a} has no unit test in which it fires");
        assert!(
            quiet.contains(a),
            "{a} has no unit test in which it stays quiet"
        );
    }
}

/// Each SLO has a fast (1h/5m) and a slow (6h/30m) burn-rate alert.
#[test]
fn slo_alerts_pair_two_windows_each() {
    let mut windows: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in rules() {
        if let Some(slo) = r["labels"]["slo"].as_str() {
            let long = r["labels"]["long_window"].as_str().unwrap_or_default();
            let short = r["labels"]["short_window"].as_str().unwrap_or_default();
            let expr = r["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains(&format!(":rate{long}")) && expr.contains(&format!(":rate{short}")),
                "{slo}: expression must read both its windows: {expr}"
            );
            windows
                .entry(slo.to_owned())
                .or_default()
                .insert((long.to_owned(), short.to_owned()));
        }
    }
    let pairs = BTreeSet::from([
        ("1h".to_owned(), "5m".to_owned()),
        ("6h".to_owned(), "30m".to_owned()),
    ]);
    assert_eq!(
        windows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["delivery-success", "send-errors", "send-latency"]
    );
    for (slo, w) in windows {
        assert_eq!(w, pairs, "{slo}");
    }
}

// ---------------------------------------------------------------------------
// Runbooks
// ---------------------------------------------------------------------------

/// The anchors GitHub and most Markdown renderers give the headings of a
/// page: lower case, punctuation dropped, spaces as hyphens.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        if fenced {
            continue;
        }
        let title = title.trim_start_matches('#');
        let Some(title) = title.strip_prefix(' ') else {
            continue;
        };
        let anchor: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        out.insert(anchor);
    }
    out
}

#[test]
fn the_anchor_reader_follows_github() {
    let got = heading_anchors(
        "# Troubleshooting\n## Ingest refused: 503 with Retry-After\n```sh\n# not a heading\n```\n### HeraldTierFailed\n#nospace\n",
    );
    assert_eq!(
        got,
        BTreeSet::from([
            "troubleshooting".to_owned(),
            "ingest-refused-503-with-retry-after".to_owned(),
            "heraldtierfailed".to_owned(),
        ])
    );
}

/// Every alert's `runbook_url` is the shipped base and an anchor of
/// docs/troubleshooting.md that is the alert's own section, so a page
/// lands on what to do about that very alert.
#[test]
fn every_alert_links_to_its_own_runbook_section() {
    let anchors = heading_anchors(&read(&root().join("docs/troubleshooting.md")));
    assert!(
        RUNBOOK_BASE.ends_with("/docs/troubleshooting.md"),
        "{RUNBOOK_BASE}"
    );
    let mut errors = Vec::new();
    let mut alerts = 0;
    for r in rules() {
        let Some(name) = r["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        let Some(url) = r["annotations"]["runbook_url"].as_str() else {
            errors.push(format!("{name}: no runbook_url"));
            continue;
        };
        let Some((base, anchor)) = url.split_once('#') else {
            errors.push(format!("{name}: {url} has no anchor"));
            continue;
        };
        if base != RUNBOOK_BASE {
            errors.push(format!("{name}: {url} does not start with {RUNBOOK_BASE}#"));
        }
        if anchor != name.to_lowercase() {
            errors.push(format!("{name}: {url} is not the alert's own section"));
        }
        if !anchors.contains(anchor) {
            errors.push(format!(
                "{name}: docs/troubleshooting.md has no heading with anchor #{anchor}"
            ));
        }
    }
    assert!(alerts >= 15, "{alerts} alerts");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

// ---------------------------------------------------------------------------
// What the agent and the operator expose
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family of the agent: its labels and, for histograms, bucket
/// bounds.
#[derive(Debug)]
struct Family {
    kind: Kind,
    labels: Vec<String>,
    buckets: Vec<f64>,
}

/// A metric type of the `prometheus` crate, with its kind and (for
/// histograms) the bucket bounds read back from one child.
trait Exposed: Collector {
    const KIND: Kind;
    fn buckets(&self) -> Vec<f64> {
        Vec::new()
    }
}

impl Exposed for IntCounterVec {
    const KIND: Kind = Kind::Counter;
}
impl Exposed for IntCounter {
    const KIND: Kind = Kind::Counter;
}
impl Exposed for IntGaugeVec {
    const KIND: Kind = Kind::Gauge;
}
impl Exposed for IntGauge {
    const KIND: Kind = Kind::Gauge;
}
impl Exposed for HistogramVec {
    const KIND: Kind = Kind::Histogram;
    fn buckets(&self) -> Vec<f64> {
        let n = self.desc()[0].variable_labels.len();
        let values = vec!["probe"; n];
        let child = self.with_label_values(&values);
        let b = bucket_bounds(&child);
        let _ = self.remove_label_values(&values);
        b
    }
}
impl Exposed for Histogram {
    const KIND: Kind = Kind::Histogram;
    fn buckets(&self) -> Vec<f64> {
        bucket_bounds(self)
    }
}

fn bucket_bounds(h: &Histogram) -> Vec<f64> {
    h.collect()[0].get_metric()[0]
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| b.upper_bound())
        .collect()
}

fn add<T: Exposed>(out: &mut BTreeMap<String, Family>, m: &T) {
    for d in m.desc() {
        out.insert(
            d.fq_name.clone(),
            Family {
                kind: T::KIND,
                labels: d.variable_labels.clone(),
                buckets: m.buckets(),
            },
        );
    }
}

/// The agent's and the operator's metric families, read from fresh
/// registries. The kinds come from the Rust types, so a histogram cannot be
/// listed as a counter.
fn families() -> &'static BTreeMap<String, Family> {
    static FAMILIES: OnceLock<BTreeMap<String, Family>> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let m = Metrics::new();
        let mut f = BTreeMap::new();
        add(&mut f, &m.accepted);
        add(&mut f, &m.rejected);
        add(&mut f, &m.duplicates);
        add(&mut f, &m.attempts);
        add(&mut f, &m.delivered);
        add(&mut f, &m.dead_lettered);
        add(&mut f, &m.rate_limited);
        add(&mut f, &m.retries);
        add(&mut f, &m.held);
        add(&mut f, &m.failovers);
        add(&mut f, &m.queue_depth);
        add(&mut f, &m.in_flight);
        add(&mut f, &m.oldest_age_seconds);
        add(&mut f, &m.breaker_state);
        add(&mut f, &m.breaker_transitions);
        add(&mut f, &m.health_score);
        add(&mut f, &m.degradation_level);
        add(&mut f, &m.dead_letters);
        add(&mut f, &m.bulkhead_in_use);
        add(&mut f, &m.send_seconds);
        add(&mut f, &m.delivery_seconds);
        add(&mut f, &m.accept_seconds);
        add(&mut f, &m.config_reloads);
        add(&mut f, &m.fleet_agents);
        add(&mut f, &m.fleet_partitions);
        add(&mut f, &m.redis_up);
        add(&mut f, &m.limiter_mode);
        add(&mut f, &m.shared_refusals);
        add(&mut f, &m.sends_repaced);
        add(&mut f, &m.shared_late_slots);
        add(&mut f, &m.spill_waiting);
        add(&mut f, &m.spill_messages);
        // The operator's registry prefixes its names when it gathers them,
        // so its descriptors carry them bare.
        let o = OperatorMetrics::new();
        let mut op = BTreeMap::new();
        add(&mut op, &o.reconciles);
        add(&mut op, &o.failures);
        add(&mut op, &o.duration);
        add(&mut op, &o.tiers_by_phase);
        add(&mut op, &o.events);
        add(&mut op, &o.restarts);
        add(&mut op, &o.status_writes);
        add(&mut op, &o.leader);
        add(&mut op, &o.rollouts_aborted);
        f.extend(
            op.into_iter()
                .map(|(name, family)| (format!("{PREFIX}_{name}"), family)),
        );
        f
    })
}

/// The series names a family produces, each with its family.
fn series_names() -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for (name, f) in families() {
        if f.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"), name.as_str());
            }
        } else {
            out.insert(name.clone(), name.as_str());
        }
    }
    out
}

/// The metric names of a table of docs/metrics.md.
fn documented(table: &str) -> BTreeSet<&str> {
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect()
}

/// The list above must not fall behind the agent: every metric of the
/// agent's table in docs/metrics.md (kept complete by a unit test in
/// src/agent/metrics.rs) is among the families read here.
#[test]
fn the_family_list_covers_every_documented_agent_metric() {
    let doc = read(&root().join("docs/metrics.md"));
    let agent_table = doc.split("## Operator").next().unwrap();
    let documented = documented(agent_table);
    assert!(documented.len() >= 20, "{documented:?}");
    for name in documented {
        assert!(
            families().contains_key(name),
            "{name} is documented but not read from Metrics here; add it to families()"
        );
    }
}

/// The same for the operator, both ways: its table in docs/metrics.md
/// lists exactly the operator families read here.
#[test]
fn the_family_list_is_the_documented_operator_metrics() {
    let doc = read(&root().join("docs/metrics.md"));
    let operator_table = doc.split("## Operator").nth(1).expect("## Operator");
    let documented = documented(operator_table);
    let read_here: BTreeSet<&str> = families()
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with("herald_operator_"))
        .collect();
    assert_eq!(documented, read_here);
}

// ---------------------------------------------------------------------------
// A small PromQL reader: metric names and their selector labels
// ---------------------------------------------------------------------------

/// A vector selector: `metric{label="..."}` (metric empty for a bare `{...}`).
#[derive(Debug, PartialEq, Eq)]
struct Selector {
    metric: String,
    /// (label, value) of each matcher.
    matchers: Vec<(String, String)>,
}

const KEYWORDS: [&str; 26] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// End of the quoted string starting at `i` (one past the closing quote).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    let quote = b[i];
    i += 1;
    while i < b.len() && b[i] != quote {
        if b[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// One past the bracket matching the one at `i`.
fn skip_group(b: &[u8], mut i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced {} in {}",
        open as char,
        String::from_utf8_lossy(b)
    );
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Matchers of the `{...}` starting at `i`, and the index after it.
fn matchers(b: &[u8], start: usize, expr: &str) -> (Vec<(String, String)>, usize) {
    let end = skip_group(b, start, b'{', b'}');
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < end - 1 {
        i = skip_ws(b, i);
        if b[i] == b',' || b[i] == b'}' {
            i += 1;
            continue;
        }
        let s = i;
        while i < end && is_ident(b[i]) {
            i += 1;
        }
        assert!(i > s, "cannot read the matchers of {expr:?}");
        let label = String::from_utf8_lossy(&b[s..i]).into_owned();
        i = skip_ws(b, i);
        while i < end && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        i = skip_ws(b, i);
        assert!(
            matches!(b[i], b'"' | b'\'' | b'`'),
            "matcher {label} without a quoted value in {expr:?}"
        );
        let v_end = skip_string(b, i);
        let value = String::from_utf8_lossy(&b[i + 1..v_end - 1]).into_owned();
        out.push((label, value));
        i = v_end;
    }
    (out, end)
}

/// Every vector selector in a PromQL expression. Grafana variables (`$x`,
/// `${x}`) may stand anywhere a value or a duration does.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'[' {
            i = skip_group(b, i, b'[', b']');
        } else if c == b'{' {
            let (m, end) = matchers(b, i, expr);
            out.push(Selector {
                metric: String::new(),
                matchers: m,
            });
            i = end;
        } else if c == b'$' {
            i += 1;
            if i < b.len() && b[i] == b'{' {
                i = skip_group(b, i, b'{', b'}');
            } else {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // Numbers, and durations such as `10m` after `offset`.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[s..i];
            let lower = word.to_ascii_lowercase();
            let next = skip_ws(b, i);
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next < b.len() && b[next] == b'(' {
                    i = skip_group(b, next, b'(', b')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || (next < b.len() && b[next] == b'(') {
                // An operator, an aggregation or a function call.
            } else if next < b.len() && b[next] == b'{' {
                let (m, end) = matchers(b, next, expr);
                out.push(Selector {
                    metric: word.to_owned(),
                    matchers: m,
                });
                i = end;
            } else {
                out.push(Selector {
                    metric: word.to_owned(),
                    matchers: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_reader_finds_selectors() {
    let got = selectors(
        r#"sum by (namespace, tier) (rate(herald_x_total{class=~"a|b", le="0.5"}[5m] offset 10m))
           / on (tier) group_left (pod) max without (le) (y:rec) > bool 14.4 * 1e3
           and histogram_quantile(0.95, z_bucket{tier=~"$tier"}[$__rate_interval]) or vector(0)
           unless {__name__="w"} # comment sum_of_nothing"#,
    );
    let names: Vec<&str> = got.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["herald_x_total", "y:rec", "z_bucket", ""]);
    assert_eq!(
        got[0].matchers,
        [
            ("class".to_owned(), "a|b".to_owned()),
            ("le".to_owned(), "0.5".to_owned())
        ]
    );
}

/// Checks one expression's selectors; `recorded` are recording rules,
/// allowed (rules only) with any labels.
fn check_expr(
    origin: &str,
    expr: &str,
    recorded: &BTreeSet<String>,
    used: &mut BTreeSet<String>,
) -> Vec<String> {
    let series = series_names();
    let mut errors = Vec::new();
    let found = selectors(expr);
    if found.is_empty() {
        errors.push(format!("{origin}: no metric in {expr:?}"));
    }
    for s in found {
        if recorded.contains(&s.metric) {
            continue;
        }
        let Some(family_name) = series.get(&s.metric) else {
            errors.push(format!(
                "{origin}: `{}` is not a metric the agent or the operator exposes \
                 (src/agent/metrics.rs, src/operator/metrics.rs)",
                if s.metric.is_empty() {
                    "{...}"
                } else {
                    &s.metric
                }
            ));
            continue;
        };
        used.insert((*family_name).to_owned());
        let family = &families()[*family_name];
        for (label, value) in &s.matchers {
            let own = family.labels.iter().any(|l| l == label);
            let bucket = s.metric.ends_with("_bucket") && label == "le";
            if !(own || bucket || TARGET_LABELS.contains(&label.as_str())) {
                errors.push(format!(
                    "{origin}: `{}` has no label `{label}` (it has {:?})",
                    s.metric, family.labels
                ));
            }
            if s.metric == "herald_operator_tiers_by_phase"
                && label == "phase"
                && !PHASES.contains(&value.as_str())
            {
                errors.push(format!(
                    "{origin}: phase {value:?} is not one of {PHASES:?}"
                ));
            }
            if bucket && !value.contains('$') && value != "+Inf" {
                let bound: f64 = value
                    .parse()
                    .unwrap_or_else(|e| panic!("{origin}: le={value:?}: {e}"));
                if !family.buckets.contains(&bound) {
                    errors.push(format!(
                        "{origin}: le=\"{value}\" is not a bucket of {family_name} ({:?})",
                        family.buckets
                    ));
                }
            }
        }
    }
    errors
}

#[test]
fn the_rules_use_only_exposed_metrics() {
    let all = rules();
    let recorded: BTreeSet<String> = all
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect();
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for r in &all {
        let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
        let expr = r["expr"].as_str().expect("expr");
        errors.extend(check_expr(name, expr, &recorded, &mut used));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // A recording rule nobody reads is dead weight.
    let alert_exprs: String = all
        .iter()
        .filter(|r| r["alert"].is_string())
        .map(|r| r["expr"].as_str().unwrap_or_default())
        .collect();
    for rec in &recorded {
        assert!(alert_exprs.contains(rec.as_str()), "{rec} is never used");
    }
}

/// Every query of the dashboard, with where it sits.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a prometheus target with expr");
                let r = t["refId"].as_str().unwrap_or_default();
                out.push((format!("panel {title:?} target {r}"), expr.to_owned()));
            }
            if let Some(children) = p["panels"].as_array() {
                walk(children, out);
            }
        }
    }
    let d = dashboard();
    let mut out = Vec::new();
    walk(d["panels"].as_array().expect("panels"), &mut out);
    out
}

#[test]
fn the_dashboard_uses_only_exposed_metrics() {
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    let none = BTreeSet::new();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    for (origin, expr) in &queries {
        errors.extend(check_expr(origin, expr, &none, &mut used));
    }
    // Template variables: label_values(<metric>[{...}], <label>).
    for v in dashboard()["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["definition"].as_str().expect("definition");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q:?}"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        let origin = format!("variable {}", v["name"]);
        errors.extend(check_expr(&origin, metric, &none, &mut used));
        let label = label.trim();
        let sel = selectors(metric);
        let family = series_names().get(&sel[0].metric).copied();
        if let Some(f) = family
            && !families()[f].labels.iter().any(|l| l == label)
            && !TARGET_LABELS.contains(&label)
        {
            errors.push(format!("{origin}: {f} has no label {label}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // What users asked to see.
    for want in [
        "herald_messages_delivered_total",
        "herald_messages_dead_lettered_total",
        "herald_send_seconds",
        "herald_queue_depth",
        "herald_circuit_state",
        "herald_degradation_level",
        "herald_rate_limited_total",
        "herald_bulkhead_in_use",
        "herald_operator_leader",
        "herald_operator_tiers_by_phase",
        "herald_operator_reconciles_total",
        "herald_operator_reconcile_errors_total",
        "herald_operator_reconcile_duration_seconds",
        "herald_operator_rollouts_aborted_total",
    ] {
        assert!(used.contains(want), "the dashboard shows no {want}");
    }
}

/// The dashboard's queries parse as PromQL: each becomes a recording rule
/// in a scratch file (Grafana variables replaced by values) that promtool
/// checks.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let mut rules = Vec::new();
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$namespace", ".*")
            .replace("$tier", ".*");
        assert!(!expr.contains('$'), "unknown variable in {expr}");
        rules.push(serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}));
    }
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string()).unwrap();
    run_promtool(&["check", "rules", "dashboard.yaml"], dir.path());
}

#[test]
fn the_dashboard_is_provisionable() {
    let d = dashboard();
    assert_eq!(d["uid"], "herald-overview");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["id"].is_null(), "a provisioned dashboard carries no id");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        if p["type"] == "row" {
            continue;
        }
        // Every panel reads the chosen data source, not a fixed uid.
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
        let w = p["gridPos"]["w"].as_u64().unwrap();
        let x = p["gridPos"]["x"].as_u64().unwrap();
        assert!(x + w <= 24, "{} overflows the grid", p["title"]);
    }
}
