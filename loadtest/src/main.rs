//! `loadtest`: drives Concord (or any y-websocket server) with simulated editors spread over
//! regions, and reports latency, throughput, convergence and resource use.
//!
//! - [`cluster`]: starts N regions (the real `concord` binary, meshed through delay proxies) or
//!   uses `--target` servers.
//! - [`tokens`]: `?token=` for servers with access control (`--auth-secret`, `--token`).
//! - [`tls`], [`dial`]: `wss://` (`--tls`: a self-signed certificate for the started regions).
//! - [`connect_rate`]: `--connect-rate`, connections per second instead of the editing run.
//! - [`size`], [`prefill`]: `--doc-size`, documents holding a large text before the run.
//! - [`memory`]: the servers' RSS at four points, per live document and per connection.
//! - [`network`]: the delay proxies between regions, on a thread of their own.
//! - [`editor`]: one simulated editor: a y-websocket client with a real `yrs` document.
//! - [`typing`]: its random keystrokes, by id at the caret (no walk of a large text).
//! - [`trace`]: real editing traces replayed faithfully (sequential or concurrent).
//! - [`stats`]: latency matching and per-second, per-region histograms.
//! - [`procstat`]: CPU and RSS from `/proc`.
//! - [`status_sampler`], [`replication_cost`]: the servers' replication counters over the
//!   measured window, as copies, peer messages and peer bytes per update.
//! - [`report`]: the stdout table, `report.json` and the self-contained `report.html`.
//!
//! A run: pre-fill the documents (`--doc-size`) → connect every editor → write for `--duration` (or `--ops`, or until the traces end) →
//! stop writing and time convergence → compare every replica (each editor and each region) →
//! exit non-zero unless they are all identical.

mod cluster;
mod connect_rate;
mod dial;
mod editor;
mod memory;
mod network;
mod places;
mod prefill;
mod procstat;
mod replication_cost;
mod report;
mod size;
mod stats;
mod status_sampler;
mod tls;
mod tokens;
mod trace;
mod typing;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, Options, ReadTxn, Snapshot, StateVector, Transact, Update};
use tokio::sync::watch;

use cluster::{Cluster, SpawnOptions};
use editor::{Editor, Phase, Workload};
use stats::Stats;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Multi-region load test for Concord and other y-websocket servers"
)]
struct Args {
    /// Regions to start (each a `concord` process), meshed through delay proxies.
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// One-way latency added between regions.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Drive servers that are already running instead (comma-separated): `http://host:port`
    /// for Concord, or a y-websocket base URL `ws://host:port` (rooms at `{url}/{doc}`).
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// Documents.
    #[arg(long, default_value_t = 10)]
    docs: usize,
    /// Editors per document (random mode), spread over the regions.
    #[arg(long, default_value_t = 6)]
    editors: usize,
    /// Pre-fill every document with this much text before the run, e.g. 500KB, 2MB, 64KiB (0,
    /// the default: empty documents). Words typed at random places (an item per word), as in a
    /// document edited for months. One such document is generated per run and the same bytes are
    /// written into every document, as client updates over the WebSocket protocol, to its first
    /// editor's region; the run waits until every region holds it. Editors then sync all of it
    /// and type at random places in it. Started servers get --evict-after=10m (unless
    /// --server-arg sets it) so that pre-filled documents stay live until the editors come.
    #[arg(long, default_value = "0", value_parser = size::parse_size)]
    doc_size: usize,
    /// With --target: the servers' process ids, one per target in the same order
    /// (comma-separated), to report their memory (RSS). Without them it is not reported.
    #[arg(long, value_delimiter = ',')]
    target_pid: Vec<u32>,
    /// Additional connected editors per document that only read.
    #[arg(long, default_value_t = 0)]
    readers: usize,
    /// Updates per second per editor (in trace mode: transactions per second per agent). The
    /// overall rate is docs × editors × rate, e.g. --docs 25 --editors 2 --rate 1: 50 updates/s.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How long to write (default 20 s; with --trace, until the trace ends).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many updates in total (overrides --duration when reached first).
    #[arg(long)]
    ops: Option<u64>,
    /// Replay an editing trace instead of random typing (`.json.gz`): a sequential trace gets one
    /// editor per document, a concurrent one an editor per agent, agent i in region i.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Leave the first seconds of writing out of the latency and throughput summary (they are
    /// still in the timeline): connection setup, first writes of every document and the
    /// generator's own start make a transient that is not the steady state.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Longest wait for convergence after the writes stop.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    converge_timeout: Duration,
    /// Where to write report.json, report.html and server logs (default target/loadtest/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The concord binary to start (default: next to this one).
    #[arg(long)]
    concord_bin: Option<PathBuf>,
    /// Extra argument for every started server (repeatable), e.g. --server-arg=--durability=async.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Document name prefix.
    #[arg(long, default_value = "loadtest")]
    prefix: String,
    /// Print no progress line.
    #[arg(long)]
    quiet: bool,
    /// Token secret (HS256): the started servers verify tokens with it, and each editor gets its
    /// own token (`sub` loadtest-N, write access to every document), minted with it.
    #[arg(long, env = "LOADTEST_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// One token for every editor, for servers this tool does not start (`--target`).
    #[arg(long, env = "LOADTEST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve TLS from the started regions (a self-signed certificate generated into --out) and
    /// connect with `wss://`; the regions link to each other over `https://`.
    #[arg(long)]
    tls: bool,
    /// Trust this CA certificate (PEM) for `wss://`/`https://` targets, besides the system's.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Measure connections per second instead: open N connections (TCP, WebSocket upgrade and
    /// the sync handshake, then close), --concurrency at a time, over --docs documents.
    #[arg(long, value_name = "N")]
    connect_rate: Option<usize>,
    /// Connections in flight at once with --connect-rate.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
}

/// The server's allocator: thousands of editors' documents and frames, allocated and freed on
/// both runtime workers.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        // A readable time, without the colons some tools choke on: 2026-12-05T13-06-00Z.
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        PathBuf::from(format!("target/loadtest/{now}"))
    });
    std::fs::create_dir_all(&out)?;

    let tokens = tokens::Tokens::new(args.token.as_deref(), args.auth_secret.as_deref());
    let started = args.target.is_empty();
    if args.tls && !started {
        anyhow::bail!(
            "--tls is for the regions this tool starts; give targets as wss:// or https:// URLs (and --tls-ca for a private CA)"
        );
    }
    let cert = if args.tls && started {
        Some(tls::self_signed(&out)?)
    } else {
        None
    };
    let secure_target = args
        .target
        .iter()
        .any(|t| t.starts_with("wss://") || t.starts_with("https://"));
    // Who the clients trust: the generated certificate, or for targets the system's roots and
    // --tls-ca.
    let (dialer, trusted) = match (&cert, secure_target || args.tls_ca.is_some()) {
        (Some(c), _) => {
            let certs = tls::load_certs(&c.cert)?;
            (
                dial::Dialer::with_tls(tls::client_config(&certs, false)?),
                certs,
            )
        }
        (None, true) => {
            let mut certs = match &args.tls_ca {
                Some(p) => tls::load_certs(p)?,
                None => Vec::new(),
            };
            let dialer = dial::Dialer::with_tls(tls::client_config(&certs, true)?);
            certs.extend(tls::system_roots());
            (dialer, certs)
        }
        (None, false) => (dial::Dialer::plain(), Vec::new()),
    };
    let http = http_client(&trusted, tokens.operator())?;
    if !args.target_pid.is_empty() && args.target_pid.len() != args.target.len() {
        anyhow::bail!(
            "--target-pid takes one pid per --target ({} targets, {} pids)",
            args.target.len(),
            args.target_pid.len()
        );
    }
    let content = if args.doc_size > 0 && args.connect_rate.is_none() {
        let c = prefill::generate(editor::TEXT, args.doc_size).await?;
        eprintln!(
            "generated the pre-fill document in {:.1} s: {} bytes of text, {} bytes as an update ({} message{})",
            c.generated_in.as_secs_f64(),
            c.text_bytes,
            c.update_bytes,
            c.messages.len(),
            if c.messages.len() == 1 { "" } else { "s" }
        );
        Some(c)
    } else {
        None
    };
    let mut server_args = args.server_args.clone();
    if content.is_some() && !server_args.iter().any(|a| a.starts_with("--evict-after")) {
        server_args.push("--evict-after=10m".into());
    }

    let mut cluster = if args.target.is_empty() {
        let bin = args
            .concord_bin
            .clone()
            .unwrap_or_else(cluster::default_bin);
        eprintln!(
            "starting {} regions ({} one-way between them), logs in {}",
            args.regions,
            humantime::format_duration(args.latency),
            out.display()
        );
        Cluster::spawn(SpawnOptions {
            regions: args.regions,
            latency: args.latency,
            bin: &bin,
            dir: &out,
            extra_args: &server_args,
            tls: cert.as_ref(),
            auth_secret: args.auth_secret.as_deref(),
            http: &http,
        })
        .await?
    } else {
        Cluster::targets(&args.target)
    };
    for (r, pid) in cluster.regions.iter_mut().zip(&args.target_pid) {
        r.pid = Some(*pid);
    }
    let regions = cluster.regions.len();

    if let Some(n) = args.connect_rate {
        let all_synced = measure_connect_rate(&args, n, &cluster, &tokens, dialer, &out).await;
        cluster.stop().await;
        if !all_synced? {
            std::process::exit(1);
        }
        return Ok(());
    }

    let script = match &args.trace {
        Some(p) => Some(Arc::new(trace::Script::load(p)?)),
        None => None,
    };
    let stats = Arc::new(Stats::new());
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let run_tag = format!("{}-{}", args.prefix, std::process::id());

    // Memory before the pre-fill (a), and after it with no client connected (b).
    let server_pids: Vec<Option<u32>> = cluster.regions.iter().map(|r| r.pid).collect();
    let rss_before = memory::settled_rss(&server_pids).await;
    let mut prefill_secs = 0.0;
    if let Some(c) = &content {
        eprintln!("pre-filling {} documents in {regions} regions", args.docs);
        let targets = prefill::targets(
            &cluster,
            |d, ws| {
                let url = format!("{ws}/{run_tag}/doc-{d}");
                tokens::with_token(&url, tokens.editor(usize::MAX - d).as_deref())
            },
            args.docs,
        );
        let every = if args.quiet { 0 } else { 100 };
        prefill_secs = prefill::fill(targets, c, &dialer, every)
            .await?
            .as_secs_f64();
    }
    let rss_prefilled = memory::settled_rss(&server_pids).await;

    // Editors: (doc, region, live doc handle) for the final comparison.
    let mut replicas: Vec<(usize, usize, Doc)> = Vec::new();
    let mut replays = Vec::new();
    let mut tasks = Vec::new();
    let mut next_id = 0;
    for d in 0..args.docs {
        let doc_name = format!("{run_tag}/doc-{d}");
        let writers = script.as_ref().map(|s| s.agents()).unwrap_or(args.editors);
        let receivers = (writers + args.readers) as u32;
        let replay = script.as_ref().map(|s| trace::Replay::new(s.clone()));
        for e in 0..writers + args.readers {
            let region = (d + e) % regions;
            let options = if script.is_some() {
                trace::trace_doc_options()
            } else {
                Options::default()
            };
            let doc = Doc::with_options(options);
            let workload = match (&replay, e < writers) {
                (Some(r), true) => Workload::Trace {
                    agent: std::sync::Mutex::new(trace::Agent::new(r.clone(), e)),
                    rate: args.rate,
                },
                (_, true) => Workload::Random { rate: args.rate },
                (_, false) => Workload::Random { rate: 0.0 },
            };
            let url = format!("{}/{doc_name}", cluster.regions[region].ws);
            let editor = Editor {
                id: next_id,
                region,
                url: tokens::with_token(&url, tokens.editor(next_id).as_deref()),
                dialer: dialer.clone(),
                doc: doc.clone(),
                receivers,
                workload,
                writes: e < writers,
                synced: Default::default(),
                cursor: Default::default(),
                places: Default::default(),
            };
            next_id += 1;
            replicas.push((d, region, doc));
            tasks.push(tokio::spawn(editor.run(stats.clone(), phase_rx.clone())));
        }
        if let Some(r) = replay {
            replays.push(r);
        }
    }
    let editors = tasks.len();
    eprintln!(
        "{editors} editors on {} documents over {regions} regions; connecting",
        args.docs
    );

    // Connect.
    let t0 = Instant::now();
    while (stats.synced.load(Ordering::Relaxed) as usize) < editors {
        if t0.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "only {} of {editors} editors synced within 120 s",
                stats.synced.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "all {editors} editors synced in {:.1} s; writing",
        t0.elapsed().as_secs_f64()
    );

    // What holding the connections costs the servers (c), before anyone writes.
    let rss_connected = memory::settled_rss(&server_pids).await;

    // Write.
    let pids: Vec<u32> = server_pids.iter().flatten().copied().collect();
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|p| procstat::cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let own_before = procstat::own_cpu_seconds();
    let write_start = Instant::now();
    let first_second = stats.start.elapsed().as_secs() + 1 + args.warmup.as_secs();
    phase_tx.send_replace(Phase::Write);
    // The servers' counters at each end of the measured window (Concord regions only).
    let sampler = cluster
        .regions
        .iter()
        .map(|r| r.http.clone())
        .collect::<Option<Vec<_>>>()
        .map(|urls| {
            status_sampler::StatusSampler::start(http.clone(), urls, stats.start, first_second)
        });
    let mut last = (0u64, 0u64, Instant::now());
    // On a terminal the progress line rewrites itself; in a log file each second is a line.
    let (line_start, line_end) = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ("\r", "")
    } else {
        ("", "\n")
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats.sweep(Duration::from_secs(60));
        let sent = stats.total_sent.load(Ordering::Relaxed);
        let delivered = stats.total_delivered.load(Ordering::Relaxed);
        let dt = last.2.elapsed().as_secs_f64();
        if !args.quiet {
            eprint!(
                "{line_start}  {:>5.0}s  sent {sent:>9}  {:>8.0} updates/s  {:>9.0} deliveries/s  errors {}  reconnects {}   {line_end}",
                write_start.elapsed().as_secs_f64(),
                (sent - last.0) as f64 / dt,
                (delivered - last.1) as f64 / dt,
                stats.errors.load(Ordering::Relaxed),
                stats.reconnects.load(Ordering::Relaxed),
            );
        }
        last = (sent, delivered, Instant::now());
        let traces_done = !replays.is_empty() && replays.iter().all(|r| r.finished());
        let ops_done = args.ops.is_some_and(|n| sent >= n);
        let limit = match (args.duration, &args.trace, args.ops) {
            (Some(d), _, _) => Some(d),
            (None, None, None) => Some(Duration::from_secs(20)),
            _ => None,
        };
        let time_done = limit.is_some_and(|d| write_start.elapsed() >= d);
        if traces_done || ops_done || time_done {
            break;
        }
    }
    if !args.quiet && line_end.is_empty() {
        eprintln!();
    }
    let write_secs = write_start.elapsed().as_secs_f64();
    let cpu_servers: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| (procstat::cpu_seconds(*p).unwrap_or(*b) - b) / write_secs)
        .collect();
    let cpu_own = (procstat::own_cpu_seconds() - own_before) / write_secs;
    let last_second = stats.start.elapsed().as_secs();
    let statuses = match sampler {
        Some(s) => s
            .window(last_second)
            .await
            .ok_or("no /api/status readings bracket the measured window"),
        None => Err("the servers have no /api/status (not Concord)"),
    };

    // Converge.
    phase_tx.send_replace(Phase::Drain);
    let drain_start = Instant::now();
    eprintln!("writes stopped; waiting for convergence");
    // Timed at the start of the check that finds every replica identical: the comparison itself
    // reads every replica (and each region's copy) and takes a while with large documents.
    let (converged_after, docs_equal, region_checked) = loop {
        let checked_at = drain_start.elapsed();
        let timed_out = checked_at > args.converge_timeout;
        if editors_agree(&replicas) || timed_out {
            let (equal, readable) =
                regions_agree(&http, &cluster, &replicas, &run_tag, args.docs, timed_out).await;
            if equal == args.docs {
                break (Some(checked_at), equal, readable);
            }
            if timed_out {
                break (None, equal, readable);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss: Vec<Option<u64>> = server_pids
        .iter()
        .map(|p| p.and_then(procstat::rss_kib))
        .collect();
    let own_rss = procstat::rss_kib(std::process::id());

    phase_tx.send_replace(Phase::Done);
    for t in tasks {
        let _ = t.await;
    }
    let expected_text = script.as_ref().map(|s| s.end_content.clone());
    let trace_text_match = expected_text.as_ref().map(|end| {
        replicas
            .iter()
            .all(|(_, _, doc)| text_of(doc).len() == end.len())
    });
    cluster.stop().await;
    let names = cluster_names(regions, &args);
    let memory = memory::Memory::new(
        args.doc_size,
        content.as_ref().map_or(0, |c| c.update_bytes),
        prefill_secs,
        args.docs,
        editors,
        names
            .iter()
            .enumerate()
            .map(|(r, name)| memory::RegionMemory {
                name: name.clone(),
                before_prefill_kib: rss_before[r],
                after_prefill_kib: rss_prefilled[r],
                connected_kib: rss_connected[r],
                end_kib: rss[r],
            })
            .collect(),
    );

    let r = report::Report::build(report::Inputs {
        args: format!("{:?}", tokens::redacted(std::env::args().skip(1))),
        regions: names,
        editors,
        docs: args.docs,
        write_secs,
        buckets: stats.buckets(),
        measured: first_second..last_second,
        written: first_second - args.warmup.as_secs()..last_second,
        convergence: converged_after,
        docs_equal,
        region_checked,
        cpu_servers,
        rss_servers: rss,
        cpu_generator: cpu_own,
        rss_generator: own_rss,
        errors: stats.errors.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        unmatched: stats.unmatched.load(Ordering::Relaxed),
        trace: script.as_ref().map(|s| s.name.clone()),
        trace_text_length_matches: trace_text_match,
        statuses,
        memory,
    });
    println!("{}", r.table());
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&r)?)?;
    std::fs::write(out.join("report.html"), r.html())?;
    eprintln!(
        "report: {}/report.json, {}/report.html",
        out.display(),
        out.display()
    );
    if docs_equal != args.docs {
        eprintln!(
            "FAILED: {docs_equal} of {} documents identical everywhere",
            args.docs
        );
        std::process::exit(1);
    }
    Ok(())
}

fn cluster_names(regions: usize, args: &Args) -> Vec<String> {
    if args.target.is_empty() {
        (0..regions).map(|i| format!("region-{i}")).collect()
    } else {
        args.target.clone()
    }
}

fn text_of(doc: &Doc) -> String {
    let txn = doc.transact();
    txn.get_text(editor::TEXT)
        .map(|t| concord_crdt::yrs::GetString::get_string(&t, &txn))
        .unwrap_or_default()
}

/// What two replicas of a document share when they are identical: every insertion seen (state
/// vector), every deletion (delete set), and, to be sure, a hash of the text. Read from the live
/// document without encoding or decoding it: a few milliseconds for a 500 KB document, where
/// re-encoding every replica's full state costs a hundred times that.
fn fingerprint(doc: &Doc) -> (Snapshot, u64) {
    use std::hash::{Hash, Hasher};
    let txn = doc.transact();
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    if let Some(t) = txn.get_text(editor::TEXT) {
        concord_crdt::yrs::GetString::get_string(&t, &txn).hash(&mut hash);
    }
    (txn.snapshot(), hash.finish())
}

/// The fingerprint of a full state read from a region (an empty body: the empty document).
fn fingerprint_of_update(update: &[u8]) -> Option<(Snapshot, u64)> {
    let doc = Doc::new();
    if !update.is_empty() {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).ok()?)
            .ok()?;
    }
    Some(fingerprint(&doc))
}

/// Whether, for every document, all its editors hold the same state.
fn editors_agree(replicas: &[(usize, usize, Doc)]) -> bool {
    let mut by_doc: std::collections::HashMap<usize, StateVector> =
        std::collections::HashMap::new();
    for (d, _, doc) in replicas {
        let sv = doc.transact().state_vector();
        match by_doc.get(d) {
            Some(first) if *first != sv => return false,
            Some(_) => {}
            None => {
                by_doc.insert(*d, sv);
            }
        }
    }
    true
}

/// Documents whose every replica (each editor and, where readable, each region) is identical,
/// and whether the regions could be read at all.
async fn regions_agree(
    http: &reqwest::Client,
    cluster: &Cluster,
    replicas: &[(usize, usize, Doc)],
    tag: &str,
    docs: usize,
    report_differences: bool,
) -> (usize, bool) {
    let mut equal = 0;
    let readable = cluster.regions.iter().all(|r| r.http.is_some());
    for d in 0..docs {
        let mut states: Vec<Option<(Snapshot, u64)>> = replicas
            .iter()
            .filter(|(doc, _, _)| *doc == d)
            .map(|(_, _, doc)| Some(fingerprint(doc)))
            .collect();
        if readable {
            for r in &cluster.regions {
                let url = format!("{}/api/docs/{tag}/doc-{d}/update", r.http.as_ref().unwrap());
                let body = match http.get(&url).send().await {
                    Ok(resp) if resp.status().is_success() => resp.bytes().await.ok(),
                    // Never written (an idle run): the region holds the empty document.
                    Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                        Some(Default::default())
                    }
                    _ => None,
                };
                states.push(body.and_then(|b| fingerprint_of_update(&b)));
            }
        }
        if states.iter().all(Option::is_some) && states.windows(2).all(|w| w[0] == w[1]) {
            equal += 1;
        } else if report_differences {
            // Which replicas differ from the document's first editor, for the failure message.
            let editors = states.len() - if readable { cluster.regions.len() } else { 0 };
            let differ: Vec<String> = states
                .iter()
                .enumerate()
                .filter(|(_, st)| *st != &states[0])
                .map(|(i, st)| {
                    let who = if i < editors {
                        format!("editor {i}")
                    } else {
                        cluster.regions[i - editors].name.clone()
                    };
                    match st {
                        Some((snapshot, _)) => format!("{who} ({:?})", snapshot.state_map),
                        None => format!("{who} (unreadable)"),
                    }
                })
                .collect();
            eprintln!(
                "doc-{d}: differs from its editor 0 ({:?}): {}",
                states[0].as_ref().map(|s| &s.0.state_map),
                differ.join(", ")
            );
        }
    }
    (equal, readable)
}

/// The HTTP client for status and read calls: trusts `trusted` (its only roots), and sends
/// `token` as a bearer token when there is one.
fn http_client(
    trusted: &[rustls::pki_types::CertificateDer<'static>],
    token: Option<String>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    for c in trusted {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(c)?);
    }
    if let Some(t) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder.build()?)
}

/// `--connect-rate`: opens `n` connections spread over the regions and `--docs` documents,
/// prints connections per second and the servers' CPU per connection, writes `connect.json`.
/// `Ok(false)` when some connection did not sync.
async fn measure_connect_rate(
    args: &Args,
    n: usize,
    cluster: &Cluster,
    tokens: &tokens::Tokens,
    dialer: dial::Dialer,
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    let regions = cluster.regions.len();
    let tag = format!("{}-{}", args.prefix, std::process::id());
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let url = format!(
                "{}/{tag}/conn-{}",
                cluster.regions[i % regions].ws,
                i % args.docs.max(1)
            );
            tokens::with_token(&url, tokens.editor(i).as_deref())
        })
        .collect();
    let auth = match tokens {
        tokens::Tokens::None => "none",
        tokens::Tokens::Fixed(_) => "one fixed token",
        tokens::Tokens::Mint(_) => "a token per connection",
    };
    let secure = urls.first().is_some_and(|u| u.starts_with("wss://"));
    eprintln!(
        "connect rate: {n} connections, {} at a time, over {regions} regions; tokens: {auth}; TLS: {}",
        args.concurrency,
        if secure { "on" } else { "off" }
    );
    let pids: Vec<u32> = cluster.regions.iter().filter_map(|r| r.pid).collect();
    let cpu_before: f64 = pids.iter().filter_map(|p| procstat::cpu_seconds(*p)).sum();
    let outcome = connect_rate::run(urls, args.concurrency, dialer).await;
    let cpu_after: f64 = pids.iter().filter_map(|p| procstat::cpu_seconds(*p)).sum();
    let synced = outcome.connections - outcome.errors;
    let cpu_us_per_conn =
        (!pids.is_empty() && synced > 0).then(|| (cpu_after - cpu_before) * 1e6 / synced as f64);
    let l = &outcome.latency;
    println!(
        "{synced} of {n} connections synced in {:.2} s: {:.0} connections/s (tokens: {auth}, TLS: {})",
        outcome.secs,
        outcome.per_second,
        if secure { "on" } else { "off" }
    );
    println!(
        "connect + sync: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
    );
    if let Some(us) = cpu_us_per_conn {
        println!("server CPU: {us:.0} µs per connection");
    }
    let report = serde_json::json!({
        "args": format!("{:?}", tokens::redacted(std::env::args().skip(1))),
        "tokens": auth,
        "tls": secure,
        "outcome": outcome,
        "server_cpu_us_per_connection": cpu_us_per_conn,
    });
    std::fs::write(
        out.join("connect.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("report: {}/connect.json", out.display());
    if outcome.errors > 0 {
        eprintln!(
            "FAILED: {} connections did not sync; first error: {}",
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or_default()
        );
    }
    Ok(outcome.errors == 0)
}
