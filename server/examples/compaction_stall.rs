//! Measures how long the SQLite store's writer is busy compacting a large document, which is how
//! much longer than `--commit-delay` an update relayed under `--durability async` can wait for its
//! commit (docs/durability.md quotes it).
//!
//! For each round: a document gets a log tail, then its compaction with a snapshot of `MB`
//! megabytes is queued, and an update of another document right behind it. The update's commit
//! time is its loss window under `async`. A baseline round without compaction comes first.
//!
//!     cargo run --release -p concord-server --example compaction_stall -- [MB] [ROUNDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_crdt::DocName;
use concord_server::store::sqlite::{SqliteOptions, SqliteStore};
use concord_server::store::{Append, Durability, SharedStore};

fn entry(doc: &str, bytes: usize) -> Append {
    Append {
        doc: DocName::parse(doc).unwrap(),
        update: Bytes::from(vec![7u8; bytes]),
        origin: None,
    }
}

/// Queues `entry` and returns how long its commit took.
async fn timed_append(store: &SharedStore, e: Append) -> Duration {
    let started = Instant::now();
    store.append(e).await.unwrap().await.unwrap().unwrap();
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mb: usize = args.next().map_or(10, |a| a.parse().unwrap());
    let rounds: usize = args.next().map_or(5, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        durability: Durability::Async,
        commit_delay: Duration::from_millis(2),
        ..SqliteOptions::default()
    };
    let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), options).unwrap());
    let mut baseline = Vec::new();
    for _ in 0..20 {
        baseline.push(timed_append(&store, entry("other", 100)).await);
    }
    baseline.sort();
    println!(
        "append alone: median {:?}, max {:?}",
        baseline[baseline.len() / 2],
        baseline.last().unwrap()
    );
    let snapshot: Vec<u8> = (0..mb << 20).map(|i| (i * 31 % 251) as u8).collect();
    for round in 0..rounds {
        // A log tail of 1,000 entries (4 MB), as compaction thresholds would leave.
        let tail: Vec<Append> = (0..1000).map(|_| entry("big", 4096)).collect();
        store
            .append_all(tail)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let started = Instant::now();
        let compaction = store
            .compact(&DocName::parse("big").unwrap(), snapshot.clone(), None)
            .await
            .unwrap();
        let behind = timed_append(&store, entry("other", 100)).await;
        compaction.await.unwrap().unwrap();
        let compacted = started.elapsed();
        println!(
            "round {round}: compaction of a {mb} MB snapshot committed after {compacted:?}; \
             an update queued right behind it waited {behind:?} for its commit"
        );
    }
    store.close().await;
}
