//! Message type names interned to small ids.
//!
//! Owns the name ↔ [`MessageType`] table. Types come from producers, so the
//! table is capped: past [`MAX_TYPES`] names, new names share one overflow
//! id, which has no bulkhead and is never paused (configured names are
//! interned first, at build and reload, so they always get their own id).
//!
//! Invariant: ids are never reused or renamed; memory is bounded.

use std::collections::HashMap;

use super::types::MessageType;

/// Distinct type names kept; the rest share [`OVERFLOW`].
pub const MAX_TYPES: usize = 4096;
/// The shared id of types past the cap.
pub const OVERFLOW: MessageType = MessageType(u16::MAX);
const OVERFLOW_NAME: &str = "(other)";

#[derive(Clone, Debug, Default)]
pub struct TypeTable {
    names: Vec<String>,
    ids: HashMap<String, MessageType>,
}

impl TypeTable {
    pub fn intern(&mut self, name: &str) -> MessageType {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        if self.names.len() >= MAX_TYPES {
            return OVERFLOW;
        }
        let Ok(n) = u16::try_from(self.names.len()) else {
            return OVERFLOW;
        };
        let id = MessageType(n);
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    pub fn name(&self, id: MessageType) -> &str {
        self.names
            .get(usize::from(id.0))
            .map_or(OVERFLOW_NAME, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_capped() {
        let mut t = TypeTable::default();
        let a = t.intern("alert");
        assert_eq!(t.intern("alert"), a);
        assert_ne!(t.intern("report"), a);
        assert_eq!(t.name(a), "alert");
        for i in 0..MAX_TYPES {
            t.intern(&format!("t{i}"));
        }
        assert_eq!(t.intern("one-too-many"), OVERFLOW);
        assert_eq!(t.name(OVERFLOW), "(other)");
        assert_eq!(t.intern("alert"), a);
    }
}
