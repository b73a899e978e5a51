//! Leader election over a `coordination.k8s.io/v1` Lease, so that of
//! several operator replicas exactly one reconciles and writes.
//!
//! Owns the Lease protocol: create the Lease if it is missing, renew it
//! while held, take it over once the holder has let it lapse, hand it back
//! on shutdown. Every write is a compare-and-swap on the Lease's
//! `resourceVersion` (create, or replace with the version read), so two
//! candidates can never both believe they won. The controller leaves it to
//! this file to say when leadership is lost; it then stops.
//!
//! Expiry is judged as client-go judges it: by when *this* replica last saw
//! the Lease record change, on its own monotonic clock, plus the lease
//! duration — never by comparing the holder's `renewTime` with the local
//! wall clock, which would make clock skew between nodes decide who leads.
//!
//! Why not the `kube-leader-election` crate: it pulls a second k8s-openapi
//! (see the design notes' pin), and the protocol is small; written here it
//! is tested against the fake API with paused time.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// Lease settings; the defaults are client-go's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica, e.g. its pod name.
    pub identity: String,
    /// How long a Lease lives without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it lapse: take it.
    TakeOver,
    /// Someone else holds it until at least `until`.
    Wait { until: Instant },
}

/// Decide from the Lease record, when this replica saw that record change,
/// and the local monotonic time.
pub fn decide(
    record: Option<&LeaseSpec>,
    me: &str,
    changed_at: Instant,
    now: Instant,
    default_duration: Duration,
) -> Step {
    let Some(spec) = record else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        None => Step::TakeOver,
        Some(h) if h == me => Step::Renew,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(default_duration, Duration::from_secs);
            let until = changed_at + duration;
            if now >= until {
                Step::TakeOver
            } else {
                Step::Wait { until }
            }
        }
    }
}

/// The parts of a Lease whose change proves its holder is alive.
type RecordKey = (Option<String>, Option<Timestamp>, Option<i32>);

fn record_key(spec: Option<&LeaseSpec>) -> RecordKey {
    (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0)),
        spec.and_then(|s| s.lease_transitions),
    )
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<(RecordKey, Instant)>,
}

/// How holding the Lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Renewal failed for longer than the renew deadline, or another
    /// replica holds the Lease now.
    Lost,
    /// Asked to stop; the Lease was handed back (best effort).
    Released,
}

impl Elector {
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Self {
        Elector {
            api,
            cfg,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One attempt: `Ok(true)` when this replica holds the Lease afterwards.
    /// A lost race (conflict, already exists) is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let current = self.api.get_opt(&self.cfg.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let key = record_key(spec);
        let changed_at = match &self.observed {
            Some((k, at)) if *k == key => *at,
            _ => {
                self.observed = Some((key, now));
                now
            }
        };
        let step = decide(
            spec,
            &self.cfg.identity,
            changed_at,
            now,
            self.cfg.lease_duration,
        );
        let wall = Timestamp::now();
        let result = match (step, current) {
            (Step::Wait { .. }, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(self.lease_seconds()),
                        acquire_time: Some(MicroTime(wall)),
                        renew_time: Some(MicroTime(wall)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew | Step::TakeOver, None) => return Ok(false),
            (step, Some(mut lease)) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                if step == Step::TakeOver {
                    spec.holder_identity = Some(self.cfg.identity.clone());
                    spec.acquire_time = Some(MicroTime(wall));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(self.lease_seconds());
                spec.renew_time = Some(MicroTime(wall));
                lease.spec = Some(spec);
                // `lease` still carries the resourceVersion read above, so a
                // concurrent writer makes this fail with 409.
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.observed = Some((record_key(written.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Try every `retry_period` until this replica leads (`true`) or `stop`
    /// turns true (`false`). API errors are logged and retried.
    pub async fn campaign(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.cfg.name, "leader election: cannot read or write the Lease")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renew every `retry_period` while leading. Returns `Lost` when no
    /// renewal succeeded within `renew_deadline` (or another replica took
    /// the Lease), `Released` when `stop` turned true.
    pub async fn hold(&mut self, mut stop: watch::Receiver<bool>) -> HoldOutcome {
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                self.release().await;
                return HoldOutcome::Released;
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    // Someone else wrote the Lease: it is theirs now.
                    let held_by_other = self
                        .observed
                        .as_ref()
                        .and_then(|((h, _, _), _)| h.as_deref())
                        .is_some_and(|h| h != self.cfg.identity);
                    if held_by_other {
                        return HoldOutcome::Lost;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.cfg.name, "leader election: renewal failed")
                }
            }
            if last_renewed.elapsed() >= self.cfg.renew_deadline {
                return HoldOutcome::Lost;
            }
        }
    }

    /// Hand the Lease back so a standby takes over at once instead of after
    /// the lease duration. Best effort: failing leaves the Lease to expire.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, lease = %self.cfg.name, "leader election: could not release the Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_fake_client::ClientBuilder;

    fn spec(holder: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions_follow_the_record_and_the_local_clock() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", t0, t0, d), Step::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"), 15)), "a", t0, t0, d),
            Step::Renew
        );
        assert_eq!(
            decide(Some(&spec(None, 15)), "a", t0, t0, d),
            Step::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(Some(""), 15)), "a", t0, t0, d),
            Step::TakeOver
        );
        let held = spec(Some("b"), 10);
        assert_eq!(
            decide(Some(&held), "a", t0, t0 + Duration::from_secs(9), d),
            Step::Wait {
                until: t0 + Duration::from_secs(10)
            }
        );
        // The holder's own duration counts, from when we saw the record change.
        assert_eq!(
            decide(Some(&held), "a", t0, t0 + Duration::from_secs(10), d),
            Step::TakeOver
        );
    }

    async fn electors() -> (Elector, Elector) {
        let client = ClientBuilder::new().build().await.unwrap();
        let api: Api<Lease> = Api::namespaced(client, "herald-system");
        let a = Elector::new(
            api.clone(),
            LeaseConfig::new("herald", "herald-system", "a"),
        );
        let b = Elector::new(api, LeaseConfig::new("herald", "herald-system", "b"));
        (a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_and_a_takeover_after_the_lease_lapses() {
        let (mut a, mut b) = electors().await;
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        // a keeps renewing: b waits however long it tries.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
        }
        // a goes silent: b takes over once the lease lapsed, not before.
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        // a comes back and finds the Lease taken.
        assert!(!a.try_acquire_or_renew().await.unwrap());
        let lease = a.api.get("herald").await.unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_write_loses_the_race() {
        let (mut a, mut b) = electors().await;
        assert!(a.try_acquire_or_renew().await.unwrap());
        let stale = a.api.get("herald").await.unwrap();
        // b takes over after the lapse...
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        // ...so a write based on what a read before is refused.
        let err = a
            .api
            .replace("herald", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    }

    #[tokio::test(start_paused = true)]
    async fn release_hands_over_at_once_and_hold_reports_loss() {
        let (mut a, mut b) = electors().await;
        assert!(a.try_acquire_or_renew().await.unwrap());
        let (stop_tx, stop_rx) = watch::channel(false);
        let holder = tokio::spawn(async move {
            let outcome = a.hold(stop_rx).await;
            (a, outcome)
        });
        tokio::time::advance(Duration::from_secs(7)).await;
        stop_tx.send(true).unwrap();
        let (mut a, outcome) = holder.await.unwrap();
        assert_eq!(outcome, HoldOutcome::Released);
        // No wait for the lapse: the Lease names nobody.
        assert!(b.try_acquire_or_renew().await.unwrap());

        // a campaigns again, then b stops renewing, then a leads; b notices.
        let (_keep, mut never) = watch::channel(false);
        let campaign = tokio::spawn(async move {
            let won = a.campaign(&mut never).await;
            (a, won)
        });
        tokio::time::advance(Duration::from_secs(20)).await;
        let (_a, won) = campaign.await.unwrap();
        assert!(won);
        let (_stop, stop_rx) = watch::channel(false);
        assert_eq!(b.hold(stop_rx).await, HoldOutcome::Lost);
    }
}
