//! `herald rollout promote|abort TIER`: the manual gate of a canary. The
//! command names the revision under rollout in an annotation on the tier;
//! the controller acts on it only while that revision is the one rolling
//! out, so a stale command cannot promote a later revision by accident.
//!
//! Owns reading the revision from the tier's status and writing the
//! annotation (a merge patch of one key). The decision stays in `canary`.

use k8s_openapi::serde_json::json;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::api::DeliveryTier;

use super::names::{ANNOTATION_ABORT, ANNOTATION_PROMOTE};

/// Which way the gate goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Promote,
    Abort,
}

impl Gate {
    pub const fn annotation(self) -> &'static str {
        match self {
            Gate::Promote => ANNOTATION_PROMOTE,
            Gate::Abort => ANNOTATION_ABORT,
        }
    }
}

/// Why the gate could not be set.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("DeliveryTier {namespace}/{tier} not found")]
    NotFound { namespace: String, tier: String },
    #[error("DeliveryTier {namespace}/{tier} has no rollout in progress ({state})")]
    NoRollout {
        namespace: String,
        tier: String,
        state: String,
    },
    #[error("the Kubernetes API refused: {0}")]
    Api(#[from] kube::Error),
}

/// Sets the gate on `tier`; answers the revision it names.
pub async fn request(
    client: Client,
    namespace: &str,
    tier: &str,
    gate: Gate,
) -> Result<String, GateError> {
    let api: Api<DeliveryTier> = Api::namespaced(client, namespace);
    let found = api
        .get_opt(tier)
        .await?
        .ok_or_else(|| GateError::NotFound {
            namespace: namespace.to_owned(),
            tier: tier.to_owned(),
        })?;
    let canary = found.status.as_ref().and_then(|s| s.canary.as_ref());
    let rolling = canary.filter(|c| matches!(c.verdict.as_str(), "Analysing" | "Paused"));
    let Some(revision) = rolling.and_then(|c| c.revision.clone()) else {
        return Err(GateError::NoRollout {
            namespace: namespace.to_owned(),
            tier: tier.to_owned(),
            state: canary.map_or("no canary".to_owned(), |c| c.verdict.to_lowercase()),
        });
    };
    let patch = json!({"metadata": {"annotations": {gate.annotation(): revision}}});
    api.patch(tier, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::delivery_tier::CanaryStatus;
    use crate::operator::tests::Harness;

    async fn tier_with(h: &Harness, canary: Option<CanaryStatus>) {
        h.create(&crate::operator::tests::spool_tier("bots", None))
            .await;
        if let Some(c) = canary {
            set_canary(h, c).await;
        }
    }

    fn rolling(verdict: &str) -> CanaryStatus {
        CanaryStatus {
            step: 1,
            weight: 50,
            verdict: verdict.into(),
            summary: "50% paused".into(),
            revision: Some("rev-2".into()),
        }
    }

    async fn ask(h: &Harness, tier: &str, gate: Gate) -> Result<String, GateError> {
        request(h.client.clone(), crate::operator::tests::NS, tier, gate).await
    }

    async fn set_canary(h: &Harness, canary: CanaryStatus) {
        h.api::<DeliveryTier>()
            .patch_status(
                "bots",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"canary": canary}})),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn promote_and_abort_name_the_revision_under_rollout() {
        let h = Harness::new().await;
        tier_with(&h, Some(rolling("Paused"))).await;
        assert_eq!(ask(&h, "bots", Gate::Promote).await.unwrap(), "rev-2");
        ask(&h, "bots", Gate::Abort).await.unwrap();
        let t = h.api::<DeliveryTier>().get("bots").await.unwrap();
        let a = t.metadata.annotations.unwrap();
        assert_eq!(a[ANNOTATION_PROMOTE], "rev-2");
        assert_eq!(a[ANNOTATION_ABORT], "rev-2");
    }

    #[tokio::test]
    async fn without_a_rollout_nothing_is_written() {
        let h = Harness::new().await;
        tier_with(&h, None).await;
        let e = ask(&h, "bots", Gate::Promote).await.unwrap_err();
        assert!(matches!(e, GateError::NoRollout { .. }), "{e}");
        let e = ask(&h, "other", Gate::Abort).await.unwrap_err();
        assert!(matches!(e, GateError::NotFound { .. }), "{e}");
        // A finished rollout has nothing left to gate.
        set_canary(&h, rolling("Promoted")).await;
        let e = ask(&h, "bots", Gate::Promote).await.unwrap_err();
        assert!(e.to_string().contains("promoted"), "{e}");
        let t = h.api::<DeliveryTier>().get("bots").await.unwrap();
        assert!(t.metadata.annotations.unwrap_or_default().is_empty());
    }
}
