//! The results: a table for the terminal, `report.json` for tools, and `report.html`, a single
//! self-contained page with inline SVG charts (viewable offline, no scripts or fonts to fetch).
//!
//! This file gathers the numbers; [`bins`] and [`timeline`] shape them for the charts (pure, unit
//! tested), [`charts`] draws them and [`html`] lays out the page.

mod bins;
mod charts;
mod html;
mod timeline;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::memory::Memory;
use crate::replication_cost::{self, ReplicationCost};
use crate::stats::{Bucket, Kind, Summary, merge, new_histogram};
use crate::status_sampler::Statuses;
use bins::Binned;
use timeline::Point;

pub struct Inputs {
    pub args: String,
    pub regions: Vec<String>,
    pub editors: usize,
    pub docs: usize,
    pub write_secs: f64,
    pub buckets: BTreeMap<(u64, usize), Bucket>,
    /// Whole seconds (since start) of steady writing that the summary covers.
    pub measured: Range<u64>,
    /// Whole seconds (since start) of writing, the warm-up included: the timeline's seconds.
    pub written: Range<u64>,
    pub convergence: Option<Duration>,
    pub docs_equal: usize,
    pub region_checked: bool,
    pub cpu_servers: Vec<f64>,
    pub rss_servers: Vec<Option<u64>>,
    pub cpu_generator: f64,
    pub rss_generator: Option<u64>,
    pub errors: u64,
    pub reconnects: u64,
    pub unmatched: u64,
    pub trace: Option<String>,
    pub trace_text_length_matches: Option<bool>,
    /// Every region's status at the start and at the end of the measured window, or why not.
    pub statuses: Result<(Arc<Statuses>, Arc<Statuses>), &'static str>,
    pub memory: Memory,
}

#[derive(Serialize)]
pub struct RegionReport {
    pub name: String,
    pub echo: Summary,
    pub local: Summary,
    pub cross: Summary,
    pub updates_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub server_cpu_cores: Option<f64>,
    pub server_rss_kib: Option<u64>,
}

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub args: String,
    pub editors: usize,
    pub docs: usize,
    pub trace: Option<String>,
    pub write_secs: f64,
    pub regions: Vec<RegionReport>,
    pub all: RegionReport,
    pub convergence_ms: Option<f64>,
    pub docs_identical: usize,
    pub identical_percent: f64,
    pub regions_compared: bool,
    pub trace_text_length_matches: Option<bool>,
    pub generator_cpu_cores: f64,
    pub generator_rss_kib: Option<u64>,
    pub errors: u64,
    pub reconnects: u64,
    pub unmatched_deliveries: u64,
    /// Whole seconds since start that the summary covers, and that the timeline covers (the
    /// same, unless a warm-up is left out of the summary).
    pub measured_seconds: Range<u64>,
    pub timeline_seconds: Range<u64>,
    /// One point per region and second of `timeline_seconds`, second by second.
    pub timeline: Vec<Point>,
    /// Latency histograms of the measured seconds (local and cross-region, all regions).
    pub histogram_local: Binned,
    pub histogram_cross: Binned,
    /// Copies, peer messages and peer bytes per update over the measured window, from the
    /// servers' counters; `null` with `replication_cost_note` saying why when not available.
    pub replication_cost: Option<ReplicationCost>,
    pub replication_cost_note: Option<String>,
    /// The servers' RSS before and after the pre-fill, connected and at the end, and what a live
    /// document and a connection cost.
    pub memory: Memory,
}

fn local_of(b: &Bucket) -> Histogram<u64> {
    let mut h = b.hist[Kind::Echo as usize].clone();
    let _ = h.add(&b.hist[Kind::Local as usize]);
    h
}

impl Report {
    pub fn build(i: Inputs) -> Report {
        let n = i.regions.len();
        let secs = (i.measured.end.saturating_sub(i.measured.start)).max(1) as f64;
        let per_region = merge(&i.buckets, i.measured.clone(), n);
        let mut total = Bucket::default();
        for b in &per_region {
            for k in 0..3 {
                let _ = total.hist[k].add(&b.hist[k]);
            }
            total.sent += b.sent;
            total.delivered += b.delivered;
        }
        let region = |name: String, b: &Bucket, cpu: Option<f64>, rss: Option<u64>| RegionReport {
            name,
            echo: Summary::of(&b.hist[Kind::Echo as usize]),
            local: Summary::of(&local_of(b)),
            cross: Summary::of(&b.hist[Kind::Cross as usize]),
            updates_per_sec: b.sent as f64 / secs,
            deliveries_per_sec: b.delivered as f64 / secs,
            server_cpu_cores: cpu,
            server_rss_kib: rss,
        };
        let regions = per_region
            .iter()
            .enumerate()
            .map(|(r, b)| {
                region(
                    i.regions[r].clone(),
                    b,
                    i.cpu_servers.get(r).copied(),
                    i.rss_servers.get(r).copied().flatten(),
                )
            })
            .collect();
        let cpu_total = (!i.cpu_servers.is_empty()).then(|| i.cpu_servers.iter().sum());
        let all = region("all".into(), &total, cpu_total, None);
        let timeline = timeline::points(&i.buckets, i.written.clone(), n);
        // Without the servers' own count: the updates sent in the window (deletions included,
        // which have no id to match an echo by; the run fails unless every one was written).
        let cost = i.statuses.map_err(String::from).and_then(|(a, b)| {
            replication_cost::compute(&i.regions, &a, &b, total.sent).map_err(|e| e.to_string())
        });
        let mut local_all = new_histogram();
        let _ = local_all.add(local_of(&total));
        Report {
            date: now_rfc3339(),
            args: i.args,
            editors: i.editors,
            docs: i.docs,
            trace: i.trace,
            write_secs: i.write_secs,
            regions,
            all,
            convergence_ms: i.convergence.map(|d| d.as_secs_f64() * 1000.0),
            docs_identical: i.docs_equal,
            identical_percent: 100.0 * i.docs_equal as f64 / i.docs.max(1) as f64,
            regions_compared: i.region_checked,
            trace_text_length_matches: i.trace_text_length_matches,
            generator_cpu_cores: i.cpu_generator,
            generator_rss_kib: i.rss_generator,
            errors: i.errors,
            reconnects: i.reconnects,
            unmatched_deliveries: i.unmatched,
            measured_seconds: i.measured,
            timeline_seconds: i.written,
            timeline,
            histogram_local: bins::bin(&local_all),
            histogram_cross: bins::bin(&total.hist[Kind::Cross as usize]),
            replication_cost_note: cost.as_ref().err().cloned(),
            replication_cost: cost.ok(),
            memory: i.memory,
        }
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n{:<12} {:>9} {:>10} | {:>26} | {:>34} | {:>6} {:>8}",
            "region",
            "updates/s",
            "deliver/s",
            "local (echo+same region) ms",
            "cross-region ms p50/p90/p99/max",
            "cpu",
            "rss MiB"
        );
        for r in self.regions.iter().chain(std::iter::once(&self.all)) {
            let l = &r.local;
            let c = &r.cross;
            let _ = writeln!(
                t,
                "{:<12} {:>9.0} {:>10.0} | {:>6.2} {:>6.2} {:>6.2} {:>5.0} | {:>7.2} {:>7.2} {:>7.2} {:>8.1} | {:>6} {:>8}",
                r.name,
                r.updates_per_sec,
                r.deliveries_per_sec,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                c.p50_ms,
                c.p90_ms,
                c.p99_ms,
                c.max_ms,
                r.server_cpu_cores
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or("-".into()),
                r.server_rss_kib
                    .map(|k| format!("{:.1}", k as f64 / 1024.0))
                    .unwrap_or("-".into()),
            );
        }
        let _ = writeln!(
            t,
            "\neditors {}  documents {}  writing {:.1} s  generator cpu {:.2} cores, rss {} MiB",
            self.editors,
            self.docs,
            self.write_secs,
            self.generator_cpu_cores,
            self.generator_rss_kib
                .map(|k| (k / 1024).to_string())
                .unwrap_or("-".into())
        );
        let _ = writeln!(
            t,
            "convergence {}  identical {}/{} documents ({:.0}%{})  errors {}  reconnects {}  unmatched {}",
            self.convergence_ms
                .map(|m| format!("{m:.0} ms"))
                .unwrap_or("NOT REACHED".into()),
            self.docs_identical,
            self.docs,
            self.identical_percent,
            if self.regions_compared {
                ", every editor and every region"
            } else {
                ", every editor"
            },
            self.errors,
            self.reconnects,
            self.unmatched_deliveries
        );
        match (&self.replication_cost, &self.replication_cost_note) {
            (Some(c), _) => {
                let _ = writeln!(
                    t,
                    "replication over the window: {:.2} copies/update (ideal N-1 = {}, ratio {:.2}), {:.2} peer messages/update, {:.0} peer bytes/update ({} updates, {} count)",
                    c.copies_per_update,
                    c.ideal_copies_per_update,
                    c.copies_over_ideal,
                    c.peer_messages_per_update,
                    c.peer_bytes_per_update,
                    c.updates,
                    c.denominator.as_str(),
                );
            }
            (None, note) => {
                let _ = writeln!(
                    t,
                    "replication cost: not measured ({})",
                    note.as_deref().unwrap_or("?")
                );
            }
        }
        let _ = writeln!(t, "{}", memory_lines(&self.memory));
        if let Some(m) = self.trace_text_length_matches {
            let _ = writeln!(
                t,
                "trace {}: final text length equals endContent: {m}",
                self.trace.as_deref().unwrap_or("?")
            );
        }
        t
    }

    pub fn html(&self) -> String {
        html::render(self)
    }
}

/// The memory summary for the terminal: the four samples, then the two derived figures.
fn memory_lines(m: &Memory) -> String {
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let sum = |f: fn(&crate::memory::RegionMemory) -> Option<u64>| {
        m.regions.iter().map(f).sum::<Option<u64>>()
    };
    let kib = |k: Option<f64>| k.map_or("-".into(), |k| format!("{k:.1} KiB"));
    let mut t = format!(
        "server RSS MiB (all servers): {} before pre-fill, {} pre-filled, {} with {} connections, {} at the end",
        mib(sum(|r| r.before_prefill_kib)),
        mib(sum(|r| r.after_prefill_kib)),
        mib(sum(|r| r.connected_kib)),
        m.connections,
        mib(sum(|r| r.end_kib)),
    );
    let _ = write!(
        t,
        "\ndocuments pre-filled with {} bytes of text ({} as an update) in {:.1} s; RSS per live document {}, per connection {}",
        m.doc_size_bytes,
        m.doc_update_bytes,
        m.prefill_secs,
        kib(m.rss_per_live_doc_kib),
        kib(m.rss_per_connection_kib),
    );
    if let Some(n) = &m.note {
        let _ = write!(t, " ({n})");
    }
    t
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
