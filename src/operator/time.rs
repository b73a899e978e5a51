//! Timestamp arithmetic with `std::time::Duration` (what `DurationString`
//! yields), saturating instead of failing.
//!
//! Owns nothing else; no function here reads a clock.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// `at + d`, saturating at the largest timestamp.
pub fn after(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// `at - d`, saturating at the smallest timestamp.
pub fn before(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

/// Time from `since` to `now`; zero when `since` is in the future.
pub fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    let d = now.duration_since(since);
    if d <= SignedDuration::ZERO {
        return Duration::ZERO;
    }
    Duration::try_from(d).unwrap_or(Duration::MAX)
}

/// RFC 3339 text of a timestamp, as status fields hold it.
pub fn rfc3339(at: Timestamp) -> String {
    at.to_string()
}

#[cfg(test)]
pub(crate) fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_never_goes_negative() {
        assert_eq!(after(ts(10), Duration::from_secs(5)), ts(15));
        assert_eq!(
            after(Timestamp::MAX, Duration::from_secs(5)),
            Timestamp::MAX
        );
        assert_eq!(before(ts(10), Duration::from_secs(5)), ts(5));
        assert_eq!(
            before(Timestamp::MIN, Duration::from_secs(5)),
            Timestamp::MIN
        );
        assert_eq!(elapsed(ts(10), ts(4)), Duration::from_secs(6));
        assert_eq!(elapsed(ts(4), ts(10)), Duration::ZERO);
        assert_eq!(rfc3339(ts(0)), "1970-01-01T00:00:00Z");
    }
}
