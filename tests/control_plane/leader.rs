//! Leader election on a real API server: of two operator processes exactly
//! one holds the Lease, and when it is killed with SIGKILL (no chance to
//! hand the Lease back) the other takes over once the Lease has expired.

use std::time::{Duration, Instant};

use crate::cluster::{cluster, wait_for};
use crate::operator::{Launch, OPERATOR_NS, launch};

/// The operator's default lease duration (src/operator/leader.rs).
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn holder(lease: &str) -> Option<String> {
    let l = cluster().get_json(&["get", "lease", lease, "-n", OPERATOR_NS])?;
    l["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

#[test]
fn one_leader_and_a_takeover_after_sigkill() {
    let c = cluster();
    // Its own Lease and an empty namespace, so that these two do not
    // compete with the suite's shared operator.
    let ns = c.namespace("leader");
    let lease = "herald-e2e-leader-test";
    let mut a = launch(&Launch {
        identity: "leader-a",
        namespace: Some(&ns),
        lease_name: lease,
        extra: &[],
        bin: None,
    });
    let mut b = launch(&Launch {
        identity: "leader-b",
        namespace: Some(&ns),
        lease_name: lease,
        extra: &[],
        bin: None,
    });
    let first = wait_for(Duration::from_secs(30), || holder(lease)).expect("nobody took the Lease");
    assert!(first == "leader-a" || first == "leader-b", "{first}");

    // Exactly one leads: the gauge says so on both.
    let leading = |op: &crate::operator::Operator| op.metric("herald_operator_leader");
    let settled = wait_for(Duration::from_secs(10), || {
        (leading(&a) + leading(&b) == 1.0).then_some(())
    });
    assert!(
        settled.is_some(),
        "herald_operator_leader: a={} b={}",
        leading(&a),
        leading(&b)
    );

    let (leader, standby) = if first == "leader-a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    leader.kill9();
    let killed = Instant::now();
    let next = wait_for(LEASE_DURATION + Duration::from_secs(10), || {
        holder(lease).filter(|h| *h == standby.identity)
    });
    let took = killed.elapsed();
    assert!(
        next.is_some(),
        "{} did not take the Lease within {:?} of the leader's SIGKILL:\n{}",
        standby.identity,
        LEASE_DURATION + Duration::from_secs(10),
        standby.log()
    );
    eprintln!(
        "leader election: {} took over {:.1}s after {first} was killed (lease duration {}s)",
        standby.identity,
        took.as_secs_f64(),
        LEASE_DURATION.as_secs()
    );
    let leads = wait_for(Duration::from_secs(10), || {
        (leading(standby) == 1.0).then_some(())
    });
    assert!(
        leads.is_some(),
        "{} holds the Lease but does not say it leads",
        standby.identity
    );
}
