use super::*;
use crate::operator::time::ts;
use proptest::prelude::*;

fn spec(auto_promote: bool) -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "steps": [
            {"weight": 10, "pause": "5m"},
            {"weight": 50, "pause": "5m"},
            {"weight": 100, "pause": "5m"},
        ],
        "analysis": {"interval": "1m", "maxErrorRateRatio": 1.1, "maxErrorRatePercent": 1,
                     "maxP95Latency": "500ms", "max429s": 0},
        "autoPromote": auto_promote,
    }))
    .unwrap()
}

fn good() -> Metrics {
    Metrics {
        requests: 1000,
        errors: 1,
        p95_ms: Some(180),
        rate_limited_429: 0,
    }
}

fn input(now: i64, stable: Option<&str>, desired: &str) -> CanaryInput {
    CanaryInput {
        now: ts(now),
        stable_revision: stable.map(str::to_owned),
        desired_revision: desired.to_owned(),
        replicas: 4,
        partitions: 64,
        canary_metrics: Some(good()),
        stable_metrics: Some(good()),
        manual_promote: false,
        manual_abort: false,
        manual_pause: false,
        retry: None,
    }
}

fn events(acts: &[CanaryAction]) -> Vec<&'static str> {
    acts.iter()
        .filter_map(|a| match a {
            CanaryAction::EmitEvent { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn weight_of(acts: &[CanaryAction]) -> u32 {
    acts.iter()
        .find_map(|a| match a {
            CanaryAction::SetWeight(w) => Some(*w),
            _ => None,
        })
        .unwrap()
}

fn scale_of(acts: &[CanaryAction]) -> u32 {
    acts.iter()
        .find_map(|a| match a {
            CanaryAction::ScaleCanary(n) => Some(*n),
            _ => None,
        })
        .unwrap()
}

fn promotes(acts: &[CanaryAction]) -> bool {
    acts.iter()
        .any(|a| matches!(a, CanaryAction::Promote { .. }))
}

fn condition_reason(acts: &[CanaryAction]) -> &'static str {
    acts.iter()
        .find_map(|a| match a {
            CanaryAction::SetCondition(c) => Some(c.reason),
            _ => None,
        })
        .unwrap()
}

fn condition_message(acts: &[CanaryAction]) -> String {
    acts.iter()
        .find_map(|a| match a {
            CanaryAction::SetCondition(c) => Some(c.message.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn figures_read_as_a_user_expects() {
    let f = Figures {
        canary: Metrics {
            requests: 200,
            errors: 1,
            p95_ms: Some(140),
            rate_limited_429: 0,
        },
        stable: Some(Metrics {
            requests: 1_000,
            errors: 1,
            p95_ms: None,
            rate_limited_429: 0,
        }),
    };
    assert_eq!(
        f.to_string(),
        "canary 0.50% errors (1 of 200 sends), p95 140ms; stable 0.10% errors (1 of 1000 sends), no latency"
    );
    let none = Figures {
        canary: Metrics::default(),
        stable: None,
    };
    assert_eq!(
        none.to_string(),
        "canary 0.00% errors (0 of 0 sends), no latency"
    );
}

/// Drive passes every 30 s from `from` to `to`, with `f` shaping each input.
fn run(
    mut state: RolloutState,
    spec: &RolloutSpec,
    from: i64,
    to: i64,
    f: impl Fn(&mut CanaryInput),
) -> (RolloutState, Vec<&'static str>, Vec<CanaryAction>) {
    let mut all_events = Vec::new();
    let mut last = Vec::new();
    let mut t = from;
    while t <= to {
        let mut i = input(t, Some("old"), "new");
        f(&mut i);
        let (next, acts) = step(&state, spec, &i);
        all_events.extend(events(&acts));
        state = next;
        last = acts;
        t += 30;
    }
    (state, all_events, last)
}

#[test]
fn the_first_revision_is_deployed_without_a_canary() {
    let (s, acts) = step(&RolloutState::Stable, &spec(true), &input(0, None, "r1"));
    assert!(matches!(s, RolloutState::Promoted { ref revision, .. } if revision == "r1"));
    assert!(promotes(&acts));
    assert_eq!(events(&acts), [reasons::DEPLOYED]);
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
    // Promote is repeated until stable runs it, without a second event.
    let (s2, acts) = step(&s, &spec(true), &input(10, None, "r1"));
    assert_eq!(s2, s);
    assert!(promotes(&acts) && events(&acts).is_empty());
    let (s3, acts) = step(&s, &spec(true), &input(20, Some("r1"), "r1"));
    assert_eq!(s3, s);
    assert!(!promotes(&acts) && events(&acts).is_empty());
}

#[test]
fn at_rest_nothing_happens() {
    let (s, acts) = step(
        &RolloutState::Stable,
        &spec(true),
        &input(0, Some("r1"), "r1"),
    );
    assert_eq!(s, RolloutState::Stable);
    assert!(events(&acts).is_empty() && !promotes(&acts));
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
    assert_eq!(condition_reason(&acts), "NoRollout");
}

#[test]
fn a_healthy_canary_walks_the_steps_and_is_promoted() {
    let sp = spec(true);
    let (s, acts) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    assert_eq!(events(&acts), [reasons::STARTED]);
    assert_eq!((weight_of(&acts), scale_of(&acts)), (10, 1));
    assert_eq!(condition_reason(&acts), "Pending");

    // Each step holds for its 5 minute pause, analysing every minute.
    let (s, ev, acts) = run(s, &sp, 30, 299, |_| {});
    assert!(ev.is_empty(), "{ev:?}");
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 0 && p.analyses_passed == 4));
    assert_eq!(condition_reason(&acts), "AnalysisPassing");
    // The condition shows what the last analysis compared.
    let message = condition_message(&acts);
    let RolloutState::Progressing(p) = &s else {
        unreachable!()
    };
    let figures = p.last_figures.expect("an analysis ran");
    assert!(
        message.ends_with(&format!("analyses passed; last: {figures}")),
        "{message}"
    );
    assert!(
        message.contains("canary ") && message.contains(" sends), p95 "),
        "{message}"
    );
    let (s, ev, acts) = run(s, &sp, 300, 300, |_| {});
    assert_eq!(ev, [reasons::STEP]);
    assert_eq!((weight_of(&acts), scale_of(&acts)), (50, 2));
    let (s, ev, acts) = run(s, &sp, 330, 600, |_| {});
    assert_eq!(ev, [reasons::STEP]);
    assert_eq!((weight_of(&acts), scale_of(&acts)), (100, 4));
    let (s, ev, acts) = run(s, &sp, 630, 900, |_| {});
    assert_eq!(ev, [reasons::PROMOTED]);
    assert!(promotes(&acts));
    assert!(
        matches!(s, RolloutState::Promoted { ref revision, at } if revision == "new" && at == ts(900))
    );
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
}

#[test]
fn insufficient_data_waits_and_never_fails() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    // An hour of a quiet canary: no verdict, no advance, window keeps growing.
    let quiet = |i: &mut CanaryInput| {
        i.canary_metrics = Some(Metrics {
            requests: 5,
            errors: 5,
            p95_ms: Some(9_999),
            rate_limited_429: 9,
        })
    };
    let (s, ev, acts) = run(s, &sp, 30, 3600, quiet);
    assert!(ev.is_empty(), "{ev:?}");
    let RolloutState::Progressing(p) = &s else {
        panic!("{s:?}")
    };
    assert_eq!((p.step, p.analyses_passed), (0, 0));
    assert_eq!(p.window_start, ts(0));
    assert_eq!(p.last_analysis, Some(AnalysisOutcome::InsufficientData));
    assert_eq!(condition_reason(&acts), "InsufficientData");
    // No metrics at all, or no latency: the same.
    let (s2, acts) = step(
        &s,
        &sp,
        &CanaryInput {
            canary_metrics: None,
            ..input(3630, Some("old"), "new")
        },
    );
    assert_eq!(s2, s);
    assert!(events(&acts).is_empty());
    let no_latency = Metrics {
        p95_ms: None,
        ..good()
    };
    assert!(matches!(
        analyse(
            &sp.analysis,
            Some(&no_latency),
            None,
            Duration::from_secs(60)
        ),
        Verdict::InsufficientData(_)
    ));
    // Traffic arrives: the accumulated window passes, the step completes.
    let (s, ev, _) = run(s, &sp, 3660, 3660, |_| {});
    assert_eq!(ev, [reasons::STEP]);
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 1));
}

#[test]
fn the_manual_gate_pauses_until_promoted() {
    let sp = spec(false);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, ev, acts) = run(s, &sp, 30, 900, |_| {});
    assert_eq!(ev, [reasons::STEP, reasons::STEP, reasons::PAUSED]);
    assert!(matches!(&s, RolloutState::Paused(p) if p.weight == 100));
    assert!(!promotes(&acts));
    assert_eq!(condition_reason(&acts), "AwaitingPromotion");
    // It waits as long as it takes, still analysing.
    let (s, ev, _) = run(s, &sp, 930, 7200, |_| {});
    assert!(ev.is_empty());
    assert!(matches!(&s, RolloutState::Paused(_)));
    // A promote naming the revision promotes.
    let (s, ev, acts) = run(s, &sp, 7230, 7230, |i| i.manual_promote = true);
    assert_eq!(ev, [reasons::PROMOTED]);
    assert!(promotes(&acts));
    assert!(matches!(s, RolloutState::Promoted { .. }));
}

#[test]
fn a_paused_canary_that_goes_bad_is_aborted() {
    let sp = spec(false);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 900, |_| {});
    assert!(matches!(s, RolloutState::Paused(_)));
    let (s, ev, _) = run(s, &sp, 960, 960, |i| {
        i.canary_metrics = Some(Metrics {
            errors: 100,
            ..good()
        })
    });
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(matches!(s, RolloutState::Aborted { .. }));
}

#[test]
fn a_manual_promote_skips_the_remaining_steps() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, ev, acts) = run(s, &sp, 30, 30, |i| i.manual_promote = true);
    assert_eq!(ev, [reasons::PROMOTED]);
    assert!(promotes(&acts));
    assert!(matches!(s, RolloutState::Promoted { .. }));
}

#[test]
fn a_failing_canary_is_aborted_and_stays_aborted() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let bad = |i: &mut CanaryInput| {
        i.canary_metrics = Some(Metrics {
            requests: 1000,
            errors: 50,
            p95_ms: Some(180),
            rate_limited_429: 0,
        })
    };
    let (s, ev, acts) = run(s, &sp, 60, 60, bad);
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(
        acts.iter()
            .any(|a| matches!(a, CanaryAction::Abort { reason } if reason.contains("5.00%")))
    );
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
    assert_eq!(condition_reason(&acts), "Aborted");
    assert!(s.pins_stable());
    // Healthy figures later do not revive it; no further events.
    let (s2, ev, acts) = run(s.clone(), &sp, 90, 3600, |_| {});
    assert_eq!(s2, s);
    assert!(ev.is_empty());
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
    assert!(!acts.iter().any(|a| matches!(a, CanaryAction::Abort { .. })));
    // Reverting the spec to stable's revision ends it: rolled back.
    let (s3, acts) = step(&s, &sp, &input(3630, Some("old"), "old"));
    assert_eq!(s3, RolloutState::Stable);
    assert!(!s3.pins_stable());
    assert!(events(&acts).is_empty());
    // A new revision starts a new rollout.
    let (s4, acts) = step(&s, &sp, &input(3630, Some("old"), "newer"));
    assert_eq!(events(&acts), [reasons::STARTED]);
    assert!(matches!(&s4, RolloutState::Progressing(p) if p.revision == "newer" && p.step == 0));
}

#[test]
fn a_manual_abort_wins_over_a_promote() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, ev, _) = run(s, &sp, 30, 30, |i| {
        i.manual_abort = true;
        i.manual_promote = true;
    });
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(matches!(s, RolloutState::Aborted { ref reason, .. } if reason == "aborted by hand"));
}

#[test]
fn a_new_revision_during_a_rollout_restarts_it() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 330, |_| {});
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 1));
    let (s, acts) = step(&s, &sp, &input(360, Some("old"), "newer"));
    assert_eq!(events(&acts), [reasons::RESTARTED]);
    assert!(matches!(&s, RolloutState::Progressing(p)
        if p.revision == "newer" && p.step == 0 && p.step_started_at == ts(360) && p.analyses_passed == 0));
    assert_eq!(weight_of(&acts), 10);
    // Going back to stable's revision cancels instead.
    let (s, acts) = step(&s, &sp, &input(390, Some("old"), "old"));
    assert_eq!(events(&acts), [reasons::CANCELLED]);
    assert_eq!(s, RolloutState::Stable);
}

fn pause(i: &mut CanaryInput) {
    i.manual_pause = true;
}

fn bad_canary(i: &mut CanaryInput) {
    i.canary_metrics = Some(Metrics {
        errors: 100,
        ..good()
    });
}

#[test]
fn a_pause_by_hand_holds_the_step_until_resumed() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    // Paused two minutes into the first step's five.
    let (s, _, _) = run(s, &sp, 30, 90, |_| {});
    let (s, ev, acts) = run(s, &sp, 120, 120, pause);
    assert_eq!(ev, [reasons::PAUSED]);
    assert!(matches!(&s, RolloutState::Progressing(p) if p.paused_at == Some(ts(120))));
    assert_eq!(s.verdict(), Some("Paused"));
    assert_eq!(s.summary().as_deref(), Some("10% paused"));
    assert_eq!((weight_of(&acts), scale_of(&acts)), (10, 1));
    // An hour of healthy analyses does not move it, nor repeat the event.
    let (s, ev, acts) = run(s, &sp, 150, 3720, pause);
    assert!(ev.is_empty(), "{ev:?}");
    assert!(
        matches!(&s, RolloutState::Progressing(p) if p.step == 0 && p.analyses_passed > 1),
        "{s:?}"
    );
    assert_eq!(weight_of(&acts), 10);
    assert!(!promotes(&acts));
    assert_eq!(condition_reason(&acts), "AnalysisPassing");
    // While paused, the next check is the next analysis, not the step's end.
    let RolloutState::Progressing(p) = &s else {
        unreachable!()
    };
    assert_eq!(
        s.next_check_at(&sp),
        Some(after(p.window_start, Duration::from_secs(60)))
    );
    // Resumed at 3750: the two minutes run before the pause count, the
    // paused hour does not; three minutes are left.
    let (s, ev, _) = run(s, &sp, 3750, 3750, |_| {});
    assert_eq!(ev, [reasons::RESUMED]);
    assert!(
        matches!(&s, RolloutState::Progressing(p) if p.paused_at.is_none() && p.step_started_at == ts(3750 - 120)),
        "{s:?}"
    );
    assert_eq!(s.verdict(), Some("Analysing"));
    let (s, ev, _) = run(s, &sp, 3780, 3900, |_| {});
    assert!(ev.is_empty(), "{ev:?}");
    let (s, ev, _) = run(s, &sp, 3930, 3930, |_| {});
    assert_eq!(ev, [reasons::STEP]);
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 1));
}

#[test]
fn a_paused_canary_still_aborts_on_a_failed_analysis() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 30, pause);
    let (s, ev, acts) = run(s, &sp, 60, 60, |i| {
        pause(i);
        bad_canary(i);
    });
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(matches!(s, RolloutState::Aborted { .. }));
    assert_eq!((weight_of(&acts), scale_of(&acts)), (0, 0));
}

#[test]
fn promote_and_abort_act_on_a_paused_canary() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (paused, _, _) = run(s, &sp, 30, 30, pause);
    let (s, ev, acts) = run(paused.clone(), &sp, 60, 60, |i| {
        pause(i);
        i.manual_promote = true;
    });
    assert_eq!(ev, [reasons::PROMOTED]);
    assert!(promotes(&acts) && matches!(s, RolloutState::Promoted { .. }));
    let (s, ev, _) = run(paused, &sp, 60, 60, |i| {
        pause(i);
        i.manual_abort = true;
    });
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(matches!(s, RolloutState::Aborted { .. }));
}

#[test]
fn a_pause_at_the_manual_gate_does_not_promote_on_resume() {
    let sp = spec(false);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 900, |_| {});
    assert!(matches!(&s, RolloutState::Paused(_)));
    let (s, ev, _) = run(s, &sp, 930, 960, pause);
    assert_eq!(ev, [reasons::PAUSED]);
    let (s, ev, acts) = run(s, &sp, 990, 990, |_| {});
    assert_eq!(ev, [reasons::RESUMED]);
    assert!(matches!(&s, RolloutState::Paused(p) if p.paused_at.is_none()));
    assert!(!promotes(&acts));
    assert_eq!(condition_reason(&acts), "AwaitingPromotion");
}

#[test]
fn a_pause_is_for_one_revision() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 30, pause);
    // A new revision restarts the rollout; the pause named the old one,
    // so the controller reads no pause for it and the new canary runs.
    assert!(!gate_names(Some("new"), "newer"));
    let (s, acts) = step(&s, &sp, &input(60, Some("old"), "newer"));
    assert_eq!(events(&acts), [reasons::RESTARTED]);
    assert!(
        matches!(&s, RolloutState::Progressing(p) if p.revision == "newer" && p.paused_at.is_none())
    );
    assert_eq!(s.verdict(), Some("Analysing"));
}

/// A canary of `new` aborted by a failed analysis at 60 s.
fn aborted(sp: &RolloutSpec) -> RolloutState {
    let (s, _) = step(&RolloutState::Stable, sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, sp, 60, 60, bad_canary);
    assert!(matches!(s, RolloutState::Aborted { .. }));
    s
}

fn retry(request: &'static str) -> impl Fn(&mut CanaryInput) {
    move |i| i.retry = Some(request.to_owned())
}

#[test]
fn a_retry_starts_an_aborted_revision_again_once_per_request() {
    let sp = spec(true);
    let s = aborted(&sp);
    let (s, ev, acts) = run(s, &sp, 120, 120, retry("new@1"));
    assert_eq!(ev, [reasons::RETRIED]);
    assert!(matches!(&s, RolloutState::Progressing(p)
        if p.revision == "new" && p.step == 0 && p.step_started_at == ts(120)
            && p.window_start == ts(120) && p.analyses_passed == 0
            && p.retry_request.as_deref() == Some("new@1")));
    assert_eq!((weight_of(&acts), scale_of(&acts)), (10, 1));
    assert_eq!(condition_reason(&acts), "Pending");
    // It fails again: the same request does not start a third attempt.
    let (s, ev, _) = run(s, &sp, 180, 180, |i| {
        retry("new@1")(i);
        bad_canary(i);
    });
    assert_eq!(ev, [reasons::ABORTED]);
    assert!(
        matches!(&s, RolloutState::Aborted { retry_request, .. } if retry_request.as_deref() == Some("new@1"))
    );
    let (s2, ev, _) = run(s.clone(), &sp, 210, 900, retry("new@1"));
    assert!(ev.is_empty());
    assert_eq!(s2, s);
    // A new request does.
    let (s, ev, _) = run(s, &sp, 930, 930, retry("new@2"));
    assert_eq!(ev, [reasons::RETRIED]);
    // The retried canary walks its steps and is promoted like any other.
    let (s, ev, _) = run(s, &sp, 960, 1860, retry("new@2"));
    assert_eq!(ev, [reasons::STEP, reasons::STEP, reasons::PROMOTED]);
    assert!(matches!(s, RolloutState::Promoted { .. }));
}

#[test]
fn a_retry_waits_while_abort_or_promote_names_the_revision() {
    let sp = spec(true);
    let s = aborted(&sp);
    for gate in [
        (|i: &mut CanaryInput| i.manual_abort = true) as fn(&mut CanaryInput),
        |i| i.manual_promote = true,
    ] {
        let (s2, ev, _) = run(s.clone(), &sp, 120, 300, |i| {
            retry("new")(i);
            gate(i);
        });
        assert!(ev.is_empty());
        assert_eq!(s2, s);
    }
    // Once the annotation is gone, the waiting request acts.
    let (s, ev, _) = run(s, &sp, 330, 330, retry("new"));
    assert_eq!(ev, [reasons::RETRIED]);
    assert!(matches!(s, RolloutState::Progressing(_)));
}

#[test]
fn a_retry_acts_only_on_an_aborted_rollout() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (running, ev, _) = run(s, &sp, 30, 90, retry("new@1"));
    assert!(ev.is_empty());
    assert!(matches!(&running, RolloutState::Progressing(p) if p.retry_request.is_none()));
    let (s, acts) = step(
        &RolloutState::Stable,
        &sp,
        &CanaryInput {
            retry: Some("old@1".into()),
            ..input(0, Some("old"), "old")
        },
    );
    assert_eq!(s, RolloutState::Stable);
    assert!(events(&acts).is_empty());
}

#[test]
fn retry_requests_must_name_the_revision() {
    assert_eq!(retry_request(Some("abc"), "abc").as_deref(), Some("abc"));
    assert_eq!(
        retry_request(Some(" abc@2026-01-01T00:00:00Z\n"), "abc").as_deref(),
        Some("abc@2026-01-01T00:00:00Z")
    );
    assert_eq!(retry_request(Some("abd@1"), "abc"), None);
    assert_eq!(retry_request(Some("true"), "abc"), None);
    assert_eq!(retry_request(None, "abc"), None);
}

#[test]
fn a_state_written_before_pause_and_retry_still_reads() {
    let old = serde_json::json!({
        "phase": "progressing", "revision": "r", "step": 1, "weight": 50,
        "stepStartedAt": "2026-01-01T00:00:00Z", "windowStart": "2026-01-01T00:00:00Z",
        "analysesPassed": 0,
    });
    let s: RolloutState = serde_json::from_value(old).unwrap();
    assert!(
        matches!(&s, RolloutState::Progressing(p) if p.paused_at.is_none() && p.retry_request.is_none())
    );
    let old = serde_json::json!({"phase": "aborted", "revision": "r", "reason": "x", "at": "2026-01-01T00:00:00Z"});
    let s: RolloutState = serde_json::from_value(old).unwrap();
    assert!(matches!(
        s,
        RolloutState::Aborted {
            retry_request: None,
            ..
        }
    ));
}

#[test]
fn error_rate_rules_handle_a_clean_stable() {
    let a = spec(true).analysis;
    let w = Duration::from_secs(60);
    let stable = Metrics {
        errors: 0,
        ..good()
    };
    let canary = |errors| Metrics {
        requests: 1000,
        errors,
        p95_ms: Some(100),
        rate_limited_429: 0,
    };
    // Stable has no errors: one canary error is grace, the second fails.
    assert_eq!(
        analyse(&a, Some(&canary(0)), Some(&stable), w),
        Verdict::Pass
    );
    assert_eq!(
        analyse(&a, Some(&canary(1)), Some(&stable), w),
        Verdict::Pass
    );
    assert!(
        matches!(analyse(&a, Some(&canary(2)), Some(&stable), w), Verdict::Fail(m) if m.contains("stable"))
    );
    // Relative to a noisy stable: 0.5 % vs 0.5 % × 1.1.
    let noisy = Metrics {
        errors: 5,
        ..good()
    };
    assert_eq!(
        analyse(&a, Some(&canary(5)), Some(&noisy), w),
        Verdict::Pass
    );
    assert!(matches!(
        analyse(&a, Some(&canary(7)), Some(&noisy), w),
        Verdict::Fail(_)
    ));
    // Stable with too little traffic (e.g. at 100 %): absolute rules only.
    let idle = Metrics {
        requests: 3,
        errors: 0,
        p95_ms: None,
        rate_limited_429: 0,
    };
    assert_eq!(analyse(&a, Some(&canary(9)), Some(&idle), w), Verdict::Pass);
    assert!(
        matches!(analyse(&a, Some(&canary(11)), Some(&idle), w), Verdict::Fail(m) if m.contains("maxErrorRatePercent"))
    );
}

#[test]
fn a_canary_whose_sends_all_fail_is_judged_without_latency_or_the_minimum() {
    let a = spec(true).analysis;
    let w = Duration::from_secs(60);
    let failing = |requests, errors| Metrics {
        requests,
        errors,
        p95_ms: None,
        rate_limited_429: 0,
    };
    // Every send failed: no latency, yet a verdict.
    assert!(
        matches!(analyse(&a, Some(&failing(40, 40)), Some(&good()), w), Verdict::Fail(m) if m.contains("maxErrorRatePercent"))
    );
    // Its breaker opened after ten failures: fewer than 30 sends, still a verdict.
    assert!(matches!(
        analyse(&a, Some(&failing(12, 10)), Some(&good()), w),
        Verdict::Fail(_)
    ));
    // A few failures out of a few sends decide nothing yet.
    assert!(matches!(
        analyse(&a, Some(&failing(5, 5)), Some(&good()), w),
        Verdict::InsufficientData(_)
    ));
    // Twenty clean sends: too few to judge yet.
    assert!(matches!(
        analyse(&a, Some(&failing(20, 0)), Some(&good()), w),
        Verdict::InsufficientData(_)
    ));
    // Enough sends, no errors, but no latency: still waiting for latency.
    assert!(matches!(
        analyse(&a, Some(&failing(40, 0)), Some(&good()), w),
        Verdict::InsufficientData(_)
    ));
}

#[test]
fn latency_and_429s_fail_the_analysis() {
    let a = spec(true).analysis;
    let slow = Metrics {
        p95_ms: Some(501),
        ..good()
    };
    assert!(
        matches!(analyse(&a, Some(&slow), Some(&good()), Duration::from_secs(60)), Verdict::Fail(m) if m.contains("p95"))
    );
    let limited = Metrics {
        rate_limited_429: 1,
        ..good()
    };
    assert!(
        matches!(analyse(&a, Some(&limited), Some(&good()), Duration::from_secs(60)), Verdict::Fail(m) if m.contains("429"))
    );
    // max429s is per interval: a three-interval window allows three times as many.
    let mut a3 = a.clone();
    a3.max429s = 2;
    let six = Metrics {
        rate_limited_429: 6,
        ..good()
    };
    assert_eq!(
        analyse(&a3, Some(&six), None, Duration::from_secs(180)),
        Verdict::Pass
    );
    assert!(matches!(
        analyse(&a3, Some(&six), None, Duration::from_secs(120)),
        Verdict::Fail(_)
    ));
}

#[test]
fn a_step_without_partitions_only_holds_its_pause() {
    let sp = spec(true);
    let one = |i: &mut CanaryInput| {
        i.partitions = 1;
        i.canary_metrics = None;
    };
    let (s, _) = step(
        &RolloutState::Stable,
        &sp,
        &CanaryInput {
            partitions: 1,
            ..input(0, Some("old"), "new")
        },
    );
    // 10 %: no partition for the canary, so nothing to analyse; it advances.
    let (s, ev, _) = run(s, &sp, 30, 300, one);
    assert_eq!(ev, [reasons::STEP]);
    // 50 %: the canary owns the only partition and must show data.
    let (s, ev, _) = run(s, &sp, 330, 1200, one);
    assert!(ev.is_empty());
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 1));
}

#[test]
fn edited_steps_are_followed() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 600, |_| {});
    assert!(
        matches!(&s, RolloutState::Progressing(p) if p.step == 2 && p.step_started_at == ts(600))
    );
    let shorter: RolloutSpec = serde_json::from_value(serde_json::json!({
        "steps": [{"weight": 25, "pause": "1m"}, {"weight": 100, "pause": "1m"}],
    }))
    .unwrap();
    let (s, acts) = step(&s, &shorter, &input(630, Some("old"), "new"));
    assert!(matches!(&s, RolloutState::Progressing(p) if p.step == 1 && p.weight == 100));
    assert_eq!(weight_of(&acts), 100);
    // Its shorter pause and interval apply from the step's start.
    let (s, acts) = step(&s, &shorter, &input(660, Some("old"), "new"));
    assert!(matches!(s, RolloutState::Promoted { .. }));
    assert_eq!(events(&acts), [reasons::PROMOTED]);
}

#[test]
fn zero_replicas_or_no_steps_promote_directly() {
    let (s, acts) = step(
        &RolloutState::Stable,
        &spec(true),
        &CanaryInput {
            replicas: 0,
            ..input(0, Some("old"), "new")
        },
    );
    assert!(matches!(s, RolloutState::Promoted { .. }));
    assert_eq!(events(&acts), [reasons::DEPLOYED]);
}

#[test]
fn the_state_round_trips_through_json() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    let (s, _, _) = run(s, &sp, 30, 120, |_| {});
    let paused = match &s {
        RolloutState::Progressing(p) => RolloutState::Progressing(Progress {
            paused_at: Some(ts(100)),
            retry_request: Some("new@1".into()),
            ..p.clone()
        }),
        other => panic!("{other:?}"),
    };
    for state in [
        RolloutState::Stable,
        s,
        paused,
        RolloutState::Aborted {
            revision: "r".into(),
            reason: "why".into(),
            at: ts(5),
            retry_request: None,
        },
    ] {
        let text = serde_json::to_string(&state).unwrap();
        let back: RolloutState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state, "{text}");
    }
    assert_eq!(
        serde_json::to_value(RolloutState::Stable).unwrap(),
        serde_json::json!({"phase": "stable"})
    );
}

#[test]
fn tracks_follow_the_state() {
    let tpl = PodTemplateSpec::default();
    let p = Progress {
        revision: "r".into(),
        step: 1,
        weight: 50,
        step_started_at: ts(0),
        window_start: ts(0),
        analyses_passed: 0,
        last_analysis: None,
        last_figures: None,
        paused_at: None,
        retry_request: None,
    };
    let t = RolloutState::Progressing(p).tracks(4, Some(&tpl));
    assert_eq!(t.stable_template, Some(tpl.clone()));
    assert_eq!(
        t.canary,
        Some(CanaryTrack {
            replicas: 2,
            weight: 50
        })
    );
    let t = RolloutState::Promoted {
        revision: "r".into(),
        at: ts(0),
    }
    .tracks(4, Some(&tpl));
    assert_eq!(t.stable_template, None);
    assert_eq!(
        t.canary,
        Some(CanaryTrack {
            replicas: 0,
            weight: 0
        })
    );
}

#[test]
fn gates_must_name_the_revision() {
    assert!(gate_names(Some("abc123"), "abc123"));
    assert!(gate_names(Some(" abc123\n"), "abc123"));
    assert!(!gate_names(Some("true"), "abc123"));
    assert!(!gate_names(Some("old"), "abc123"));
    assert!(!gate_names(None, "abc123"));
}

#[test]
fn next_check_is_the_sooner_of_analysis_and_pause() {
    let sp = spec(true);
    let (s, _) = step(&RolloutState::Stable, &sp, &input(0, Some("old"), "new"));
    assert_eq!(s.next_check_at(&sp), Some(ts(60)));
    assert_eq!(RolloutState::Stable.next_check_at(&sp), None);
}

#[test]
fn canary_replicas_examples() {
    assert_eq!(canary_replicas(3, 10), 1);
    assert_eq!(canary_replicas(3, 50), 2);
    assert_eq!(canary_replicas(3, 100), 3);
    assert_eq!(canary_replicas(0, 50), 0);
}

proptest! {
    #[test]
    fn canary_replicas_stay_in_bounds(replicas in 0u32..200, weight in 0u32..150) {
        let n = canary_replicas(replicas, weight);
        prop_assert!(n <= replicas);
        prop_assert_eq!(n == 0, replicas == 0 || weight == 0);
    }

    /// Whatever the inputs: an event only with a state change, an abort
    /// stays until the desired revision changes, and nothing panics.
    #[test]
    fn events_mean_transitions_and_aborts_stick(
        passes in proptest::collection::vec(
            (0i64..200, 0usize..3, 0u64..100, 0u64..60, 0u64..900, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 0u8..3),
            1..60,
        ),
        auto in any::<bool>(),
    ) {
        let sp = spec(auto);
        let revs = ["a", "b", "c"];
        let mut state = RolloutState::Stable;
        let mut stable = Some("a".to_owned());
        let mut now = 0i64;
        for (dt, rev, requests, errors, p95, promote, abort, has_metrics, pause, retry) in passes {
            now += dt;
            let desired = revs[rev].to_owned();
            let i = CanaryInput {
                now: ts(now),
                stable_revision: stable.clone(),
                desired_revision: desired.clone(),
                replicas: 3,
                partitions: 16,
                canary_metrics: has_metrics.then_some(Metrics { requests, errors, p95_ms: Some(p95), rate_limited_429: 0 }),
                stable_metrics: Some(good()),
                manual_promote: promote,
                manual_abort: abort,
                manual_pause: pause,
                // Two distinct requests, or none.
                retry: (retry > 0).then(|| format!("{desired}@{retry}")),
            };
            let (next, acts) = step(&state, &sp, &i);
            if !events(&acts).is_empty() {
                prop_assert_ne!(&next, &state);
            }
            if let RolloutState::Aborted { revision, retry_request, .. } = &state
                && *revision == desired
                && (i.retry.is_none() || i.retry == *retry_request || abort || promote)
            {
                prop_assert_eq!(&next, &state);
            }
            // Held by hand, a canary keeps its step and weight.
            if let (RolloutState::Progressing(before), RolloutState::Progressing(after)) = (&state, &next)
                && pause
                && before.revision == after.revision
            {
                prop_assert_eq!((before.step, before.weight), (after.step, after.weight));
            }
            prop_assert!(weight_of(&acts) <= 100);
            for a in &acts {
                if let CanaryAction::Promote { revision } = a {
                    stable = Some(revision.clone());
                }
            }
            state = next;
        }
    }
}
