//! 1,000 tiers: how long a first pass (every child created) and a steady
//! pass (nothing to write) take, and how much memory the operator needs —
//! measured in a process of its own.
//!
//! `a_thousand_tiers` holds the fake API (every tier and child, as JSON)
//! and serves it over HTTP on 127.0.0.1 ([`super::http_api`]); it then
//! starts this test executable again, running only `operator_process`,
//! which is the operator's side: a real `kube::Client` over HTTP, the
//! controller's context with its caches filled by listing (the fake has no
//! watches, as in [`Harness::refresh`]), and the same passes of
//! `controller::reconcile` as the operator's runner makes. So the
//! operator's peak RSS is its own, not the fake's. A figure, not a timed
//! assertion: ignored by default; run with
//! `cargo test --lib operator::tests::scale -- --ignored --nocapture`.
//! `HERALD_SCALE_TIERS` and `HERALD_SCALE_CONCURRENCY` change the tier
//! count (1,000) and the tiers reconciled at once (4, the operator's
//! `--concurrency` default); `HERALD_SCALE_STRIP_MANAGED_FIELDS=1` caches
//! objects without their managedFields.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;
use crate::operator::controller;

const TIERS_ENV: &str = "HERALD_SCALE_TIERS";
const CONCURRENCY_ENV: &str = "HERALD_SCALE_CONCURRENCY";
/// Set (to anything) to cache objects without `metadata.managedFields`,
/// to see what they cost.
const STRIP_ENV: &str = "HERALD_SCALE_STRIP_MANAGED_FIELDS";
/// Set only in the operator's process: where the fake API listens.
const API_ENV: &str = "HERALD_SCALE_API";
const OPERATOR_TEST: &str = "operator::tests::scale::operator_process";
/// Prefix of the operator process's one line of figures on stdout.
const REPORT: &str = "herald-scale-report ";
/// Children per spool tier: ServiceAccount, Role, RoleBinding, ConfigMap,
/// two claims (queue and spool), Deployment, Service, PodDisruptionBudget.
const CHILDREN_PER_TIER: usize = 9;
/// A bound on the operator process, so a hang ends the test; not a figure.
const OPERATOR_LIMIT: Duration = Duration::from_secs(3600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// This process's memory and CPU so far, from /proc/self.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Usage {
    /// Peak resident set since start or the last [`reset_peak`] (VmHWM).
    peak_kib: u64,
    /// Resident set now (VmRSS), and its parts: anonymous memory (the
    /// heap and stacks) and file pages (mostly this executable's code).
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    /// User + system CPU time.
    cpu_ms: u64,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, after the parenthesised name,
    // in clock ticks; USER_HZ is 100 on every Linux target herald builds.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Usage {
        peak_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        cpu_ms: ticks * 10,
    }
}

/// Start a new peak (VmHWM := VmRSS), so each phase reports its own;
/// `false` where the kernel does not allow it (the peak then carries over).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The operator process's figures, one JSON line on its stdout.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Report {
    tiers: usize,
    concurrency: usize,
    /// The test executable loaded, nothing done yet.
    at_start: Usage,
    /// Client and context built, caches empty.
    context: Usage,
    /// Caches filled by a first list.
    setup: Usage,
    first: Usage,
    first_ms: u64,
    first_ok: usize,
    first_writes: usize,
    /// The re-list after the first pass, as the watches would bring the
    /// children and the statuses written.
    relist: Usage,
    steady: Usage,
    steady_ms: u64,
    steady_ok: usize,
    steady_writes: usize,
    /// Whether the caches held objects without their managedFields.
    stripped: bool,
    /// Whether each phase's peak is its own (see [`reset_peak`]).
    peaks_per_phase: bool,
    /// What the caches hold after the re-list: kind, objects, their JSON
    /// size, and the part of it that is `metadata.managedFields`.
    caches: Vec<CacheSize>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CacheSize {
    kind: String,
    objects: usize,
    json_bytes: usize,
    managed_fields_bytes: usize,
}

fn json_len<T: serde::Serialize>(t: &T) -> usize {
    serde_json::to_vec(t).map_or(0, |v| v.len())
}

fn cache_size<K>(kind: &str, store: &kube::runtime::reflector::Store<K>) -> CacheSize
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    let objs = store.state();
    CacheSize {
        kind: kind.to_owned(),
        objects: objs.len(),
        json_bytes: objs.iter().map(|o| json_len(o.as_ref())).sum(),
        managed_fields_bytes: objs
            .iter()
            .map(|o| json_len(&o.meta().managed_fields))
            .sum(),
    }
}

/// Reconcile every tier once, `width` at a time, as the controller's
/// runner would; the tiers are the cache's own objects, as it hands them.
async fn pass(ctx: &Arc<Context>, width: usize) -> (usize, Duration) {
    let tiers = ctx.stores.tiers.state();
    let start = Instant::now();
    let ok = futures::stream::iter(tiers)
        .map(|t| controller::reconcile(t, ctx.clone()))
        .buffer_unordered(width)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    (ok, start.elapsed())
}

/// The operator's side; does nothing unless `a_thousand_tiers` started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the operator's half of a_thousand_tiers, which starts it"]
async fn operator_process() {
    let Ok(url) = std::env::var(API_ENV) else {
        return;
    };
    let at_start = usage();
    let width = env_usize(CONCURRENCY_ENV, 4);
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = writes.clone();
    let count_writes =
        tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            if req.method() != http::Method::GET {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            req
        });
    // Not `Client::try_from(config)`: kube's stack builds a rustls config
    // even for plain HTTP, and this test build links two crypto providers
    // (kube-fake-client pulls in aws-lc-rs beside kube's ring), so rustls
    // cannot pick one. So: kube's base-URI layer over hyper's client — the
    // same transport minus TLS, retries and tracing.
    use kube::client::ConfigExt;
    let config = kube::Config::new(url.parse().unwrap());
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<kube::client::Body>();
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .layer(count_writes)
        .service(http);
    let client = Client::new(service, config.default_namespace.clone());
    let health: Arc<dyn HealthSource> = Arc::new(CannedHealth::default());
    let (ctx, writers) = operator_context(
        client.clone(),
        Settings::default(),
        health,
        &Clock::manual(t0()),
    );
    let ctx = Arc::new(ctx);
    let writers = Mutex::new(writers);
    let context = usage();
    let stripped = std::env::var_os(STRIP_ENV).is_some();
    let prune = |m: &mut ObjectMeta| {
        if stripped {
            m.managed_fields = None;
        }
    };
    let peaks_per_phase = reset_peak();
    refresh_caches_with(&client, &ctx, &writers, prune).await;
    let setup = usage();

    let mut r = Report {
        tiers: ctx.stores.tiers.state().len(),
        concurrency: width,
        at_start,
        context,
        setup,
        stripped,
        peaks_per_phase,
        ..Report::default()
    };
    writes.store(0, Ordering::Relaxed);
    reset_peak();
    let (ok, took) = pass(&ctx, width).await;
    (r.first, r.first_ms, r.first_ok) = (usage(), took.as_millis() as u64, ok);
    r.first_writes = writes.swap(0, Ordering::Relaxed);

    reset_peak();
    refresh_caches_with(&client, &ctx, &writers, prune).await;
    r.relist = usage();
    writes.store(0, Ordering::Relaxed);
    reset_peak();
    let (ok, took) = pass(&ctx, width).await;
    (r.steady, r.steady_ms, r.steady_ok) = (usage(), took.as_millis() as u64, ok);
    r.steady_writes = writes.swap(0, Ordering::Relaxed);

    let s = &ctx.stores;
    r.caches = vec![
        cache_size("DeliveryTier", &s.tiers),
        cache_size("RateLimitPolicy", &s.rate_limits),
        cache_size("Secret (metadata)", &s.secrets),
        cache_size("Pod", &s.pods),
        cache_size("Deployment", &s.deployments),
        cache_size("PodDisruptionBudget", &s.pdbs),
    ];
    println!("{REPORT}{}", serde_json::to_string(&r).unwrap());
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn per_tier(ms: u64, tiers: usize) -> f64 {
    ms as f64 / tiers.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale figure; run by hand"]
async fn a_thousand_tiers() {
    let tiers = env_usize(TIERS_ENV, 1000);
    let h = Harness::new().await;
    h.create(&rate_limit_policy("bot", 30)).await;
    for i in 0..tiers {
        h.create(&spool_tier(&format!("t{i:04}"), Some("bot")))
            .await;
    }
    let api_setup = usage();
    let served = http_api::serve(h.client.clone()).await.unwrap();
    h.clear_calls();

    let exe = std::env::current_exe().unwrap();
    let run = tokio::process::Command::new(exe)
        .args([OPERATOR_TEST, "--exact", "--ignored", "--nocapture"])
        .env(API_ENV, &served.url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(OPERATOR_LIMIT, run)
        .await
        .expect("the operator process ran past its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "operator process failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no report from the operator process:\n{stdout}"));
    drop(served);
    let api_end = usage();

    assert_eq!(r.tiers, tiers);
    assert_eq!(r.first_ok, tiers, "every first reconcile succeeds");
    assert_eq!(r.steady_ok, tiers, "every steady reconcile succeeds");
    assert_eq!(r.steady_writes, 0, "a steady pass writes nothing");
    assert_eq!(h.writes().len(), r.first_writes, "the API saw every write");
    assert_eq!(h.children().await.len(), tiers * CHILDREN_PER_TIER);

    let peak = [r.context, r.setup, r.first, r.relist, r.steady]
        .iter()
        .map(|u| u.peak_kib)
        .max()
        .unwrap_or(0);
    println!(
        "scale: {tiers} tiers, {} at once{}; operator process peak RSS {:.1} MiB{}",
        r.concurrency,
        if r.stripped {
            ", managedFields not cached"
        } else {
            ""
        },
        mib(peak),
        if r.peaks_per_phase {
            ""
        } else {
            " (phase peaks below are cumulative: the peak could not be reset)"
        },
    );
    println!("scale: operator phase     peak MiB  then RSS  anon  file");
    for (phase, u) in [
        ("started", &r.at_start),
        ("context built", &r.context),
        ("caches filled", &r.setup),
        ("first pass", &r.first),
        ("re-list", &r.relist),
        ("steady pass", &r.steady),
    ] {
        println!(
            "scale:   {phase:<16} {:>9.1} {:>9.1} {:>5.1} {:>5.1}",
            mib(u.peak_kib),
            mib(u.rss_kib),
            mib(u.anon_kib),
            mib(u.file_kib),
        );
    }
    println!(
        "scale: first pass {} ms ({:.2} ms/tier wall, {:.2} ms/tier operator CPU, {} writes); \
         steady pass {} ms ({:.2} ms/tier wall, {:.2} ms/tier operator CPU, {} writes)",
        r.first_ms,
        per_tier(r.first_ms, tiers),
        per_tier(r.first.cpu_ms.saturating_sub(r.setup.cpu_ms), tiers),
        r.first_writes,
        r.steady_ms,
        per_tier(r.steady_ms, tiers),
        per_tier(r.steady.cpu_ms.saturating_sub(r.relist.cpu_ms), tiers),
        r.steady_writes,
    );
    println!(
        "scale: fake API process: peak RSS {:.1} MiB ({:.1} MiB once the tiers were created), \
         CPU {} ms while serving",
        mib(api_end.peak_kib),
        mib(api_setup.peak_kib),
        api_end.cpu_ms.saturating_sub(api_setup.cpu_ms),
    );
    for c in &r.caches {
        println!(
            "scale: cache {}: {} objects, {} KiB as JSON, of which managedFields {} KiB",
            c.kind,
            c.objects,
            c.json_bytes / 1024,
            c.managed_fields_bytes / 1024,
        );
    }
}
