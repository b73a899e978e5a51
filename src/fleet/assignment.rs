//! Who owns which queue partition: rendezvous hashing over the live
//! agents, with the canary track given exactly its share.
//!
//! Owns: [`CanarySplit`], [`assign_partitions`], [`owned_partitions`] and
//! the weight behind a canary's partition range ([`canary_weight`]). Pure:
//! the live list comes from [`super::membership`], the split from
//! [`crate::engine::partition::partition_split`].
//!
//! Invariants: every partition has exactly one owner whenever one agent is
//! alive; the canary track gets exactly the operator's share; one agent
//! joining or leaving moves only partitions to or from that agent; the
//! hash never changes between builds, or a rolling upgrade would reshuffle
//! every partition.

use std::collections::BTreeSet;

use crate::api::agent::PartitionAssignment;
use crate::engine::partition::partition_split;

use super::membership::{AgentId, LiveAgent, Track};

/// The canary's share during a rollout: which agents run the canary and
/// the weight in percent the operator set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanarySplit {
    pub canary_agents: BTreeSet<AgentId>,
    pub weight_percent: u32,
}

impl CanarySplit {
    /// The split as the heartbeat set shows it.
    pub fn from_live(live: &[LiveAgent], weight_percent: u32) -> CanarySplit {
        CanarySplit {
            canary_agents: live
                .iter()
                .filter(|a| a.track == Track::Canary)
                .map(|a| a.id.clone())
                .collect(),
            weight_percent,
        }
    }
}

/// The owner of each of `partitions` queue partitions, as an index into
/// `live`; empty when no agent is alive.
///
/// Rendezvous hashing: a partition goes to the live agent with the highest
/// stable hash of (partition, agent). An agent joining takes only
/// partitions it now wins; one leaving gives away only its own. With a
/// canary, exactly `partition_split(partitions, weight).0` partitions (the
/// ones ranking highest on a hash of the partition alone, so a larger
/// weight keeps the canary's earlier partitions) go to canary agents and
/// the rest to stable agents; a track without live agents leaves all
/// partitions to the other.
pub fn assign_partitions(
    partitions: u32,
    live: &[AgentId],
    canary: Option<&CanarySplit>,
) -> Vec<usize> {
    if live.is_empty() {
        return Vec::new();
    }
    let hashes: Vec<u64> = live.iter().map(|a| fnv1a(a.as_str().as_bytes())).collect();
    let is_canary: Vec<bool> = live
        .iter()
        .map(|a| canary.is_some_and(|c| c.canary_agents.contains(a)))
        .collect();
    let canary_live = is_canary.iter().filter(|&&c| c).count();
    let stable_live = live.len() - canary_live;
    let canary_count = match canary {
        Some(_) if canary_live == 0 => 0,
        Some(_) if stable_live == 0 => partitions,
        Some(c) => partition_split(partitions, c.weight_percent).0,
        None => 0,
    };
    let on_canary = canary_partitions(partitions, canary_count);
    (0..partitions)
        .map(|p| {
            let track = on_canary[p as usize];
            let mut best: Option<(u64, &AgentId, usize)> = None;
            for (i, a) in live.iter().enumerate() {
                if is_canary[i] != track {
                    continue;
                }
                let w = weight(p, hashes[i]);
                if best.is_none_or(|(bw, bid, _)| (w, a) > (bw, bid)) {
                    best = Some((w, a, i));
                }
            }
            best.map_or(0, |(_, _, i)| i)
        })
        .collect()
}

/// The partitions `me` owns, ascending.
pub fn owned_partitions(
    partitions: u32,
    live: &[AgentId],
    canary: Option<&CanarySplit>,
    me: &AgentId,
) -> Vec<u32> {
    let owners = assign_partitions(partitions, live, canary);
    (0..partitions)
        .zip(owners)
        .filter(|&(_, o)| live.get(o) == Some(me))
        .map(|(p, _)| p)
        .collect()
}

/// Which partitions go to the canary: the `count` highest on a hash of the
/// partition number.
fn canary_partitions(partitions: u32, count: u32) -> Vec<bool> {
    let mut ranked: Vec<(u64, u32)> = (0..partitions)
        .map(|p| (mix(u64::from(p) ^ 0xC0A2_71E5_5EED_0001), p))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let mut on = vec![false; partitions as usize];
    for &(_, p) in ranked.iter().take(count as usize) {
        on[p as usize] = true;
    }
    on
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over all 64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn weight(partition: u32, agent_hash: u64) -> u64 {
    mix(agent_hash ^ mix(u64::from(partition).wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// The canary weight that gives exactly the canary range the operator
/// wrote into this agent's config; `None` without one.
pub fn canary_weight(p: &PartitionAssignment) -> Option<u32> {
    let count = p.canary.end.saturating_sub(p.canary.start);
    (0..=100).find(|&w| partition_split(p.total, w).0 == count)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn ids(n: usize, salt: u64) -> Vec<AgentId> {
        (0..n)
            .map(|i| id(&format!("herald-{salt:x}-{i}")))
            .collect()
    }

    fn moved(
        a: &[usize],
        live_a: &[AgentId],
        b: &[usize],
        live_b: &[AgentId],
    ) -> Vec<(AgentId, AgentId)> {
        a.iter()
            .zip(b)
            .filter(|&(&x, &y)| live_a[x] != live_b[y])
            .map(|(&x, &y)| (live_a[x].clone(), live_b[y].clone()))
            .collect()
    }

    /// A generous tail allowance for a binomial count with mean `mean`:
    /// more than six standard deviations above it.
    fn allowance(mean: u32) -> usize {
        (6.0 * f64::from(mean).sqrt()).ceil() as usize + 6
    }

    fn arb_agents() -> impl Strategy<Value = Vec<AgentId>> {
        proptest::collection::btree_set("[a-z0-9]{1,12}", 1..12)
            .prop_map(|s| s.into_iter().map(|x| id(&format!("herald-{x}"))).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_partition_has_one_owner_and_the_canary_its_exact_share(
            partitions in 0u32..300,
            live in arb_agents(),
            canary_mask in any::<u64>(),
            weight in 0u32..=100,
        ) {
            let canary_agents: BTreeSet<AgentId> = live
                .iter()
                .enumerate()
                .filter(|(i, _)| canary_mask >> (i % 64) & 1 == 1)
                .map(|(_, a)| a.clone())
                .collect();
            let split = CanarySplit { canary_agents: canary_agents.clone(), weight_percent: weight };
            let owners = assign_partitions(partitions, &live, Some(&split));
            prop_assert_eq!(owners.len(), partitions as usize);
            prop_assert!(owners.iter().all(|&o| o < live.len()));
            let on_canary = owners.iter().filter(|&&o| canary_agents.contains(&live[o])).count() as u32;
            let canaries = canary_agents.len();
            let expected = if canaries == 0 {
                0
            } else if canaries == live.len() {
                partitions
            } else {
                partition_split(partitions, weight).0
            };
            prop_assert_eq!(on_canary, expected);
            // Each agent's own list agrees with the table.
            let mut all: Vec<u32> = live
                .iter()
                .flat_map(|me| owned_partitions(partitions, &live, Some(&split), me))
                .collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..partitions).collect::<Vec<_>>());
            // Without a canary, the same holds and nobody is special.
            let plain = assign_partitions(partitions, &live, None);
            prop_assert_eq!(plain.len(), partitions as usize);
        }

        /// A join moves partitions only to the newcomer, a leave only away
        /// from the leaver; how many is the leaver's (or newcomer's) load,
        /// about P/N.
        #[test]
        fn one_join_or_leave_moves_only_that_agents_partitions(
            partitions in 1u32..300,
            live in arb_agents(),
            newcomer in "[a-z0-9]{1,12}",
        ) {
            let y = id(&format!("new-{newcomer}"));
            let n = live.len() as u32;
            let before = assign_partitions(partitions, &live, None);
            let mut joined = live.clone();
            joined.push(y.clone());
            let after = assign_partitions(partitions, &joined, None);
            let m = moved(&before, &live, &after, &joined);
            prop_assert!(m.iter().all(|(_, to)| *to == y));
            prop_assert!(m.len() <= partitions.div_ceil(n) as usize + allowance(partitions.div_ceil(n + 1)));
            // Leaving is the reverse; take the first agent out as well.
            let x = live[0].clone();
            let left: Vec<AgentId> = live[1..].to_vec();
            if !left.is_empty() {
                let after = assign_partitions(partitions, &left, None);
                let m = moved(&before, &live, &after, &left);
                prop_assert!(m.iter().all(|(from, _)| *from == x));
                prop_assert!(m.len() <= partitions.div_ceil(n) as usize + allowance(partitions.div_ceil(n)));
            }
        }

        /// Within a track, a join or leave moves only that agent's
        /// partitions and the canary keeps its exact share.
        #[test]
        fn canary_churn_stays_within_its_track(
            partitions in 2u32..200,
            stable in arb_agents(),
            weight in 1u32..100,
        ) {
            let canaries = [id("canary-a"), id("canary-b")];
            let split = CanarySplit {
                canary_agents: canaries.iter().cloned().collect(),
                weight_percent: weight,
            };
            let mut live = stable.clone();
            live.extend(canaries.iter().cloned());
            let mut fewer = stable.clone();
            fewer.push(canaries[0].clone());
            let a = assign_partitions(partitions, &live, Some(&split));
            let b = assign_partitions(partitions, &fewer, Some(&split));
            let m = moved(&a, &live, &b, &fewer);
            prop_assert!(m.iter().all(|(from, to)| *from == canaries[1] && *to == canaries[0]));
            // A larger weight keeps every canary partition of the smaller.
            let more = CanarySplit { weight_percent: weight + 1, ..split.clone() };
            let c = assign_partitions(partitions, &live, Some(&more));
            for p in 0..partitions as usize {
                if split.canary_agents.contains(&live[a[p]]) {
                    prop_assert!(more.canary_agents.contains(&live[c[p]]));
                }
            }
        }
    }

    /// On average a join moves P/(N+1) partitions: rendezvous balances in
    /// expectation. Deterministic: fixed names.
    #[test]
    fn joins_move_about_one_nth_on_average() {
        let partitions = 64;
        for n in [1usize, 2, 4, 8] {
            let mut total = 0usize;
            let trials = 200u64;
            for salt in 0..trials {
                let live = ids(n, salt);
                let mut joined = live.clone();
                joined.push(id(&format!("joiner-{salt}")));
                let a = assign_partitions(partitions, &live, None);
                let b = assign_partitions(partitions, &joined, None);
                total += moved(&a, &live, &b, &joined).len();
            }
            let mean = total as f64 / trials as f64;
            let ideal = f64::from(partitions) / (n as f64 + 1.0);
            assert!(
                (mean - ideal).abs() < ideal * 0.1,
                "n {n}: mean {mean}, ideal {ideal}"
            );
        }
    }

    #[test]
    fn assignment_is_stable_and_order_free() {
        let live = ids(5, 1);
        let a = assign_partitions(64, &live, None);
        let mut rev = live.clone();
        rev.reverse();
        let b = assign_partitions(64, &rev, None);
        for p in 0..64 {
            assert_eq!(live[a[p]], rev[b[p]]);
        }
        // Pinned (computed independently): the hash must not change between
        // builds or versions, or a rolling upgrade would reshuffle every
        // partition.
        assert_eq!(fnv1a(b"herald"), 0x2ebe_4b14_3dd9_fb7f);
        assert_eq!(
            assign_partitions(8, &ids(3, 0xfeed), None),
            [2, 1, 1, 0, 2, 1, 1, 2]
        );
        assert!(assign_partitions(4, &[], None).is_empty());
        assert!(owned_partitions(4, &[], None, &live[0]).is_empty());
    }
}
