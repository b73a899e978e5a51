//! The tiers one agent delivers through, and the policies they need: the
//! agent's own tier, then — transitively — every tier named in a
//! `spec.fallbackTiers` list or in a DegradationProfile's
//! `levels[].actions.routeTo`, each with the policies it references. The
//! agent validates its config file as a closed set (every reference must
//! resolve inside the file, fallback chains must not loop), so the
//! operator renders exactly this set.
//!
//! One walk serves both callers: the controller walks the caches to learn
//! what to read and what is missing, and `desired` walks the result to
//! render it, so the two always agree on the set. Secrets are not looked up
//! here (their wiring is [`agent_config::secret_uses`](super::agent_config::secret_uses)).
//!
//! Pure: lookups come through [`Specs`], which the caller scopes to one
//! namespace (references never cross namespaces). Invariants: every tier
//! and every policy is visited at most once, so cycles end the walk
//! instead of looping; the order is fixed — the agent's tier first, its
//! references in spec order, then breadth-first, fallback tiers before
//! degradation routes — so equal inputs give equal output.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::api::{
    CircuitPolicySpec, DegradationProfileSpec, DeliveryTierSpec, RateLimitPolicySpec,
};

use super::index::{MissingRef, RefKind, Reference, references};
use super::inputs::{DesiredError, ResolvedPolicies};

/// Where the walk reads specs, by name, in the agent's namespace.
pub trait Specs {
    fn tier(&self, name: &str) -> Option<DeliveryTierSpec>;
    fn rate_limit(&self, name: &str) -> Option<RateLimitPolicySpec>;
    fn circuit(&self, name: &str) -> Option<CircuitPolicySpec>;
    fn degradation(&self, name: &str) -> Option<DegradationProfileSpec>;
}

/// What an agent's config holds besides its own tier, each list in walk
/// order without repeats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reach {
    /// The other tiers it may deliver through.
    pub tiers: Vec<(String, DeliveryTierSpec)>,
    /// The policies referenced by its own tier and by those.
    pub rate_limits: Vec<(String, RateLimitPolicySpec)>,
    pub circuits: Vec<(String, CircuitPolicySpec)>,
    pub degradations: Vec<(String, DegradationProfileSpec)>,
    /// Every tier name the walk reached, found or not (the agent's own
    /// excluded): a change to any of them changes this agent's config.
    pub visited: BTreeSet<String>,
    /// References whose target was not found. For a reference made by
    /// another tier or by a profile, `field` names that object first, e.g.
    /// `DeliveryTier/spare: spec.rateLimitPolicyRef.name`.
    pub missing: Vec<MissingRef>,
}

/// Walk from the tier `name` with `spec`.
pub fn walk(name: &str, spec: &DeliveryTierSpec, specs: &dyn Specs) -> Reach {
    let mut w = Walker {
        specs,
        out: Reach::default(),
        policies: HashSet::new(),
        tiers: HashSet::from([name.to_owned()]),
        queue: VecDeque::new(),
    };
    w.visit(name, spec, true);
    while let Some((tier, field)) = w.queue.pop_front() {
        match specs.tier(&tier) {
            Some(s) => {
                w.visit(&tier, &s, false);
                w.out.tiers.push((tier, s));
            }
            None => w.out.missing.push(Reference {
                kind: RefKind::DeliveryTier,
                name: tier,
                field,
            }),
        }
    }
    w.out
}

/// The walk, when it is complete enough to render: a missing reference is
/// an error (the first one), and so is a loop in the fallback chains,
/// which the agent refuses.
pub fn complete(
    name: &str,
    spec: &DeliveryTierSpec,
    specs: &dyn Specs,
) -> Result<Reach, DesiredError> {
    let reach = walk(name, spec, specs);
    if let Some(m) = reach.missing.first() {
        return Err(DesiredError::MissingReference {
            kind: m.kind,
            name: m.name.clone(),
            field: m.field.clone(),
        });
    }
    if let Some(cycle) = fallback_cycle(name, spec, &reach.tiers) {
        return Err(DesiredError::FallbackCycle(cycle.join(" -> ")));
    }
    Ok(reach)
}

impl Reach {
    /// The specs found, keyed by name, for the renderer to walk again.
    /// Secret versions are the caller's to add.
    pub fn into_resolved(self) -> ResolvedPolicies {
        ResolvedPolicies {
            rate_limits: self.rate_limits.into_iter().collect(),
            circuits: self.circuits.into_iter().collect(),
            degradations: self.degradations.into_iter().collect(),
            tiers: self.tiers.into_iter().collect(),
            secret_versions: Default::default(),
        }
    }
}

impl Specs for ResolvedPolicies {
    fn tier(&self, name: &str) -> Option<DeliveryTierSpec> {
        self.tiers.get(name).cloned()
    }
    fn rate_limit(&self, name: &str) -> Option<RateLimitPolicySpec> {
        self.rate_limits.get(name).cloned()
    }
    fn circuit(&self, name: &str) -> Option<CircuitPolicySpec> {
        self.circuits.get(name).cloned()
    }
    fn degradation(&self, name: &str) -> Option<DegradationProfileSpec> {
        self.degradations.get(name).cloned()
    }
}

struct Walker<'a> {
    specs: &'a dyn Specs,
    out: Reach,
    policies: HashSet<(RefKind, String)>,
    tiers: HashSet<String>,
    /// Tiers still to look up, with the field that named them first.
    queue: VecDeque<(String, String)>,
}

impl Walker<'_> {
    fn visit(&mut self, tier: &str, spec: &DeliveryTierSpec, own: bool) {
        let at = |field: &str| {
            if own {
                field.to_owned()
            } else {
                format!("DeliveryTier/{tier}: {field}")
            }
        };
        let mut routes = Vec::new();
        for r in references(spec) {
            match r.kind {
                RefKind::DeliveryTier => self.enqueue(&r.name, at(&r.field)),
                RefKind::Secret => {}
                kind => self.policy(kind, &r.name, at(&r.field), &mut routes),
            }
        }
        for (target, field) in routes {
            self.enqueue(&target, field);
        }
    }

    fn policy(
        &mut self,
        kind: RefKind,
        name: &str,
        field: String,
        routes: &mut Vec<(String, String)>,
    ) {
        if !self.policies.insert((kind, name.to_owned())) {
            return;
        }
        let found = match kind {
            RefKind::RateLimitPolicy => self
                .specs
                .rate_limit(name)
                .map(|s| self.out.rate_limits.push((name.to_owned(), s)))
                .is_some(),
            RefKind::CircuitPolicy => self
                .specs
                .circuit(name)
                .map(|s| self.out.circuits.push((name.to_owned(), s)))
                .is_some(),
            RefKind::DegradationProfile => self
                .specs
                .degradation(name)
                .map(|s| {
                    for (i, level) in s.levels.iter().enumerate() {
                        if let Some(t) = &level.actions.route_to {
                            routes.push((
                                t.clone(),
                                format!(
                                    "DegradationProfile/{name}: spec.levels[{i}].actions.routeTo"
                                ),
                            ));
                        }
                    }
                    self.out.degradations.push((name.to_owned(), s));
                })
                .is_some(),
            RefKind::Secret | RefKind::DeliveryTier => true,
        };
        if !found {
            self.out.missing.push(Reference {
                kind,
                name: name.to_owned(),
                field,
            });
        }
    }

    fn enqueue(&mut self, tier: &str, field: String) {
        if self.tiers.insert(tier.to_owned()) {
            self.out.visited.insert(tier.to_owned());
            self.queue.push_back((tier.to_owned(), field));
        }
    }
}

/// A loop in the fallback chains among the agent's tier and `others`, as
/// the names along it with the first repeated at the end. Only
/// `fallbackTiers` edges count (a degradation route is not a fallback).
pub fn fallback_cycle(
    name: &str,
    spec: &DeliveryTierSpec,
    others: &[(String, DeliveryTierSpec)],
) -> Option<Vec<String>> {
    let nodes: Vec<(&str, &DeliveryTierSpec)> = std::iter::once((name, spec))
        .chain(others.iter().map(|(n, s)| (n.as_str(), s)))
        .collect();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; nodes.len()];
    for start in 0..nodes.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // Depth-first without recursion: (node, next edge to follow).
        let mut path = vec![(start, 0usize)];
        mark[start] = Mark::OnPath;
        while let Some(&(node, next)) = path.last() {
            let edges = &nodes[node].1.fallback_tiers;
            let Some(target) = edges.get(next) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            let Some(&t) = index.get(target.as_str()) else {
                continue;
            };
            match mark[t] {
                Mark::New => {
                    mark[t] = Mark::OnPath;
                    path.push((t, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(n, _)| *n == t).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..]
                        .iter()
                        .map(|(n, _)| nodes[*n].0.to_owned())
                        .collect();
                    cycle.push(nodes[t].0.to_owned());
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tier(v: serde_json::Value) -> DeliveryTierSpec {
        let mut base = json!({"channel": "spool", "spool": {"path": "/s"}});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn routes_to(targets: &[&str]) -> DegradationProfileSpec {
        let levels: Vec<_> = ["MINOR", "MODERATE", "SEVERE", "CRITICAL"]
            .iter()
            .zip(targets)
            .map(|(l, t)| json!({"level": l, "entry": {"queueDepth": 100}, "actions": {"routeTo": t}}))
            .collect();
        serde_json::from_value(json!({ "levels": levels })).unwrap()
    }

    fn set(tiers: &[(&str, DeliveryTierSpec)]) -> ResolvedPolicies {
        ResolvedPolicies {
            tiers: tiers
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.clone()))
                .collect(),
            ..ResolvedPolicies::default()
        }
    }

    fn names<T>(v: &[(String, T)]) -> Vec<&str> {
        v.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn follows_fallbacks_and_routes_transitively_breadth_first() {
        let mut p = set(&[
            (
                "b",
                tier(json!({"fallbackTiers": ["d"], "rateLimitPolicyRef": {"name": "rl-b"}})),
            ),
            ("c", tier(json!({"rateLimitPolicyRef": {"name": "shared"}}))),
            (
                "d",
                tier(json!({"degradationProfileRef": {"name": "dp-d"}})),
            ),
            ("e", tier(json!({}))),
            ("r", tier(json!({}))),
        ]);
        p.rate_limits = [
            ("shared".to_owned(), RateLimitPolicySpec::default()),
            ("rl-b".to_owned(), RateLimitPolicySpec::default()),
        ]
        .into();
        p.degradations = [
            ("dp-a".to_owned(), routes_to(&["r"])),
            ("dp-d".to_owned(), routes_to(&["e", "e"])),
        ]
        .into();
        let a = tier(json!({
            "fallbackTiers": ["b", "c"],
            "rateLimitPolicyRef": {"name": "shared"},
            "degradationProfileRef": {"name": "dp-a"},
        }));
        let r = walk("a", &a, &p);
        assert!(r.missing.is_empty(), "{:?}", r.missing);
        assert_eq!(names(&r.tiers), ["b", "c", "r", "d", "e"]);
        assert_eq!(names(&r.rate_limits), ["shared", "rl-b"]);
        assert_eq!(names(&r.degradations), ["dp-a", "dp-d"]);
        assert_eq!(
            r.visited.iter().map(String::as_str).collect::<Vec<_>>(),
            ["b", "c", "d", "e", "r"]
        );
        // Walking what was found finds the same again.
        let again = walk("a", &a, &r.clone().into_resolved());
        assert_eq!(again, r);
    }

    #[test]
    fn missing_targets_name_the_object_that_refers_to_them() {
        let p = set(&[(
            "b",
            tier(json!({"fallbackTiers": ["gone"], "circuitPolicyRef": {"name": "cp"}})),
        )]);
        let mut p = p;
        p.degradations = [("dp".to_owned(), routes_to(&["b", "nowhere"]))].into();
        let a = tier(json!({"fallbackTiers": ["b"], "degradationProfileRef": {"name": "dp"}}));
        let r = walk("a", &a, &p);
        let got: Vec<(RefKind, &str, &str)> = r
            .missing
            .iter()
            .map(|m| (m.kind, m.name.as_str(), m.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    RefKind::CircuitPolicy,
                    "cp",
                    "DeliveryTier/b: spec.circuitPolicyRef.name"
                ),
                (
                    RefKind::DeliveryTier,
                    "nowhere",
                    "DegradationProfile/dp: spec.levels[1].actions.routeTo"
                ),
                (
                    RefKind::DeliveryTier,
                    "gone",
                    "DeliveryTier/b: spec.fallbackTiers[0]"
                ),
            ]
        );
        // Missing tiers are still visited: their appearance matters.
        assert!(r.visited.contains("gone") && r.visited.contains("nowhere"));
        let err = complete("a", &a, &p).unwrap_err();
        assert!(
            matches!(&err, DesiredError::MissingReference { name, .. } if name == "cp"),
            "{err:?}"
        );
    }

    #[test]
    fn cycles_end_the_walk_and_fail_completion() {
        let p = set(&[
            ("b", tier(json!({"fallbackTiers": ["c"]}))),
            ("c", tier(json!({"fallbackTiers": ["a", "b"]}))),
        ]);
        let a = tier(json!({"fallbackTiers": ["b"]}));
        let r = walk("a", &a, &p);
        assert_eq!(names(&r.tiers), ["b", "c"]);
        assert!(!r.visited.contains("a"));
        assert_eq!(
            fallback_cycle("a", &a, &r.tiers).unwrap(),
            ["a", "b", "c", "a"]
        );
        let err = complete("a", &a, &p).unwrap_err();
        assert_eq!(err, DesiredError::FallbackCycle("a -> b -> c -> a".into()));
        // A loop that does not pass through the agent's own tier counts too.
        let p = set(&[
            ("b", tier(json!({"fallbackTiers": ["c"]}))),
            ("c", tier(json!({"fallbackTiers": ["b"]}))),
        ]);
        assert_eq!(
            complete("a", &a, &p).unwrap_err(),
            DesiredError::FallbackCycle("b -> c -> b".into())
        );
        // A route back to the agent's tier is not a fallback loop.
        let mut p = set(&[("b", tier(json!({"degradationProfileRef": {"name": "dp"}})))]);
        p.degradations = [("dp".to_owned(), routes_to(&["a"]))].into();
        let r = complete("a", &a, &p).unwrap();
        assert_eq!(names(&r.tiers), ["b"]);
    }

    #[test]
    fn no_fallbacks_reach_nothing() {
        let a = tier(json!({}));
        let r = complete("a", &a, &ResolvedPolicies::default()).unwrap();
        assert_eq!(r, Reach::default());
    }
}
