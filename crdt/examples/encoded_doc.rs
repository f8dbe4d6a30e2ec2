//! What keeping a large document in encoded form ([`DocMode::Encoded`]) costs against a live
//! `yrs::Doc` ([`DocMode::Live`]): the figures that choose the server's default mode.
//!
//! The document is the 500 KB "typed as words at random places" text: 20 authors (client ids
//! 1..=20) each type words from a fixed vocabulary at random places within their own section
//! until it holds size/20 bytes; the sections' states are merged (they follow one another).
//! Then, in release:
//! - resident memory: each mode loads the state in a fresh child process (this binary run again),
//!   which reports its `VmRSS` before and after (and `EncodedDoc::heap_size`);
//! - CPU per small update (judge and accept, the update already decoded, as a room has it);
//! - `full_state`, `diff` for each of the encoded form's fast paths, and the merge and GC jobs.
//!
//! Run: `cargo run --release -p concord-crdt --example encoded_doc [SIZE_BYTES]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{
    Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, merge_updates_v1,
};
use concord_crdt::{DocMode, DocState, IncomingUpdate};

const AUTHORS: u64 = 20;
const ROOT: &str = "t";
const WORDS: &[&str] = &[
    "the ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
    "over ",
    "lazy ",
    "dog ",
    "while ",
    "server ",
    "document ",
    "replica ",
    "region ",
    "update ",
    "vector ",
    "state ",
    "merge ",
    "text ",
    "a ",
    "of ",
];
/// Small updates timed per mode.
const UPDATES: usize = 2_000;
/// Tail length for the diff and full-state figures (a merge job takes it down to 0 at 256).
const TAIL: usize = 200;

/// The sectioned document (see the module docs): its full state.
fn typed_document(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let per = size / AUTHORS as usize;
    let sections: Vec<Vec<u8>> = (1..=AUTHORS)
        .map(|client| {
            let doc = Doc::with_client_id(client);
            let text = doc.get_or_insert_text(ROOT);
            let mut len = 0usize;
            while len < per {
                let word = WORDS[rng.usize(..WORDS.len())];
                let mut txn = doc.transact_mut();
                let at = rng.u32(..=text.len(&txn));
                text.insert(&mut txn, at, word);
                len += word.len();
            }
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        })
        .collect();
    merge_updates_v1(&sections).expect("sections merge")
}

unsafe extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn mode_of(s: &str) -> DocMode {
    match s {
        "live" => DocMode::Live,
        _ => DocMode::Encoded,
    }
}

/// Child process: load `file` in `mode`, report RSS growth.
fn child(mode: DocMode, file: &str) {
    let before = rss_kb();
    let state = std::fs::read(file).unwrap();
    let t = Instant::now();
    let doc = DocState::load_with(mode, [state.as_slice()]).unwrap();
    let load = t.elapsed();
    drop(state);
    // What the allocator kept from transient decoding goes back to the system (the server's
    // `memory.rs` does the same after big frees), so that what remains is what the mode keeps.
    // SAFETY: glibc's malloc_trim has no preconditions.
    unsafe { malloc_trim(0) };
    let after = rss_kb();
    let heap = doc.heap_size().unwrap_or(0);
    println!(
        "{mode:?}: load {:.1} ms, RSS +{:.1} MB after loading (heap_size {:.2} MB)",
        ms(load),
        (after.saturating_sub(before)) as f64 / 1024.0,
        heap as f64 / 1e6
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// `count` small edits by a new client on top of `state`: words typed at random places,
/// every fifth a deletion of a few characters.
fn small_updates(state: &[u8], count: usize, client: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(client);
    let doc = Doc::with_client_id(client);
    doc.transact_mut()
        .apply_update(Update::decode_v1(state).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text(ROOT);
    (0..count)
        .map(|i| {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            if i % 5 == 4 {
                let at = rng.u32(..len - 4);
                text.remove_range(&mut txn, at, 3);
            } else {
                text.insert(&mut txn, rng.u32(..=len), WORDS[rng.usize(..WORDS.len())]);
            }
            txn.encode_update_v1()
        })
        .collect()
}

fn decoded(updates: &[Vec<u8>]) -> Vec<(Update, Bytes)> {
    updates
        .iter()
        .map(|u| {
            let d = IncomingUpdate::decode(u).unwrap();
            (d.decoded, Bytes::from(d.bytes))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "child" {
        return child(mode_of(&args[2]), &args[3]);
    }
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(500_000);

    let t = Instant::now();
    let state = typed_document(size, 17);
    let items = Update::decode_v1(&state).unwrap().insertions(true);
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let chars = doc
        .get_or_insert_text(ROOT)
        .get_string(&doc.transact())
        .len();
    drop(doc);
    println!(
        "document: {chars} chars, {} clients, full state {:.2} MB, generated in {:.1} s",
        items.len(),
        state.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Memory, each mode in a fresh process.
    let file = std::env::temp_dir().join(format!("encoded_doc_{}.bin", std::process::id()));
    std::fs::write(&file, &state).unwrap();
    for mode in ["live", "encoded"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child", mode, file.to_str().unwrap()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    std::fs::remove_file(&file).ok();

    let updates = small_updates(&state, UPDATES + TAIL, 5);
    let mean = updates.iter().map(Vec::len).sum::<usize>() / updates.len();
    println!("small updates: {} of mean {mean} B", updates.len());
    let t = Instant::now();
    for u in &updates {
        black_box(IncomingUpdate::decode(u).unwrap());
    }
    println!(
        "decode (both modes): {:.2} us/update",
        t.elapsed().as_secs_f64() * 1e6 / updates.len() as f64
    );

    for mode in [DocMode::Live, DocMode::Encoded] {
        println!("--- {mode:?}");
        let mut d = DocState::load_with(mode, [state.as_slice()]).unwrap();
        let batch = decoded(&updates[..UPDATES]);
        let t = Instant::now();
        let mut merges = Duration::ZERO;
        for (u, b) in batch {
            d.batch().apply(u, b).unwrap();
            if let Some(e) = d.encoded()
                && let Some(job) = e.merge_job()
            {
                let m = Instant::now();
                let merged = job.run();
                merges += m.elapsed();
                assert!(e.finish(merged));
            }
        }
        let total = t.elapsed();
        println!(
            "apply (judge + accept): {:.2} us/update, of which merge jobs {:.2} us/update \
             (run off-thread by the server)",
            total.as_secs_f64() * 1e6 / UPDATES as f64,
            merges.as_secs_f64() * 1e6 / UPDATES as f64,
        );
        // Each again: nothing new.
        let again = decoded(&updates[..UPDATES]);
        let t = Instant::now();
        for (u, b) in again {
            d.batch().apply(u, b).unwrap();
        }
        println!(
            "apply of a known update: {:.2} us/update",
            t.elapsed().as_secs_f64() * 1e6 / UPDATES as f64
        );
        // Fold everything, then a tail of TAIL more; the state vector before them is the base's.
        d.full_state_bytes();
        let sv_base = d.state_vector();
        for (u, b) in decoded(&updates[UPDATES..]) {
            d.batch().apply(u, b).unwrap();
        }
        let sv_own = d.state_vector();
        // A peer behind by one author's whole section.
        let mut sv_behind = StateVector::default();
        for (c, k) in sv_own.iter() {
            if c.get() != 7 {
                sv_behind.set_max(*c, *k);
            }
        }
        // full_state: the first call after new updates merges (encoded); repeats are cached.
        let first = {
            let t = Instant::now();
            black_box(d.full_state_bytes());
            t.elapsed()
        };
        let cached = median(21, || {
            black_box(d.full_state_bytes());
        });
        println!(
            "full_state: first {:.2} ms (tail of {TAIL} merged), repeated {:.3} ms",
            ms(first),
            ms(cached)
        );
        // Diffs: keep a tail for path 3 by timing on a fresh copy that has one.
        let mut d = DocState::load_with(mode, [state.as_slice()]).unwrap();
        for (u, b) in decoded(&updates[..UPDATES]) {
            d.batch().apply(u, b).unwrap();
        }
        d.full_state_bytes();
        for (u, b) in decoded(&updates[UPDATES..]) {
            d.batch().apply(u, b).unwrap();
        }
        for (name, sv) in [
            ("2: peer current", &sv_own),
            ("3: peer at the base", &sv_base),
            ("4: peer lacks a section", &sv_behind),
        ] {
            // Path 4 merges (and folds) the tail on its first call: time that one alone, then
            // the repeats.
            let t = Instant::now();
            let out = d.diff(sv);
            let first = t.elapsed();
            let rep = median(11, || {
                black_box(d.diff(sv));
            });
            println!(
                "diff {name}: {:.3} ms first, {:.3} ms repeated ({} B)",
                ms(first),
                ms(rep),
                out.len()
            );
        }
    }
    // The encoded form's jobs and tail-dependent paths against the tail's length: what the merge
    // threshold trades.
    println!("--- Encoded, by tail length");
    for n in [256usize, 512, 1024, 4096] {
        let mut d = DocState::load_with(DocMode::Encoded, [state.as_slice()]).unwrap();
        let sv_base = d.state_vector();
        let tail = decoded(&small_updates(&state, n, 100));
        let e = d.encoded().unwrap();
        for (u, b) in tail {
            e.apply(&u, b).unwrap();
        }
        let heap = e.heap_size();
        let path3 = median(5, || {
            black_box(e.diff(&sv_base));
        });
        let job = e.merge_job_now();
        let t = Instant::now();
        let merged = job.run();
        let merge = t.elapsed();
        assert!(e.finish(merged));
        let job = e.gc_job();
        let t = Instant::now();
        let gced = job.run();
        let gc = t.elapsed();
        assert!(e.finish(gced));
        println!(
            "tail {n}: heap_size {:.2} MB; diff path 3 {:.2} ms; merge job {:.1} ms \
             ({:.1} us per update); gc job {:.1} ms",
            heap as f64 / 1e6,
            ms(path3),
            ms(merge),
            merge.as_secs_f64() * 1e6 / n as f64,
            ms(gc),
        );
    }
}
