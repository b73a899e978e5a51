//! A held message's parameters as compact JSON text.
//!
//! serde_json's `Map` is a B-tree: one parameter allocates a whole leaf of
//! eleven slots (about 630 bytes), for every message of a backlog, while
//! its text is usually a few dozen bytes. The loop holds the text and
//! rebuilds the map when the message is sent, a few hundred nanoseconds
//! against the send itself. serde_json writes and reads its own text back
//! to the same value (`float_roundtrip` keeps floats exact), so nothing is
//! lost on the way.

use serde_json::{Map, Value};

pub(super) enum HeldParams {
    Text(Box<str>),
    /// Kept as they came if they could not be written as text.
    Map(Map<String, Value>),
}

impl HeldParams {
    /// Takes `params` out, leaving an empty map (which allocates nothing).
    pub(super) fn take(params: &mut Map<String, Value>) -> Self {
        let map = std::mem::take(params);
        if map.is_empty() {
            return HeldParams::Map(map);
        }
        match serde_json::to_string(&map) {
            Ok(text) => HeldParams::Text(text.into_boxed_str()),
            Err(_) => HeldParams::Map(map),
        }
    }

    /// The parameters as a map again.
    pub(super) fn expand(&self) -> Result<Map<String, Value>, serde_json::Error> {
        match self {
            HeldParams::Text(text) => serde_json::from_str(text),
            HeldParams::Map(map) => Ok(map.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldParams;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinities", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(".*", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever a producer sent comes back exactly: text, numbers at
        /// the edges of their ranges, floats, nesting, escapes.
        #[test]
        fn parameters_come_back_exactly(
            params in proptest::collection::btree_map(".*", value(), 0..6)
        ) {
            let original: Map<String, Value> = params.into_iter().collect();
            let mut params = original.clone();
            let held = HeldParams::take(&mut params);
            prop_assert!(params.is_empty());
            prop_assert_eq!(held.expand().unwrap(), original);
        }
    }

    #[test]
    fn a_message_s_parameters_are_held_as_short_text() {
        let mut params = json!({"text": "hello", "parse_mode": "HTML"})
            .as_object()
            .cloned()
            .unwrap();
        let held = HeldParams::take(&mut params);
        let HeldParams::Text(text) = &held else {
            panic!("held as a map");
        };
        assert_eq!(&**text, r#"{"parse_mode":"HTML","text":"hello"}"#);
    }
}
