//! Cross-document checks that no single schema can express: every reference
//! from a DeliveryTier (policies, fallback tiers) and from a
//! DegradationProfile (`routeTo`) names an object in the same set and
//! namespace; names are unique per kind; fallback chains have no cycles.

use std::collections::{HashMap, HashSet};

use super::{Object, Report};

/// Append reference diagnostics for `report.objects` to `report`.
pub fn check(report: &mut Report) {
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut found = Vec::new();
    for (i, o) in report.objects.iter().enumerate() {
        let key = (o.kind.as_str(), o.namespace.as_str(), o.name.as_str());
        if let Some(first) = seen.insert(key, i) {
            let f = &report.objects[first];
            found.push(o.diag(
                "metadata.name",
                format!(
                    "duplicate: {}/{} is also defined at {}:{}",
                    o.kind,
                    o.name,
                    f.file,
                    f.doc.position_of("metadata.name").line
                ),
            ));
        }
    }
    let exists = |kind: &str, ns: &str, name: &str| seen.contains_key(&(kind, ns, name));

    for o in &report.objects {
        let ns = o.namespace.as_str();
        match &o.object {
            Object::Tier(t) => {
                let refs = [
                    (
                        "spec.rateLimitPolicyRef.name",
                        "RateLimitPolicy",
                        &t.spec.rate_limit_policy_ref,
                    ),
                    (
                        "spec.circuitPolicyRef.name",
                        "CircuitPolicy",
                        &t.spec.circuit_policy_ref,
                    ),
                    (
                        "spec.degradationProfileRef.name",
                        "DegradationProfile",
                        &t.spec.degradation_profile_ref,
                    ),
                ];
                for (path, kind, r) in refs {
                    if let Some(r) = r
                        && !exists(kind, ns, &r.name)
                    {
                        found.push(o.diag(
                            path,
                            format!("{kind} {:?} not found in namespace {ns:?}", r.name),
                        ));
                    }
                }
                for (i, f) in t.spec.fallback_tiers.iter().enumerate() {
                    if !exists("DeliveryTier", ns, f) {
                        found.push(o.diag(
                            &format!("spec.fallbackTiers[{i}]"),
                            format!("DeliveryTier {f:?} not found in namespace {ns:?}"),
                        ));
                    }
                }
            }
            Object::Degradation(d) => {
                for (i, level) in d.spec.levels.iter().enumerate() {
                    if let Some(target) = &level.actions.route_to
                        && !exists("DeliveryTier", ns, target)
                    {
                        found.push(o.diag(
                            &format!("spec.levels[{i}].actions.routeTo"),
                            format!("DeliveryTier {target:?} not found in namespace {ns:?}"),
                        ));
                    }
                }
            }
            Object::Agent(a) => {
                if let Some(entry) = &a.entry_tier
                    && !exists("DeliveryTier", ns, entry)
                {
                    found.push(o.diag(
                        "spec.entryTier",
                        format!("DeliveryTier {entry:?} not found in namespace {ns:?}"),
                    ));
                }
            }
            _ => {}
        }
    }
    found.extend(fallback_cycles(report));
    report.diagnostics.extend(found);
}

fn fallback_cycles(report: &Report) -> Vec<super::Diagnostic> {
    let tiers: HashMap<(&str, &str), (&super::Located, &Vec<String>)> = report
        .objects
        .iter()
        .filter_map(|o| match &o.object {
            Object::Tier(t) => Some((
                (o.namespace.as_str(), o.name.as_str()),
                (o, &t.spec.fallback_tiers),
            )),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    let mut names: Vec<_> = tiers.keys().copied().collect();
    names.sort();
    for start in names {
        // Depth-first from `start`; a path back to `start` is a cycle,
        // reported once, on the tier that sorts first in it.
        let mut stack = vec![(start.1, vec![start.1])];
        let mut visited = HashSet::new();
        while let Some((at, path)) = stack.pop() {
            let Some((_, next)) = tiers.get(&(start.0, at)) else {
                continue;
            };
            for n in next.iter() {
                if n == start.1 {
                    if path.iter().all(|p| *p >= start.1) {
                        let (located, _) = tiers[&start];
                        let mut cycle = path.clone();
                        cycle.push(start.1);
                        out.push(located.diag(
                            "spec.fallbackTiers",
                            format!("fallback cycle: {}", cycle.join(" -> ")),
                        ));
                    }
                } else if visited.insert(n.as_str()) {
                    let mut p = path.clone();
                    p.push(n.as_str());
                    stack.push((n.as_str(), p));
                }
            }
        }
    }
    out
}
