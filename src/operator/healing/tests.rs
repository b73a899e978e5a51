use super::*;
use crate::operator::time::ts;
use proptest::prelude::*;
use std::collections::HashMap;

/// unhealthyAfter 60s, budget 3 per hour, backoff 30s doubling to 10m.
fn spec() -> HealingSpec {
    HealingSpec::default()
}

fn pod(name: &str, unhealthy_since: Option<i64>) -> PodHealth {
    PodHealth {
        name: name.into(),
        ready: unhealthy_since.is_none(),
        unhealthy_since: unhealthy_since.map(ts),
        last_restart: None,
        restarts_by_operator: 0,
    }
}

/// Ready in Kubernetes' eyes (the PDB counts it healthy) but failing the
/// operator's health check since `since`.
fn failing(name: &str, since: i64) -> PodHealth {
    PodHealth {
        ready: true,
        ..pod(name, Some(since))
    }
}

fn input(spec: &HealingSpec, now: i64, pods: Vec<PodHealth>) -> HealingInput<'_> {
    HealingInput {
        now: ts(now),
        spec,
        pods,
        recent_restarts: Vec::new(),
        pdb_allowed_disruptions: 1,
        dependency: DependencyHealth::default(),
        terminating: 0,
    }
}

fn restarted(actions: &[HealingAction]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            HealingAction::Restart { pod, .. } => Some(pod.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pod_unhealthy_past_the_threshold_is_restarted() {
    let s = spec();
    let a = decide(&input(
        &s,
        1000,
        vec![pod("p0", None), pod("p1", Some(900))],
    ));
    assert_eq!(restarted(&a), ["p1"]);
    let HealingAction::Restart { reason, .. } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(reason, "not ready for 1m40s (unhealthyAfter 60s)");
}

#[test]
fn nothing_is_restarted_while_a_pod_of_the_tier_is_terminating() {
    // The replacement of a pod restarted a moment ago cannot start while
    // the old one still holds the queue's file: it is not restarted too.
    let s = spec();
    let mut i = input(&s, 1000, vec![pod("replacement", Some(100))]);
    i.terminating = 1;
    let actions = decide(&i);
    assert!(restarted(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&HealingAction::Wait {
        pod: "replacement".into(),
        until: None,
        why: WaitReason::RestartInProgress,
    }));
    // Once the old pod is gone, the usual rules apply.
    i.terminating = 0;
    assert_eq!(restarted(&decide(&i)), ["replacement"]);
}

#[test]
fn a_new_pod_gets_its_predecessors_grace_before_its_clock_starts() {
    let grace = Duration::from_secs(30);
    // Never ready since its creation at 100: the clock starts at 130.
    assert_eq!(
        unhealthy_clock(Some(ts(100)), Some(ts(100)), grace),
        Some(ts(130))
    );
    assert_eq!(unhealthy_clock(None, Some(ts(100)), grace), Some(ts(130)));
    // Ready for a while, then not ready at 500: the clock starts at 500.
    assert_eq!(
        unhealthy_clock(Some(ts(500)), Some(ts(100)), grace),
        Some(ts(500))
    );
    assert_eq!(unhealthy_clock(Some(ts(500)), None, grace), Some(ts(500)));
    assert_eq!(unhealthy_clock(None, None, grace), None);
}

#[test]
fn a_pod_unhealthy_briefly_waits() {
    let s = spec();
    let a = decide(&input(&s, 1000, vec![pod("p1", Some(970))]));
    assert_eq!(
        a,
        [HealingAction::Wait {
            pod: "p1".into(),
            until: Some(ts(1030)),
            why: WaitReason::NotUnhealthyLongEnough
        }]
    );
    assert_eq!(next_check_at(&a), Some(ts(1030)));
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let s = spec();
    let secs: Vec<u64> = (1..=8).map(|n| backoff(&s, n).as_secs()).collect();
    assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600, 600]);
    assert_eq!(backoff(&s, u32::MAX).as_secs(), 600);
    assert_eq!(backoff(&s, 0).as_secs(), 30);

    let mut p = pod("p1", Some(0));
    p.last_restart = Some(ts(900));
    p.restarts_by_operator = 3;
    // Third restart → 120 s backoff from 900.
    let a = decide(&input(&s, 1000, vec![p.clone()]));
    assert_eq!(
        a,
        [HealingAction::Wait {
            pod: "p1".into(),
            until: Some(ts(1020)),
            why: WaitReason::Backoff
        }]
    );
    assert_eq!(restarted(&decide(&input(&s, 1020, vec![p]))), ["p1"]);
}

#[test]
fn the_budget_caps_restarts_per_window() {
    let s = spec();
    let pods = vec![pod("p1", Some(0))];
    let mut i = input(&s, 4000, pods);
    i.recent_restarts = vec![ts(500), ts(1000), ts(2000)];
    let a = decide(&i);
    // The restart at 500 leaves the window at 500 + 3600.
    assert_eq!(a, [HealingAction::BudgetExhausted { until: ts(4100) }]);
    // Restarts older than the window do not count.
    i.now = ts(4101);
    assert_eq!(restarted(&decide(&i)), ["p1"]);
}

#[test]
fn never_more_restarts_of_ready_pods_than_the_pdb_allows() {
    let s = spec();
    let pods = vec![failing("p1", 0), failing("p2", 10), failing("p3", 5)];
    let mut i = input(&s, 1000, pods);
    i.pdb_allowed_disruptions = 0;
    let a = decide(&i);
    assert!(restarted(&a).is_empty());
    assert!(a.iter().all(|x| matches!(
        x,
        HealingAction::Wait {
            why: WaitReason::DisruptionBudget,
            until: None,
            ..
        }
    )));
    i.pdb_allowed_disruptions = 2;
    // Longest unhealthy first.
    assert_eq!(restarted(&decide(&i)), ["p1", "p3"]);
    // The restart budget binds before the PDB does.
    i.pdb_allowed_disruptions = 3;
    i.recent_restarts = vec![ts(900), ts(950)];
    let a = decide(&i);
    assert_eq!(restarted(&a), ["p1"]);
    assert!(a.contains(&HealingAction::BudgetExhausted {
        until: ts(900 + 3600)
    }));
}

#[test]
fn a_pod_that_is_not_ready_is_replaced_whatever_the_pdb_allows() {
    // One replica down: the PDB (maxUnavailable 1) reports 0 allowed
    // disruptions, yet replacing the pod costs no healthy capacity.
    let s = spec();
    let mut i = input(&s, 1000, vec![pod("only", Some(0))]);
    i.pdb_allowed_disruptions = 0;
    assert_eq!(restarted(&decide(&i)), ["only"]);
    // Mixed: the not-ready pod goes, the ready-but-failing one waits.
    let mut i = input(&s, 1000, vec![pod("down", Some(0)), failing("sick", 0)]);
    i.pdb_allowed_disruptions = 0;
    let a = decide(&i);
    assert_eq!(restarted(&a), ["down"]);
    assert!(a.contains(&HealingAction::Wait {
        pod: "sick".into(),
        until: None,
        why: WaitReason::DisruptionBudget
    }));
}

#[test]
fn a_shared_dependency_outage_restarts_nothing() {
    let s = spec();
    let mut i = input(&s, 1000, vec![pod("p1", Some(0)), pod("p2", Some(0))]);
    i.pdb_allowed_disruptions = 2;
    i.dependency = DependencyHealth {
        redis_down: true,
        telegram_down: false,
    };
    assert_eq!(
        decide(&i),
        [HealingAction::DependencyDegraded {
            which: vec![Dependency::Redis]
        }]
    );
    i.dependency = DependencyHealth {
        redis_down: true,
        telegram_down: true,
    };
    assert_eq!(
        decide(&i),
        [HealingAction::DependencyDegraded {
            which: vec![Dependency::Redis, Dependency::Telegram]
        }]
    );
}

#[test]
fn an_outage_is_shared_when_most_pods_report_it() {
    let down = DependencyHealth {
        redis_down: true,
        telegram_down: false,
    };
    let up = DependencyHealth::default();
    assert!(DependencyHealth::shared(&[down, down, up]).redis_down);
    assert!(!DependencyHealth::shared(&[down, up, up]).redis_down);
    assert!(!DependencyHealth::shared(&[down, up]).redis_down);
    assert!(DependencyHealth::shared(&[down]).redis_down);
    assert!(!DependencyHealth::shared(&[]).any_down());
}

#[test]
fn disabled_healing_does_nothing() {
    let s = HealingSpec {
        enabled: false,
        ..spec()
    };
    assert!(decide(&input(&s, 1000, vec![pod("p1", Some(0))])).is_empty());
}

#[test]
fn the_decision_is_deterministic_whatever_the_pod_order() {
    let s = spec();
    let mut i = input(
        &s,
        1000,
        vec![failing("b", 0), failing("a", 0), failing("c", 500)],
    );
    i.pdb_allowed_disruptions = 2;
    let a = decide(&i);
    i.pods.reverse();
    assert_eq!(decide(&i), a);
    assert_eq!(restarted(&a), ["a", "b"]);
}

#[derive(Clone, Debug)]
struct Tick {
    dt: i64,
    unhealthy: Vec<bool>,
    dependency_down: bool,
    pdb: u32,
}

fn tick(pods: usize) -> impl Strategy<Value = Tick> {
    (
        1i64..900,
        proptest::collection::vec(any::<bool>(), pods),
        proptest::bool::weighted(0.2),
        0u32..3,
    )
        .prop_map(|(dt, unhealthy, dependency_down, pdb)| Tick {
            dt,
            unhealthy,
            dependency_down,
            pdb,
        })
}

proptest! {
    /// Simulated hours of flapping pods: in any budget window there are at
    /// most `restartBudget` restarts; no pass restarts more ready pods than
    /// the PDB allows; nothing is restarted while a shared dependency is down;
    /// a pod is never restarted again before its backoff has run out.
    #[test]
    fn restarts_stay_within_every_limit(
        ticks in proptest::collection::vec(tick(4), 1..80),
        budget in 0u32..5,
        window_min in 1u64..120,
    ) {
        let s = HealingSpec {
            restart_budget: budget,
            budget_window: format!("{window_min}m").parse().unwrap(),
            ..spec()
        };
        let window = i64::try_from(window_min * 60).unwrap();
        let names = ["p0", "p1", "p2", "p3"];
        let mut since: HashMap<&str, Option<i64>> = names.iter().map(|n| (*n, None)).collect();
        let mut last: HashMap<&str, (i64, u32)> = HashMap::new();
        let mut history: Vec<i64> = Vec::new();
        let mut now = 0i64;
        for t in ticks {
            now += t.dt;
            for (n, bad) in names.iter().zip(&t.unhealthy) {
                let entry = since.get_mut(n).unwrap();
                *entry = match (*bad, *entry) {
                    (true, None) => Some(now),
                    (true, keep) => keep,
                    (false, _) => None,
                };
            }
            let pods = names
                .iter()
                .map(|n| PodHealth {
                    name: (*n).to_owned(),
                    // p0 and p1 fail the health check while still Ready;
                    // p2 and p3 go not ready.
                    ready: since[n].is_none() || matches!(*n, "p0" | "p1"),
                    unhealthy_since: since[n].map(ts),
                    last_restart: last.get(n).map(|(t, _)| ts(*t)),
                    restarts_by_operator: last.get(n).map_or(0, |(_, c)| *c),
                })
                .collect();
            let i = HealingInput {
                now: ts(now),
                spec: &s,
                pods,
                recent_restarts: history.iter().copied().map(ts).collect(),
                pdb_allowed_disruptions: t.pdb,
                dependency: DependencyHealth { redis_down: t.dependency_down, telegram_down: false },
                terminating: 0,
            };
            let actions = decide(&i);
            let restarts = restarted(&actions);
            let ready_restarts = restarts.iter().filter(|p| matches!(**p, "p0" | "p1")).count();
            prop_assert!(ready_restarts <= t.pdb as usize);
            if t.dependency_down {
                prop_assert!(restarts.is_empty());
            }
            for p in restarts {
                let p: &str = names.iter().find(|n| **n == p).unwrap();
                if let Some((at, count)) = last.get(p) {
                    let wait = i64::try_from(backoff(&s, *count).as_secs()).unwrap();
                    prop_assert!(now >= at + wait);
                }
                let count = last.get(p).map_or(0, |(_, c)| *c) + 1;
                last.insert(p, (now, count));
                history.push(now);
            }
        }
        for start in &history {
            let in_window = history.iter().filter(|t| **t >= *start && **t < start + window).count();
            prop_assert!(in_window <= budget as usize, "{} restarts in the window from {}", in_window, start);
        }
    }
}
