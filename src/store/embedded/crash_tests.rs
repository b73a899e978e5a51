//! Kill -9 in the middle of a stream of accepts: everything acknowledged
//! before the kill is on disk afterwards.
//!
//! The test re-runs its own test binary as the child process, selecting only
//! [`crash_child`], which does nothing unless the parent set
//! `HERALD_STORE_CRASH_DIR`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::tests::{DB_FILE, open};
use crate::store::record::tests::sample_new;
use crate::store::{MessageId, MessageState, NewMessage, Store};

const DIR_VAR: &str = "HERALD_STORE_CRASH_DIR";
/// Acks the parent waits for before it kills the child.
const KILL_AFTER_ACKS: usize = 400;
/// Bounds the child's work in case the kill never comes.
const CHILD_ROUNDS: usize = 2_000;

/// The child half: accepts from 8 tasks, printing each acknowledged id, and
/// marks some in flight and delivers some, printing those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let store = super::EmbeddedStore::open(
        std::path::Path::new(&dir).join(DB_FILE),
        super::EmbeddedOptions::default(),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..CHILD_ROUNDS as u64 {
                let size = 1 + (round % 3) as usize;
                let batch: Vec<NewMessage> = (0..size).map(|_| sample_new(task)).collect();
                for answer in store.accept(batch, round).await {
                    let id = answer.unwrap().id;
                    println!("ACK {id}");
                    if round % 4 == 0 {
                        store.mark_in_flight(id, "p".into(), round).await.unwrap();
                        println!("INFLIGHT {id}");
                    }
                    if round % 8 == 0 {
                        store
                            .record_delivered(id, "p".into(), None, round)
                            .await
                            .unwrap();
                        println!("DLV {id}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn acknowledged_accepts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let test_name = format!(
        "{}::crash_child",
        module_path!().split_once("::").map_or("", |(_, rest)| rest)
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name, "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut acked, mut delivered) = (HashSet::new(), HashSet::new());
    let mut killed = false;
    // Lines written before the kill are still in the pipe; read to its end.
    for line in lines {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.insert(id.parse::<MessageId>().unwrap());
        } else if let Some(id) = line.strip_prefix("DLV ") {
            delivered.insert(id.parse::<MessageId>().unwrap());
        }
        if !killed && acked.len() >= KILL_AFTER_ACKS {
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "child ended before the kill: {status}");
    assert!(!status.success(), "child was not killed: {status}");
    eprintln!(
        "killed after {} acks, {} deliveries",
        acked.len(),
        delivered.len()
    );

    let store = open(&dir).await;
    assert_eq!(store.stats().await.unwrap().in_flight, 0);
    let pending: HashSet<MessageId> = store
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    for id in &acked {
        let m = store.get(*id).await.unwrap();
        let m = m.unwrap_or_else(|| panic!("acknowledged {id} was lost"));
        // A delivery may have committed without its line being printed.
        match m.state {
            MessageState::Delivered => {}
            MessageState::Pending => {
                assert!(!delivered.contains(id), "{id} forgot its delivery");
                assert!(pending.contains(id), "{id} missing from pending()");
            }
            other => panic!("{id} is {other} after reopen"),
        }
    }
}
