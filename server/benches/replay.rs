//! What the document actor costs on top of yrs: the automerge-paper trace (259,778 edits) replayed
//! through a room, as a ratio to applying the same updates with raw yrs. The target is at most
//! 1.5x.
//!
//! Outside the timing, the trace becomes 259,778 Yjs v1 updates (one yrs client document, one
//! transaction per edit) and the y-websocket frames a client would send them in. Then:
//!
//! - `raw_yrs`: each update decoded (`Update::decode_v1`) and applied in its own transaction to
//!   a fresh `yrs::Doc`. The floor: what any server must spend to hold the document.
//! - `actor/*`: the path a client's edit takes through the server, minus the socket. A fresh
//!   `Registry` starts the document's `Room`; one member is joined (a `ClientHandle` whose queue
//!   a task drains, standing in for its writer), so every update is framed and queued for
//!   broadcast. Each frame is decoded (`decode_frame`, as the connection's reader does) and sent
//!   to the room's inbox; the room applies it, appends it to the store, compacts every 1,000
//!   entries (the default) and broadcasts it. The timing ends when a read queued after the last
//!   frame is answered: the room answers reads only once every earlier write is committed, so
//!   the last update is durable. The stores: `memory` (`MemoryStore`, no disk: the room alone),
//!   `memory_no_compaction` (the same without compaction, to show its share), and SQLite in a temp
//!   dir with `--durability async` and `sync`.
//!
//! Each run checks the resulting text against the trace's `endContent` and that the member
//! received every update. Each actor run is preceded by a `raw_yrs` run (outside criterion's
//! timing), and its ratio is taken to that neighbour: this machine's speed drifts by tens of
//! percent within minutes, which made ratios of separate medians swing between runs of the
//! benchmark. After the criterion output, the medians, throughput (edits/s) and the median paired
//! ratios are printed and written to `target/criterion/replay-ratio.txt`. Both sides allocate
//! with mimalloc, as the `concord` binary does.
//!
//! Run: `cargo bench -p concord-server --bench replay` (about 4 minutes on 2 cores, a quarter of a
//! minute of it turning the trace into updates: a yrs client finds each edit's position by
//! walking the text). Each benchmark is ten runs, one per sample; criterion's "unable to complete
//! 10 samples" warning for the slower ones is expected. Without the trace
//! (`datasets/editing-traces/`, in the repository) it prints why and measures nothing.

#[path = "../../crdt/benches/common/trace_file.rs"]
mod trace_file;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, GetString, OffsetKind, Options, Text, Transact, Update};
use concord_crdt::{DocName, decode_frame, encode};
use concord_server::config::ServeArgs;
use concord_server::control::Control;
use concord_server::handles::ClientHandle;
use concord_server::handles::{ReadKind, RoomMsg};
use concord_server::registry::Registry;
use concord_server::store::SharedStore;
use concord_server::store::memory::MemoryStore;
use concord_server::store::sqlite::{SqliteOptions, SqliteStore};
use criterion::{Criterion, SamplingMode, Throughput};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

// The server's allocator (`main.rs`), so both sides of the ratio allocate as the server does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../datasets/editing-traces/sequential/automerge-paper.json.gz"
);
/// The `Y.Text` root the edits go to (the load generator's name).
const TEXT: &str = "t";
/// The connection id of the room's one member.
const MEMBER: u64 = 1;
/// Ratio of the actor path to raw yrs that the project aims for.
const TARGET_RATIO: f64 = 1.5;

struct Fixture {
    /// One Yjs v1 update per edit, in order.
    updates: Vec<Vec<u8>>,
    /// The same updates framed as a client sends them (`[0, 2, update]`).
    frames: Vec<Vec<u8>>,
    /// How many of them change the document (and so are broadcast).
    changing: usize,
    /// The trace's final text.
    end: String,
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let (patches, end) = match trace_file::read_sequential(Path::new(TRACE)) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("skipping the replay benchmark: no editing trace ({e})");
                    return None;
                }
            };
            let started = Instant::now();
            let client = Doc::with_options(Options {
                // The traces count positions in UTF-16 units, as JavaScript does.
                offset_kind: OffsetKind::Utf16,
                ..Options::default()
            });
            let text = client.get_or_insert_text(TEXT);
            let mut updates = Vec::with_capacity(patches.len());
            let mut changing = 0;
            for (pos, del, ins) in &patches {
                let mut txn = client.transact_mut();
                if *del > 0 {
                    text.remove_range(&mut txn, *pos, *del);
                }
                if !ins.is_empty() {
                    text.insert(&mut txn, *pos, ins);
                }
                changing += usize::from(*del > 0 || !ins.is_empty());
                updates.push(txn.encode_update_v1());
            }
            assert_eq!(text.get_string(&client.transact()), end, "trace replay");
            let frames = updates.iter().map(|u| encode::update(u)).collect();
            eprintln!(
                "automerge-paper: {} edits turned into updates in {:.1?} ({} bytes of updates)",
                updates.len(),
                started.elapsed(),
                updates.iter().map(Vec::len).sum::<usize>()
            );
            Some(Fixture {
                updates,
                frames,
                changing,
                end,
            })
        })
        .as_ref()
}

/// Every timed run, by benchmark, for the summary after criterion's own output: its time and,
/// for the actor variants, the time of the raw yrs run made just before it.
static RUNS: Mutex<Vec<(String, Duration, Option<Duration>)>> = Mutex::new(Vec::new());

/// Runs `run` `iters` times, records each run's time and returns their sum (for `iter_custom`).
/// With `paired`, a raw yrs run precedes each run (untimed by criterion): this machine's speed
/// drifts by tens of percent within minutes, so the ratio is taken between neighbouring runs.
fn timed(
    name: &str,
    iters: u64,
    paired: Option<&Fixture>,
    mut run: impl FnMut() -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let raw = paired.map(raw_yrs);
        let t = run();
        RUNS.lock().unwrap().push((name.to_string(), t, raw));
        total += t;
    }
    total
}

/// The floor: the updates decoded and applied by yrs alone, one transaction each.
fn raw_yrs(fx: &Fixture) -> Duration {
    let doc = Doc::new();
    let started = Instant::now();
    for u in &fx.updates {
        let u = Update::decode_v1(u).expect("update decodes");
        doc.transact_mut().apply_update(u).expect("update applies");
    }
    let elapsed = started.elapsed();
    let text = doc.get_or_insert_text(TEXT);
    assert_eq!(text.get_string(&doc.transact()), fx.end);
    elapsed
}

/// Where the room's document is kept.
#[derive(Clone, Copy)]
enum Backend {
    Memory,
    Sqlite,
}

struct Variant {
    name: &'static str,
    backend: Backend,
    /// `--durability`
    durability: &'static str,
    /// Extra `concord serve` flags.
    flags: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "actor/memory",
        backend: Backend::Memory,
        durability: "sync",
        flags: &[],
    },
    Variant {
        name: "actor/memory_no_compaction",
        backend: Backend::Memory,
        durability: "sync",
        flags: &[
            "--compact-after-updates",
            "1000000000",
            "--compact-after-bytes",
            "1000000000000",
        ],
    },
    Variant {
        name: "actor/sqlite_async",
        backend: Backend::Sqlite,
        durability: "async",
        flags: &[],
    },
    Variant {
        name: "actor/sqlite_sync",
        backend: Backend::Sqlite,
        durability: "sync",
        flags: &[],
    },
];

/// One replay through a fresh registry, room and store; returns the time from the first frame
/// until the last update is durable. Setup and teardown are not timed.
async fn actor_replay(fx: &Fixture, variant: &Variant) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 temp dir");
    let mut args = vec![
        "concord",
        "--data-dir",
        data_dir,
        "--durability",
        variant.durability,
    ];
    args.extend(variant.flags);
    let config = ServeArgs::parse_from(args);
    let store: SharedStore = match variant.backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        Backend::Sqlite => Arc::new(
            SqliteStore::open(
                dir.path(),
                SqliteOptions {
                    durability: config.durability,
                    commit_delay: config.commit_delay,
                    ..SqliteOptions::default()
                },
            )
            .expect("store opens"),
        ),
    };
    let shutdown = CancellationToken::new();
    let registry = Registry::new(
        concord_server::room_config(&config),
        store.clone(),
        shutdown.clone(),
        None,
    );

    // The member's queue holds every frame it can be sent, so it is never dropped as too slow:
    // this measures the room, not the slow-client policy (a trace replayed flat out is faster
    // than any typist). The drain task stands in for the connection's writer.
    let (out, mut queue) = mpsc::channel(fx.updates.len() + 16);
    let control = Arc::new(Control::new(shutdown.child_token()));
    let member = ClientHandle::new(MEMBER, "127.0.0.1:9".parse().unwrap(), out, control.clone());
    let writer = tokio::spawn(async move {
        let mut frames = 0usize;
        while queue.recv().await.is_some() {
            frames += 1;
        }
        frames
    });
    let doc = DocName::parse("bench/automerge-paper").unwrap();
    registry
        .join(&doc, member)
        .await
        .map(drop)
        .expect("member joins");
    let inbox = registry.room(&doc).tx;

    let started = Instant::now();
    for frame in &fx.frames {
        let msgs = decode_frame(frame).expect("frame decodes");
        inbox
            .send(RoomMsg::Frame { id: MEMBER, msgs })
            .await
            .expect("room is live");
    }
    let (reply, answer) = oneshot::channel();
    inbox
        .send(RoomMsg::Read {
            kind: ReadKind::Text(TEXT.into()),
            reply,
        })
        .await
        .expect("room is live");
    let text = answer
        .await
        .expect("room answers")
        .expect("document exists");
    let elapsed = started.elapsed();

    assert!(
        control.reason().is_none(),
        "the member was closed: {:?}",
        control.reason()
    );
    assert_eq!(String::from_utf8(text).unwrap(), fx.end);
    let _ = inbox.send(RoomMsg::Leave { id: MEMBER }).await;
    drop(inbox);
    shutdown.cancel();
    registry.tasks.close();
    registry.tasks.wait().await;
    store.close().await;
    let frames = writer.await.unwrap();
    assert_eq!(
        frames,
        1 + fx.changing,
        "the member gets its Step1 and every update that changed the document"
    );
    elapsed
}

fn replay(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    // The server's own runtime: multi-threaded, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("replay_automerge_paper");
    // One run takes seconds: ten flat samples of one run each.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(fx.updates.len() as u64));
    g.bench_function("raw_yrs", |b| {
        b.iter_custom(|iters| timed("raw_yrs", iters, None, || raw_yrs(fx)))
    });
    for v in VARIANTS {
        g.bench_function(v.name, |b| {
            b.iter_custom(|iters| {
                timed(v.name, iters, Some(fx), || rt.block_on(actor_replay(fx, v)))
            })
        });
    }
    g.finish();
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    let n = runs.len();
    if n % 2 == 1 {
        runs[n / 2]
    } else {
        (runs[n / 2 - 1] + runs[n / 2]) / 2
    }
}

/// Prints each benchmark's median run, its throughput and its ratio to `raw_yrs`, and writes
/// them to `target/criterion/replay-ratio.txt` when there is a ratio to write.
fn report() {
    let Some(fx) = fixture() else { return };
    let runs = std::mem::take(&mut *RUNS.lock().unwrap());
    let mut names: Vec<String> = Vec::new();
    for (name, _, _) in &runs {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        return;
    }
    let edits = fx.updates.len();
    let mut out = format!(
        "replay of automerge-paper ({edits} edits), medians of all runs (warm-up included); \
         ratio: median over runs of (run / the raw yrs run just before it)\n"
    );
    let mut ratios = 0;
    for name in &names {
        let mine: Vec<&(String, Duration, Option<Duration>)> =
            runs.iter().filter(|(n, _, _)| n == name).collect();
        let t = median(mine.iter().map(|r| r.1).collect());
        let rate = edits as f64 / t.as_secs_f64();
        out += &format!(
            "  {name:<28} {t:>10.3?}  {rate:>9.0} edits/s  ({} runs)",
            mine.len()
        );
        let paired: Vec<f64> = mine
            .iter()
            .filter_map(|(_, t, raw)| raw.map(|raw| t.as_secs_f64() / raw.as_secs_f64()))
            .collect();
        if !paired.is_empty() {
            let ratio = median_f64(paired);
            let verdict = if ratio <= TARGET_RATIO {
                "within"
            } else {
                "over"
            };
            out += &format!("  {ratio:.2}x raw yrs ({verdict} the {TARGET_RATIO}x target)");
            ratios += 1;
        }
        out += "\n";
    }
    eprintln!("\n{out}");
    if ratios == 0 {
        // A filtered run (or `--profile-time`) has no ratio: keep the last file that had one.
        return;
    }
    let path = criterion_dir().join("replay-ratio.txt");
    if let Err(e) =
        std::fs::create_dir_all(criterion_dir()).and_then(|()| std::fs::write(&path, &out))
    {
        eprintln!("could not write {}: {e}", path.display());
    } else {
        eprintln!("written to {}", path.display());
    }
}

fn median_f64(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Where criterion keeps its results (the same rules, without asking `cargo metadata`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    replay(&mut c);
    c.final_summary();
    report();
}
