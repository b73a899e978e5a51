//! The content hash behind every revision herald computes (config revision,
//! pod revision).
//!
//! Owns only the hash. It is FNV-1a 64, written out here so the value is
//! fixed by this file and not by a library or compiler version: a revision
//! that changed on an operator upgrade would roll every tier's pods.
//! Kubernetes uses the same family for `pod-template-hash`. It detects
//! change; it is not a security boundary and never hashes secret values.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a 64 hasher.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(OFFSET)
    }
}

impl Fnv64 {
    /// Feed bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// Feed one part of a multi-part input; the length prefix keeps
    /// `("ab", "c")` and `("a", "bc")` apart.
    pub fn write_part(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    pub fn finish(self) -> u64 {
        self.0
    }

    /// The hash as 16 lowercase hex digits, the form revisions take.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Revision string of several parts.
pub fn revision<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Fnv64::default();
    for p in parts {
        h.write_part(p);
    }
    h.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv64::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf29ce484222325);
        assert_eq!(hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn parts_are_delimited() {
        assert_ne!(
            revision([b"ab".as_slice(), b"c"]),
            revision([b"a".as_slice(), b"bc"])
        );
        assert_eq!(revision([b"x".as_slice()]).len(), 16);
    }
}
