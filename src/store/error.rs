//! The store's one error type.
//!
//! Owns the split between refusals (the request was wrong for the data: the
//! store is unchanged and other callers are unaffected) and failures (the
//! medium or the store itself failed). Invariant: no variant carries message
//! content, so errors are safe to log.

use super::record::{MessageId, MessageState, RecordError};

/// Why a store operation did not happen.
///
/// `Clone` because one failed group commit answers many callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("message {0} not found")]
    NotFound(MessageId),
    #[error("message {id} is {state}; cannot {op}")]
    InvalidState {
        id: MessageId,
        state: MessageState,
        op: &'static str,
    },
    #[error("message record of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("record of message {id} is unreadable: {source}")]
    Corrupt { id: MessageId, source: RecordError },
    #[error("store data is inconsistent: {0}")]
    Inconsistent(String),
    #[error("store layout version {found} is not supported; this build reads {supported}")]
    UnsupportedLayout { found: u64, supported: u64 },
    #[error("store I/O failed: {0}")]
    Storage(String),
    #[error("store is closed")]
    Closed,
    /// Another process has the embedded store's file open (its lock is
    /// taken): typically the agent this one replaces, still shutting down.
    #[error("the store file is open in another process")]
    Locked,
    /// A shared store refused a write of a partition's lease holder: the
    /// lease of `partition` is no longer this agent's (it expired and another
    /// agent took it, or it was released). Nothing was written.
    #[error("this agent no longer holds the lease of queue partition {partition}")]
    Fenced { partition: u32 },
    /// The store's server could not be reached or did not answer in time.
    /// A write that fails this way may or may not have happened.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A refusal: raised before anything was written, so the transaction it
    /// happened in can still commit other callers' work.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_) | StoreError::InvalidState { .. } | StoreError::TooLarge { .. }
        )
    }

    pub(crate) fn storage(e: impl Into<redb::Error>) -> Self {
        StoreError::Storage(e.into().to_string())
    }
}
