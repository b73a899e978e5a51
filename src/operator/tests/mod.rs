//! Tests of the controller shell against kube-fake-client (STYLE ring 3):
//! an in-memory API with resourceVersions, generations, a status
//! subresource, server-side apply and cascading deletion through owner
//! references — but no watches. So the harness plays the watches' part:
//! [`Harness::refresh`] re-lists the fake API into the stores and the index,
//! as the reflectors would, and tests call `reconcile` and the mappers
//! directly. Every request the code makes is recorded (method and path), so
//! tests can assert what was *not* written and the RBAC test can check each
//! call against the table.

mod fallback;
mod flows;
mod http_api;
mod rbac;
mod scale;
mod wiring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::core::PartialObjectMetaExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use kube::{Client, Resource};
use kube_fake_client::{ClientBuilder, interceptor};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};
use crate::operator::context::{Clock, Context, Settings, Stores};
use crate::operator::controller;
use crate::operator::controller::cache;
use crate::operator::error::Result;
use crate::operator::health_client::{HealthError, HealthSource, PodTarget};
use crate::operator::index::{RefKind, TierIndex};
use crate::operator::inputs::OperatorOptions;
use crate::operator::metrics::Metrics;

pub const NS: &str = "apps";
pub const IMAGE: &str = "herald:test";

/// One request the code made: method and path (query dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
}

/// Canned `/healthz/details`, by pod name; a pod without an entry does not
/// answer.
#[derive(Default)]
pub struct CannedHealth {
    pub details: Mutex<HashMap<String, Value>>,
}

impl CannedHealth {
    pub fn set(&self, pod: &str, v: Value) {
        self.details.lock().unwrap().insert(pod.to_owned(), v);
    }
}

impl HealthSource for CannedHealth {
    fn fetch<'a>(&'a self, t: &'a PodTarget) -> BoxFuture<'a, Result<Value, HealthError>> {
        let v = self.details.lock().unwrap().get(&t.name).cloned();
        Box::pin(async move { v.ok_or(HealthError::Connect) })
    }
}

struct Writers {
    tiers: Writer<DeliveryTier>,
    rate_limits: Writer<RateLimitPolicy>,
    circuits: Writer<CircuitPolicy>,
    degradations: Writer<DegradationProfile>,
    secrets: Writer<kube::core::PartialObjectMeta<Secret>>,
    pods: Writer<Pod>,
    deployments: Writer<Deployment>,
    pdbs: Writer<PodDisruptionBudget>,
}

/// Switches the tests flip to make the fake API fail.
#[derive(Default)]
pub struct Faults {
    /// Answer 500 to every PATCH of a ConfigMap.
    pub configmap_500: std::sync::atomic::AtomicBool,
    /// Answer 422 to every PATCH of a ConfigMap.
    pub configmap_422: std::sync::atomic::AtomicBool,
    /// Evictions made (pod names).
    pub evicted: Mutex<Vec<String>>,
}

/// The fake client learns a kind's status subresource from a `Default`
/// instance (only its apiVersion and kind are read); the CRD types have
/// required spec fields and no `Default`, so this stands in for them.
#[derive(serde::Serialize)]
struct StatusOf<K> {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(skip)]
    _k: std::marker::PhantomData<K>,
}

impl<K: Resource<DynamicType = ()>> Default for StatusOf<K> {
    fn default() -> Self {
        StatusOf {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            metadata: Default::default(),
            _k: std::marker::PhantomData,
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for StatusOf<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

pub struct Harness {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub health: Arc<CannedHealth>,
    pub clock: Clock,
    pub faults: Arc<Faults>,
    writers: Mutex<Writers>,
}

pub fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn interceptors(faults: Arc<Faults>) -> interceptor::Funcs {
    let f1 = faults.clone();
    let f2 = faults;
    interceptor::Funcs::new()
        .patch(move |ctx| {
            use std::sync::atomic::Ordering::Relaxed;
            let is_cm = ctx.patch.get("kind").and_then(Value::as_str) == Some("ConfigMap");
            if is_cm && f1.configmap_500.load(Relaxed) {
                return Err(kube_fake_client::Error::Internal("injected".into()));
            }
            if is_cm && f1.configmap_422.load(Relaxed) {
                return Err(kube_fake_client::Error::InvalidRequest("injected".into()));
            }
            Ok(None)
        })
        .create(move |ctx| {
            // kube's eviction body is `{delete_options, metadata}`; the fake
            // API stamps it with the path's kind (Pod), so tell it by shape.
            if ctx.object.get("delete_options").is_none() {
                return Ok(None);
            }
            let name = ctx.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // The pod goes, as the API server's eviction would do.
            let _ = ctx.client.delete::<Pod>(ctx.namespace, &name);
            f2.evicted.lock().unwrap().push(name);
            Ok(Some(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ))
        })
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with_settings(Settings::default()).await
    }

    pub async fn with_settings(settings: Settings) -> Harness {
        let faults = Arc::new(Faults::default());
        let fake = ClientBuilder::new()
            .with_resource::<DeliveryTier>()
            .with_status_subresource::<StatusOf<DeliveryTier>>()
            .with_resource::<RateLimitPolicy>()
            .with_status_subresource::<StatusOf<RateLimitPolicy>>()
            .with_resource::<CircuitPolicy>()
            .with_status_subresource::<StatusOf<CircuitPolicy>>()
            .with_resource::<DegradationProfile>()
            .with_status_subresource::<StatusOf<DegradationProfile>>()
            .with_interceptor_funcs(interceptors(faults.clone()))
            .build()
            .await
            .unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            log.lock().unwrap().push(Call {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
            });
            async move { fake.send(req).await }
        });
        let client = Client::new(svc, "default");
        let health = Arc::new(CannedHealth::default());
        let clock = Clock::manual(t0());
        let (ctx, writers) = operator_context(client.clone(), settings, health.clone(), &clock);
        Harness {
            client,
            ctx: Arc::new(ctx),
            calls,
            health,
            clock,
            faults,
            writers: Mutex::new(writers),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Create an object in the fake API (it assigns uid, generation, rv).
    pub async fn create<K>(&self, obj: &K) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + DeserializeOwned,
    {
        self.api::<K>()
            .create(&PostParams::default(), obj)
            .await
            .unwrap()
    }

    pub async fn tier(&self, name: &str) -> DeliveryTier {
        self.api::<DeliveryTier>().get(name).await.unwrap()
    }

    /// Re-list the fake API into the caches and the index, as the watches
    /// would after these writes.
    pub async fn refresh(&self) {
        refresh_caches(&self.client, &self.ctx, &self.writers).await;
    }

    /// Refresh the caches, read the tier from the API, reconcile it.
    pub async fn reconcile(&self, name: &str) -> Result<Action> {
        self.refresh().await;
        let tier = self.tier(name).await;
        controller::reconcile(Arc::new(tier), self.ctx.clone()).await
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Writes made (anything but GET).
    pub fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != "GET")
            .collect()
    }

    pub fn advance(&self, d: Duration) {
        let now = self.clock.now();
        self.clock.set(crate::operator::time::after(now, d));
    }

    /// Every child of a tier that exists, as (kind, name, metadata).
    pub async fn children(
        &self,
    ) -> Vec<(
        &'static str,
        String,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    )> {
        async fn list<K>(h: &Harness) -> Vec<K>
        where
            K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
                + Clone
                + std::fmt::Debug
                + DeserializeOwned,
        {
            h.api::<K>()
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
        }
        let mut out = Vec::new();
        macro_rules! push {
            ($k:ty, $label:expr) => {
                for o in list::<$k>(self).await {
                    out.push((
                        $label,
                        o.metadata.name.clone().unwrap_or_default(),
                        o.metadata,
                    ));
                }
            };
        }
        push!(ServiceAccount, "ServiceAccount");
        push!(Role, "Role");
        push!(RoleBinding, "RoleBinding");
        push!(ConfigMap, "ConfigMap");
        push!(PersistentVolumeClaim, "PersistentVolumeClaim");
        push!(Deployment, "Deployment");
        push!(Service, "Service");
        push!(PodDisruptionBudget, "PodDisruptionBudget");
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out
    }
}

/// A controller context on `client` with empty caches (the stores' writers
/// returned apart, for [`refresh_caches`]): what the operator process
/// holds, without the fake API that [`Harness`] adds.
fn operator_context(
    client: Client,
    settings: Settings,
    health: Arc<dyn HealthSource>,
    clock: &Clock,
) -> (Context, Writers) {
    let (tiers, w_t) = reflector::store();
    let (rate_limits, w_rl) = reflector::store();
    let (circuits, w_cp) = reflector::store();
    let (degradations, w_dp) = reflector::store();
    let (secrets, w_s) = reflector::store();
    let (pods, w_p) = reflector::store();
    let (deployments, w_d) = reflector::store();
    let (pdbs, w_pdb) = reflector::store();
    let stores = Stores {
        tiers,
        rate_limits,
        circuits,
        degradations,
        secrets,
        pods,
        deployments,
        pdbs,
    };
    let ctx = Context::new(
        client,
        stores,
        Arc::new(RwLock::new(TierIndex::new())),
        OperatorOptions::new(IMAGE),
        settings,
        health,
        Metrics::new(),
        Some("test".into()),
    )
    .with_clock(clock.clone());
    let writers = Writers {
        tiers: w_t,
        rate_limits: w_rl,
        circuits: w_cp,
        degradations: w_dp,
        secrets: w_s,
        pods: w_p,
        deployments: w_d,
        pdbs: w_pdb,
    };
    (ctx, writers)
}

/// Re-list the API behind `client` into the caches and the index of
/// `ctx`, as the watches would after these writes.
async fn refresh_caches(client: &Client, ctx: &Context, writers: &Mutex<Writers>) {
    refresh_caches_with(client, ctx, writers, |_| {}).await;
}

/// [`refresh_caches`], passing each object's metadata through `prune`
/// before it is cached. One kind at a time, each list dropped once it is
/// in its cache, as a reflector holds one list at a time.
async fn refresh_caches_with(
    client: &Client,
    ctx: &Context,
    writers: &Mutex<Writers>,
    prune: impl Fn(&mut ObjectMeta),
) {
    /// The kind's objects, typed a page at a time and each page
    /// trimmed by `slim` before the next, as a watcher's initial list pages
    /// (the fake API has no continue tokens, so the paging is done here on
    /// the raw list).
    async fn all<K>(client: &Client, prune: &dyn Fn(&mut ObjectMeta), slim: fn(&mut K)) -> Vec<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
    {
        #[derive(serde::Deserialize)]
        struct RawList<'a> {
            #[serde(borrow)]
            items: Vec<&'a serde_json::value::RawValue>,
        }
        let request = kube::core::Request::new(K::url_path(&(), None))
            .list(&ListParams::default())
            .unwrap();
        let text = client.request_text(request).await.unwrap();
        let raw: RawList = serde_json::from_str(&text).unwrap();
        let mut items = Vec::with_capacity(raw.items.len());
        for page in raw.items.chunks(cache::LIST_PAGE as usize) {
            let mut typed: Vec<K> = page
                .iter()
                .map(|r| serde_json::from_str(r.get()).unwrap())
                .collect();
            for o in &mut typed {
                prune(o.meta_mut());
                slim(o);
            }
            items.extend(typed);
        }
        items
    }
    fn fill<K>(w: &mut Writer<K>, items: Vec<K>)
    where
        K: kube::runtime::reflector::Lookup + Clone,
        K::DynamicType: Clone + Eq + std::hash::Hash + Default,
    {
        w.apply_watcher_event(&Event::Init);
        for o in items {
            w.apply_watcher_event(&Event::InitApply(o));
        }
        w.apply_watcher_event(&Event::InitDone);
    }
    fn ids<K: Resource>(objs: &[K]) -> Vec<(String, String)> {
        objs.iter()
            .map(|o| {
                let m = o.meta();
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
    fn reset_policies(ctx: &Context, kind: RefKind, ids: &[(String, String)]) {
        ctx.index
            .write()
            .unwrap()
            .reset_policies(kind, ids.iter().map(|(n, m)| (n.as_str(), m.as_str())));
    }
    let p = &prune;
    let tiers: Vec<DeliveryTier> = all(client, p, cache::slim).await;
    ctx.index.write().unwrap().reset_tiers(tiers.iter());
    fill(&mut writers.lock().unwrap().tiers, tiers);
    let rl: Vec<RateLimitPolicy> = all(client, p, cache::slim).await;
    reset_policies(ctx, RefKind::RateLimitPolicy, &ids(&rl));
    fill(&mut writers.lock().unwrap().rate_limits, rl);
    let cp: Vec<CircuitPolicy> = all(client, p, cache::slim).await;
    reset_policies(ctx, RefKind::CircuitPolicy, &ids(&cp));
    fill(&mut writers.lock().unwrap().circuits, cp);
    let dp: Vec<DegradationProfile> = all(client, p, cache::slim).await;
    reset_policies(ctx, RefKind::DegradationProfile, &ids(&dp));
    fill(&mut writers.lock().unwrap().degradations, dp);
    let secrets: Vec<Secret> = all(client, p, cache::slim).await;
    reset_policies(ctx, RefKind::Secret, &ids(&secrets));
    let secrets = secrets
        .into_iter()
        .map(|s| s.metadata.into_response_partial::<Secret>())
        .collect();
    fill(&mut writers.lock().unwrap().secrets, secrets);
    // Trimmed as the operator's watches trim them.
    let pods: Vec<Pod> = all(client, p, cache::slim).await;
    fill(&mut writers.lock().unwrap().pods, pods);
    let deps: Vec<Deployment> = all(client, p, cache::slim_deployment).await;
    fill(&mut writers.lock().unwrap().deployments, deps);
    let pdbs: Vec<PodDisruptionBudget> = all(client, p, cache::slim).await;
    fill(&mut writers.lock().unwrap().pdbs, pdbs);
}

/// A tier from its spec.
pub fn tier(name: &str, spec: Value) -> DeliveryTier {
    serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "DeliveryTier",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .unwrap()
}

/// A spool tier (embedded queue), optionally under a rate-limit policy.
pub fn spool_tier(name: &str, rate_limit_policy: Option<&str>) -> DeliveryTier {
    let mut spec = json!({"channel": "spool", "spool": {"path": "/var/spool/herald"}});
    if let Some(p) = rate_limit_policy {
        spec["rateLimitPolicyRef"] = json!({"name": p});
    }
    tier(name, spec)
}

pub fn rate_limit_policy(name: &str, rate: u32) -> RateLimitPolicy {
    serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"global": {"rate": rate, "period": "1s"}},
    }))
    .unwrap()
}

pub fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"k": "not-a-real-value"},
    }))
    .unwrap()
}

/// An agent pod of `tier`, running, with a Ready condition.
pub fn agent_pod(tier: &str, name: &str, track: &str, ready: bool, since: Timestamp) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "herald",
                "app.kubernetes.io/managed-by": "herald",
                "herald.dev/tier": tier,
                "herald.dev/track": track,
            },
        },
        "spec": {"containers": [{"name": "agent", "image": IMAGE}]},
        "status": {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "lastTransitionTime": since.to_string(),
            }],
        },
    }))
    .unwrap()
}

/// `/healthz/details` with cumulative counters for `tier`.
pub fn details(tier: &str, delivered: u64, failed: u64, p95_ms: u64) -> Value {
    json!({
        "ready": true,
        "dispatcher": {
            "level": "NORMAL",
            "held": 0,
            "tiers": [{"name": tier, "breaker": "closed", "p95_ms": p95_ms,
                       "counters": {"delivered": delivered, "failed": failed, "rate_limited": 0}}],
        },
        "dependencies": {"store": {"status": "ok"}},
    })
}
