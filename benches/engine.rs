//! Engine benchmarks: the cost of one full dispatch decision (enqueue, poll,
//! complete) with a large queue, and the memory of a million queued
//! messages.
//!
//! Run with `cargo bench --bench engine`. Besides criterion's own report it
//! prints, once: per-decision p50/p99 from timing each of a million
//! decisions individually (the two clock reads, ~40 ns, are included),
//! decisions per second on one core, and the resident memory a million
//! queued messages over 100,000 chats add (from `/proc/self/statm`).
//!
//! The dispatcher runs the sample configuration (`config/samples/full.yaml`:
//! Telegram limits with a 1 % guard, a 50 % share for low priority,
//! bulkheads, three tiers). Virtual time advances by the global emission
//! interval per decision, so every poll finds the limiter ready, as on a
//! saturated bot.

use std::hint::black_box;
use std::time::{Duration, Instant as Wall};

use criterion::{Criterion, criterion_group, criterion_main};
use herald::engine::dispatch::{DispatchConfig, Dispatcher, MessageType, Poll, QueuedMessage};
use herald::engine::taxonomy::Outcome;
use herald::engine::{Instant, Priority};
use herald::policy::ConfigSet;

const CHATS: u64 = 100_000;
const FULL: &str = include_str!("../config/samples/full.yaml");

fn config() -> DispatchConfig {
    let report = herald::validate::validate_sources([("full.yaml", FULL)]);
    let set = ConfigSet::resolve(&report).expect("the full sample resolves");
    herald::sim::tiers::dispatch_config(&set, "alerts-telegram")
}

/// Priority mix of message `id`: 1/16 critical, 3/16 high, 9/16 normal,
/// 3/16 low.
fn priority(id: u64) -> Priority {
    match id % 16 {
        0 => Priority::Critical,
        1..=3 => Priority::High,
        4..=12 => Priority::Normal,
        _ => Priority::Low,
    }
}

/// Chat of message `id`: 100,000 chats, one in ten a group.
fn chat(id: u64) -> i64 {
    let c = (id % CHATS) as i64;
    if c % 10 == 0 {
        -1_000_000_000 - c
    } else {
        1_000 + c
    }
}

struct Decisions {
    d: Dispatcher,
    ty: MessageType,
    now: Instant,
    step: Duration,
    next_id: u64,
}

impl Decisions {
    /// A dispatcher holding `per_chat` messages for each of the 100,000 chats.
    fn new(per_chat: u64) -> Self {
        let config = config();
        let global = config.tiers[0].limits.global.cell();
        let mut d = Dispatcher::new(config, 1).expect("valid config");
        let ty = d.message_type("alert");
        let mut s = Decisions {
            d,
            ty,
            now: Instant::from_secs(1),
            step: Duration::from_nanos(global.interval),
            next_id: 0,
        };
        for _ in 0..per_chat * CHATS {
            s.enqueue();
        }
        s
    }

    fn enqueue(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let m = QueuedMessage::new(id, chat(id), priority(id), self.ty, self.now);
        let _ = self.d.enqueue(self.now, m);
    }

    /// One message in, one decision, one completion.
    fn decision(&mut self) {
        self.enqueue();
        self.now = self.now + self.step;
        match self.d.poll(self.now) {
            Poll::Send(o) => {
                let v = self.d.complete(
                    self.now,
                    o.id,
                    &Outcome::Delivered,
                    Duration::from_millis(80),
                );
                black_box(v.ok());
            }
            Poll::Idle { wake_at } => {
                // Never expected: the clock moves by the global interval.
                black_box(wake_at);
            }
        }
    }
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn figures() {
    let mut s = Decisions::new(1);
    for _ in 0..100_000 {
        s.decision();
    }
    let n = 1_000_000;
    let mut samples = Vec::with_capacity(n);
    let start = Wall::now();
    for _ in 0..n {
        let t = Wall::now();
        s.decision();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed();
    samples.sort_unstable();
    let pct = |q: f64| samples[((q * n as f64) as usize).min(n - 1)];
    println!(
        "dispatch decision, 100,000 chats queued: p50 {} ns, p99 {} ns, p99.9 {} ns, {:.0} decisions/s",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        n as f64 / total.as_secs_f64()
    );

    let before = resident_bytes();
    let big = Decisions::new(10);
    let after = resident_bytes();
    println!(
        "1,000,000 messages queued over 100,000 chats: {:.1} MB resident added ({:.1} MB process total), {} held",
        (after.saturating_sub(before)) as f64 / 1e6,
        after as f64 / 1e6,
        big.d.held()
    );
    let mut big = big;
    let mut samples = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Wall::now();
        big.decision();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    println!(
        "dispatch decision, 1,000,000 queued: p50 {} ns, p99 {} ns",
        samples[50_000], samples[99_000]
    );
}

fn bench(c: &mut Criterion) {
    figures();
    let mut s = Decisions::new(1);
    c.bench_function(
        "dispatch decision (enqueue+poll+complete), 100k chats queued",
        |b| b.iter(|| s.decision()),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
