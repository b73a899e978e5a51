//! Reading what Redis answers: client errors as store errors, and the
//! scripts' mixed reply arrays as numbers, bytes and text.
//!
//! Owns the mapping every Redis operation shares. Invariant: an error's
//! text names the failure, never the URL or its password.

use std::time::Duration;

use ::redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::store::StoreError;

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A client error as a store error: lost connections, timeouts and a
/// server that is still loading its data are `Unavailable` (try again
/// later); anything else is `Storage`. Keeps the client's text, which names
/// the failure but never the URL or its password.
pub(super) fn redis_error(e: RedisError) -> StoreError {
    let text: String = e.to_string().chars().take(300).collect();
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        );
    if transient {
        StoreError::Unavailable(text)
    } else {
        StoreError::Storage(text)
    }
}

/// Reply parsing for the scripts' mixed arrays.
pub(super) fn reply_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn reply_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn reply_text(v: &Value) -> Option<String> {
    reply_bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// A script answered something it never answers: a bug or a foreign key.
pub(super) fn bad_reply(script: &str) -> StoreError {
    StoreError::Inconsistent(format!("unexpected answer from the {script} script"))
}
