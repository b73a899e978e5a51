//! Names, labels, selectors and annotation keys of everything the operator
//! creates for a tier.
//!
//! Owns the naming scheme only; the objects themselves are built in
//! `desired`. Invariant: within one kind, the name of a child is an
//! injective function of the tier name — two tiers never claim the same
//! object. That is why the stable and canary Deployments both carry a
//! suffix (`-agent`, `-canary`): with `<tier>` for stable, a tier named
//! `x-canary` would fight tier `x` over one Deployment.

use std::collections::BTreeMap;

/// Server-side apply field manager for everything herald writes.
pub const MANAGER: &str = "herald";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_TIER: &str = "herald.dev/tier";
/// `stable` or `canary`, on pods only.
pub const LABEL_TRACK: &str = "herald.dev/track";

/// On the pod template: hash of what the pods run (template, store, secret
/// versions). A change rolls pods; nothing else does.
pub const ANNOTATION_POD_REVISION: &str = "herald.dev/pod-revision";

/// The pod revision a Deployment's template carries, if any.
pub fn pod_revision_of(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(ANNOTATION_POD_REVISION)
        .cloned()
}
/// On the ConfigMap: hash of the agent config file. Agents hot-reload it,
/// so it never reaches the pod template.
pub const ANNOTATION_CONFIG_REVISION: &str = "herald.dev/config-revision";
/// On the tier: `herald rollout promote` writes the revision to promote.
pub const ANNOTATION_PROMOTE: &str = "herald.dev/promote";
/// On the tier: `herald rollout abort` writes the revision to abort.
pub const ANNOTATION_ABORT: &str = "herald.dev/abort";
/// On the tier: `herald rollout pause` writes the revision to hold;
/// `herald rollout resume` removes it.
pub const ANNOTATION_PAUSE: &str = "herald.dev/pause";
/// On the tier: `herald rollout retry` writes `<revision>@<request>` to
/// start an aborted revision's canary again.
pub const ANNOTATION_RETRY: &str = "herald.dev/retry";

/// The two Deployments of a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Track {
    Stable,
    Canary,
}

impl Track {
    pub const fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// The Deployment running one track of a tier.
pub fn deployment_name(tier: &str, track: Track) -> String {
    match track {
        Track::Stable => format!("{tier}-agent"),
        Track::Canary => format!("{tier}-canary"),
    }
}

/// The ConfigMap holding the agent config.
pub fn config_map_name(tier: &str) -> String {
    format!("{tier}-config")
}

/// The name of the Service's one port, the agents' HTTP API; the API
/// server's service proxy reaches it by this name.
pub const SERVICE_PORT_NAME: &str = "http";

/// The Service producers send to: the tier's own name.
pub fn service_name(tier: &str) -> String {
    tier.to_owned()
}

/// The PodDisruptionBudget over both tracks.
pub fn pdb_name(tier: &str) -> String {
    tier.to_owned()
}

/// ServiceAccount, Role and RoleBinding of the agent pods.
pub fn agent_account_name(tier: &str) -> String {
    format!("{tier}-agent")
}

/// The claim holding the embedded queue.
pub fn queue_claim_name(tier: &str) -> String {
    format!("{tier}-queue")
}

/// The claim holding the spool directory.
pub fn spool_claim_name(tier: &str) -> String {
    format!("{tier}-spool")
}

/// Labels on every object herald creates for `tier`.
pub fn common_labels(tier: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "herald".to_owned()),
        (LABEL_INSTANCE.to_owned(), tier.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), "herald".to_owned()),
        (LABEL_COMPONENT.to_owned(), "agent".to_owned()),
        (LABEL_TIER.to_owned(), tier.to_owned()),
    ])
}

/// Labels on the pods of one track.
pub fn pod_labels(tier: &str, track: Track) -> BTreeMap<String, String> {
    let mut labels = common_labels(tier);
    labels.insert(LABEL_TRACK.to_owned(), track.as_str().to_owned());
    labels
}

/// Selects every agent pod of `tier`, both tracks (Service, PDB).
pub fn tier_selector(tier: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "herald".to_owned()),
        (LABEL_TIER.to_owned(), tier.to_owned()),
    ])
}

/// Selects the pods of one track. Deployment selectors are immutable, so
/// the stable one carries the track from the first apply on, before any
/// canary exists.
pub fn track_selector(tier: &str, track: Track) -> BTreeMap<String, String> {
    let mut s = tier_selector(tier);
    s.insert(LABEL_TRACK.to_owned(), track.as_str().to_owned());
    s
}

/// Why a tier name cannot name its children, if it cannot.
///
/// The Service is named after the tier, so the tier name must be a DNS-1035
/// label (lowercase letters, digits, `-`; starts with a letter; at most 63),
/// which also keeps it valid as a label value. The CRD accepts any object
/// name (DNS-1123 subdomain), so this is checked here.
pub fn check_tier_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !bytes[0].is_ascii_lowercase() {
        return Err("must start with a lowercase letter");
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err("must end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err("may contain only lowercase letters, digits and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_never_collide_between_tiers() {
        let tiers = ["a", "a-canary", "a-agent", "a-canary-agent", "b"];
        let mut seen = std::collections::HashSet::new();
        for t in tiers {
            for track in [Track::Stable, Track::Canary] {
                assert!(seen.insert(deployment_name(t, track)), "{t} {track:?}");
            }
        }
        let mut claims = std::collections::HashSet::new();
        for t in ["a", "a-queue", "a-spool"] {
            assert!(claims.insert(queue_claim_name(t)));
            assert!(claims.insert(spool_claim_name(t)));
        }
    }

    #[test]
    fn tier_names_must_be_dns_labels() {
        for ok in ["a", "alerts-telegram", "t1", &"a".repeat(63)] {
            assert_eq!(check_tier_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1st", "a.b", "A", "a-", "-a", "a_b", &"a".repeat(64)] {
            assert!(check_tier_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn track_selectors_are_disjoint_and_inside_the_tier_selector() {
        let s = track_selector("t", Track::Stable);
        let c = track_selector("t", Track::Canary);
        assert_ne!(s, c);
        for (k, v) in tier_selector("t") {
            assert_eq!(s.get(&k), Some(&v));
            assert_eq!(c.get(&k), Some(&v));
        }
        for (k, v) in &s {
            assert_eq!(pod_labels("t", Track::Stable).get(k), Some(v));
        }
    }
}
