//! The document layer's hot paths, timed on real edits: the work a room does per message and per
//! compaction, without the tokio and storage around it (`server/benches/replay.rs` times that).
//!
//! - `decode_apply`: a client's update frame decoded (`decode_frame`) and applied
//!   (`DocState::apply_update`), what the room does for every edit; raw yrs alongside for scale.
//! - `encode_broadcast`: the relayed update framed (`encode::update`) and its `Bytes` cloned into
//!   100 member queues, as `Room::broadcast` does; plus the Step2 a joining client is sent.
//! - `compaction`: `DocState::full_state`, the snapshot that compaction stores.
//! - `load`: `DocState::load` from a snapshot plus a 1,000-entry log tail (the default compaction
//!   threshold), what a room does before it serves a document.
//!
//! The edits are real: the automerge-paper trace (`datasets/editing-traces/`) replayed into a
//! yrs client document, one transaction and one update per keystroke. Per-edit paths use its first
//! 5,000 edits; compaction and load also run on the whole paper (259,778 edits). Without the trace
//! the benchmarks are skipped with a message.
//!
//! Run: `cargo bench -p concord-crdt --bench hot_paths`.

#[path = "common/trace_file.rs"]
mod trace_file;

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, OffsetKind, Options, ReadTxn, StateVector, Text, Transact, Update};
use concord_crdt::{ClientMessage, DocState, IncomingUpdate, decode_frame, encode};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../datasets/editing-traces/sequential/automerge-paper.json.gz"
);
/// Edits used for the per-message paths.
const EDITS: usize = 5_000;
/// Log entries after the snapshot in the load benchmarks: the default `--compact-after-updates`.
const TAIL: usize = 1_000;
/// Members of the room in the broadcast benchmark.
const MEMBERS: usize = 100;
/// The `Y.Text` root the edits go to (the load generator's name).
const TEXT: &str = "t";

/// A snapshot and the log entries after it: what the store hands a room that loads a document.
struct Stored {
    snapshot: Vec<u8>,
    tail: Vec<Vec<u8>>,
}

struct Fixture {
    /// The first [`EDITS`] updates, one per keystroke, as Yjs v1 updates...
    updates: Vec<Vec<u8>>,
    /// ...and as the y-websocket frames (`[0, 2, update]`) a client sends them in.
    frames: Vec<Vec<u8>>,
    /// The first [`EDITS`] edits, stored as snapshot + [`TAIL`] log entries.
    small: Stored,
    /// The whole paper, stored as snapshot + [`TAIL`] log entries.
    paper: Stored,
    /// The whole paper as one update.
    paper_state: Vec<u8>,
}

/// Replays `patches` into one yrs client document, one transaction per patch, and returns each
/// transaction's update plus the document's full state after `snapshot_at` patches.
fn replay(patches: &[(u32, u32, String)], snapshot_at: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let doc = Doc::with_options(Options {
        // The traces count positions in UTF-16 units, as JavaScript does.
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let text = doc.get_or_insert_text(TEXT);
    let mut updates = Vec::with_capacity(patches.len());
    let mut snapshot = Vec::new();
    for (i, (pos, del, ins)) in patches.iter().enumerate() {
        if i == snapshot_at {
            snapshot = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
        }
        let mut txn = doc.transact_mut();
        if *del > 0 {
            text.remove_range(&mut txn, *pos, *del);
        }
        if !ins.is_empty() {
            text.insert(&mut txn, *pos, ins);
        }
        updates.push(txn.encode_update_v1());
    }
    (updates, snapshot)
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let patches = match trace_file::read_sequential(Path::new(TRACE)).map(|(p, _)| p) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("skipping the crdt hot-path benchmarks: no editing trace ({e})");
                    return None;
                }
            };
            let (small_updates, small_snapshot) = replay(&patches[..EDITS], EDITS - TAIL);
            let (mut paper_updates, paper_snapshot) = replay(&patches, patches.len() - TAIL);
            let paper_state = DocState::load(
                std::iter::once(paper_snapshot.as_slice()).chain(
                    paper_updates[patches.len() - TAIL..]
                        .iter()
                        .map(Vec::as_slice),
                ),
            )
            .expect("the paper loads")
            .full_state();
            let fx = Fixture {
                frames: small_updates.iter().map(|u| encode::update(u)).collect(),
                small: Stored {
                    snapshot: small_snapshot,
                    tail: small_updates[EDITS - TAIL..].to_vec(),
                },
                updates: small_updates,
                paper: Stored {
                    snapshot: paper_snapshot,
                    tail: paper_updates.split_off(patches.len() - TAIL),
                },
                paper_state,
            };
            let mean = fx.updates.iter().map(Vec::len).sum::<usize>() / EDITS;
            eprintln!(
                "automerge-paper: {} edits; mean update {mean} B over the first {EDITS}; \
                 full state {} B after {} edits, {} B for the whole paper",
                patches.len(),
                fx.small.snapshot.len(),
                EDITS - TAIL,
                fx.paper_state.len(),
            );
            Some(fx)
        })
        .as_ref()
}

fn decode_apply(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut g = c.benchmark_group("decode_apply");
    g.throughput(Throughput::Elements(EDITS as u64));
    g.bench_function("decode_frame", |b| {
        b.iter(|| {
            for f in &fx.frames {
                black_box(decode_frame(f).unwrap());
            }
        })
    });
    g.bench_function("apply_update", |b| {
        b.iter_batched(
            || {
                let decoded: Vec<IncomingUpdate> = fx
                    .updates
                    .iter()
                    .map(|u| IncomingUpdate::decode(u).unwrap())
                    .collect();
                (DocState::new(), decoded)
            },
            |(mut state, decoded)| {
                for u in decoded {
                    state.apply_update(u).unwrap();
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("decode_frame+apply_update", |b| {
        b.iter_batched(
            DocState::new,
            |mut state| {
                for f in &fx.frames {
                    for msg in decode_frame(f).unwrap() {
                        if let ClientMessage::Update(u) = msg {
                            state.apply_update(u).unwrap();
                        }
                    }
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    // For scale: the same updates with yrs alone (no framing, guards or change detection).
    g.bench_function("raw_yrs_decode+apply", |b| {
        b.iter_batched(
            Doc::new,
            |doc| {
                for u in &fx.updates {
                    let u = Update::decode_v1(u).unwrap();
                    doc.transact_mut().apply_update(u).unwrap();
                }
                doc
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn encode_broadcast(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut g = c.benchmark_group("encode_broadcast");
    g.throughput(Throughput::Elements(EDITS as u64));
    g.bench_function("encode_update", |b| {
        b.iter(|| {
            for u in &fx.updates {
                black_box(encode::update(u));
            }
        })
    });
    // Each member's queue gets a clone of the same `Bytes` (a reference count, not a copy); its
    // writer then takes it out. Queues keep their capacity across iterations, as they do live.
    let mut queues: Vec<VecDeque<Bytes>> = (0..MEMBERS).map(|_| VecDeque::new()).collect();
    g.bench_function(format!("encode_update+broadcast_{MEMBERS}_members"), |b| {
        b.iter(|| {
            for u in &fx.updates {
                let frame = Bytes::from(encode::update(u));
                for q in &mut queues {
                    q.push_back(frame.clone());
                }
                for q in &mut queues {
                    black_box(q.pop_front());
                }
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sync_step2");
    let small = DocState::load(
        std::iter::once(fx.small.snapshot.as_slice())
            .chain(fx.small.tail.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let paper = DocState::load([fx.paper_state.as_slice()]).unwrap();
    let empty = StateVector::default();
    for (name, state) in [("5k_edits", &small), ("paper", &paper)] {
        // A client joining with nothing: its Step2 carries the whole document.
        g.bench_function(format!("new_client/{name}"), |b| {
            b.iter(|| black_box(encode::sync_step2(&state.diff(&empty))))
        });
    }
    g.finish();
}

fn compaction(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut g = c.benchmark_group("compaction");
    let small = DocState::load(
        std::iter::once(fx.small.snapshot.as_slice())
            .chain(fx.small.tail.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let paper = DocState::load([fx.paper_state.as_slice()]).unwrap();
    for (name, state) in [("5k_edits", &small), ("paper", &paper)] {
        g.bench_function(format!("full_state/{name}"), |b| {
            b.iter(|| black_box(state.full_state()))
        });
    }
    g.finish();
}

fn load(c: &mut Criterion) {
    let Some(fx) = fixture() else { return };
    let mut g = c.benchmark_group("load");
    for (name, stored) in [("5k_edits", &fx.small), ("paper", &fx.paper)] {
        g.bench_function(format!("snapshot+{TAIL}_tail/{name}"), |b| {
            // The loaded document is dropped outside the timing: a room keeps it.
            b.iter_with_large_drop(|| {
                let parts = std::iter::once(stored.snapshot.as_slice())
                    .chain(stored.tail.iter().map(Vec::as_slice));
                DocState::load(parts).unwrap()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    // Kept short: the machine is small and shared; each benchmark still gets 20 samples.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_apply, encode_broadcast, compaction, load
}
criterion_main!(benches);
