//! How a tier's queue partitions divide between the canary and the stable
//! track during a rollout.
//!
//! Owns the exact split for a weight. The operator writes the canary's
//! range into the agents' config from it; the agents' partition assignment
//! gives the canary track exactly that many partitions. Both ask here, so
//! they cannot disagree.

/// `(canary, stable)` partitions for a canary weight in percent.
///
/// Exact: the two always add up to `partitions`. The canary gets
/// `partitions × weight / 100` rounded half up, then, when `0 < weight <
/// 100` and `partitions ≥ 2`, clamped to `1..=partitions-1` so that neither
/// side is left without a partition. Weights above 100 count as 100. With
/// a single partition it goes to the canary from weight 50 on.
pub fn partition_split(partitions: u32, weight: u32) -> (u32, u32) {
    let weight = weight.min(100);
    if weight == 0 || partitions == 0 {
        return (0, partitions);
    }
    if weight == 100 {
        return (partitions, 0);
    }
    let p = u64::from(partitions);
    let mut canary = (p * u64::from(weight) + 50) / 100;
    if partitions >= 2 {
        canary = canary.clamp(1, p - 1);
    }
    let canary = u32::try_from(canary).unwrap_or(partitions);
    (canary, partitions - canary)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn partition_split_examples() {
        assert_eq!(partition_split(64, 10), (6, 58));
        assert_eq!(partition_split(64, 50), (32, 32));
        assert_eq!(partition_split(64, 100), (64, 0));
        assert_eq!(partition_split(64, 0), (0, 64));
        assert_eq!(partition_split(10, 1), (1, 9));
        assert_eq!(partition_split(10, 99), (9, 1));
        assert_eq!(partition_split(2, 1), (1, 1));
        assert_eq!(partition_split(1, 49), (0, 1));
        assert_eq!(partition_split(1, 50), (1, 0));
        assert_eq!(partition_split(0, 50), (0, 0));
        assert_eq!(partition_split(7, 250), (7, 0));
    }

    proptest! {
        #[test]
        fn partition_split_is_exact(partitions in 0u32..5000, weight in 0u32..150) {
            let (c, s) = partition_split(partitions, weight);
            prop_assert_eq!(c + s, partitions);
            if partitions >= 2 && weight > 0 && weight < 100 {
                prop_assert!(c >= 1 && s >= 1);
            }
            if weight == 0 { prop_assert_eq!(c, 0); }
            if weight >= 100 { prop_assert_eq!(s, 0); }
            // Within half a partition of the exact share, unless clamped.
            let exact = f64::from(partitions) * f64::from(weight.min(100)) / 100.0;
            if c > 1 && s > 1 {
                prop_assert!((f64::from(c) - exact).abs() <= 0.5 + 1e-9);
            }
            // More weight never gives the canary fewer partitions.
            let (c2, _) = partition_split(partitions, weight + 1);
            prop_assert!(c2 >= c);
        }
    }
}
