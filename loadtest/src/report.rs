//! The results: a table for the terminal, `report.json` for tools, and `report.html`, a single
//! self-contained page with inline SVG charts (viewable offline, no scripts or fonts to fetch).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Bucket, Kind, Summary, merge, new_histogram};

pub struct Inputs {
    pub args: String,
    pub regions: Vec<String>,
    pub editors: usize,
    pub docs: usize,
    pub write_secs: f64,
    pub buckets: BTreeMap<(u64, usize), Bucket>,
    /// Whole seconds (since start) of steady writing that the summary covers.
    pub measured: Range<u64>,
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
pub struct Point {
    pub second: u64,
    pub region: usize,
    pub sent: u64,
    pub delivered: u64,
    pub local_p50_ms: f64,
    pub local_p99_ms: f64,
    pub cross_p50_ms: f64,
    pub cross_p99_ms: f64,
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
    pub timeline: Vec<Point>,
    /// Latency histograms (cross-region and local, all regions), as (upper bound ms, count).
    pub histogram_local: Vec<(f64, u64)>,
    pub histogram_cross: Vec<(f64, u64)>,
}

fn local_of(b: &Bucket) -> Histogram<u64> {
    let mut h = b.hist[Kind::Echo as usize].clone();
    let _ = h.add(&b.hist[Kind::Local as usize]);
    h
}

fn log_buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    // Bucket bounds: 0.1 ms to ~100 s, 4 per decade.
    let mut out = Vec::new();
    let mut lo = 0u64;
    let mut bound = 100.0f64; // µs
    while bound < 1.0e8 {
        let hi = bound as u64;
        let count: u64 = h
            .iter_recorded()
            .filter(|v| v.value_iterated_to() > lo && v.value_iterated_to() <= hi)
            .map(|v| v.count_at_value())
            .sum();
        out.push((bound / 1000.0, count));
        lo = hi;
        bound *= 10f64.powf(0.25);
    }
    out
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
        let timeline = i
            .buckets
            .iter()
            .map(|((second, r), b)| {
                let l = Summary::of(&local_of(b));
                let c = Summary::of(&b.hist[Kind::Cross as usize]);
                Point {
                    second: *second,
                    region: *r,
                    sent: b.sent,
                    delivered: b.delivered,
                    local_p50_ms: l.p50_ms,
                    local_p99_ms: l.p99_ms,
                    cross_p50_ms: c.p50_ms,
                    cross_p99_ms: c.p99_ms,
                }
            })
            .collect();
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
            timeline,
            histogram_local: log_buckets(&local_all),
            histogram_cross: log_buckets(&total.hist[Kind::Cross as usize]),
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
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Concord load test {}</title><style>\
             body{{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}\
             svg{{background:#fff;border:1px solid #ddd;margin:8px 0}}.ok{{color:#070}}.bad{{color:#b00}}</style></head><body>",
            esc(&self.date)
        );
        let _ = write!(
            h,
            "<h1>Concord load test</h1><p>{} · {} editors on {} documents · writing {:.1} s{}</p><p><code>{}</code></p>",
            esc(&self.date),
            self.editors,
            self.docs,
            self.write_secs,
            self.trace
                .as_ref()
                .map(|t| format!(" · trace {}", esc(t)))
                .unwrap_or_default(),
            esc(&self.args)
        );
        let ok = self.identical_percent == 100.0;
        let _ = write!(
            h,
            "<p class={}>Convergence: {} · identical: {}/{} documents ({:.0}%) · errors {} · reconnects {}</p>",
            if ok { "ok" } else { "bad" },
            self.convergence_ms
                .map(|m| format!("{m:.0} ms after the writes stopped"))
                .unwrap_or("not reached".into()),
            self.docs_identical,
            self.docs,
            self.identical_percent,
            self.errors,
            self.reconnects
        );
        h.push_str("<h2>Summary</h2><table><tr><th>region<th>updates/s<th>deliveries/s<th>echo p99<th>local p50<th>local p90<th>local p99<th>local max<th>cross p50<th>cross p90<th>cross p99<th>cross max<th>server CPU (cores)<th>server RSS (MiB)</tr>");
        for r in self.regions.iter().chain(std::iter::once(&self.all)) {
            let _ = write!(
                h,
                "<tr><td>{}<td>{:.0}<td>{:.0}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.1}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.1}<td>{}<td>{}</tr>",
                esc(&r.name),
                r.updates_per_sec,
                r.deliveries_per_sec,
                r.echo.p99_ms,
                r.local.p50_ms,
                r.local.p90_ms,
                r.local.p99_ms,
                r.local.max_ms,
                r.cross.p50_ms,
                r.cross.p90_ms,
                r.cross.p99_ms,
                r.cross.max_ms,
                r.server_cpu_cores
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or("-".into()),
                r.server_rss_kib
                    .map(|k| format!("{:.1}", k as f64 / 1024.0))
                    .unwrap_or("-".into())
            );
        }
        let _ = write!(
            h,
            "</table><p>Load generator: {:.2} cores, {} MiB RSS.</p>",
            self.generator_cpu_cores,
            self.generator_rss_kib
                .map(|k| (k / 1024).to_string())
                .unwrap_or("-".into())
        );

        h.push_str("<h2>Latency distribution</h2>");
        h.push_str(&bars(
            "local delivery (ms, log scale)",
            &self.histogram_local,
            "#3b7dd8",
        ));
        h.push_str(&bars(
            "cross-region delivery (ms, log scale)",
            &self.histogram_cross,
            "#d8743b",
        ));

        let regions = self.regions.len();
        let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            (0..regions)
                .map(|r| {
                    let pts = self
                        .timeline
                        .iter()
                        .filter(|p| p.region == r)
                        .map(|p| (p.second as f64, f(p)))
                        .collect();
                    (self.regions[r].name.clone(), pts)
                })
                .collect()
        };
        h.push_str("<h2>Latency over time</h2>");
        h.push_str(&lines(
            "local p99 (ms) per second",
            &series(&|p| p.local_p99_ms),
        ));
        h.push_str(&lines(
            "cross-region p99 (ms) per second, by receiving region",
            &series(&|p| p.cross_p99_ms),
        ));
        h.push_str("<h2>Throughput over time</h2>");
        h.push_str(&lines(
            "updates sent per second",
            &series(&|p| p.sent as f64),
        ));
        h.push_str(&lines(
            "deliveries per second",
            &series(&|p| p.delivered as f64),
        ));
        h.push_str("</body></html>");
        h
    }
}

const COLORS: [&str; 6] = [
    "#3b7dd8", "#d8743b", "#3bb273", "#b23bb2", "#c9b12f", "#555",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bars(title: &str, data: &[(f64, u64)], color: &str) -> String {
    let (w, hgt, pad) = (1000.0, 220.0, 40.0);
    let data: Vec<_> = {
        let first = data.iter().position(|d| d.1 > 0).unwrap_or(0);
        let last = data.iter().rposition(|d| d.1 > 0).unwrap_or(0);
        data[first..=last.max(first)].to_vec()
    };
    let max = data.iter().map(|d| d.1).max().unwrap_or(1).max(1) as f64;
    let bw = (w - 2.0 * pad) / data.len().max(1) as f64;
    let mut s = format!(
        "<svg width={w} height={hgt} viewBox='0 0 {w} {hgt}'><text x={pad} y=16>{}</text>",
        esc(title)
    );
    for (i, (bound, count)) in data.iter().enumerate() {
        let bh = (hgt - 2.0 * pad) * (*count as f64 / max);
        let x = pad + i as f64 * bw;
        let _ = write!(
            s,
            "<rect x={x:.1} y={:.1} width={:.1} height={bh:.1} fill='{color}'><title>≤ {bound:.2} ms: {count}</title></rect>",
            hgt - pad - bh,
            (bw - 2.0).max(1.0)
        );
        if i % 2 == 0 {
            let _ = write!(
                s,
                "<text x={x:.1} y={} font-size=10>{}</text>",
                hgt - pad + 14.0,
                fmt_ms(*bound)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}")
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn lines(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, hgt, pad) = (1000.0, 240.0, 50.0);
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (xmin, xmax) = if xmin > xmax {
        (0.0, 1.0)
    } else {
        (xmin, xmax.max(xmin + 1.0))
    };
    let sx = |x: f64| pad + (x - xmin) / (xmax - xmin) * (w - 2.0 * pad);
    let sy = |y: f64| hgt - pad - y / ymax * (hgt - 2.0 * pad);
    let mut s = format!(
        "<svg width={w} height={hgt} viewBox='0 0 {w} {hgt}'><text x={pad} y=16>{}</text>",
        esc(title)
    );
    let _ = write!(
        s,
        "<line x1={pad} y1={} x2={} y2={} stroke='#999'/><text x=4 y={} font-size=10>{}</text><text x=4 y={} font-size=10>0</text>",
        hgt - pad,
        w - pad,
        hgt - pad,
        pad,
        fmt_ms(ymax),
        hgt - pad
    );
    let _ = write!(
        s,
        "<text x={pad} y={} font-size=10>{xmin:.0} s</text><text x={} y={} font-size=10>{xmax:.0} s</text>",
        hgt - pad + 14.0,
        w - pad - 30.0,
        hgt - pad + 14.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=none stroke='{color}' stroke-width=1.5 points='{}'/>",
            path.join(" ")
        );
        let _ = write!(
            s,
            "<text x={} y={} font-size=11 fill='{color}'>{}</text>",
            w - pad - 120.0,
            30.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
