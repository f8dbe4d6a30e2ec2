//! report.html: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) with the
//! summary table and the charts, so a run's report can be mailed or opened offline as one file.
//!
//! Each chart is a `<figure>` with a stable id (`hist-local`, `hist-cross`, `local-p99`,
//! `cross-p99`, `sent`, `delivered`), which the browser test uses to find it.

use std::fmt::Write as _;

use super::bins::Binned;
use plotters::style::RGBColor;

use super::Report;
use super::charts::{self, COLORS, ChartError, fmt_ms};
use super::timeline::{self, Point};
use crate::replication_cost::Denominator;

pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Concord load test {}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}\
         figure{{margin:1em 0}}figcaption{{font-weight:600;margin-bottom:4px}}figure p{{margin:4px 0;color:#555}}\
         svg{{border:1px solid #ddd;max-width:100%;height:auto}}.ok{{color:#070}}.bad{{color:#b00}}</style></head><body>",
        esc(&r.date)
    );
    let _ = write!(
        h,
        "<h1>Concord load test</h1><p>{} · {} editors on {} documents · writing {:.1} s{}</p><p><code>{}</code></p>",
        esc(&r.date),
        r.editors,
        r.docs,
        r.write_secs,
        r.trace
            .as_ref()
            .map(|t| format!(" · trace {}", esc(t)))
            .unwrap_or_default(),
        esc(&r.args)
    );
    let ok = r.identical_percent == 100.0;
    let _ = write!(
        h,
        "<p class={}>Convergence: {} · identical: {}/{} documents ({:.0}%) · errors {} · reconnects {}</p>",
        if ok { "ok" } else { "bad" },
        r.convergence_ms
            .map(|m| format!("{m:.0} ms after the writes stopped"))
            .unwrap_or("not reached".into()),
        r.docs_identical,
        r.docs,
        r.identical_percent,
        r.errors,
        r.reconnects
    );
    summary_table(&mut h, r);
    memory_table(&mut h, r);
    replication_table(&mut h, r);

    h.push_str("<h2>Latency distribution</h2>");
    histogram(
        &mut h,
        "hist-local",
        "Local delivery latency (echo and same region), all regions",
        &r.histogram_local,
        COLORS[0],
    );
    histogram(
        &mut h,
        "hist-cross",
        "Cross-region delivery latency, all regions",
        &r.histogram_cross,
        COLORS[1],
    );

    let names: Vec<String> = r.regions.iter().map(|x| x.name.clone()).collect();
    let seconds = r.timeline_seconds.clone();
    let warmup = r.measured_seconds.start.saturating_sub(seconds.start);
    let over_time = |h: &mut String, id, title, y_desc, value: &dyn Fn(&Point) -> Option<f64>| {
        let s = timeline::series(&r.timeline, &names, value);
        figure(h, id, title, charts::lines(&s, seconds.clone(), y_desc), "");
    };
    h.push_str("<h2>Latency over time</h2>");
    let _ = write!(
        h,
        "<p>One point per region for each whole second of writing ({} s){}. A second in which a \
         region received no delivery of a kind has no point.</p>",
        seconds.end.saturating_sub(seconds.start),
        if warmup > 0 {
            format!("; the first {warmup} s are the warm-up, left out of the summary")
        } else {
            String::new()
        }
    );
    over_time(
        &mut h,
        "local-p99",
        "Local delivery p99 per second, by region",
        "p99 latency (ms)",
        &timeline::local_p99,
    );
    over_time(
        &mut h,
        "cross-p99",
        "Cross-region delivery p99 per second, by receiving region",
        "p99 latency (ms)",
        &timeline::cross_p99,
    );
    h.push_str("<h2>Throughput over time</h2>");
    over_time(
        &mut h,
        "sent",
        "Updates sent per second, by region",
        "updates / s",
        &|p| Some(p.sent as f64),
    );
    over_time(
        &mut h,
        "delivered",
        "Deliveries received per second, by region",
        "deliveries / s",
        &|p| Some(p.delivered as f64),
    );
    h.push_str("</body></html>");
    h
}

fn summary_table(h: &mut String, r: &Report) {
    h.push_str("<h2>Summary</h2><table><tr><th>region<th>updates/s<th>deliveries/s<th>echo p99<th>local p50<th>local p90<th>local p99<th>local max<th>cross p50<th>cross p90<th>cross p99<th>cross max<th>server CPU (cores)<th>server RSS (MiB)</tr>");
    for x in r.regions.iter().chain(std::iter::once(&r.all)) {
        let _ = write!(
            h,
            "<tr><td>{}<td>{:.0}<td>{:.0}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.1}<td>{:.2}<td>{:.2}<td>{:.2}<td>{:.1}<td>{}<td>{}</tr>",
            esc(&x.name),
            x.updates_per_sec,
            x.deliveries_per_sec,
            x.echo.p99_ms,
            x.local.p50_ms,
            x.local.p90_ms,
            x.local.p99_ms,
            x.local.max_ms,
            x.cross.p50_ms,
            x.cross.p90_ms,
            x.cross.p99_ms,
            x.cross.max_ms,
            x.server_cpu_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or("-".into()),
            x.server_rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or("-".into())
        );
    }
    let _ = write!(
        h,
        "</table><p>Load generator: {:.2} cores, {} MiB RSS.</p>",
        r.generator_cpu_cores,
        r.generator_rss_kib
            .map(|k| (k / 1024).to_string())
            .unwrap_or("-".into())
    );
}

/// The servers' RSS at the run's four points, and per live document and per connection
/// (`id=memory`).
fn memory_table(h: &mut String, r: &Report) {
    let m = &r.memory;
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let kib = |k: Option<f64>| k.map_or("-".into(), |k| format!("{k:.1}"));
    h.push_str("<h2>Server memory</h2><table id=memory><tr><th>server<th>before pre-fill (MiB)<th>pre-filled, no client (MiB)<th>connected, idle (MiB)<th>end (MiB)</tr>");
    for x in &m.regions {
        let _ = write!(
            h,
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}</tr>",
            esc(&x.name),
            mib(x.before_prefill_kib),
            mib(x.after_prefill_kib),
            mib(x.connected_kib),
            mib(x.end_kib)
        );
    }
    let _ = write!(
        h,
        "</table><p>Documents pre-filled with {} bytes of text ({} bytes as an update) in {:.1} s. \
         RSS per live document: <b>{} KiB</b> (pre-filled − before, per document and server); \
         per connection: <b>{} KiB</b> (connected − pre-filled, over {} connections).{}</p>",
        m.doc_size_bytes,
        m.doc_update_bytes,
        m.prefill_secs,
        kib(m.rss_per_live_doc_kib),
        kib(m.rss_per_connection_kib),
        m.connections,
        m.note
            .as_ref()
            .map(|n| format!(" {}.", esc(n)))
            .unwrap_or_default()
    );
}

/// Copies, peer messages and peer bytes per update (`id=replication-cost`).
fn replication_table(h: &mut String, r: &Report) {
    h.push_str("<h2>Replication cost</h2>");
    let Some(c) = &r.replication_cost else {
        let _ = write!(
            h,
            "<p id=replication-cost>Not measured: {}.</p>",
            esc(r.replication_cost_note.as_deref().unwrap_or("?"))
        );
        return;
    };
    let _ = write!(
        h,
        "<table id=replication-cost><tr><th>regions<th>updates<th>copies / update<th>ideal (N-1)\
         <th>copies / ideal<th>peer messages / update<th>peer bytes / update</tr>\
         <tr><td>{}<td>{}<td>{:.2}<td>{}<td>{:.2}<td>{:.2}<td>{:.0}</tr></table>\
         <p>From the servers' <code>/api/status</code> counters over the measured window: \
         <code>received_updates</code>, <code>received_messages</code> and \
         <code>received_bytes</code> summed over every region's peers, per update written ({}).</p>",
        c.regions,
        c.updates,
        c.copies_per_update,
        c.ideal_copies_per_update,
        c.copies_over_ideal,
        c.peer_messages_per_update,
        c.peer_bytes_per_update,
        match c.denominator {
            Denominator::Server => "the servers' own count, <code>originated_updates</code>",
            Denominator::Client => {
                "the servers report no <code>originated_updates</code>: the updates the generator sent"
            }
        }
    );
}

fn histogram(h: &mut String, id: &str, title: &str, b: &Binned, color: RGBColor) {
    let mut note = String::new();
    if let (Some(first), Some(last)) = (b.bins.first(), b.bins.last()) {
        let _ = write!(
            note,
            "{} deliveries in bins of {} ms",
            b.total(),
            fmt_ms(first.to_ms - first.from_ms)
        );
        if b.open_tail {
            let _ = write!(
                note,
                "; the grey last bin also holds the slowest deliveries (above {} ms, up to {} ms)",
                fmt_ms(last.to_ms),
                fmt_ms(b.max_ms)
            );
        }
        note.push('.');
    }
    figure(
        h,
        id,
        title,
        charts::histogram(b, "latency (ms)", color),
        &note,
    );
}

/// A chart with its title and note; an empty chart (no samples) or a failed one says so instead.
fn figure(h: &mut String, id: &str, title: &str, svg: Result<String, ChartError>, note: &str) {
    let body = match svg {
        Ok(s) if s.is_empty() => "<p>No samples.</p>".to_string(),
        Ok(s) => s,
        Err(e) => format!("<p class=bad>{}</p>", esc(&e.to_string())),
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("<p>{}</p>", esc(note))
    };
    let _ = write!(
        h,
        "<figure id={id}><figcaption>{}</figcaption>{body}{note}</figure>",
        esc(title)
    );
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
