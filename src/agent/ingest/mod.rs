//! Ingest: how messages get into herald — the native JSON API, the Telegram
//! Bot API drop-in endpoint, and a watched spool directory.
//!
//! Owns request parsing and validation (`message`), the error shape
//! (`error`) and the HTTP handlers. A message is answered `accepted` only
//! after the store has committed it durably.

pub mod error;
pub mod message;
pub mod spool_source;

pub use error::IngestError;
