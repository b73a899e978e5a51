//! `herald rollout promote|abort|pause|resume|retry TIER`: the manual
//! gates of a canary. Each command names the revision it is for in an
//! annotation on the tier; the controller acts on it only while that
//! revision is the one rolling out (or, for retry, the one aborted), so a
//! stale command cannot act on a later revision by accident.
//!
//! Owns reading the revision from the tier's status and writing the
//! annotations (one merge patch). Which patch a gate makes is a pure
//! function of the tier, [`plan`]; the decision stays in `canary`.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::serde_json::{Value, json};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::api::DeliveryTier;

use super::names::{ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE, ANNOTATION_RETRY};

/// Which way the gate goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Promote,
    Abort,
    Pause,
    Resume,
    Retry,
}

impl Gate {
    /// The annotation this gate writes or, for resume, removes.
    pub const fn annotation(self) -> &'static str {
        match self {
            Gate::Promote => ANNOTATION_PROMOTE,
            Gate::Abort => ANNOTATION_ABORT,
            Gate::Pause | Gate::Resume => ANNOTATION_PAUSE,
            Gate::Retry => ANNOTATION_RETRY,
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
    #[error(
        "DeliveryTier {namespace}/{tier} has no aborted rollout to retry ({state}); \
         retry starts again a revision whose canary was aborted"
    )]
    NotAborted {
        namespace: String,
        tier: String,
        state: String,
    },
    #[error("DeliveryTier {namespace}/{tier} is not paused (no {ANNOTATION_PAUSE} annotation)")]
    NotPaused { namespace: String, tier: String },
    #[error("the Kubernetes API refused: {0}")]
    Api(#[from] kube::Error),
}

/// What a gate writes: the revision it is for, and the merge patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub revision: String,
    pub patch: Value,
}

/// The patch `gate` makes on `found`, or why it makes none. `now` names a
/// retry request, so each retry is a new one the controller acts on once.
pub fn plan(
    found: &DeliveryTier,
    namespace: &str,
    tier: &str,
    gate: Gate,
    now: Timestamp,
) -> Result<Planned, GateError> {
    let canary = found.status.as_ref().and_then(|s| s.canary.as_ref());
    let state = || canary.map_or("no canary".to_owned(), |c| c.verdict.to_lowercase());
    let with_verdict = |verdicts: &[&str]| {
        canary
            .filter(|c| verdicts.contains(&c.verdict.as_str()))
            .and_then(|c| c.revision.clone())
    };
    if gate == Gate::Retry {
        let Some(revision) = with_verdict(&["Aborted"]) else {
            return Err(GateError::NotAborted {
                namespace: namespace.to_owned(),
                tier: tier.to_owned(),
                state: state(),
            });
        };
        // A promote or abort left for this revision would end the new
        // attempt at once, and a pause would hold it at step 0: a retry
        // starts clean.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let patch = json!({"metadata": {"annotations": {
            ANNOTATION_RETRY: format!("{revision}@{now}"),
            ANNOTATION_PROMOTE: null,
            ANNOTATION_ABORT: null,
            ANNOTATION_PAUSE: null,
        }}});
        return Ok(Planned { revision, patch });
    }
    let Some(revision) = with_verdict(&["Analysing", "Paused"]) else {
        return Err(GateError::NoRollout {
            namespace: namespace.to_owned(),
            tier: tier.to_owned(),
            state: state(),
        });
    };
    let value = if gate == Gate::Resume {
        let paused = found
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_PAUSE));
        if !paused {
            return Err(GateError::NotPaused {
                namespace: namespace.to_owned(),
                tier: tier.to_owned(),
            });
        }
        Value::Null
    } else {
        Value::String(revision.clone())
    };
    let patch = json!({"metadata": {"annotations": {gate.annotation(): value}}});
    Ok(Planned { revision, patch })
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
    let planned = plan(&found, namespace, tier, gate, Timestamp::now())?;
    api.patch(tier, &PatchParams::default(), &Patch::Merge(&planned.patch))
        .await?;
    Ok(planned.revision)
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

    fn annotations(t: &DeliveryTier) -> std::collections::BTreeMap<String, String> {
        t.metadata.annotations.clone().unwrap_or_default()
    }

    #[tokio::test]
    async fn pause_then_resume_adds_and_removes_the_pause() {
        let h = Harness::new().await;
        tier_with(&h, Some(rolling("Analysing"))).await;
        let e = ask(&h, "bots", Gate::Resume).await.unwrap_err();
        assert!(matches!(e, GateError::NotPaused { .. }), "{e}");
        assert_eq!(ask(&h, "bots", Gate::Pause).await.unwrap(), "rev-2");
        let t = h.api::<DeliveryTier>().get("bots").await.unwrap();
        assert_eq!(annotations(&t)[ANNOTATION_PAUSE], "rev-2");
        // The operator reports the pause as the verdict Paused; resume
        // still applies.
        set_canary(&h, rolling("Paused")).await;
        assert_eq!(ask(&h, "bots", Gate::Resume).await.unwrap(), "rev-2");
        let t = h.api::<DeliveryTier>().get("bots").await.unwrap();
        assert!(!annotations(&t).contains_key(ANNOTATION_PAUSE));
    }

    #[tokio::test]
    async fn retry_names_the_aborted_revision_and_clears_the_other_gates() {
        let h = Harness::new().await;
        tier_with(&h, Some(rolling("Analysing"))).await;
        let e = ask(&h, "bots", Gate::Retry).await.unwrap_err();
        assert!(matches!(e, GateError::NotAborted { .. }), "{e}");
        assert!(e.to_string().contains("analysing"), "{e}");
        ask(&h, "bots", Gate::Pause).await.unwrap();
        ask(&h, "bots", Gate::Abort).await.unwrap();
        set_canary(&h, rolling("Aborted")).await;
        assert_eq!(ask(&h, "bots", Gate::Retry).await.unwrap(), "rev-2");
        let t = h.api::<DeliveryTier>().get("bots").await.unwrap();
        let a = annotations(&t);
        assert!(a[ANNOTATION_RETRY].starts_with("rev-2@"), "{a:?}");
        for gone in [ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE] {
            assert!(!a.contains_key(gone), "{gone} left in {a:?}");
        }
        // Gates that need a rollout underway refuse an aborted one.
        let e = ask(&h, "bots", Gate::Pause).await.unwrap_err();
        assert!(e.to_string().contains("aborted"), "{e}");
    }

    #[test]
    fn each_retry_is_a_new_request_the_controller_can_tell_apart() {
        let mut t = crate::operator::tests::spool_tier("bots", None);
        t.status = Some(serde_json::from_value(json!({"canary": rolling("Aborted")})).unwrap());
        let at = |s| {
            plan(
                &t,
                "apps",
                "bots",
                Gate::Retry,
                Timestamp::from_second(s).unwrap(),
            )
        };
        let value = |p: Planned| p.patch["metadata"]["annotations"][ANNOTATION_RETRY].clone();
        let first = value(at(1_800_000_000).unwrap());
        assert_eq!(first, "rev-2@2027-01-15T08:00:00Z");
        assert_ne!(first, value(at(1_800_000_060).unwrap()));
        // The controller takes either for this revision, and no other.
        let text = first.as_str().unwrap();
        assert_eq!(
            crate::operator::canary::retry_request(Some(text), "rev-2").as_deref(),
            Some(text)
        );
        assert_eq!(
            crate::operator::canary::retry_request(Some(text), "rev-3"),
            None
        );
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
