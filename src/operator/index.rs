//! Which tiers reference which policy, Secret or fallback tier — the index
//! behind the controller's watch mappers, each policy's `usedBy`, and the
//! tier's missing-reference condition — and which other tiers each tier's
//! agent config last included (its *reach*: fallbacks and degradation
//! routes, transitively, as walked by [`reach`](super::reach)).
//!
//! A plain struct driven by apply and delete (from the watches) and by
//! [`set_reach`](TierIndex::set_reach) (from each pass, which is the only
//! place that sees the profiles' `routeTo`), one writer, no I/O. It holds
//! names only: never a spec, never a Secret's data. Invariant: after any
//! sequence of calls, `tiers_referencing(k, ns, n)` is exactly the set of
//! applied tiers whose current spec references `(k, ns, n)`, plus every
//! tier whose recorded reach holds one of those tiers (or, for a tier,
//! `n` itself) — so a change to a fallback tier or to anything it
//! references re-renders the tiers that deliver through it; references
//! never cross namespaces.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::api::{DeliveryTier, DeliveryTierSpec};

use super::secrets::secret_refs;

/// The kinds a tier can reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    RateLimitPolicy,
    CircuitPolicy,
    DegradationProfile,
    Secret,
    DeliveryTier,
}

impl RefKind {
    pub const ALL: [RefKind; 5] = [
        RefKind::RateLimitPolicy,
        RefKind::CircuitPolicy,
        RefKind::DegradationProfile,
        RefKind::Secret,
        RefKind::DeliveryTier,
    ];

    /// The Kubernetes `kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefKind::RateLimitPolicy => "RateLimitPolicy",
            RefKind::CircuitPolicy => "CircuitPolicy",
            RefKind::DegradationProfile => "DegradationProfile",
            RefKind::Secret => "Secret",
            RefKind::DeliveryTier => "DeliveryTier",
        }
    }
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier, as the controller's `ObjectRef` needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierRef {
    pub namespace: String,
    pub name: String,
}

/// One reference from a tier's spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub kind: RefKind,
    pub name: String,
    /// Where in the tier it is written, e.g. `spec.circuitPolicyRef.name`.
    pub field: String,
}

/// A reference whose target is not known to the index.
pub type MissingRef = Reference;

/// Every reference a tier spec makes that matters for running it, in spec
/// order. Secrets count only where the tier uses them: the token for a
/// telegram channel, the HMAC key for a webhook channel, the Redis URL for
/// a redis store — a leftover section of another channel references
/// nothing.
pub fn references(spec: &DeliveryTierSpec) -> Vec<Reference> {
    let mut out = Vec::new();
    let policies = [
        (
            RefKind::RateLimitPolicy,
            &spec.rate_limit_policy_ref,
            "spec.rateLimitPolicyRef.name",
        ),
        (
            RefKind::CircuitPolicy,
            &spec.circuit_policy_ref,
            "spec.circuitPolicyRef.name",
        ),
        (
            RefKind::DegradationProfile,
            &spec.degradation_profile_ref,
            "spec.degradationProfileRef.name",
        ),
    ];
    for (kind, r, field) in policies {
        if let Some(r) = r {
            out.push(Reference {
                kind,
                name: r.name.clone(),
                field: field.to_owned(),
            });
        }
    }
    for (role, r) in secret_refs(spec) {
        out.push(Reference {
            kind: RefKind::Secret,
            name: r.name.clone(),
            field: role.field_path().to_owned(),
        });
    }
    for (i, t) in spec.fallback_tiers.iter().enumerate() {
        out.push(Reference {
            kind: RefKind::DeliveryTier,
            name: t.clone(),
            field: format!("spec.fallbackTiers[{i}]"),
        });
    }
    out
}

type Key = (RefKind, String, String);

/// Tier ⇄ reference index for one cluster (all namespaces).
#[derive(Clone, Debug, Default)]
pub struct TierIndex {
    /// What each applied tier references, and its generation.
    tiers: HashMap<TierRef, (Option<i64>, Vec<Reference>)>,
    /// Reverse map: target → names of the tiers (in the target's namespace)
    /// that reference it.
    referrers: HashMap<Key, BTreeSet<String>>,
    /// Targets that exist (policies, Secrets, tiers).
    present: HashSet<Key>,
    /// The other tiers each tier's last pass included.
    reach: HashMap<TierRef, BTreeSet<String>>,
    /// Reverse of `reach`: tier → names of the tiers (same namespace) whose
    /// reach holds it.
    reached_by: HashMap<TierRef, BTreeSet<String>>,
}

fn tier_ref(tier: &DeliveryTier) -> TierRef {
    TierRef {
        namespace: tier.metadata.namespace.clone().unwrap_or_default(),
        name: tier.metadata.name.clone().unwrap_or_default(),
    }
}

impl TierIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tier was created or changed. Returns whether it is new or its
    /// spec changed (a new generation): news for the tiers that deliver
    /// through it, which a status write is not.
    pub fn apply_tier(&mut self, tier: &DeliveryTier) -> bool {
        let id = tier_ref(tier);
        let generation = tier.metadata.generation;
        let changed = self.tiers.get(&id).map(|(g, _)| *g) != Some(generation);
        self.unlink(&id);
        let refs = references(&tier.spec);
        for r in &refs {
            self.referrers
                .entry((r.kind, id.namespace.clone(), r.name.clone()))
                .or_default()
                .insert(id.name.clone());
        }
        self.present
            .insert((RefKind::DeliveryTier, id.namespace.clone(), id.name.clone()));
        self.tiers.insert(id, (generation, refs));
        changed
    }

    /// A tier was deleted.
    pub fn delete_tier(&mut self, namespace: &str, name: &str) {
        let id = TierRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.unlink(&id);
        self.tiers.remove(&id);
        self.set_reach(namespace, name, BTreeSet::new());
        self.present
            .remove(&(RefKind::DeliveryTier, id.namespace, id.name));
    }

    /// A pass rendered (or tried to render) the tier `name` with these
    /// other tiers, found or not: from now on a change to any of them, or
    /// to anything they reference, maps to `name` too.
    pub fn set_reach(&mut self, namespace: &str, name: &str, reached: BTreeSet<String>) {
        let id = TierRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let old = if reached.is_empty() {
            self.reach.remove(&id)
        } else {
            self.reach.insert(id.clone(), reached.clone())
        };
        for t in old.iter().flatten().filter(|t| !reached.contains(*t)) {
            let key = TierRef {
                namespace: namespace.to_owned(),
                name: t.clone(),
            };
            if let Some(set) = self.reached_by.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.reached_by.remove(&key);
                }
            }
        }
        for t in reached {
            self.reached_by
                .entry(TierRef {
                    namespace: namespace.to_owned(),
                    name: t,
                })
                .or_default()
                .insert(name.to_owned());
        }
    }

    /// A policy or Secret was created or changed. (Tiers go through
    /// [`apply_tier`](Self::apply_tier); passing `DeliveryTier` here only
    /// marks the name present.)
    pub fn apply_policy(&mut self, kind: RefKind, namespace: &str, name: &str) {
        self.present
            .insert((kind, namespace.to_owned(), name.to_owned()));
    }

    /// A policy or Secret was deleted.
    pub fn delete_policy(&mut self, kind: RefKind, namespace: &str, name: &str) {
        self.present
            .remove(&(kind, namespace.to_owned(), name.to_owned()));
    }

    /// A watch of `kind` restarted and listed these objects: they replace
    /// everything known of that kind (objects deleted while the watch was
    /// down disappear).
    pub fn reset_policies<'a>(
        &mut self,
        kind: RefKind,
        objects: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.present.retain(|(k, _, _)| *k != kind);
        for (ns, name) in objects {
            self.apply_policy(kind, ns, name);
        }
    }

    /// The tier watch restarted and listed these tiers. The reach of a
    /// listed tier is kept (it is as of that tier's last pass); that of a
    /// tier no longer listed goes.
    pub fn reset_tiers<'a>(&mut self, tiers: impl IntoIterator<Item = &'a DeliveryTier>) {
        self.tiers.clear();
        self.referrers.clear();
        self.present.retain(|(k, _, _)| *k != RefKind::DeliveryTier);
        for t in tiers {
            self.apply_tier(t);
        }
        let gone: Vec<TierRef> = self
            .reach
            .keys()
            .filter(|id| !self.tiers.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.set_reach(&id.namespace, &id.name, BTreeSet::new());
        }
    }

    /// The tiers to reconcile when `(kind, namespace, name)` changes: those
    /// that reference it, and those whose reach holds one of them (or, for
    /// a tier, holds it), sorted.
    pub fn tiers_referencing(&self, kind: RefKind, namespace: &str, name: &str) -> Vec<TierRef> {
        let reached_by = |tier: &str| {
            self.reached_by
                .get(&TierRef {
                    namespace: namespace.to_owned(),
                    name: tier.to_owned(),
                })
                .into_iter()
                .flatten()
        };
        let mut out: BTreeSet<&String> = BTreeSet::new();
        for t in self.referrers_of(kind, namespace, name) {
            out.insert(t);
            out.extend(reached_by(t));
        }
        if kind == RefKind::DeliveryTier {
            out.extend(reached_by(name));
        }
        out.into_iter()
            .map(|t| TierRef {
                namespace: namespace.to_owned(),
                name: t.clone(),
            })
            .collect()
    }

    /// Names of the tiers that reference `(kind, namespace, name)`, sorted:
    /// a policy's `status.usedBy`.
    pub fn used_by(&self, kind: RefKind, namespace: &str, name: &str) -> Vec<String> {
        self.referrers_of(kind, namespace, name).cloned().collect()
    }

    /// References of `tier` whose target the index has not seen, in spec
    /// order. Works for a tier not yet applied.
    pub fn missing_refs(&self, tier: &DeliveryTier) -> Vec<MissingRef> {
        let ns = tier.metadata.namespace.clone().unwrap_or_default();
        references(&tier.spec)
            .into_iter()
            .filter(|r| !self.present.contains(&(r.kind, ns.clone(), r.name.clone())))
            .collect()
    }

    /// Whether `(kind, namespace, name)` is known to exist.
    pub fn contains(&self, kind: RefKind, namespace: &str, name: &str) -> bool {
        self.present
            .contains(&(kind, namespace.to_owned(), name.to_owned()))
    }

    fn referrers_of(
        &self,
        kind: RefKind,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &String> {
        self.referrers
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
    }

    fn unlink(&mut self, id: &TierRef) {
        let Some((_, old)) = self.tiers.get(id) else {
            return;
        };
        for r in old {
            let key = (r.kind, id.namespace.clone(), r.name.clone());
            if let Some(set) = self.referrers.get_mut(&key) {
                set.remove(&id.name);
                if set.is_empty() {
                    self.referrers.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::delivery_tier::{
        Channel, RedisStoreSpec, StoreKind, StoreSpec, TelegramSpec, WebhookSpec,
    };
    use crate::api::refs::{LocalRef, SecretKeyRef};
    use proptest::prelude::*;

    fn mk_tier(ns: &str, name: &str, f: impl FnOnce(&mut DeliveryTierSpec)) -> DeliveryTier {
        let mut spec: DeliveryTierSpec = serde_json::from_value(
            serde_json::json!({"channel": "spool", "spool": {"path": "/s"}}),
        )
        .unwrap();
        f(&mut spec);
        let mut t = DeliveryTier::new(name, spec);
        t.metadata.namespace = Some(ns.to_owned());
        t
    }

    fn lref(n: &str) -> Option<LocalRef> {
        Some(LocalRef { name: n.into() })
    }

    fn sref(n: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: n.into(),
            key: "k".into(),
        }
    }

    fn tr(ns: &str, name: &str) -> TierRef {
        TierRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_policy_change_maps_to_exactly_the_referencing_tiers() {
        let mut idx = TierIndex::new();
        idx.apply_tier(&mk_tier("ns", "a", |s| {
            s.rate_limit_policy_ref = lref("bot")
        }));
        idx.apply_tier(&mk_tier("ns", "b", |s| {
            s.rate_limit_policy_ref = lref("bot")
        }));
        idx.apply_tier(&mk_tier("ns", "c", |s| {
            s.rate_limit_policy_ref = lref("other")
        }));
        idx.apply_tier(&mk_tier("other-ns", "d", |s| {
            s.rate_limit_policy_ref = lref("bot")
        }));
        idx.apply_tier(&mk_tier("ns", "e", |s| s.circuit_policy_ref = lref("bot")));

        assert_eq!(
            idx.tiers_referencing(RefKind::RateLimitPolicy, "ns", "bot"),
            vec![tr("ns", "a"), tr("ns", "b")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::RateLimitPolicy, "other-ns", "bot"),
            vec![tr("other-ns", "d")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "bot"),
            vec![tr("ns", "e")]
        );
        assert!(
            idx.tiers_referencing(RefKind::DegradationProfile, "ns", "bot")
                .is_empty()
        );
        assert_eq!(
            idx.used_by(RefKind::RateLimitPolicy, "ns", "bot"),
            vec!["a", "b"]
        );
    }

    #[test]
    fn changing_a_tier_moves_its_references() {
        let mut idx = TierIndex::new();
        idx.apply_tier(&mk_tier("ns", "a", |s| s.circuit_policy_ref = lref("old")));
        idx.apply_tier(&mk_tier("ns", "a", |s| s.circuit_policy_ref = lref("new")));
        assert!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "old")
                .is_empty()
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "new"),
            vec![tr("ns", "a")]
        );
        idx.delete_tier("ns", "a");
        assert!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "new")
                .is_empty()
        );
        assert!(idx.used_by(RefKind::CircuitPolicy, "ns", "new").is_empty());
    }

    #[test]
    fn secrets_map_through_every_ref_the_tier_uses() {
        let mut idx = TierIndex::new();
        idx.apply_tier(&mk_tier("ns", "tg", |s| {
            s.channel = Channel::Telegram;
            s.telegram = Some(TelegramSpec {
                token_secret_ref: Some(sref("bot-token")),
                api_url: "https://api.telegram.org".into(),
            });
            s.store = StoreSpec {
                kind: StoreKind::Redis,
                embedded: None,
                redis: Some(RedisStoreSpec {
                    url_secret_ref: sref("redis"),
                    partitions: 8,
                    key_prefix: "h".into(),
                }),
            };
        }));
        idx.apply_tier(&mk_tier("ns", "wh", |s| {
            s.channel = Channel::Webhook;
            s.webhook = Some(WebhookSpec {
                url: Some("https://example.com".into()),
                hmac_secret_ref: Some(sref("hmac")),
                signature_header: "X-Sig".into(),
            });
            // A leftover telegram section is not used by a webhook tier.
            s.telegram = Some(TelegramSpec {
                token_secret_ref: Some(sref("bot-token")),
                api_url: "https://api.telegram.org".into(),
            });
        }));
        assert_eq!(
            idx.tiers_referencing(RefKind::Secret, "ns", "bot-token"),
            vec![tr("ns", "tg")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::Secret, "ns", "redis"),
            vec![tr("ns", "tg")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::Secret, "ns", "hmac"),
            vec![tr("ns", "wh")]
        );
    }

    #[test]
    fn missing_refs_name_kind_and_field_until_the_target_appears() {
        let mut idx = TierIndex::new();
        let tier = mk_tier("ns", "a", |s| {
            s.rate_limit_policy_ref = lref("rl");
            s.degradation_profile_ref = lref("dp");
            s.fallback_tiers = vec!["spool".into()];
        });
        idx.apply_tier(&tier);
        let missing = idx.missing_refs(&tier);
        assert_eq!(
            missing
                .iter()
                .map(|m| (m.kind, m.name.as_str(), m.field.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (
                    RefKind::RateLimitPolicy,
                    "rl",
                    "spec.rateLimitPolicyRef.name"
                ),
                (
                    RefKind::DegradationProfile,
                    "dp",
                    "spec.degradationProfileRef.name"
                ),
                (RefKind::DeliveryTier, "spool", "spec.fallbackTiers[0]"),
            ]
        );
        idx.apply_policy(RefKind::RateLimitPolicy, "ns", "rl");
        idx.apply_policy(RefKind::DegradationProfile, "other", "dp");
        idx.apply_tier(&mk_tier("ns", "spool", |_| {}));
        let missing = idx.missing_refs(&tier);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].kind, RefKind::DegradationProfile);
        // A tier appearing maps to the tiers that fall back to it.
        assert_eq!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "spool"),
            vec![tr("ns", "a")]
        );
        idx.delete_policy(RefKind::RateLimitPolicy, "ns", "rl");
        assert_eq!(idx.missing_refs(&tier).len(), 2);
    }

    #[test]
    fn a_reset_forgets_objects_deleted_while_the_watch_was_down() {
        let mut idx = TierIndex::new();
        idx.apply_policy(RefKind::CircuitPolicy, "ns", "gone");
        idx.apply_policy(RefKind::CircuitPolicy, "ns", "kept");
        idx.apply_policy(RefKind::Secret, "ns", "gone");
        idx.reset_policies(RefKind::CircuitPolicy, [("ns", "kept")]);
        assert!(!idx.contains(RefKind::CircuitPolicy, "ns", "gone"));
        assert!(idx.contains(RefKind::CircuitPolicy, "ns", "kept"));
        assert!(idx.contains(RefKind::Secret, "ns", "gone"));

        let a = mk_tier("ns", "a", |s| s.circuit_policy_ref = lref("kept"));
        let b = mk_tier("ns", "b", |s| s.circuit_policy_ref = lref("kept"));
        idx.apply_tier(&a);
        idx.apply_tier(&b);
        idx.reset_tiers([&b]);
        assert_eq!(idx.used_by(RefKind::CircuitPolicy, "ns", "kept"), vec!["b"]);
        assert!(!idx.contains(RefKind::DeliveryTier, "ns", "a"));
    }

    #[test]
    fn a_change_maps_to_the_tiers_whose_reach_holds_its_referrer() {
        let mut idx = TierIndex::new();
        // main falls back to spare; spare falls back to last and uses "rl";
        // main's profile routes to "route" (only the pass knows that).
        idx.apply_tier(&mk_tier("ns", "main", |s| {
            s.fallback_tiers = vec!["spare".into()]
        }));
        idx.apply_tier(&mk_tier("ns", "spare", |s| {
            s.fallback_tiers = vec!["last".into()];
            s.rate_limit_policy_ref = lref("rl");
        }));
        idx.apply_tier(&mk_tier("ns", "last", |_| {}));
        idx.apply_tier(&mk_tier("ns", "route", |s| {
            s.circuit_policy_ref = lref("cp")
        }));
        idx.apply_tier(&mk_tier("other", "main", |_| {}));
        let reach = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        idx.set_reach("ns", "main", reach(&["spare", "last", "route"]));
        idx.set_reach("ns", "spare", reach(&["last"]));

        assert_eq!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "last"),
            vec![tr("ns", "main"), tr("ns", "spare")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "route"),
            vec![tr("ns", "main")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::RateLimitPolicy, "ns", "rl"),
            vec![tr("ns", "main"), tr("ns", "spare")]
        );
        assert_eq!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "cp"),
            vec![tr("ns", "main"), tr("ns", "route")]
        );
        // usedBy stays the direct referrers.
        assert_eq!(
            idx.used_by(RefKind::RateLimitPolicy, "ns", "rl"),
            vec!["spare"]
        );

        // A smaller reach forgets; a deleted tier forgets its reach.
        idx.set_reach("ns", "main", reach(&["spare"]));
        assert_eq!(
            idx.tiers_referencing(RefKind::CircuitPolicy, "ns", "cp"),
            vec![tr("ns", "route")]
        );
        idx.delete_tier("ns", "spare");
        assert_eq!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "last"),
            Vec::<TierRef>::new()
        );
        // A relist keeps the reach of listed tiers only.
        idx.set_reach("ns", "route", reach(&["last"]));
        let main = mk_tier("ns", "main", |s| s.fallback_tiers = vec!["spare".into()]);
        idx.reset_tiers([&main]);
        assert_eq!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "spare"),
            vec![tr("ns", "main")]
        );
        assert!(
            idx.tiers_referencing(RefKind::DeliveryTier, "ns", "last")
                .is_empty()
        );
    }

    #[test]
    fn applying_a_tier_tells_whether_its_spec_changed() {
        let mut idx = TierIndex::new();
        let mut t = mk_tier("ns", "a", |_| {});
        t.metadata.generation = Some(1);
        assert!(idx.apply_tier(&t), "new");
        assert!(!idx.apply_tier(&t), "a status write");
        t.metadata.generation = Some(2);
        assert!(idx.apply_tier(&t), "a spec edit");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply {
            ns: u8,
            tier: u8,
            rl: Option<u8>,
            cp: Option<u8>,
            fb: Vec<u8>,
        },
        Delete {
            ns: u8,
            tier: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0u8..2,
                0u8..4,
                proptest::option::of(0u8..3),
                proptest::option::of(0u8..3),
                proptest::collection::vec(0u8..4, 0..3)
            )
                .prop_map(|(ns, tier, rl, cp, fb)| Op::Apply {
                    ns,
                    tier,
                    rl,
                    cp,
                    fb
                }),
            (0u8..2, 0u8..4).prop_map(|(ns, tier)| Op::Delete { ns, tier }),
        ]
    }

    proptest! {
        /// The reverse map always equals a brute-force scan of the tiers'
        /// current specs.
        #[test]
        fn reverse_map_equals_a_scan(ops in proptest::collection::vec(op(), 0..40)) {
            let mut idx = TierIndex::new();
            let mut model: HashMap<(String, String), DeliveryTier> = HashMap::new();
            for op in ops {
                match op {
                    Op::Apply { ns, tier, rl, cp, fb } => {
                        let (ns, name) = (format!("ns{ns}"), format!("t{tier}"));
                        let t = mk_tier(&ns, &name, |s| {
                            s.rate_limit_policy_ref = rl.map(|p| LocalRef { name: format!("p{p}") });
                            s.circuit_policy_ref = cp.map(|p| LocalRef { name: format!("p{p}") });
                            s.fallback_tiers = fb.iter().map(|f| format!("t{f}")).collect();
                        });
                        idx.apply_tier(&t);
                        model.insert((ns, name), t);
                    }
                    Op::Delete { ns, tier } => {
                        let (ns, name) = (format!("ns{ns}"), format!("t{tier}"));
                        idx.delete_tier(&ns, &name);
                        model.remove(&(ns, name));
                    }
                }
            }
            for ns in ["ns0", "ns1"] {
                for kind in [RefKind::RateLimitPolicy, RefKind::CircuitPolicy, RefKind::DeliveryTier] {
                    for target in ["p0", "p1", "p2", "t0", "t1", "t2", "t3"] {
                        let mut want: Vec<TierRef> = model
                            .iter()
                            .filter(|((tns, _), t)| {
                                tns == ns
                                    && references(&t.spec)
                                        .iter()
                                        .any(|r| r.kind == kind && r.name == target)
                            })
                            .map(|((tns, name), _)| tr(tns, name))
                            .collect();
                        want.sort();
                        prop_assert_eq!(idx.tiers_referencing(kind, ns, target), want);
                    }
                }
            }
        }
    }
}
