//! The event loop: producers, the dispatcher and the modelled sinks on one
//! virtual clock.
//!
//! Owns: generating messages from the workload (chats, groups, priorities,
//! types, arrival instants), the event queue (a binary heap ordered by
//! instant, then by insertion), feeding the dispatcher exactly as the agent
//! does (`admits_ingest` then `enqueue`; `poll` until idle; `complete` with
//! the sink's outcome and latency; `tick` every second), and the tallies of
//! the report. Leaves to others: every delivery decision (the dispatcher)
//! and what the sinks answer (`super::sinks`).
//!
//! Time flows only from event to event, so an hour of traffic costs what
//! its events cost, not an hour. A send to Telegram becomes two events: the
//! request's arrival (where Telegram's windows decide) and the answer.
//!
//! Invariant: every message is submitted exactly once (again after each
//! 503), and is counted delivered or dead-lettered at most once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use crate::engine::clock::duration_nanos;
use crate::engine::dispatch::{
    DispatchConfig, Dispatcher, Event, MessageType, Poll, QueuedMessage, SendOrder, Sink, Verdict,
};
use crate::engine::taxonomy::{Outcome, TelegramError, TransportKind};
use crate::engine::{Instant, Priority, SplitMix64};

use super::report::{BreakerChange, LevelChangeReport, Percentiles, SimReport, TierReport};
use super::sinks::{SinkModel, Telegram, TelegramAnswer};
use super::workload::{Arrival, ChatOrder, OutageMode, Workload};

const SECOND: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
enum Ev {
    /// The producers' next message(s) are due.
    Arrivals,
    /// A producer retries a message refused with 503.
    Resubmit(u64),
    /// The dispatcher asked to be polled now.
    Wake,
    Tick,
    /// A request reaches Telegram; the answer comes back at `answer_at`.
    AtTelegram {
        id: u64,
        chat: i64,
        answer_at: u64,
    },
    /// The sink's answer reaches the agent.
    Answer {
        id: u64,
        outcome: Outcome,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One produced message.
#[derive(Clone, Copy, Debug)]
struct Msg {
    chat: i64,
    /// Index into the workload's chats (for blocked chats).
    chat_no: usize,
    priority: Priority,
    ty: MessageType,
    /// Index into the workload's type names.
    type_name: usize,
    submitted: u64,
    done: bool,
}

/// A send in flight.
#[derive(Clone, Copy, Debug)]
struct Flight {
    tier: usize,
    sent_at: u64,
}

pub struct Simulation {
    d: Dispatcher,
    rng: SplitMix64,
    /// Draws the send loop's wake-up lateness apart from `rng`, so a
    /// workload with jitter makes the same messages and faults as without.
    wake_rng: SplitMix64,
    wake_jitter: u64,
    /// Limits of the entry tier, for the ideal schedule.
    ideal_limits: Option<crate::engine::limiter::Limits>,
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    telegram: Telegram,
    sinks: Vec<SinkModel>,
    /// Configured global rate of each tier, per second.
    nominal: Vec<f64>,
    workload: Workload,
    chat_ids: Vec<i64>,
    blocked: Vec<bool>,
    priorities: Vec<(Priority, u64)>,
    types: Vec<(String, MessageType, u64)>,
    msgs: Vec<Msg>,
    next_msg: u64,
    next_arrival_at: u64,
    flights: HashMap<u64, Flight>,
    /// The instant the dispatcher asked to be woken at, and when the
    /// (late) timer fires for it.
    next_wake: Option<(u64, u64)>,
    horizon: u64,
    settled: u64,
    // Tallies.
    delivered: u64,
    dead: BTreeMap<String, u64>,
    refused: u64,
    tiers: Vec<TierReport>,
    first_tg_send: Option<u64>,
    last_tg_send: u64,
    tg_delivered: u64,
    latencies: [Vec<u64>; 4],
    breakers: Vec<BreakerChange>,
    chat_breakers: u64,
    levels: Vec<LevelChangeReport>,
    now: u64,
}

impl Simulation {
    pub fn new(config: DispatchConfig, workload: Workload, seed: u64) -> Result<Self, String> {
        let sinks: Vec<SinkModel> = config
            .tiers
            .iter()
            .map(|t| SinkModel::new(t.sink, workload.faults.tiers.get(&t.name)))
            .collect();
        let nominal = config
            .tiers
            .iter()
            .map(|t| {
                let g = t.limits.global;
                f64::from(g.rate) / g.period.as_secs_f64().max(1e-9)
            })
            .collect();
        let tiers = config
            .tiers
            .iter()
            .map(|t| TierReport {
                name: t.name.clone(),
                sink: t.sink.as_str().to_owned(),
                ..TierReport::default()
            })
            .collect();
        let ideal_limits = config
            .tiers
            .iter()
            .find(|t| t.sink == Sink::Telegram)
            .map(|t| t.limits);
        let mut d = Dispatcher::new(config, seed).map_err(|e| e.to_string())?;
        let groups = (workload.chats as f64 * workload.group_share).round() as u64;
        let chat_ids = (0..workload.chats)
            .map(|k| {
                let k = k as i64;
                if (k as u64) < groups {
                    -1_000_000_000_000 - k
                } else {
                    1_000_000 + k
                }
            })
            .collect();
        let mut blocked = vec![false; workload.chats as usize];
        for &c in &workload.faults.blocked_chats {
            if let Some(b) = blocked.get_mut(c as usize) {
                *b = true;
            }
        }
        let p = workload.priorities.clone().unwrap_or_default();
        let priorities = if workload.priorities.is_none() {
            vec![(Priority::Normal, 1)]
        } else {
            [
                (Priority::Critical, p.critical),
                (Priority::High, p.high),
                (Priority::Normal, p.normal),
                (Priority::Low, p.low),
            ]
            .into_iter()
            .map(|(p, w)| (p, u64::from(w)))
            .collect()
        };
        let types = if workload.message_types.is_empty() {
            vec![("default".to_owned(), d.message_type("default"), 1)]
        } else {
            workload
                .message_types
                .iter()
                .map(|(n, w)| (n.clone(), d.message_type(n), u64::from(*w)))
                .collect()
        };
        let horizon = duration_nanos(workload.horizon());
        let mut sim = Simulation {
            d,
            rng: SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            wake_rng: SplitMix64::new(seed ^ 0x5741_4B45_4A49_5454),
            wake_jitter: duration_nanos(workload.wake_jitter.get()),
            ideal_limits,
            heap: BinaryHeap::new(),
            seq: 0,
            telegram: Telegram::new(workload.telegram.clone()),
            sinks,
            nominal,
            chat_ids,
            blocked,
            priorities,
            types,
            msgs: Vec::with_capacity(workload.messages as usize),
            next_msg: 0,
            next_arrival_at: 0,
            flights: HashMap::new(),
            next_wake: None,
            horizon,
            settled: 0,
            delivered: 0,
            dead: BTreeMap::new(),
            refused: 0,
            tiers,
            first_tg_send: None,
            last_tg_send: 0,
            tg_delivered: 0,
            latencies: Default::default(),
            breakers: Vec::new(),
            chat_breakers: 0,
            levels: Vec::new(),
            now: 0,
            workload,
        };
        sim.push(0, Ev::Arrivals);
        sim.push(0, Ev::Tick);
        Ok(sim)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// Runs to the end: every message settled, or the horizon.
    pub fn run(mut self) -> SimReport {
        let total = self.workload.messages;
        while let Some(Reverse(s)) = self.heap.pop() {
            if s.at > self.horizon {
                break;
            }
            self.now = s.at;
            match s.ev {
                Ev::Arrivals => self.arrivals(),
                Ev::Resubmit(id) => self.submit(id),
                Ev::Wake => {
                    if self.next_wake.is_some_and(|(_, at)| at == s.at) {
                        self.next_wake = None;
                    }
                }
                Ev::Tick => {
                    self.tick();
                    if self.settled < total {
                        self.push(self.now + SECOND, Ev::Tick);
                    }
                }
                Ev::AtTelegram {
                    id,
                    chat,
                    answer_at,
                } => self.at_telegram(id, chat, answer_at),
                Ev::Answer { id, outcome } => self.answer(id, &outcome),
            }
            if self.settled >= total {
                break;
            }
            self.pump();
        }
        self.report()
    }

    /// Produces every message due by now and schedules the next batch.
    fn arrivals(&mut self) {
        let n = self.workload.messages;
        while self.next_msg < n && self.next_arrival_at <= self.now {
            let id = self.next_msg;
            self.produce(id);
            self.submit(id);
            self.next_msg += 1;
            self.next_arrival_at = self.arrival_instant(self.next_msg);
        }
        if self.next_msg < n {
            let at = self.next_arrival_at;
            self.push(at, Ev::Arrivals);
        }
    }

    /// When message `i` (0-based) arrives; sequential for Poisson gaps.
    fn arrival_instant(&mut self, i: u64) -> u64 {
        match &self.workload.arrival {
            Arrival::Backlog => 0,
            Arrival::Steady { rate } => (i as f64 / rate.per_second * 1e9) as u64,
            Arrival::Poisson { rate } => {
                let u = self.rng.next_f64();
                let gap = -(1.0 - u).ln() / rate.per_second;
                self.next_arrival_at + (gap * 1e9) as u64
            }
            Arrival::Bursts { size, every } => (i / (*size).max(1)) * duration_nanos(every.get()),
        }
    }

    fn produce(&mut self, id: u64) {
        let chats = self.chat_ids.len() as u64;
        let chat_no = match (&self.workload.arrival, self.workload.chat_order) {
            // Spread evenly so a backlog drains across every chat at once.
            (Arrival::Backlog, ChatOrder::RoundRobin) => id % chats,
            (Arrival::Backlog, ChatOrder::Consecutive) => {
                (id * chats / self.workload.messages.max(1)).min(chats - 1)
            }
            _ => self.rng.below(chats),
        } as usize;
        let priority = pick(&mut self.rng, &self.priorities).unwrap_or(Priority::Normal);
        let type_name = pick_index(&mut self.rng, self.types.iter().map(|t| t.2)).unwrap_or(0);
        self.msgs.push(Msg {
            chat: self.chat_ids[chat_no],
            chat_no,
            priority,
            ty: self.types[type_name].1,
            type_name,
            submitted: self.now,
            done: false,
        });
    }

    /// A producer hands the message to herald: 503 under degradation (and
    /// it retries after Retry-After), else queued.
    fn submit(&mut self, id: u64) {
        let Some(m) = self.msgs.get(id as usize).copied() else {
            return;
        };
        let now = Instant::from_nanos(self.now);
        if let Err(r) = self.d.admits_ingest(m.priority, &self.types[m.type_name].0) {
            self.refused += 1;
            let at = self.now + duration_nanos(r.retry_after).max(SECOND);
            self.push(at, Ev::Resubmit(id));
            return;
        }
        let q = QueuedMessage::new(id, m.chat, m.priority, m.ty, now);
        let _ = self.d.enqueue(now, q);
    }

    /// Polls until idle; asks to be woken at the dispatcher's instant.
    fn pump(&mut self) {
        let now = Instant::from_nanos(self.now);
        loop {
            match self.d.poll(now) {
                Poll::Send(order) => self.send(order),
                Poll::Idle { wake_at } => {
                    if let Some(w) = wake_at {
                        let target = w.as_nanos().max(self.now + 1);
                        // One draw per instant asked for: the loop's timer
                        // fires late, never early, and asking again for the
                        // same instant does not get another chance.
                        if self.next_wake.is_none_or(|(t, _)| target < t) {
                            let late = if self.wake_jitter > 0 {
                                self.wake_rng.below(self.wake_jitter + 1)
                            } else {
                                0
                            };
                            let at = target.saturating_add(late);
                            self.next_wake = Some((target, at));
                            self.push(at, Ev::Wake);
                        }
                    }
                    return;
                }
            }
        }
    }

    fn send(&mut self, o: SendOrder) {
        let now = self.now;
        self.flights.insert(
            o.id,
            Flight {
                tier: o.tier,
                sent_at: now,
            },
        );
        if let Some(t) = self.tiers.get_mut(o.tier) {
            t.sends += 1;
        }
        let Some(sink) = self.sinks.get(o.tier).cloned() else {
            return;
        };
        let latency = sink.latency(&mut self.rng);
        let deadline = o.deadline.as_nanos();
        match sink.outage(now) {
            Some(OutageMode::Refused) => {
                let at = now + 1_000_000;
                let outcome = Outcome::Transport(TransportKind::Connect);
                self.push(at, Ev::Answer { id: o.id, outcome });
                return;
            }
            Some(OutageMode::Timeout) => {
                self.push(
                    deadline.max(now + 1),
                    Ev::Answer {
                        id: o.id,
                        outcome: Outcome::Timeout,
                    },
                );
                return;
            }
            Some(OutageMode::Unavailable) => {
                let outcome = error(503, "Service Unavailable");
                self.push(
                    now + duration_nanos(latency),
                    Ev::Answer { id: o.id, outcome },
                );
                return;
            }
            None => {}
        }
        let answer_at = now + duration_nanos(latency);
        if sink.sink == Sink::Telegram {
            self.first_tg_send.get_or_insert(now);
            self.last_tg_send = now;
            let arrive = now + duration_nanos(self.telegram.arrival_delay(&mut self.rng));
            self.push(
                arrive,
                Ev::AtTelegram {
                    id: o.id,
                    chat: o.chat,
                    answer_at: answer_at.max(arrive),
                },
            );
            return;
        }
        let outcome = if self.rng.next_f64() < sink.error_rate {
            match sink.sink {
                Sink::Spool => Outcome::Transport(TransportKind::Other),
                _ => error(500, "Internal Server Error"),
            }
        } else {
            Outcome::Delivered
        };
        self.push(answer_at, Ev::Answer { id: o.id, outcome });
    }

    fn at_telegram(&mut self, id: u64, chat: i64, answer_at: u64) {
        let error_rate = self
            .flights
            .get(&id)
            .and_then(|f| self.sinks.get(f.tier))
            .map_or(0.0, |s| s.error_rate);
        let outcome = match self.telegram.arrive(self.now, chat) {
            TelegramAnswer::TooMany { retry_after } => Outcome::Http {
                status: 429,
                body: Some(TelegramError {
                    error_code: 429,
                    description: format!("Too Many Requests: retry after {retry_after}"),
                    retry_after: Some(retry_after),
                    migrate_to_chat_id: None,
                }),
            },
            TelegramAnswer::Accepted if self.is_blocked(id) => {
                error(403, "Forbidden: bot was blocked by the user")
            }
            TelegramAnswer::Accepted if self.rng.next_f64() < error_rate => {
                error(500, "Internal Server Error")
            }
            TelegramAnswer::Accepted => Outcome::Delivered,
        };
        self.push(answer_at, Ev::Answer { id, outcome });
    }

    fn is_blocked(&self, id: u64) -> bool {
        self.msgs
            .get(id as usize)
            .is_some_and(|m| self.blocked.get(m.chat_no).copied().unwrap_or(false))
    }

    fn answer(&mut self, id: u64, outcome: &Outcome) {
        let Some(f) = self.flights.remove(&id) else {
            return;
        };
        let now = Instant::from_nanos(self.now);
        let latency = Duration::from_nanos(self.now - f.sent_at);
        let Ok(verdict) = self.d.complete(now, id, outcome, latency) else {
            return;
        };
        let sink = self.sinks.get(f.tier).map(|s| s.sink);
        let tier = &mut self.tiers[f.tier];
        match outcome {
            Outcome::Delivered => {}
            Outcome::Http { status: 429, .. } => tier.rate_limited_429 += 1,
            _ => tier.failed += 1,
        }
        match verdict {
            Verdict::Delivered => {
                tier.delivered += 1;
                if sink == Some(Sink::Telegram) {
                    self.tg_delivered += 1;
                }
                self.settle(id, true);
            }
            Verdict::DeadLetter { reason } => {
                tier.dead_lettered += 1;
                *self.dead.entry(reason.label().to_owned()).or_default() += 1;
                self.settle(id, false);
            }
            Verdict::FailedOver { .. } => tier.failed_over += 1,
            Verdict::RetryAt(_) | Verdict::Held(_) | Verdict::Readdressed { .. } => {}
        }
    }

    fn settle(&mut self, id: u64, delivered: bool) {
        let now = self.now;
        let Some(m) = self.msgs.get_mut(id as usize) else {
            return;
        };
        if m.done {
            return;
        }
        m.done = true;
        self.settled += 1;
        if delivered {
            self.delivered += 1;
            self.latencies[m.priority.index()].push(now - m.submitted);
        }
    }

    fn tick(&mut self) {
        let now = Instant::from_nanos(self.now);
        let at_s = self.now as f64 / 1e9;
        for e in self.d.tick(now) {
            match e {
                Event::Breaker {
                    tier_name,
                    chat: None,
                    transition,
                    ..
                } => self.breakers.push(BreakerChange {
                    at_s: transition.at.as_nanos() as f64 / 1e9,
                    tier: tier_name,
                    from: transition.from.as_str().to_owned(),
                    to: transition.to.as_str().to_owned(),
                    reason: transition.reason.as_str().to_owned(),
                }),
                Event::Breaker { .. } => self.chat_breakers += 1,
                Event::Level(c) => self.levels.push(LevelChangeReport {
                    at_s,
                    from: c.from.as_str().to_owned(),
                    to: c.to.as_str().to_owned(),
                    cause: cause(&c.cause),
                }),
                Event::Escalation { .. } | Event::TierStopped { .. } | Event::Dropped { .. } => {}
            }
        }
    }

    fn report(mut self) -> SimReport {
        let snap = self.d.snapshot(Instant::from_nanos(self.now));
        let mut tiers = std::mem::take(&mut self.tiers);
        let mut nominal = 0.0;
        let mut tg_tiers_sent = false;
        let limits: Vec<_> = snap.tiers.iter().map(|t| t.sink).collect();
        for (i, t) in tiers.iter_mut().enumerate() {
            if limits.get(i) == Some(&Sink::Telegram) && t.sends > 0 {
                tg_tiers_sent = true;
                nominal += self.nominal_rate(i);
            }
        }
        let span = self
            .first_tg_send
            .map_or(0, |f| self.last_tg_send.saturating_sub(f));
        let busy_span_s = span as f64 / 1e9;
        let utilization = (tg_tiers_sent && span > 0 && nominal > 0.0)
            .then(|| self.tg_delivered as f64 / (nominal * busy_span_s));
        let mut latency = BTreeMap::new();
        for p in Priority::ALL {
            let samples = &mut self.latencies[p.index()];
            if !samples.is_empty() {
                latency.insert(p.as_str().to_owned(), Percentiles::of(samples));
            }
        }
        let dead_lettered = self.dead.values().sum();
        let ideal_span_s = self.ideal_span().map(|ns| ns as f64 / 1e9);
        let span_vs_ideal = ideal_span_s
            .filter(|i| *i > 0.0 && span > 0)
            .map(|i| busy_span_s / i);
        SimReport {
            ideal_span_s,
            span_vs_ideal,
            workload: self.workload.name.clone().unwrap_or_default(),
            messages: self.workload.messages,
            delivered: self.delivered,
            dead_lettered,
            dead_lettered_by_reason: std::mem::take(&mut self.dead),
            pending: self.workload.messages - self.settled,
            refused_at_ingest: self.refused,
            rate_limited_429: self.telegram.rate_limited,
            telegram_requests: self.telegram.arrivals,
            max_global_per_second: self.telegram.max_global_per_second() as u64,
            max_chat_per_second: self.telegram.max_chat_per_second() as u64,
            max_group_per_minute: self.telegram.max_group_per_minute() as u64,
            telegram_delivered: self.tg_delivered,
            busy_span_s,
            nominal_rate_per_s: nominal,
            utilization,
            latency,
            tiers,
            breaker_transitions: std::mem::take(&mut self.breakers),
            chat_breaker_transitions: self.chat_breakers,
            degradation: std::mem::take(&mut self.levels),
            simulated_s: self.now as f64 / 1e9,
            ..SimReport::default()
        }
    }

    /// The shortest busy span a backlog allows, in ns: every key paced
    /// exactly at its guarded limit, as Telegram counts it — the bot and
    /// each chat one send per guarded interval, each group at most `rate`
    /// sends in any guarded period (a sliding window, so a group may use
    /// its chat pace until the window is full). Sends take no time and
    /// never collide. `None` unless the workload is a backlog sent to
    /// Telegram.
    fn ideal_span(&self) -> Option<u64> {
        if !matches!(self.workload.arrival, Arrival::Backlog) {
            return None;
        }
        let limits = self.ideal_limits?;
        let n = self.msgs.len() as u64;
        if n == 0 {
            return None;
        }
        let mut per_chat: HashMap<i64, u64> = HashMap::new();
        for m in &self.msgs {
            *per_chat.entry(m.chat).or_default() += 1;
        }
        let global = limits.global.cell().interval;
        let chat = limits.per_chat.map_or(0, |l| l.cell().interval);
        let mut span = (n - 1).saturating_mul(global);
        for (&id, &count) in &per_chat {
            let mut s = (count - 1).saturating_mul(chat);
            if let (true, Some(g)) = (id < 0, limits.per_group) {
                let window = duration_nanos(g.guarded_period());
                let per_window = u64::from(g.rate.max(1));
                let (full, rest) = ((count - 1) / per_window, (count - 1) % per_window);
                s = s.max(
                    full.saturating_mul(window)
                        .saturating_add(rest.saturating_mul(chat)),
                );
            }
            span = span.max(s);
        }
        Some(span)
    }

    /// The configured global rate of tier `i`, per second.
    fn nominal_rate(&self, i: usize) -> f64 {
        self.nominal.get(i).copied().unwrap_or(0.0)
    }
}

fn error(status: u16, description: &str) -> Outcome {
    Outcome::Http {
        status,
        body: Some(TelegramError {
            error_code: status,
            description: description.to_owned(),
            retry_after: None,
            migrate_to_chat_id: None,
        }),
    }
}

fn cause(c: &crate::engine::degradation::Cause) -> String {
    use crate::engine::degradation::Cause;
    match c {
        Cause::Signal {
            signal,
            value,
            threshold,
        } => format!("{signal} {value} >= {threshold}"),
        Cause::Recovered => "recovered".to_owned(),
        Cause::Override => "override".to_owned(),
        Cause::OverrideCleared => "override cleared".to_owned(),
        Cause::OverrideExpired => "override expired".to_owned(),
    }
}

/// A value drawn with probability proportional to its weight.
fn pick<T: Copy>(rng: &mut SplitMix64, items: &[(T, u64)]) -> Option<T> {
    pick_index(rng, items.iter().map(|i| i.1)).map(|i| items[i].0)
}

fn pick_index(rng: &mut SplitMix64, weights: impl Iterator<Item = u64> + Clone) -> Option<usize> {
    let total: u64 = weights.clone().sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.below(total);
    for (i, w) in weights.enumerate() {
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
}
