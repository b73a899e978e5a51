//! Head sampling from the standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, decided once per trace from a hash.
//!
//! Owns: reading the two variables into a ratio and the keep/drop decision.
//! Leaves to the caller which key identifies the trace.
//!
//! Why not the SDK's `TraceIdRatioBased`: it compares the trace id's low 8
//! bytes with the ratio, and a message's trace id is its UUIDv7, whose
//! byte 8 always starts with the variant bits `10` — with the SDK sampler
//! a ratio below 0.5 would keep no message at all. herald's spans have no
//! in-process parent, so every `parentbased_*` sampler reduces to its root
//! sampler; deciding here from the root span id (a SHA-256 slice, uniform)
//! gives the configured ratio, and every process keeps or drops the same
//! messages, so a kept trace is always whole.
//!
//! Invariant: a pure function of (variables, key).

/// The share of traces kept, 0.0..=1.0, from the sampler variables; the
/// SDK's own fallbacks (unknown sampler or bad argument: keep all).
pub fn ratio(sampler: Option<&str>, arg: Option<&str>) -> f64 {
    let arg = || {
        arg.and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| r.is_finite())
            .map_or(1.0, |r| r.clamp(0.0, 1.0))
    };
    match sampler.map(str::trim) {
        Some("always_off" | "parentbased_always_off") => 0.0,
        Some("traceidratio" | "parentbased_traceidratio") => arg(),
        _ => 1.0,
    }
}

/// Whether the trace whose key is `key` (8 uniformly distributed bytes)
/// is kept at `ratio`.
pub fn keep(ratio: f64, key: [u8; 8]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    // Compare in [0, 1): the top 53 bits are exact in an f64.
    let unit = (u64::from_be_bytes(key) >> 11) as f64 / (1u64 << 53) as f64;
    unit < ratio
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MessageId;
    use crate::telemetry::ids;

    #[test]
    fn the_variables_read_like_the_sdk() {
        assert_eq!(ratio(None, None), 1.0);
        assert_eq!(ratio(Some("always_on"), None), 1.0);
        assert_eq!(ratio(Some("parentbased_always_on"), None), 1.0);
        assert_eq!(ratio(Some("always_off"), None), 0.0);
        assert_eq!(ratio(Some("parentbased_always_off"), None), 0.0);
        assert_eq!(ratio(Some("traceidratio"), Some("0.25")), 0.25);
        assert_eq!(ratio(Some("parentbased_traceidratio"), Some(" 0.5 ")), 0.5);
        assert_eq!(ratio(Some("traceidratio"), Some("lots")), 1.0);
        assert_eq!(ratio(Some("traceidratio"), Some("7")), 1.0);
        assert_eq!(ratio(Some("traceidratio"), Some("NaN")), 1.0);
        assert_eq!(ratio(Some("jaeger_remote"), None), 1.0);
    }

    #[test]
    fn a_low_ratio_keeps_about_that_share_of_messages() {
        // UUIDv7 ids of one millisecond differ only in their random bits:
        // the case the SDK's trace-id sampler gets wrong.
        let kept = (0..4000u128)
            .map(|i| {
                let bits = (0x0189_0a5d_ac96_7000u128 << 64) | (0x8000_0000_0000_0000 | (i * 7919));
                MessageId::from_u128(bits).unwrap()
            })
            .filter(|id| keep(0.1, ids::root_span_id(*id)))
            .count();
        assert!((300..=500).contains(&kept), "kept {kept} of 4000 at 0.1");
    }

    #[test]
    fn the_bounds_are_exact() {
        assert!(keep(1.0, [0xff; 8]));
        assert!(!keep(0.0, [0; 8]));
        assert!(keep(0.5, [0x7f; 8]));
        assert!(!keep(0.5, [0x80; 8]));
    }
}
