//! Conditions as the decisions produce them (type, status, reason, message —
//! no time), and stamping them into `metav1.Condition`s.
//!
//! Owns the one place a condition gets its `lastTransitionTime`: carried
//! over from the previous status when the condition's status did not
//! change, `now` otherwise. So a status recomputed from the same inputs is
//! the same status, and writing it does not wake the controller again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The three condition statuses Kubernetes allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CondStatus {
    True,
    False,
    Unknown,
}

impl CondStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            CondStatus::True => "True",
            CondStatus::False => "False",
            CondStatus::Unknown => "Unknown",
        }
    }

    pub const fn from_bool(b: bool) -> Self {
        if b {
            CondStatus::True
        } else {
            CondStatus::False
        }
    }
}

/// A condition without its timestamps. Reasons are CamelCase constants
/// chosen by herald; messages may name objects but never carry secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSpec {
    pub type_: &'static str,
    pub status: CondStatus,
    pub reason: &'static str,
    pub message: String,
}

/// Longest message the Condition schema accepts.
const MAX_MESSAGE: usize = 32768;

impl ConditionSpec {
    pub fn new(
        type_: &'static str,
        status: CondStatus,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ConditionSpec {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }

    /// The full condition: `lastTransitionTime` from `previous` when a
    /// condition of this type had the same status there, else `now`.
    pub fn stamp(
        &self,
        previous: &[Condition],
        now: Timestamp,
        generation: Option<i64>,
    ) -> Condition {
        let status = self.status.as_str();
        let since = previous
            .iter()
            .find(|c| c.type_ == self.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            last_transition_time: since,
            message: truncate(&self.message, MAX_MESSAGE),
            observed_generation: generation,
            reason: self.reason.to_owned(),
            status: status.to_owned(),
            type_: self.type_.to_owned(),
        }
    }
}

/// Stamp a list of conditions; order is kept as given.
pub fn stamp_all(
    specs: &[ConditionSpec],
    previous: &[Condition],
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    specs
        .iter()
        .map(|s| s.stamp(previous, now, generation))
        .collect()
}

/// Whether two condition lists say the same thing, whatever their
/// `lastTransitionTime`s. Order matters: herald always emits one order.
pub fn eq_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// `s` cut to at most `max` bytes, on a character boundary: the API server
/// refuses a condition message or an event note past its limit.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::time::ts;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let ready = ConditionSpec::new("Ready", CondStatus::True, "AllReplicasReady", "3/3");
        let first = ready.stamp(&[], ts(100), Some(1));
        assert_eq!(first.last_transition_time, Time(ts(100)));
        // Same status, new message and generation: time is carried over.
        let again = ConditionSpec::new("Ready", CondStatus::True, "AllReplicasReady", "2/2").stamp(
            std::slice::from_ref(&first),
            ts(200),
            Some(2),
        );
        assert_eq!(again.last_transition_time, Time(ts(100)));
        assert_eq!(again.observed_generation, Some(2));
        // Status flips: time is now.
        let flipped = ConditionSpec::new("Ready", CondStatus::False, "ReplicasNotReady", "0/2")
            .stamp(&[again], ts(300), Some(2));
        assert_eq!(flipped.last_transition_time, Time(ts(300)));
    }

    #[test]
    fn equality_ignores_only_the_time() {
        let spec = ConditionSpec::new("Ready", CondStatus::True, "AllReplicasReady", "ok");
        let a = spec.stamp(&[], ts(1), Some(1));
        let b = spec.stamp(&[], ts(2), Some(1));
        assert!(eq_ignoring_time(std::slice::from_ref(&a), &[b]));
        let c = ConditionSpec::new("Ready", CondStatus::True, "AllReplicasReady", "other").stamp(
            &[],
            ts(1),
            Some(1),
        );
        assert!(!eq_ignoring_time(&[a], &[c]));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let c = ConditionSpec::new("Ready", CondStatus::True, "R", long).stamp(&[], ts(1), None);
        assert!(c.message.len() <= MAX_MESSAGE);
    }
}
