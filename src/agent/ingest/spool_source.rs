//! The spool source: producers that cannot reach HTTP drop JSON message
//! files (the native shape, one message or `{"messages": [...]}`) into a
//! directory; herald ingests each complete file and deletes it only after
//! the store committed its messages.
//!
//! Only `*.json` regular files directly in the directory are read; write
//! them elsewhere (or as `.tmp`) and rename into place, so herald never sees
//! half a file. A file whose name is not plain (separators, leading dot) or
//! that is a symlink is ignored. A bad file moves to `rejected/` with a
//! `<name>.error` beside it saying why. File events wake the scanner after
//! a 500 ms debounce; a periodic scan catches anything the watcher missed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::agent::http::native::{admit, store_batch};
use crate::agent::ingest::IngestError;
use crate::agent::ingest::message::{Context, parse_native};
use crate::agent::state::AppState;
use crate::store::{MessageId, NewMessage};

const DEBOUNCE: Duration = Duration::from_millis(500);
const RESCAN: Duration = Duration::from_secs(5);
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Watch `dir` until `shutdown` resolves.
pub async fn run(
    state: Arc<AppState>,
    dir: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(dir.join("rejected")) {
        tracing::error!(dir = %dir.display(), error = %e, "spool source directory unusable");
        return;
    }
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "spool source: file events unavailable, polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "spool source: file events unavailable, polling only");
            None
        }
    };
    tracing::info!(dir = %dir.display(), "spool source watching");
    loop {
        scan(&state, &dir).await;
        tokio::select! {
            _ = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESCAN) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Whether `name` is a file the source should read.
pub fn is_candidate(name: &str) -> bool {
    name.ends_with(".json")
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && name != ".json"
}

async fn scan(state: &AppState, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_candidate(n))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        match ingest_file(state, &path).await {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!(file = %name, error = %e, "spool source: accepted but could not delete; it will be deduplicated only if it carries idempotency keys");
                }
            }
            Err(e) if e.status.is_server_error() => {
                // Store unavailable or overloaded: leave the file for later.
                tracing::warn!(file = %name, error = %e.message, "spool source: will retry");
                return;
            }
            Err(e) => reject(dir, &name, &e),
        }
    }
}

async fn ingest_file(state: &AppState, path: &Path) -> Result<(), IngestError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| IngestError::invalid("", format!("unreadable: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(IngestError::invalid(
            "",
            format!("file larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| IngestError::invalid("", format!("unreadable: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        IngestError::invalid(
            "",
            format!("malformed JSON at line {} column {}", e.line(), e.column()),
        )
    })?;
    let config = state.config();
    let messages: Vec<NewMessage> = {
        let tiers = config.tier_names();
        let fresh = || MessageId::generate().to_string();
        let ctx = Context {
            bot: &config.entry_tier,
            known_tiers: &tiers,
            fresh_correlation_id: &fresh,
        };
        match value.get("messages").and_then(|m| m.as_array()) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_native(v, &ctx).map_err(|e| e.at_index(i)))
                .collect::<Result<_, _>>()?,
            None => vec![parse_native(&value, &ctx)?],
        }
    };
    admit(state, &messages)?;
    store_batch(state, messages, "spool").await.map(|_| ())
}

fn reject(dir: &Path, name: &str, e: &IngestError) {
    let rejected = dir.join("rejected");
    let why = format!("{}: {}: {}\n", e.code, e.field, e.message);
    if let Err(err) = std::fs::rename(dir.join(name), rejected.join(name)) {
        tracing::error!(file = %name, error = %err, "spool source: could not move a rejected file");
        return;
    }
    let _ = std::fs::write(rejected.join(format!("{name}.error")), why);
    tracing::warn!(file = %name, field = %e.field, reason = %e.message, "spool source: rejected file");
}

#[cfg(test)]
mod tests {
    use super::is_candidate;

    #[test]
    fn only_plain_json_names_are_read() {
        assert!(is_candidate("alert-1.json"));
        for bad in [
            ".hidden.json",
            "x.json.tmp",
            "x.txt",
            "../x.json",
            "a/b.json",
            ".json",
        ] {
            assert!(!is_candidate(bad), "{bad}");
        }
    }
}
