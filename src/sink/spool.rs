//! The spool sink: the last-resort tier, writing each message as a file
//! `<dir>/<message id>.json` that a person or another program picks up.
//!
//! File content: [`Delivery::document`] plus a newline. Write protocol, so a
//! reader never sees a partial file: write `<dir>/.tmp/<id>.json.<pid>-<n>.tmp`,
//! fsync it, rename it over `<dir>/<id>.json`, fsync `<dir>`. A rewrite of
//! the same id (a retry, a duplicate dispatch) atomically replaces the file:
//! one id, one file. The temporary name is unique per write, so concurrent
//! writes of one id never interleave in one temporary file. Files left in
//! `.tmp` by a crash are incomplete copies and safe to delete.
//!
//! Owns the file layout and the write protocol. Leaves reading the spool
//! (people, tools, herald's own spool ingest) to others.
//!
//! Invariant: never drops — every failure (disk full, permissions, a missing
//! mount) is a transient outcome for the dispatcher to retry; the file name
//! is built from the message id and checked to be a bare UUID, so it cannot
//! leave the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{Delivery, SinkError, SinkResult};
use crate::engine::taxonomy::{Outcome, TransportKind};
use crate::store::record::MessageId;

/// Where partial writes live, inside the spool directory (same file system,
/// so the rename is atomic).
pub const TMP_DIR: &str = ".tmp";

/// Makes temporary names unique within this process.
static WRITE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes messages into one directory.
#[derive(Clone, Debug)]
pub struct SpoolSink {
    dir: PathBuf,
}

impl SpoolSink {
    /// The directory need not exist yet: it is created on the first write.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(SinkError::Invalid {
                what: "spool.path",
                why: "it is empty",
            });
        }
        Ok(SpoolSink { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the message with `id` lands.
    pub fn path_for(&self, id: &MessageId) -> PathBuf {
        self.dir.join(file_name(id))
    }

    pub async fn send(&self, delivery: &Delivery, timeout: Duration) -> SinkResult {
        let name = file_name(&delivery.message_id);
        if !is_safe_name(&name) {
            // Unreachable for a MessageId; checked because a name that could
            // leave the directory must never be written.
            return SinkResult::failed(
                Outcome::Transport(TransportKind::Other),
                "refused an unsafe spool file name",
            );
        }
        let mut content = delivery.document();
        content.push(b'\n');
        let dir = self.dir.clone();
        let job_name = name.clone();
        let job = tokio::task::spawn_blocking(move || write_atomically(&dir, &job_name, &content));
        match tokio::time::timeout(timeout, job).await {
            // The write goes on in the background; the retry rewrites the
            // same file, so the late one does no harm.
            Err(_) => SinkResult::timed_out(timeout),
            Ok(Err(_)) => SinkResult::failed(
                Outcome::Transport(TransportKind::Other),
                "spool write task failed",
            ),
            Ok(Ok(Err(e))) => SinkResult::failed(
                Outcome::Transport(TransportKind::Other),
                format!("spool write failed: {}", io_kind_text(&e)),
            ),
            Ok(Ok(Ok(()))) => SinkResult {
                outcome: Outcome::Delivered,
                status: None,
                body: None,
                receipt: Some(json!({ "spool_file": name })),
                detail: None,
            },
        }
    }
}

fn file_name(id: &MessageId) -> String {
    format!("{}.json", id.as_uuid().hyphenated())
}

/// `<36 chars of hex and '-'>.json`, nothing else.
fn is_safe_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|stem| {
        stem.len() == 36 && stem.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

/// The error's kind and OS text; never a path (it may reveal the layout,
/// and the caller knows the directory anyway).
fn io_kind_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{} (os error {code})", e.kind()),
        None => e.kind().to_string(),
    }
}

fn write_atomically(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp_dir = dir.join(TMP_DIR);
    fs::create_dir_all(&tmp_dir)?;
    let seq = WRITE_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = tmp_dir.join(format!("{name}.{}-{seq}.tmp", std::process::id()));
    let written = write_synced(&tmp, content).and_then(|()| fs::rename(&tmp, dir.join(name)));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn write_synced(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Messages may hold personal data: owner and group only.
        options.mode(0o640);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Makes the rename durable. File systems that cannot sync a directory
/// (they answer "unsupported" or "invalid") have nothing to sync.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::InvalidInput
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::taxonomy::Action;
    use crate::store::record::ChatRef;
    use serde_json::{Map, Value};

    const T: Duration = Duration::from_secs(30);

    fn delivery(text: &str, attempt: u32) -> Delivery {
        let mut params = Map::new();
        params.insert("text".into(), json!(text));
        Delivery {
            message_id: MessageId::generate(),
            correlation_id: "c".into(),
            chat: ChatRef::Id(12),
            method: "sendMessage".into(),
            params,
            attempt,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_a_complete_file_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        let s = SpoolSink::new(&dir).unwrap();
        let d = delivery("hello", 1);
        let r = s.send(&d, T).await;
        assert!(r.is_delivered(), "{r:?}");
        let name = format!("{}.json", d.message_id);
        assert_eq!(r.receipt, Some(json!({ "spool_file": name })));
        let text = fs::read_to_string(s.path_for(&d.message_id)).unwrap();
        assert!(text.ends_with('\n'));
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["id"], d.message_id.to_string());
        assert_eq!(doc["params"]["text"], "hello");
        assert_eq!(doc["chat_id"], 12);
        assert_eq!(entries(&dir), vec![TMP_DIR.to_owned(), name]);
        assert!(entries(&dir.join(TMP_DIR)).is_empty());
    }

    #[tokio::test]
    async fn the_same_id_twice_is_one_file_holding_the_last_write() {
        let root = tempfile::tempdir().unwrap();
        let s = SpoolSink::new(root.path()).unwrap();
        let first = delivery("v1", 1);
        let second = Delivery {
            attempt: 2,
            ..first.clone()
        };
        assert!(s.send(&first, T).await.is_delivered());
        assert!(s.send(&second, T).await.is_delivered());
        // Concurrent writes of one id never share a temporary file.
        let (a, b) = tokio::join!(s.send(&second, T), s.send(&second, T));
        assert!(a.is_delivered() && b.is_delivered());
        let files: Vec<String> = entries(root.path())
            .into_iter()
            .filter(|n| n != TMP_DIR)
            .collect();
        assert_eq!(files, vec![format!("{}.json", first.message_id)]);
        let doc: Value =
            serde_json::from_slice(&fs::read(s.path_for(&first.message_id)).unwrap()).unwrap();
        assert_eq!(doc["attempt"], 2);
        assert!(entries(&root.path().join(TMP_DIR)).is_empty());
    }

    #[tokio::test]
    async fn an_unwritable_spool_is_transient_not_a_drop() {
        let root = tempfile::tempdir().unwrap();
        // A file where the directory should be: every write fails.
        let blocked = root.path().join("not-a-dir");
        fs::write(&blocked, b"x").unwrap();
        let s = SpoolSink::new(&blocked).unwrap();
        let r = s.send(&delivery("x", 1), T).await;
        assert_eq!(r.outcome, Outcome::Transport(TransportKind::Other));
        let c = r.classify().unwrap();
        assert_eq!(c.action, Action::Retry);
        let detail = r.detail.unwrap();
        assert!(detail.starts_with("spool write failed"), "{detail}");
        assert!(!detail.contains("not-a-dir"), "{detail}");
    }

    #[test]
    fn names_are_bare_uuids() {
        let id = MessageId::generate();
        assert!(is_safe_name(&file_name(&id)));
        for bad in [
            "../x.json",
            "a/b.json",
            "0190a0a0-0000-7000-8000-00000000000.json",
            "0190a0a0-0000-7000-8000-000000000000",
            "0190a0a0-0000-7000-8000-00000000000/.json",
            ".json",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert!(SpoolSink::new("").is_err());
    }
}
