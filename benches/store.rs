//! Embedded store benchmarks: one durable accept (commit + fsync) of a single
//! message and of a batch of 100, each from one caller, so the figure is the
//! floor a producer sees without group commit helping it. `herald bench`
//! measures the whole agent (HTTP, group commit across producers, dispatch).
//!
//! Run with `cargo bench --bench store`. The fsync dominates and depends on
//! the disk; compare runs on one machine only.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald::engine::Priority;
use herald::store::{ChatRef, EmbeddedOptions, EmbeddedStore, NewMessage, Store};

fn message(i: u64) -> NewMessage {
    let mut params = serde_json::Map::new();
    params.insert(
        "text".into(),
        serde_json::json!(format!("bench message {i}")),
    );
    NewMessage {
        chat_id: ChatRef::Id(1_000_000 + (i % 10_000) as i64),
        method: "sendMessage".into(),
        params,
        priority: Priority::Normal,
        message_type: "bench".into(),
        idempotency_key: None,
        correlation_id: format!("bench-{i}"),
        callback_url: None,
        not_before: None,
        tier: None,
        bot: "bench".into(),
    }
}

fn accept(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = runtime
        .block_on(EmbeddedStore::open(
            dir.path().join("bench.redb"),
            EmbeddedOptions::default(),
        ))
        .expect("the store opens");
    let mut group = c.benchmark_group("durable_accept");
    for size in [1u64, 100] {
        group.throughput(Throughput::Elements(size));
        let mut next = 0u64;
        group.bench_function(format!("batch_of_{size}"), |b| {
            b.iter_batched(
                || {
                    next += size;
                    (next - size..next).map(message).collect::<Vec<_>>()
                },
                |batch| {
                    let answers = runtime.block_on(store.accept(batch, 1));
                    black_box(answers)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, accept);
criterion_main!(benches);
