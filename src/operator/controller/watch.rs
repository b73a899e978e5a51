//! The watches: one per kind a tier references or owns, each filling the
//! cache the passes read and mapping every change to the tiers it wakes,
//! and the tiers' own watch as the controller's input.
//!
//! Owns the mapping of a change to tiers: a policy or Secret wakes the
//! tiers that reference it, and only on a change of what they read; a
//! child wakes its owning tier; a tier appearing, changing or leaving wakes
//! the tiers that deliver through it. Leaves to `index` which tier
//! references what.

use std::fmt::Debug;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::{CircuitPolicy, DegradationProfile, DeliveryTier, RateLimitPolicy};
use crate::operator::context::Context;
use crate::operator::error::Result;
use crate::operator::index::RefKind;
use crate::operator::names;

use super::cache::{self, api_for};
use super::{MANAGED_SELECTOR, owning_tier, tier_predicate, tiers_for, write};

/// How `herald operator` runs.
pub(super) type Trigger = mpsc::UnboundedSender<ObjectRef<DeliveryTier>>;

fn send_all(tx: &Trigger, refs: impl IntoIterator<Item = ObjectRef<DeliveryTier>>) {
    for r in refs {
        // Closed only while shutting down.
        let _ = tx.unbounded_send(r);
    }
}

/// Index maintenance and triggers for a referenced kind (policies and
/// Secrets), from its watch events. A policy triggers its tiers only when
/// its generation changed (not on its own status writes); a Secret on any
/// change (it has no generation, and a rotation must roll pods).
struct RefWatch {
    kind: RefKind,
    seen: std::collections::HashMap<(String, String), Option<i64>>,
    listed_once: bool,
}

impl RefWatch {
    fn new(kind: RefKind) -> Self {
        RefWatch {
            kind,
            seen: Default::default(),
            listed_once: false,
        }
    }

    fn on_event<K: Resource>(
        &mut self,
        ev: &WatchEvent<K>,
        store: &[(String, String)],
        ctx: &Context,
        tx: &Trigger,
    ) {
        let id = |o: &K| {
            (
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        let uses_generation = self.kind != RefKind::Secret;
        match ev {
            WatchEvent::Apply(o) | WatchEvent::InitApply(o) => {
                let (ns, name) = id(o);
                write(&ctx.index).apply_policy(self.kind, &ns, &name);
                let generation = if uses_generation {
                    o.meta().generation
                } else {
                    None
                };
                let previous = self.seen.insert((ns.clone(), name.clone()), generation);
                let changed = !uses_generation || previous != Some(generation);
                // During the first list the controller is not running yet.
                let live = matches!(ev, WatchEvent::Apply(_)) || self.listed_once;
                if changed && live {
                    send_all(tx, tiers_for(&ctx.index, self.kind, &ns, &name));
                }
                // A policy's status carries its observedGeneration.
                if uses_generation && changed {
                    ctx.policy_status_dirty.notify_one();
                }
            }
            WatchEvent::Delete(o) => {
                let (ns, name) = id(o);
                write(&ctx.index).delete_policy(self.kind, &ns, &name);
                self.seen.remove(&(ns.clone(), name.clone()));
                send_all(tx, tiers_for(&ctx.index, self.kind, &ns, &name));
            }
            WatchEvent::Init => {}
            WatchEvent::InitDone => {
                write(&ctx.index).reset_policies(
                    self.kind,
                    store.iter().map(|(n, m)| (n.as_str(), m.as_str())),
                );
                self.seen
                    .retain(|k, _| store.iter().any(|(n, m)| (n, m) == (&k.0, &k.1)));
                self.listed_once = true;
                ctx.policy_status_dirty.notify_one();
            }
        }
    }
}

fn ids<K: Resource>(objs: Vec<Arc<K>>) -> Vec<(String, String)> {
    objs.iter()
        .map(|o| {
            (
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Reflect a referenced kind into its store, keeping the index and firing
/// triggers. Runs until the task is aborted.
fn spawn_ref_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: RefKind,
    ctx: Arc<Context>,
    tx: Trigger,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let reader = writer.as_reader();
    tokio::spawn(async move {
        let mut w = RefWatch::new(kind);
        let stream = watcher::watcher(api, cache::watch_config())
            .default_backoff()
            .modify(cache::slim)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    let state = if matches!(ev, WatchEvent::InitDone) {
                        ids(reader.state())
                    } else {
                        Vec::new()
                    };
                    w.on_event(&ev, &state, &ctx, &tx);
                }
                Err(e) => {
                    tracing::warn!(kind = kind.as_str(), error = %e, "watch failed; retrying")
                }
            }
        }
    })
}

/// Watch a kind of child: keep its store (when given), and when one
/// changes mark its tier for re-apply and trigger it.
fn spawn_child_watch<K>(
    api: Api<K>,
    writer: Option<reflector::store::Writer<K>>,
    slim: fn(&mut K),
    ctx: Arc<Context>,
    tx: Trigger,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    tokio::spawn(async move {
        let wc = cache::watch_config().labels(MANAGED_SELECTOR);
        let events = watcher::watcher(api, wc).default_backoff().modify(slim);
        let on_child = |o: &K| {
            if let Some(t) = owning_tier(o.meta()) {
                ctx.mark_dirty(t.clone());
                send_all(&tx, [t]);
            }
        };
        let on_item = |item: std::result::Result<WatchEvent<K>, watcher::Error>| match item {
            Ok(WatchEvent::Apply(o) | WatchEvent::Delete(o)) => on_child(&o),
            Ok(_) => {}
            Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
        };
        match writer {
            Some(w) => {
                let s = events.reflect(w);
                futures::pin_mut!(s);
                while let Some(item) = s.next().await {
                    on_item(item);
                }
            }
            None => {
                futures::pin_mut!(events);
                while let Some(item) = events.next().await {
                    on_item(item);
                }
            }
        }
    })
}

/// The writers of the caches besides the tiers', one per watch.
pub(super) struct Writers {
    pub(super) rate_limits: reflector::store::Writer<RateLimitPolicy>,
    pub(super) circuits: reflector::store::Writer<CircuitPolicy>,
    pub(super) degradations: reflector::store::Writer<DegradationProfile>,
    pub(super) secrets: reflector::store::Writer<PartialObjectMeta<Secret>>,
    pub(super) pods: reflector::store::Writer<Pod>,
    pub(super) deployments: reflector::store::Writer<Deployment>,
    pub(super) pdbs: reflector::store::Writer<PodDisruptionBudget>,
}

/// One watch per kind a tier references (mapped to the tiers that
/// reference it) or owns (mapped to its owner), each filling its cache
/// where the passes read one; agent pods are a cache only (their
/// readiness reaches the tier through its Deployment's status).
pub(super) fn spawn_watches(
    client: &Client,
    ns: Option<&str>,
    writers: Writers,
    ctx: &Arc<Context>,
    tx: &Trigger,
) -> Vec<tokio::task::JoinHandle<()>> {
    let w = Wiring {
        client,
        ns,
        ctx,
        tx,
    };
    vec![
        w.references(writers.rate_limits, RefKind::RateLimitPolicy),
        w.references(writers.circuits, RefKind::CircuitPolicy),
        w.references(writers.degradations, RefKind::DegradationProfile),
        w.references(writers.secrets, RefKind::Secret),
        w.owned(Some(writers.deployments), cache::slim_deployment),
        w.owned(Some(writers.pdbs), cache::slim),
        w.owned::<PartialObjectMeta<ConfigMap>>(None, cache::slim),
        w.owned::<PartialObjectMeta<Service>>(None, cache::slim),
        w.owned::<PartialObjectMeta<ServiceAccount>>(None, cache::slim),
        w.owned::<PartialObjectMeta<Role>>(None, cache::slim),
        w.owned::<PartialObjectMeta<RoleBinding>>(None, cache::slim),
        w.owned::<PartialObjectMeta<PersistentVolumeClaim>>(None, cache::slim),
        spawn_pod_cache(api_for(client, ns), writers.pods),
    ]
}

/// What every watch of [`spawn_watches`] is wired to.
struct Wiring<'a> {
    client: &'a Client,
    ns: Option<&'a str>,
    ctx: &'a Arc<Context>,
    tx: &'a Trigger,
}

impl Wiring<'_> {
    /// A kind tiers reference by name.
    fn references<K>(
        &self,
        writer: reflector::store::Writer<K>,
        kind: RefKind,
    ) -> tokio::task::JoinHandle<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api = api_for(self.client, self.ns);
        spawn_ref_watch(api, writer, kind, self.ctx.clone(), self.tx.clone())
    }

    /// A kind tiers own, cached when `writer` is given.
    fn owned<K>(
        &self,
        writer: Option<reflector::store::Writer<K>>,
        slim: fn(&mut K),
    ) -> tokio::task::JoinHandle<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api = api_for(self.client, self.ns);
        spawn_child_watch(api, writer, slim, self.ctx.clone(), self.tx.clone())
    }
}

/// The agent pods' cache.
fn spawn_pod_cache(
    pods_api: Api<Pod>,
    writer: reflector::store::Writer<Pod>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let wc = cache::watch_config().labels(&format!(
            "{},{}=herald",
            MANAGED_SELECTOR,
            names::LABEL_NAME
        ));
        watcher::watcher(pods_api, wc)
            .default_backoff()
            .modify(cache::slim)
            .reflect(writer)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                }
            })
            .await;
    })
}

/// The tiers' watch as the controller's input: the tier cache filled, the
/// index and the tiers delivering through a changed one told, and only
/// the changes that matter passed on ([`tier_predicate`]).
pub(super) fn tier_events(
    tiers_api: Api<DeliveryTier>,
    writer: reflector::store::Writer<DeliveryTier>,
    reader: Store<DeliveryTier>,
    ctx: &Arc<Context>,
    tx: Trigger,
) -> impl futures::Stream<Item = Result<DeliveryTier, watcher::Error>> + Send + 'static {
    let ctx = ctx.clone();
    watcher::watcher(tiers_api, cache::watch_config())
        .default_backoff()
        .modify(cache::slim)
        .reflect(writer)
        .map_ok(move |ev| {
            on_tier_event(&ev, &reader, &ctx, &tx);
            ev
        })
        .applied_objects()
        .predicate_filter(tier_predicate, Default::default())
}

/// Keep the index in step with the tier watch, forget deleted tiers, and
/// wake the tiers that deliver through a tier that appeared, changed its
/// spec, or went away (their configs hold its spec).
fn on_tier_event(
    ev: &WatchEvent<DeliveryTier>,
    reader: &Store<DeliveryTier>,
    ctx: &Context,
    tx: &Trigger,
) {
    match ev {
        WatchEvent::Apply(t) | WatchEvent::InitApply(t) => {
            let ns = t.namespace().unwrap_or_default();
            let name = t.name_any();
            let changed = write(&ctx.index).apply_tier(t);
            if changed {
                send_all(tx, tiers_for(&ctx.index, RefKind::DeliveryTier, &ns, &name));
            }
            ctx.policy_status_dirty.notify_one();
        }
        WatchEvent::Delete(t) => {
            let ns = t.namespace().unwrap_or_default();
            let name = t.name_any();
            write(&ctx.index).delete_tier(&ns, &name);
            ctx.forget_tier(&ObjectRef::from_obj(t));
            send_all(tx, tiers_for(&ctx.index, RefKind::DeliveryTier, &ns, &name));
            ctx.policy_status_dirty.notify_one();
        }
        WatchEvent::Init => {}
        WatchEvent::InitDone => {
            let all = reader.state();
            write(&ctx.index).reset_tiers(all.iter().map(|t| t.as_ref()));
            ctx.policy_status_dirty.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::Duration;

    use super::super::read;
    use super::*;
    use crate::operator::context::Settings;
    use crate::operator::context::empty_stores;
    use crate::operator::health_client::HttpHealth;
    use crate::operator::index::TierIndex;
    use crate::operator::inputs::OperatorOptions;
    use crate::operator::metrics::Metrics;
    use serde_json::json;

    async fn ctx() -> Context {
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .unwrap();
        Context::new(
            client,
            empty_stores(),
            Arc::new(RwLock::new(TierIndex::new())),
            OperatorOptions::new("herald:test"),
            Settings::default(),
            Arc::new(HttpHealth::new(8080, Duration::from_secs(1)).unwrap()),
            Metrics::new(),
            None,
        )
    }

    fn tier(name: &str, spec: serde_json::Value) -> DeliveryTier {
        serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "DeliveryTier",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        }))
        .unwrap()
    }

    fn policy(generation: i64) -> RateLimitPolicy {
        serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": "bot", "namespace": "ns", "generation": generation},
            "spec": {},
        }))
        .unwrap()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<ObjectRef<DeliveryTier>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r.name);
        }
        out
    }

    #[tokio::test]
    async fn a_policy_wakes_its_tiers_on_spec_changes_only() {
        let ctx = ctx().await;
        write(&ctx.index).apply_tier(&tier(
            "a",
            json!({"channel": "spool", "spool": {"path": "/s"}, "rateLimitPolicyRef": {"name": "bot"}}),
        ));
        let (tx, mut rx) = mpsc::unbounded();
        let mut w = RefWatch::new(RefKind::RateLimitPolicy);
        let listed = vec![("ns".to_owned(), "bot".to_owned())];
        // The first list fills the index; the controller is not running yet.
        w.on_event(&WatchEvent::<RateLimitPolicy>::Init, &[], &ctx, &tx);
        w.on_event(&WatchEvent::InitApply(policy(1)), &[], &ctx, &tx);
        w.on_event(&WatchEvent::<RateLimitPolicy>::InitDone, &listed, &ctx, &tx);
        assert!(drain(&mut rx).is_empty());
        assert!(read(&ctx.index).contains(RefKind::RateLimitPolicy, "ns", "bot"));
        // Its own status write (same generation): nothing to do.
        w.on_event(&WatchEvent::Apply(policy(1)), &[], &ctx, &tx);
        assert!(drain(&mut rx).is_empty());
        // A spec edit, then a deletion: the tier is woken each time.
        w.on_event(&WatchEvent::Apply(policy(2)), &[], &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["a"]);
        w.on_event(&WatchEvent::Delete(policy(2)), &[], &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["a"]);
        assert!(!read(&ctx.index).contains(RefKind::RateLimitPolicy, "ns", "bot"));
    }

    #[tokio::test]
    async fn a_tier_appearing_or_changing_wakes_the_tiers_that_deliver_through_it() {
        let ctx = ctx().await;
        let (tx, mut rx) = mpsc::unbounded();
        let (reader, _writer) = reflector::store::<DeliveryTier>();
        let main = tier(
            "main",
            json!({"channel": "spool", "spool": {"path": "/s"}, "fallbackTiers": ["spare"]}),
        );
        on_tier_event(&WatchEvent::Apply(main.clone()), &reader, &ctx, &tx);
        assert!(drain(&mut rx).is_empty());
        let spare = tier(
            "spare",
            json!({"channel": "spool", "spool": {"path": "/s"}}),
        );
        on_tier_event(&WatchEvent::Apply(spare.clone()), &reader, &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["main"]);
        // A write that leaves the spec alone (its status) is no news to the
        // others; a spec edit is: their configs hold the spec.
        on_tier_event(&WatchEvent::Apply(spare.clone()), &reader, &ctx, &tx);
        assert!(drain(&mut rx).is_empty());
        let mut edited = spare.clone();
        edited.metadata.generation = Some(2);
        on_tier_event(&WatchEvent::Apply(edited), &reader, &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["main"]);
        // So is an edit of a tier reached only through another one, once a
        // pass recorded the reach.
        write(&ctx.index).set_reach("ns", "main", ["spare".into(), "last".into()].into());
        let mut last = tier("last", json!({"channel": "spool", "spool": {"path": "/s"}}));
        last.metadata.generation = Some(1);
        on_tier_event(&WatchEvent::Apply(last.clone()), &reader, &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["main"]);
        last.metadata.generation = Some(2);
        on_tier_event(&WatchEvent::Apply(last), &reader, &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["main"]);
        on_tier_event(&WatchEvent::Delete(spare), &reader, &ctx, &tx);
        assert_eq!(drain(&mut rx), vec!["main"]);
        assert!(!read(&ctx.index).contains(RefKind::DeliveryTier, "ns", "spare"));
    }
}
