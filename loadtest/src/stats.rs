//! Latency and throughput bookkeeping.
//!
//! Every update an editor sends is registered under its Yjs id (client id, first clock) with the
//! time and region it left from. Whoever receives it looks the id up: the same editor records a
//! *local echo*, another editor of the same region a *local delivery*, an editor of another region
//! a *cross-region delivery*. Matching on the Yjs id rather than on bytes works with any server,
//! including those that re-encode updates.
//!
//! Editors keep their samples in small vectors and flush them once a second into per-second,
//! per-region histograms, so latency over time can be charted without a lock on every message.
//! (A histogram per editor would cost more than the samples: adding 3 histograms of 1 µs to 1 h
//! at 3 significant digits, for each of thousands of editors every second, was most of the
//! generator's CPU.)

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Identifies one update: the editor's Yjs client id and the clock its first block starts at.
pub type UpdateKey = (u64, u32);

struct Sent {
    at: Instant,
    region: usize,
    editor: usize,
    /// Receivers still expected (every editor of the document, the sender included).
    remaining: u32,
}

/// What kind of delivery a latency sample is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Echo,
    Local,
    Cross,
}

fn histogram() -> Histogram<u64> {
    // microseconds, 1 µs to 1 h, 3 significant digits
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// One editor's samples since its last flush: latencies in microseconds, by [`Kind`].
pub struct Local {
    region: usize,
    samples: [Vec<u64>; 3],
    sent: u64,
    delivered: u64,
}

impl Local {
    pub fn new(region: usize) -> Self {
        Local {
            region,
            samples: Default::default(),
            sent: 0,
            delivered: 0,
        }
    }
}

/// One second of one region.
#[derive(Clone)]
pub struct Bucket {
    pub hist: [Histogram<u64>; 3],
    pub sent: u64,
    pub delivered: u64,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            hist: [histogram(), histogram(), histogram()],
            sent: 0,
            delivered: 0,
        }
    }
}

pub struct Stats {
    pub start: Instant,
    in_flight: DashMap<UpdateKey, Sent>,
    /// (second since start, region) → samples.
    buckets: Mutex<BTreeMap<(u64, usize), Bucket>>,
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub unmatched: AtomicU64,
    /// Editors that completed their first sync.
    pub synced: AtomicU64,
    /// Totals flushed so far, for the progress line.
    pub total_sent: AtomicU64,
    pub total_delivered: AtomicU64,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            start: Instant::now(),
            in_flight: DashMap::new(),
            buckets: Mutex::new(BTreeMap::new()),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            total_sent: AtomicU64::new(0),
            total_delivered: AtomicU64::new(0),
        }
    }

    /// Registers an update just sent (`key` is `None` for one that cannot be matched).
    pub fn sent(
        &self,
        key: Option<UpdateKey>,
        region: usize,
        editor: usize,
        receivers: u32,
        local: &mut Local,
    ) {
        if let Some(key) = key {
            self.in_flight.insert(
                key,
                Sent {
                    at: Instant::now(),
                    region,
                    editor,
                    remaining: receivers,
                },
            );
        }
        local.sent += 1;
    }

    /// Records the receipt of update `key` by `editor` of `region`.
    pub fn received(&self, key: UpdateKey, region: usize, editor: usize, local: &mut Local) {
        let now = Instant::now();
        let Some(mut sent) = self.in_flight.get_mut(&key) else {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let micros = now.duration_since(sent.at).as_micros().max(1) as u64;
        let kind = if sent.region != region {
            Kind::Cross
        } else if sent.editor == editor {
            Kind::Echo
        } else {
            Kind::Local
        };
        sent.remaining = sent.remaining.saturating_sub(1);
        let done = sent.remaining == 0;
        drop(sent);
        if done {
            self.in_flight.remove(&key);
        }
        local.samples[kind as usize].push(micros.min(3_600_000_000));
        local.delivered += 1;
    }

    /// Moves an editor's samples into the bucket of the current second.
    pub fn flush(&self, local: &mut Local) {
        let second = self.start.elapsed().as_secs();
        let mut buckets = self.buckets.lock().unwrap();
        let b = buckets.entry((second, local.region)).or_default();
        for k in 0..3 {
            for v in local.samples[k].drain(..) {
                let _ = b.hist[k].record(v);
            }
        }
        b.sent += local.sent;
        b.delivered += local.delivered;
        self.total_sent.fetch_add(local.sent, Ordering::Relaxed);
        self.total_delivered
            .fetch_add(local.delivered, Ordering::Relaxed);
        local.sent = 0;
        local.delivered = 0;
    }

    /// Drops registrations older than `age` (their receivers went away).
    pub fn sweep(&self, age: Duration) {
        let now = Instant::now();
        self.in_flight.retain(|_, s| now.duration_since(s.at) < age);
    }

    pub fn buckets(&self) -> BTreeMap<(u64, usize), Bucket> {
        self.buckets.lock().unwrap().clone()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Merges the buckets of `seconds` (a range of whole seconds since start) per region and kind.
pub fn merge(
    buckets: &BTreeMap<(u64, usize), Bucket>,
    seconds: std::ops::Range<u64>,
    regions: usize,
) -> Vec<Bucket> {
    let mut out = vec![Bucket::default(); regions];
    for ((sec, region), b) in buckets {
        if seconds.contains(sec) && *region < regions {
            for k in 0..3 {
                let _ = out[*region].hist[k].add(&b.hist[k]);
            }
            out[*region].sent += b.sent;
            out[*region].delivered += b.delivered;
        }
    }
    out
}

pub fn new_histogram() -> Histogram<u64> {
    histogram()
}
