//! herald's request signature, shared by the webhook sink and delivery
//! receipts, and the check a receiver runs.
//!
//! Owns the scheme and its header names. Leaves choosing and resolving the
//! key to the agent and the freshness window to the receiver.
//!
//! # The scheme
//!
//! Every signed request carries
//!
//! - `X-Herald-Timestamp: <unix seconds>` (decimal), and
//! - `<signature header>: sha256=<hex>` (default header `X-Herald-Signature`),
//!   where `<hex>` is the lowercase hex HMAC-SHA256, keyed with the shared
//!   secret's bytes, of the timestamp header's value, one `.`, and the raw
//!   request body bytes: `HMAC(key, timestamp + "." + body)`.
//!
//! A receiver recomputes the MAC over the body bytes exactly as received
//! (before any JSON parsing), compares in constant time
//! ([`verify_signature`] does both), and rejects timestamps too far from its
//! own clock ([`is_fresh`], e.g. five minutes) so a captured request cannot
//! be replayed later. The timestamp is part of the MAC, so it cannot be
//! swapped. Deduplicate on `X-Herald-Message-Id`: herald delivers at least
//! once.
//!
//! Invariant: the key never leaves a [`Signer`] (its `Debug` is redacted);
//! verification is constant-time in the MAC.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Carries the unix-seconds timestamp that is part of the signed text.
pub const TIMESTAMP_HEADER: &str = "X-Herald-Timestamp";
/// Carries the message id (a UUIDv7); stable across retries.
pub const MESSAGE_ID_HEADER: &str = "X-Herald-Message-Id";
/// The signature header unless the tier names another.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Herald-Signature";
/// What the signature header value starts with.
pub const SIGNATURE_PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC-SHA256, ready to sign many requests.
#[derive(Clone)]
pub struct Signer {
    keyed: HmacSha256,
}

impl Signer {
    /// `None` only if the MAC refuses the key, which HMAC never does (any
    /// length is valid); callers still treat it as a configuration error.
    pub fn new(key: &[u8]) -> Option<Self> {
        HmacSha256::new_from_slice(key)
            .ok()
            .map(|keyed| Signer { keyed })
    }

    /// The signature header value for `body` sent at `timestamp`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        feed(&mut mac, timestamp, body);
        let tag = mac.finalize().into_bytes();
        format!("{SIGNATURE_PREFIX}{}", hex::encode(tag))
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

fn feed(mac: &mut HmacSha256, timestamp: &str, body: &[u8]) {
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// Whether `header` (the signature header's value) is herald's signature of
/// `body` sent at `timestamp` (the `X-Herald-Timestamp` value) under `key`.
/// Constant-time in the MAC; any malformed header is simply `false`.
/// Check freshness separately with [`is_fresh`].
pub fn verify_signature(key: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_tag) = header.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    feed(&mut mac, timestamp, body);
    mac.verify_slice(&tag).is_ok()
}

/// Whether `timestamp` (unix seconds, decimal) lies within `tolerance` of
/// `now_unix` in either direction. Malformed timestamps are not fresh.
pub fn is_fresh(timestamp: &str, now_unix: u64, tolerance: Duration) -> bool {
    let Ok(ts) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    ts.abs_diff(now_unix) <= tolerance.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answer() {
        // Computed independently: printf '1700000000.{"id":"x"}' |
        // openssl dgst -sha256 -hmac whsec-test
        let signer = Signer::new(b"whsec-test").unwrap();
        assert_eq!(
            signer.sign("1700000000", br#"{"id":"x"}"#),
            "sha256=a011cc83d9ed494fd1b9659f5bcf0bc7dd5349dd15d02b313d6fc3b03064ce6a"
        );
    }

    #[test]
    fn verifies_its_own_signatures_and_rejects_tampering() {
        let signer = Signer::new(b"s3cret").unwrap();
        let header = signer.sign("1700000000", br#"{"id":1}"#);
        assert!(verify_signature(
            b"s3cret",
            "1700000000",
            br#"{"id":1}"#,
            &header
        ));
        assert!(!verify_signature(
            b"other",
            "1700000000",
            br#"{"id":1}"#,
            &header
        ));
        assert!(!verify_signature(
            b"s3cret",
            "1700000001",
            br#"{"id":1}"#,
            &header
        ));
        assert!(!verify_signature(
            b"s3cret",
            "1700000000",
            br#"{"id":2}"#,
            &header
        ));
        let upper = format!("sha256={}", header[7..].to_uppercase());
        assert!(verify_signature(
            b"s3cret",
            "1700000000",
            br#"{"id":1}"#,
            &upper
        ));
        for bad in ["", "sha256=", "sha256=zz", "md5=00", &header[7..]] {
            assert!(
                !verify_signature(b"s3cret", "1700000000", b"{}", bad),
                "{bad}"
            );
        }
        assert_eq!(format!("{signer:?}"), "Signer(<redacted>)");
    }

    #[test]
    fn freshness_window() {
        let five_min = Duration::from_secs(300);
        assert!(is_fresh("1000", 1000, five_min));
        assert!(is_fresh("700", 1000, five_min));
        assert!(is_fresh("1300", 1000, five_min));
        assert!(!is_fresh("699", 1000, five_min));
        assert!(!is_fresh("1301", 1000, five_min));
        assert!(!is_fresh("soon", 1000, five_min));
        assert!(!is_fresh("-5", 1000, five_min));
    }

    proptest! {
        #[test]
        fn any_body_round_trips(key in proptest::collection::vec(any::<u8>(), 0..80),
                                ts in "[0-9]{1,12}",
                                body in proptest::collection::vec(any::<u8>(), 0..300),
                                flip in any::<usize>()) {
            let signer = Signer::new(&key).unwrap();
            let header = signer.sign(&ts, &body);
            prop_assert!(verify_signature(&key, &ts, &body, &header));
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip % tampered.len();
                tampered[i] ^= 1;
                prop_assert!(!verify_signature(&key, &ts, &tampered, &header));
            }
        }
    }
}
