//! Tier selection: which delivery path takes the next attempt of a message.
//!
//! Owns: the choice among tiers from plain facts about each (breaker answer,
//! health score and floor, recent success, recipient reachability) and an
//! [`Ewma`] of recent success. Leaves to others: computing those facts (the
//! breaker, [`crate::engine::health`], the error taxonomy marking a chat
//! unreachable) and the send itself.
//!
//! Invariant: a non-spool tier is chosen only if its breaker admits, its
//! health is at or above its floor and it can reach the recipient. The spool
//! has no breaker and no recipient, so it is always usable — and for that
//! reason it is the last resort on the normal route, chosen only when nothing
//! else can take the message (degradation may route to it earlier, see
//! [`Route`]); nothing is ever stranded while a spool tier exists.

use crate::engine::SplitMix64;

/// What the selector knows about one tier at this moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierView<'a> {
    pub name: &'a str,
    /// Lower is preferred.
    pub priority: u32,
    /// The tier's breaker would let an attempt through now.
    pub breaker_admits: bool,
    /// 0..=100, see [`crate::engine::health`].
    pub health_score: u8,
    /// Below this score the tier is skipped.
    pub health_floor: u8,
    /// Recent success, 0.0..=1.0 (an [`Ewma`] value).
    pub ewma_success: f64,
    /// This tier cannot reach the message's chat (blocked, not found).
    pub chat_unreachable: bool,
    /// A spool tier: files on disk, never refuses.
    pub is_spool: bool,
}

/// Knobs of the selection.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectorConfig {
    /// Weight floor for a usable tier whose EWMA is near zero, so that it
    /// still sees a trickle of traffic and can show it recovered.
    pub min_weight: f64,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig { min_weight: 0.02 }
    }
}

/// Why a tier was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionReason {
    /// The only usable tier of the best priority among the primary tiers.
    Preferred,
    /// Drawn among `peers` usable primary tiers of equal priority, weighted
    /// by their recent success.
    Weighted { peers: usize },
    /// No primary tier was usable; this is entry `position` (0-based) of the
    /// fallback list, the first usable one.
    Fallback { position: usize },
    /// Nothing else could take the message: the spool.
    LastResort,
    /// The route sends everything to the spool.
    Routed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Index into the `tiers` slice given to [`select`].
    pub tier: usize,
    pub reason: SelectionReason,
}

/// Why one tier could not be used (several flags may hold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unusable {
    pub breaker_open: bool,
    pub below_health_floor: bool,
    pub chat_unreachable: bool,
}

impl Unusable {
    fn of(tier: &TierView<'_>) -> Option<Unusable> {
        if tier.is_spool {
            return None;
        }
        let why = Unusable {
            breaker_open: !tier.breaker_admits,
            below_health_floor: tier.health_score < tier.health_floor,
            chat_unreachable: tier.chat_unreachable,
        };
        (why != Unusable::default()).then_some(why)
    }
}

/// No tier can take the message and there is no spool tier. Lists every
/// tier with why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no delivery tier can take the message ({} refused, no spool tier)", refused.len())]
pub struct NoTier {
    /// `(index into tiers, why)`, in `tiers` order.
    pub refused: Vec<(usize, Unusable)>,
}

/// How tier selection is steered by the degradation level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Route {
    /// Primary tiers, then fallbacks, then the spool.
    #[default]
    Normal,
    /// Skip the primary tiers: fallbacks, then the spool; primaries only if
    /// neither exists or can go.
    Fallback,
    /// The spool; without a spool tier, as `Normal`.
    Spool,
}

/// Chooses the tier for one attempt.
///
/// `tiers` are the tiers the message may use; `fallbacks` is the ordered
/// fallback list (indices into `tiers`) of the tier group the message belongs
/// to. Tiers not in `fallbacks` are primary. With [`Route::Normal`]:
/// 1. among usable primary non-spool tiers, the best (lowest) priority; if
///    several share it, one drawn with probability proportional to
///    `max(ewma_success, min_weight)` using `rng`;
/// 2. else the first usable non-spool tier in `fallbacks` order;
/// 3. else a spool tier (best priority, then lowest index), wherever it is
///    listed — the spool is always last, even if listed earlier;
/// 4. else [`NoTier`].
///
/// [`Route::Fallback`] tries 2, 3, 1; [`Route::Spool`] tries 3, 1, 2. So a
/// route never makes delivery impossible while some tier can go.
/// Out-of-range fallback indices are ignored (configuration is validated
/// where it is parsed). The random draw happens only when step 1 has ties.
pub fn select(
    tiers: &[TierView<'_>],
    fallbacks: &[usize],
    route: Route,
    config: &SelectorConfig,
    rng: &mut SplitMix64,
) -> Result<Selection, NoTier> {
    let mut primary = || pick_primary(tiers, fallbacks, config, rng);
    let found = match route {
        Route::Normal => primary()
            .or_else(|| pick_fallback(tiers, fallbacks))
            .or_else(|| pick_spool(tiers, SelectionReason::LastResort)),
        Route::Fallback => pick_fallback(tiers, fallbacks)
            .or_else(|| pick_spool(tiers, SelectionReason::LastResort))
            .or_else(primary),
        Route::Spool => pick_spool(tiers, SelectionReason::Routed)
            .or_else(primary)
            .or_else(|| pick_fallback(tiers, fallbacks)),
    };
    found.ok_or_else(|| NoTier {
        refused: tiers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Unusable::of(t).map(|why| (i, why)))
            .collect(),
    })
}

fn usable(tiers: &[TierView<'_>], i: usize) -> bool {
    tiers
        .get(i)
        .is_some_and(|t| !t.is_spool && Unusable::of(t).is_none())
}

fn pick_primary(
    tiers: &[TierView<'_>],
    fallbacks: &[usize],
    config: &SelectorConfig,
    rng: &mut SplitMix64,
) -> Option<Selection> {
    let primary = |i: &usize| !fallbacks.contains(i) && usable(tiers, *i);
    let best = (0..tiers.len())
        .filter(primary)
        .map(|i| tiers[i].priority)
        .min()?;
    let peers: Vec<usize> = (0..tiers.len())
        .filter(|i| primary(i) && tiers[*i].priority == best)
        .collect();
    if let [only] = peers.as_slice() {
        return Some(Selection {
            tier: *only,
            reason: SelectionReason::Preferred,
        });
    }
    let weight = |i: usize| {
        let w = tiers[i].ewma_success;
        let w = if w.is_finite() {
            w.clamp(0.0, 1.0)
        } else {
            0.0
        };
        w.max(config.min_weight).max(f64::MIN_POSITIVE)
    };
    let total: f64 = peers.iter().map(|&i| weight(i)).sum();
    let mut draw = rng.next_f64() * total;
    let mut chosen = *peers.last()?;
    for &i in &peers {
        if draw < weight(i) {
            chosen = i;
            break;
        }
        draw -= weight(i);
    }
    Some(Selection {
        tier: chosen,
        reason: SelectionReason::Weighted { peers: peers.len() },
    })
}

fn pick_fallback(tiers: &[TierView<'_>], fallbacks: &[usize]) -> Option<Selection> {
    let position = fallbacks.iter().position(|&i| usable(tiers, i))?;
    Some(Selection {
        tier: fallbacks[position],
        reason: SelectionReason::Fallback { position },
    })
}

fn pick_spool(tiers: &[TierView<'_>], reason: SelectionReason) -> Option<Selection> {
    let tier = (0..tiers.len())
        .filter(|&i| tiers[i].is_spool)
        .min_by_key(|&i| (tiers[i].priority, i))?;
    Some(Selection { tier, reason })
}

/// Exponentially weighted moving average of outcomes (1.0 success, 0.0
/// failure), per attempt: `value += alpha * (x - value)`. Starts at 1.0 so a
/// new tier is not penalised before it has been tried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: f64,
}

/// `alpha` must be in `(0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("ewma alpha {0} is outside (0, 1]")]
pub struct BadAlpha(pub f64);

impl Ewma {
    /// Default smoothing: about the last 20 attempts carry most weight.
    pub const DEFAULT_ALPHA: f64 = 0.1;

    pub fn new(alpha: f64) -> Result<Self, BadAlpha> {
        Self::with_initial(alpha, 1.0)
    }

    /// Starts at `initial` (clamped to 0..=1).
    pub fn with_initial(alpha: f64, initial: f64) -> Result<Self, BadAlpha> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(BadAlpha(alpha));
        }
        let value = if initial.is_finite() {
            initial.clamp(0.0, 1.0)
        } else {
            1.0
        };
        Ok(Ewma { alpha, value })
    }

    pub fn record(&mut self, success: bool) {
        self.observe(if success { 1.0 } else { 0.0 });
    }

    /// Folds in a sample in 0..=1 (clamped); non-finite samples are ignored.
    pub fn observe(&mut self, x: f64) {
        if x.is_finite() {
            self.value += self.alpha * (x.clamp(0.0, 1.0) - self.value);
        }
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

impl Default for Ewma {
    fn default() -> Self {
        Ewma {
            alpha: Self::DEFAULT_ALPHA,
            value: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tier(name: &str, priority: u32) -> TierView<'_> {
        TierView {
            name,
            priority,
            breaker_admits: true,
            health_score: 100,
            health_floor: 50,
            ewma_success: 1.0,
            chat_unreachable: false,
            is_spool: false,
        }
    }

    fn spool(name: &str) -> TierView<'_> {
        TierView {
            is_spool: true,
            breaker_admits: false,
            health_score: 0,
            ..tier(name, 99)
        }
    }

    fn pick(tiers: &[TierView<'_>], fallbacks: &[usize]) -> Result<Selection, NoTier> {
        select(
            tiers,
            fallbacks,
            Route::Normal,
            &SelectorConfig::default(),
            &mut SplitMix64::new(1),
        )
    }

    #[test]
    fn best_priority_usable_primary_wins() {
        let tiers = [
            tier("bot-b", 2),
            tier("bot-a", 1),
            tier("webhook", 0),
            spool("spool"),
        ];
        let s = pick(&tiers, &[2, 3]).unwrap();
        assert_eq!(
            s,
            Selection {
                tier: 1,
                reason: SelectionReason::Preferred
            }
        );
    }

    #[test]
    fn breaker_health_and_reachability_each_disqualify() {
        let mut tiers = [tier("a", 1), tier("b", 2), tier("hook", 5), spool("spool")];
        tiers[0].breaker_admits = false;
        assert_eq!(pick(&tiers, &[2]).unwrap().tier, 1);
        tiers[1].health_score = 49;
        let s = pick(&tiers, &[2]).unwrap();
        assert_eq!(
            s,
            Selection {
                tier: 2,
                reason: SelectionReason::Fallback { position: 0 }
            }
        );
        tiers[2].chat_unreachable = true;
        let s = pick(&tiers, &[2]).unwrap();
        assert_eq!(
            s,
            Selection {
                tier: 3,
                reason: SelectionReason::LastResort
            }
        );
    }

    #[test]
    fn fallbacks_go_in_listed_order_and_spool_is_always_last() {
        let mut tiers = [
            tier("bot", 0),
            spool("spool"),
            tier("hook-1", 9),
            tier("hook-2", 1),
        ];
        tiers[0].breaker_admits = false;
        // The spool listed first is still skipped while a fallback can go.
        let s = pick(&tiers, &[1, 2, 3]).unwrap();
        assert_eq!(
            s,
            Selection {
                tier: 2,
                reason: SelectionReason::Fallback { position: 1 }
            }
        );
        // An unlisted spool is still the last resort.
        tiers[2].breaker_admits = false;
        tiers[3].breaker_admits = false;
        assert_eq!(
            pick(&tiers, &[2, 3]).unwrap().reason,
            SelectionReason::LastResort
        );
        // Out-of-range indices are ignored.
        assert_eq!(pick(&tiers, &[17]).unwrap().tier, 1);
    }

    #[test]
    fn routes_reorder_the_steps_but_never_strand_a_message() {
        let tiers = [tier("bot", 0), tier("hook", 1), spool("spool")];
        let cfg = SelectorConfig::default();
        let mut rng = SplitMix64::new(1);
        let mut go =
            |tiers: &[TierView<'_>], route| select(tiers, &[1], route, &cfg, &mut rng).unwrap();
        assert_eq!(go(&tiers, Route::Fallback).tier, 1);
        assert_eq!(go(&tiers, Route::Spool).reason, SelectionReason::Routed);
        let mut no_hook = tiers;
        no_hook[1].breaker_admits = false;
        assert_eq!(
            go(&no_hook, Route::Fallback).reason,
            SelectionReason::LastResort
        );
        // Without a spool, the spool route behaves like the normal one and
        // the fallback route falls back to the primaries.
        assert_eq!(go(&tiers[..2], Route::Spool).tier, 0);
        assert_eq!(go(&no_hook[..2], Route::Fallback).tier, 0);
    }

    #[test]
    fn no_tier_lists_every_refusal() {
        let mut tiers = [tier("a", 1), tier("b", 2)];
        tiers[0].breaker_admits = false;
        tiers[0].chat_unreachable = true;
        tiers[1].health_score = 10;
        let err = pick(&tiers, &[1]).unwrap_err();
        assert_eq!(err.refused.len(), 2);
        assert!(err.refused[0].1.breaker_open && err.refused[0].1.chat_unreachable);
        assert!(err.refused[1].1.below_health_floor);
        assert_eq!(
            err.to_string(),
            "no delivery tier can take the message (2 refused, no spool tier)"
        );
        assert!(pick(&[], &[]).is_err());
    }

    #[test]
    fn equal_priority_is_weighted_by_recent_success() {
        let mut tiers = [tier("a", 1), tier("b", 1), tier("c", 1)];
        tiers[0].ewma_success = 0.9;
        tiers[1].ewma_success = 0.3;
        tiers[2].ewma_success = f64::NAN; // counts as the minimum weight
        let mut rng = SplitMix64::new(9);
        let mut counts = [0u32; 3];
        for _ in 0..12_000 {
            let s = select(
                &tiers,
                &[],
                Route::Normal,
                &SelectorConfig::default(),
                &mut rng,
            )
            .unwrap();
            assert_eq!(s.reason, SelectionReason::Weighted { peers: 3 });
            counts[s.tier] += 1;
        }
        // Expected shares 0.9/1.22, 0.3/1.22, 0.02/1.22 of 12,000.
        assert!((8500..9200).contains(&counts[0]), "{counts:?}");
        assert!((2700..3200).contains(&counts[1]), "{counts:?}");
        assert!((100..300).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn ewma_moves_towards_outcomes() {
        let mut e = Ewma::new(0.5).unwrap();
        assert_eq!(e.value(), 1.0);
        e.record(false);
        assert_eq!(e.value(), 0.5);
        e.record(false);
        assert_eq!(e.value(), 0.25);
        e.observe(f64::NAN);
        assert_eq!(e.value(), 0.25);
        e.record(true);
        assert_eq!(e.value(), 0.625);
        assert!(Ewma::new(0.0).is_err() && Ewma::new(1.5).is_err() && Ewma::new(f64::NAN).is_err());
        assert_eq!(Ewma::with_initial(0.2, 7.0).unwrap().value(), 1.0);
        assert_eq!(Ewma::default().alpha(), Ewma::DEFAULT_ALPHA);
    }

    fn arb_tier() -> impl Strategy<Value = (u32, bool, u8, u8, f64, bool, bool)> {
        (
            0..4u32,
            any::<bool>(),
            0..=100u8,
            0..=100u8,
            0.0..=1.0f64,
            any::<bool>(),
            proptest::bool::weighted(0.15),
        )
    }

    proptest! {
        /// Never a non-spool tier whose breaker refuses, whose health is below
        /// its floor or which cannot reach the chat; on the normal route the
        /// spool only when no other tier is usable, on the spool route the
        /// spool whenever one exists; an error only when no tier is usable
        /// and there is no spool, whatever the route.
        #[test]
        fn never_picks_an_unusable_tier(
            raw in proptest::collection::vec(arb_tier(), 0..8),
            fallbacks in proptest::collection::vec(0..10usize, 0..5),
            route in prop_oneof![Just(Route::Normal), Just(Route::Fallback), Just(Route::Spool)],
            seed in any::<u64>(),
        ) {
            let names: Vec<String> = (0..raw.len()).map(|i| format!("t{i}")).collect();
            let tiers: Vec<TierView<'_>> = raw.iter().zip(&names).map(|(r, n)| TierView {
                name: n, priority: r.0, breaker_admits: r.1, health_score: r.2, health_floor: r.3,
                ewma_success: r.4, chat_unreachable: r.5, is_spool: r.6,
            }).collect();
            let any_usable = tiers.iter().any(|t| !t.is_spool && Unusable::of(t).is_none());
            let any_spool = tiers.iter().any(|t| t.is_spool);
            let cfg = SelectorConfig::default();
            match select(&tiers, &fallbacks, route, &cfg, &mut SplitMix64::new(seed)) {
                Ok(s) => {
                    let t = &tiers[s.tier];
                    if t.is_spool {
                        match route {
                            Route::Spool => prop_assert_eq!(s.reason, SelectionReason::Routed),
                            _ => prop_assert_eq!(s.reason, SelectionReason::LastResort),
                        }
                        if route == Route::Normal {
                            prop_assert!(!any_usable);
                        }
                    } else {
                        prop_assert!(t.breaker_admits && t.health_score >= t.health_floor && !t.chat_unreachable);
                        prop_assert!(route != Route::Spool || !any_spool);
                    }
                    if let SelectionReason::Preferred | SelectionReason::Weighted { .. } = s.reason {
                        let better = tiers.iter().enumerate().any(|(i, o)| {
                            !fallbacks.contains(&i) && !o.is_spool && Unusable::of(o).is_none() && o.priority < t.priority
                        });
                        prop_assert!(!better);
                    }
                }
                Err(e) => {
                    prop_assert!(!any_usable && !any_spool);
                    prop_assert_eq!(e.refused.len(), tiers.len());
                }
            }
        }
    }
}
