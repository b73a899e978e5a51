//! How unsure an agent is of when Redis chose a shared slot.
//!
//! A shared decision answers "send `wait` from now", where *now* is the
//! moment Redis ran the script: somewhere between the ask and the answer.
//! The agent sleeps `wait` from the answer, so a slow round trip (Redis
//! or this process held up while the answer was on its way) makes the send
//! late by up to the time lost, without the wake-up itself being late.
//! Sends of other agents keep their slots, so a late one arrives bunched
//! with the next and eats the pacing guard.
//!
//! Owns the lower envelope of round trips ([`RoundTripFloor`]) and the
//! excess of one round trip over it. The steady part of a round trip (a
//! Redis host further away) shifts every agent's sends alike and is not
//! lateness; only the excess is. Leaves the decision to give a slot up to
//! the send path. Pure: round trips are passed in.

use std::time::Duration;

/// How fast the floor follows round trips above it: each one closes this
/// fraction of the gap, so a lasting move (a Redis failover to a further
/// host) is learnt within a few dozen decisions, while one slow answer
/// barely lifts it.
const RISE_DIVISOR: u32 = 16;

/// The lower envelope of the round trips seen: drops to any faster one at
/// once, rises slowly toward slower ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundTripFloor {
    floor: Option<Duration>,
}

impl RoundTripFloor {
    /// Records one round trip; answers how much longer than the floor (as it
    /// was before this one) it took: the most this answer may be late by.
    pub fn observe(&mut self, round_trip: Duration) -> Duration {
        let Some(floor) = self.floor else {
            self.floor = Some(round_trip);
            return Duration::ZERO;
        };
        let excess = round_trip.saturating_sub(floor);
        self.floor = Some(if round_trip <= floor {
            round_trip
        } else {
            floor + excess / RISE_DIVISOR
        });
        excess
    }

    pub fn floor(&self) -> Option<Duration> {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_round_trip_sets_the_floor_and_is_not_late() {
        let mut f = RoundTripFloor::default();
        assert_eq!(f.observe(ms(3)), Duration::ZERO);
        assert_eq!(f.floor(), Some(ms(3)));
    }

    #[test]
    fn one_slow_answer_is_late_by_its_excess_and_barely_lifts_the_floor() {
        let mut f = RoundTripFloor::default();
        for _ in 0..10 {
            f.observe(ms(1));
        }
        assert_eq!(f.observe(ms(41)), ms(40));
        assert_eq!(f.floor(), Some(ms(1) + ms(40) / 16));
        // The next normal answer brings the floor straight back.
        assert_eq!(f.observe(ms(1)), Duration::ZERO);
        assert_eq!(f.floor(), Some(ms(1)));
    }

    #[test]
    fn a_lasting_slower_path_stops_counting_as_late() {
        let mut f = RoundTripFloor::default();
        f.observe(ms(1));
        let mut asks = 0;
        while f.observe(ms(21)) > ms(5) {
            asks += 1;
            assert!(asks < 100, "the floor never followed");
        }
        assert!(asks <= 25, "took {asks} decisions");
    }

    proptest! {
        /// The floor never exceeds the slowest round trip seen, never
        /// undercuts the fastest, and the excess is exactly the round trip
        /// over the floor before it.
        #[test]
        fn the_floor_stays_within_what_was_seen(trips in proptest::collection::vec(0u64..100_000, 1..200)) {
            let mut f = RoundTripFloor::default();
            let (mut lo, mut hi) = (u64::MAX, 0);
            for t in trips {
                let before = f.floor();
                let excess = f.observe(Duration::from_micros(t));
                lo = lo.min(t);
                hi = hi.max(t);
                let floor = f.floor().unwrap();
                prop_assert!(floor >= Duration::from_micros(lo));
                prop_assert!(floor <= Duration::from_micros(hi));
                let expected = before.map_or(Duration::ZERO, |b| Duration::from_micros(t).saturating_sub(b));
                prop_assert_eq!(excess, expected);
            }
        }
    }
}
