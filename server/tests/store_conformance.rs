//! One behavioural contract for every [`Store`]: each case below is written once, as an async
//! function over a [`SharedStore`], and runs against both [`SqliteStore`] (in a temporary
//! directory) and [`MemoryStore`]. The rooms, replication and the benchmarks rely on these
//! behaviours whichever store they get, so the two must not drift apart.
//!
//! The `sqlite_integrity` module holds what only a file can suffer: content bytes damaged on disk
//! (caught by the per-row checksums) and a damaged database file (refused at open).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use concord_crdt::yrs::{Doc, ReadTxn, Text, Transact, WriteTxn};
use concord_crdt::{DocName, DocState, NodeId};
use concord_server::store::memory::MemoryStore;
use concord_server::store::sqlite::{DB_FILE, SqliteOptions, SqliteStore};
use concord_server::store::{Append, LogEntry, Origin, PeerInfo, Seq, SharedStore, StoreError};

fn name(s: &str) -> DocName {
    DocName::parse(s).unwrap()
}

fn node(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

/// A Yjs update inserting `s` at the start of text `t` of `doc`.
fn edit(doc: &Doc, s: &str) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let t = txn.get_or_insert_text("t");
    t.insert(&mut txn, 0, s);
    txn.encode_update_v1()
}

fn entry(doc: &str, update: &[u8]) -> Append {
    Append {
        doc: name(doc),
        update: Bytes::copy_from_slice(update),
        origin: None,
    }
}

/// Appends one update and waits for its commit; returns its sequence.
async fn append(store: &SharedStore, doc: &str, update: &[u8]) -> Seq {
    store
        .append(entry(doc, update))
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap()
}

async fn compact(store: &SharedStore, doc: &str, snapshot: Vec<u8>) -> Seq {
    store
        .compact(&name(doc), snapshot, None)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap()
}

async fn set_cursor(store: &SharedStore, peer: &str, seq: Seq) {
    store
        .set_peer_cursor(&node(peer), seq)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
}

fn seqs(log: &[LogEntry]) -> Vec<Seq> {
    log.iter().map(|e| e.seq).collect()
}

/// The text `t` of what `store` has for `doc`.
async fn stored_text(store: &SharedStore, doc: &str) -> String {
    let stored = store.load(&name(doc)).await.unwrap().expect("stored");
    DocState::load(stored.parts())
        .unwrap()
        .text("t")
        .unwrap_or_default()
}

/// The behaviours every store has, each a function of a fresh, empty store.
mod cases {
    use super::*;

    pub async fn appends_get_consecutive_sequence_numbers_from_one_and_their_commits_resolve(
        store: SharedStore,
    ) {
        let client = Doc::new();
        assert_eq!(store.committed(), 0);
        assert_eq!(append(&store, "a", &edit(&client, "x")).await, 1);
        assert_eq!(append(&store, "b", &edit(&client, "y")).await, 2);
        assert_eq!(append(&store, "a", &edit(&client, "z")).await, 3);
        assert_eq!(store.committed(), 3);
    }

    pub async fn append_all_writes_entries_in_order_and_its_commit_carries_the_last_sequence(
        store: SharedStore,
    ) {
        let (a, other) = (Doc::new(), Doc::new());
        assert_eq!(append(&store, "a", &edit(&a, "a")).await, 1);
        let entries = vec![
            entry("a", &edit(&a, "b")),
            entry("new", &edit(&other, "c")),
            entry("a", &edit(&a, "d")),
        ];
        let last = store
            .append_all(entries)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last, 4);
        assert_eq!(store.committed(), 4);
        let log = store.read_log(0, 10).await.unwrap();
        let order: Vec<(Seq, String)> = log.iter().map(|e| (e.seq, e.doc.to_string())).collect();
        let expected = [(1, "a"), (2, "a"), (3, "new"), (4, "a")];
        assert_eq!(order, expected.map(|(s, d)| (s, d.to_string())));
        assert_eq!(stored_text(&store, "a").await, "dba");
        assert!(store.append_all(Vec::new()).await.is_err());
    }

    pub async fn a_document_never_written_loads_as_none(store: SharedStore) {
        assert!(store.load(&name("never")).await.unwrap().is_none());
        append(&store, "other", &edit(&Doc::new(), "x")).await;
        assert!(store.load(&name("never")).await.unwrap().is_none());
    }

    pub async fn a_load_is_the_snapshot_then_the_entries_after_it_in_order(store: SharedStore) {
        let client = Doc::new();
        let mut reference = DocState::new();
        for s in ["1", "2", "3"] {
            let u = edit(&client, s);
            reference
                .apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap())
                .unwrap();
            append(&store, "d", &u).await;
        }
        let snapshot = reference.full_state();
        compact(&store, "d", snapshot.clone()).await;
        let later: Vec<Vec<u8>> = ["4", "5"].map(|s| edit(&client, s)).to_vec();
        for u in &later {
            append(&store, "d", u).await;
        }
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(snapshot.as_slice()));
        assert_eq!(stored.updates, later);
        assert_eq!(stored_text(&store, "d").await, "54321");
    }

    pub async fn compaction_covers_exactly_the_appends_made_before_it(store: SharedStore) {
        let (d, e) = (Doc::new(), Doc::new());
        append(&store, "d", &edit(&d, "1")).await;
        append(&store, "e", &edit(&e, "1")).await;
        append(&store, "d", &edit(&d, "2")).await;
        let snapshot = d.transact().encode_state_as_update_v1(&Default::default());
        let commit = store.compact(&name("d"), snapshot, None).await.unwrap();
        // Queued after the compaction: not covered by it, so a load still returns it.
        let after = edit(&d, "3");
        let later = store.append(entry("d", &after)).await.unwrap();
        assert_eq!(
            commit.await.unwrap().unwrap(),
            3,
            "the last entry of d before it"
        );
        assert_eq!(later.await.unwrap().unwrap(), 4);
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert_eq!(stored.updates, vec![after]);
        assert_eq!(stored_text(&store, "d").await, "321");
    }

    /// A room merging off its task takes a sequence point, keeps accepting updates, and compacts
    /// through the point with the merge: the entries after it stay the log a load reads.
    pub async fn compaction_through_a_sequence_point_keeps_what_came_after_it(store: SharedStore) {
        let (d, e) = (Doc::new(), Doc::new());
        append(&store, "d", &edit(&d, "1")).await;
        append(&store, "e", &edit(&e, "1")).await;
        append(&store, "d", &edit(&d, "2")).await;
        let point = store
            .sequence_point()
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(point, 3, "the last sequence queued before it");
        let snapshot = d.transact().encode_state_as_update_v1(&Default::default());
        let after = edit(&d, "3");
        assert_eq!(append(&store, "d", &after).await, 4);
        let covered = store
            .compact(&name("d"), snapshot, Some(point))
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(covered, 3);
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert_eq!(
            stored.updates,
            vec![after],
            "entry 4 is not in the snapshot: it stays"
        );
        assert_eq!(stored_text(&store, "d").await, "321");
        // A through above the document's last entry covers what is there.
        let snapshot = d.transact().encode_state_as_update_v1(&Default::default());
        assert_eq!(
            store
                .compact(&name("d"), snapshot, Some(100))
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap(),
            4
        );
        assert!(
            store
                .load(&name("d"))
                .await
                .unwrap()
                .unwrap()
                .updates
                .is_empty()
        );
    }

    pub async fn without_peers_compaction_removes_the_covered_entries_from_the_log(
        store: SharedStore,
    ) {
        let (d, e) = (Doc::new(), Doc::new());
        for s in ["1", "2", "3"] {
            append(&store, "d", &edit(&d, s)).await;
        }
        append(&store, "e", &edit(&e, "x")).await;
        compact(&store, "d", vec![0, 0]).await;
        assert_eq!(seqs(&store.read_log(0, 100).await.unwrap()), vec![4]);
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert!(stored.updates.is_empty());
        // Numbering goes on after the entries compaction removed.
        assert_eq!(append(&store, "d", &edit(&d, "4")).await, 5);
    }

    pub async fn compaction_keeps_the_entries_a_known_peer_has_not_acknowledged(
        store: SharedStore,
    ) {
        let client = Doc::new();
        for i in 0..5 {
            append(&store, "d", &edit(&client, &i.to_string())).await;
        }
        set_cursor(&store, "peer", 3).await;
        let state = DocState::load(store.load(&name("d")).await.unwrap().unwrap().parts()).unwrap();
        compact(&store, "d", state.full_state()).await;
        assert_eq!(seqs(&store.read_log(0, 100).await.unwrap()), vec![4, 5]);
        // ...but a load reads the snapshot only.
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert!(stored.snapshot.is_some() && stored.updates.is_empty());
        assert_eq!(stored_text(&store, "d").await, "43210");
    }

    pub async fn read_log_pages_from_after_up_to_limit_with_what_was_appended(store: SharedStore) {
        let (a, b) = (Doc::new(), Doc::new());
        let mut appended = Vec::new();
        for i in 0..10 {
            let (doc, client) = if i % 3 == 0 { ("b", &b) } else { ("a", &a) };
            let update = edit(client, &i.to_string());
            // Own updates and relayed ones alternate; an origin keeps its node and sequence.
            let origin = (i % 2 == 1).then(|| Origin {
                node: node(&format!("origin{i}")),
                seq: 1000 + i,
            });
            store
                .append(Append {
                    doc: name(doc),
                    update: Bytes::from(update.clone()),
                    origin: origin.clone(),
                })
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            appended.push((doc, origin, update));
        }
        assert_eq!(seqs(&store.read_log(0, 4).await.unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(seqs(&store.read_log(4, 4).await.unwrap()), vec![5, 6, 7, 8]);
        assert_eq!(seqs(&store.read_log(8, 4).await.unwrap()), vec![9, 10]);
        assert!(store.read_log(10, 4).await.unwrap().is_empty());
        let log = store.read_log(0, 100).await.unwrap();
        for (e, (doc, origin, update)) in log.iter().zip(&appended) {
            assert_eq!(e.doc, name(doc), "seq {}", e.seq);
            assert_eq!(&e.origin, origin, "seq {}", e.seq);
            assert_eq!(e.update.as_ref(), update.as_slice(), "seq {}", e.seq);
        }
    }

    /// Every entry past `committed` arrives on the feed, in order. One committed just before
    /// subscribing may arrive too (the SQLite writer publishes right after answering the commit):
    /// readers skip what is not past their position.
    pub async fn the_feed_carries_every_entry_committed_after_subscribing(store: SharedStore) {
        let client = Doc::new();
        append(&store, "a", &edit(&client, "x")).await;
        let mut feed = store.subscribe();
        assert_eq!(feed.committed, 1);
        let entries = vec![
            entry("a", &edit(&client, "y")),
            entry("b", &edit(&client, "z")),
        ];
        store
            .append_all(entries)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        while got.last().is_none_or(|(seq, _)| *seq < 3) {
            let e = tokio::time::timeout(Duration::from_secs(10), feed.entries.recv())
                .await
                .expect("the feed delivers committed entries")
                .unwrap();
            if e.seq > feed.committed {
                got.push((e.seq, e.doc.to_string()));
            }
        }
        assert_eq!(got, vec![(2, "a".to_string()), (3, "b".to_string())]);
        assert!(feed.entries.is_empty(), "each entry is published once");
    }

    pub async fn read_snapshots_lists_compacted_documents_in_row_order_and_pages(
        store: SharedStore,
    ) {
        for doc in ["a", "b", "c", "d"] {
            append(&store, doc, &edit(&Doc::new(), doc)).await;
        }
        for doc in ["d", "a", "c"] {
            compact(&store, doc, doc.as_bytes().to_vec()).await;
        }
        let all = store.read_snapshots(0, 10).await.unwrap();
        let names: Vec<String> = all.iter().map(|(_, d, _)| d.to_string()).collect();
        assert_eq!(
            names,
            ["a", "c", "d"],
            "in creation order; b has no snapshot"
        );
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids grow");
        for (_, doc, snapshot) in &all {
            assert_eq!(snapshot, doc.as_str().as_bytes());
        }
        let first = store.read_snapshots(0, 2).await.unwrap();
        assert_eq!(first.len(), 2);
        let rest = store.read_snapshots(first[1].0, 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, name("d"));
    }

    pub async fn peer_cursors_only_move_forward(store: SharedStore) {
        assert!(store.peer_cursors().await.unwrap().is_empty());
        set_cursor(&store, "p", 7).await;
        set_cursor(&store, "p", 3).await;
        set_cursor(&store, "q", 2).await;
        let cursors = store.peer_cursors().await.unwrap();
        assert_eq!(cursors, HashMap::from([(node("p"), 7), (node("q"), 2)]));
    }

    pub async fn known_peers_keep_the_last_record_and_a_dial_url_none_does_not_erase(
        store: SharedStore,
    ) {
        let info = |region: &str, dial: Option<&str>| PeerInfo {
            region: region.into(),
            url: format!("http://{region}"),
            dial_url: dial.map(String::from),
        };
        let remember = |peer: &'static str, i: PeerInfo| {
            let store = store.clone();
            async move {
                store
                    .remember_peer(&node(peer), i)
                    .await
                    .unwrap()
                    .await
                    .unwrap()
                    .unwrap();
            }
        };
        remember("p", info("eu", Some("http://dial"))).await;
        remember("p", info("us", None)).await;
        remember("q", info("ap", None)).await;
        let known = store.known_peers().await.unwrap();
        assert_eq!(known[&node("p")], info("us", Some("http://dial")));
        assert_eq!(known[&node("q")], info("ap", None));
        remember("p", info("us", Some("http://other"))).await;
        let known = store.known_peers().await.unwrap();
        assert_eq!(known[&node("p")].dial_url.as_deref(), Some("http://other"));
    }

    pub async fn an_open_store_numbers_its_log_in_a_current_incarnation_that_starts_after_it(
        store: SharedStore,
    ) {
        let history = store.incarnations();
        let current = history.last().expect("an open store has an incarnation");
        assert_eq!(current.first_seq, store.committed() + 1);
        let client = Doc::new();
        append(&store, "a", &edit(&client, "x")).await;
        // Appends continue the current incarnation; only opening the store starts another.
        assert_eq!(store.incarnations(), history);
    }

    pub async fn received_cursors_are_none_until_recorded_then_replaced_whole(store: SharedStore) {
        use concord_server::store::Incarnation;
        assert_eq!(store.received_cursor(&node("p")).await.unwrap(), None);
        let (i, j) = (Incarnation([1; 16]), Incarnation([2; 16]));
        for (of, seq) in [(i, 5), (i, 9), (j, 3)] {
            store
                .set_received_cursor(&node("p"), of, seq)
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                store.received_cursor(&node("p")).await.unwrap(),
                Some((of, seq))
            );
        }
        assert_eq!(store.received_cursor(&node("q")).await.unwrap(), None);
    }

    pub async fn the_log_says_whether_every_entry_after_a_point_is_still_there(store: SharedStore) {
        let (d, e) = (Doc::new(), Doc::new());
        for s in ["1", "2", "3"] {
            append(&store, "d", &edit(&d, s)).await;
        }
        append(&store, "e", &edit(&e, "x")).await;
        assert!(store.log_complete_after(0).await.unwrap());
        // Without peers, compaction deletes entries 1-3: a peer resuming before them needs the
        // snapshots; one resuming after them does not.
        compact(&store, "d", vec![0, 0]).await;
        assert!(!store.log_complete_after(0).await.unwrap());
        assert!(!store.log_complete_after(2).await.unwrap());
        assert!(store.log_complete_after(3).await.unwrap());
        assert!(store.log_complete_after(4).await.unwrap());
    }

    pub async fn a_reset_peer_cursor_may_move_back(store: SharedStore) {
        set_cursor(&store, "p", 7).await;
        store
            .reset_peer_cursor(&node("p"), 2)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.peer_cursors().await.unwrap()[&node("p")], 2);
        // A plain update still only moves it forward.
        set_cursor(&store, "p", 1).await;
        assert_eq!(store.peer_cursors().await.unwrap()[&node("p")], 2);
    }

    pub async fn close_completes_writes_queued_before_it_and_refuses_later_ones(
        store: SharedStore,
    ) {
        let client = Doc::new();
        let queued = store.append(entry("a", &edit(&client, "x"))).await.unwrap();
        store.close().await;
        assert_eq!(queued.await.unwrap().unwrap(), 1);
        let closed = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Closed));
        assert!(closed(store.append(entry("a", &edit(&client, "y"))).await));
        assert!(closed(store.append_all(vec![entry("a", b"z")]).await));
        assert!(closed(store.compact(&name("a"), vec![0, 0], None).await));
        assert!(closed(store.set_peer_cursor(&node("p"), 1).await));
        // Closing twice is harmless.
        store.close().await;
    }
}

/// A fresh store of each kind, with what keeps it alive.
struct Subject {
    store: SharedStore,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    // Entries are kept for detours a while after they are written (tested in the store's own
    // tests); the cases here check what acknowledgements alone allow, as the memory store does.
    let options = SqliteOptions {
        relay_retain: Duration::ZERO,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    Subject {
        store: std::sync::Arc::new(store),
        _dir: Some(dir),
    }
}

fn memory() -> Subject {
    Subject {
        store: std::sync::Arc::new(MemoryStore::new()),
        _dir: None,
    }
}

/// Runs every case against each store: `sqlite_store::CASE` and `memory_store::CASE`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let subject = super::sqlite();
                    super::cases::$case(subject.store.clone()).await;
                    subject.store.close().await;
                }
            )*
        }
        mod memory_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let subject = super::memory();
                    super::cases::$case(subject.store.clone()).await;
                    subject.store.close().await;
                }
            )*
        }
    };
}

conformance!(
    appends_get_consecutive_sequence_numbers_from_one_and_their_commits_resolve,
    append_all_writes_entries_in_order_and_its_commit_carries_the_last_sequence,
    a_document_never_written_loads_as_none,
    a_load_is_the_snapshot_then_the_entries_after_it_in_order,
    compaction_covers_exactly_the_appends_made_before_it,
    compaction_through_a_sequence_point_keeps_what_came_after_it,
    without_peers_compaction_removes_the_covered_entries_from_the_log,
    compaction_keeps_the_entries_a_known_peer_has_not_acknowledged,
    read_log_pages_from_after_up_to_limit_with_what_was_appended,
    the_feed_carries_every_entry_committed_after_subscribing,
    read_snapshots_lists_compacted_documents_in_row_order_and_pages,
    peer_cursors_only_move_forward,
    known_peers_keep_the_last_record_and_a_dial_url_none_does_not_erase,
    close_completes_writes_queued_before_it_and_refuses_later_ones,
    an_open_store_numbers_its_log_in_a_current_incarnation_that_starts_after_it,
    received_cursors_are_none_until_recorded_then_replaced_whole,
    the_log_says_whether_every_entry_after_a_point_is_still_there,
    a_reset_peer_cursor_may_move_back,
);

/// What only the SQLite store can suffer: damaged bytes on disk.
mod sqlite_integrity {
    use super::*;

    fn db(dir: &Path) -> rusqlite::Connection {
        rusqlite::Connection::open(dir.join(DB_FILE)).unwrap()
    }

    /// Flips the case of the first byte of `needle` inside `blob`: the update still decodes, as
    /// different text, which is exactly what a checksum must catch.
    fn flip_in(blob: &[u8], needle: &str) -> Vec<u8> {
        let at = blob
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("the text is stored verbatim");
        let mut flipped = blob.to_vec();
        flipped[at] ^= 0x20;
        flipped
    }

    /// A store in `dir` holding documents `bad` and `good`, closed (so the test may edit the file).
    async fn two_documents(dir: &Path, compacted: bool) {
        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir, SqliteOptions::default()).unwrap());
        for doc in ["bad", "good"] {
            let client = Doc::new();
            let mut state = DocState::new();
            for s in [" tail", "secret"] {
                let u = edit(&client, s);
                state
                    .apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap())
                    .unwrap();
                append(&store, doc, &u).await;
            }
            if compacted {
                compact(&store, doc, state.full_state()).await;
            }
        }
        store.close().await;
    }

    fn assert_corrupt(result: Result<Option<concord_server::store::StoredDoc>, StoreError>) {
        match result {
            Err(StoreError::Corrupt { doc, reason }) => {
                assert_eq!(doc, "bad");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("a damaged row must fail the load as corrupt, got {other:?}"),
        }
    }

    /// After a downgrade, a binary from before checksums compacts a document: it rewrites the
    /// snapshot and knows nothing of its checksum. Back on this version the document must load,
    /// not be refused as damaged.
    #[tokio::test]
    async fn a_snapshot_rewritten_by_an_older_binary_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        two_documents(dir.path(), true).await;
        let c = db(dir.path());
        let good: Vec<u8> = c
            .query_row("SELECT snapshot FROM docs WHERE name = 'good'", [], |r| {
                r.get(0)
            })
            .unwrap();
        // What an older binary's compaction writes: the snapshot, not the checksum.
        c.execute(
            "UPDATE docs SET snapshot = ?1, snapshot_seq = snapshot_seq WHERE name = 'bad'",
            [&good],
        )
        .unwrap();
        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        assert_eq!(stored_text(&store, "bad").await, "secret tail");
        store.close().await;
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_stored_update_fails_the_load_as_corrupt_and_others_load() {
        let dir = tempfile::tempdir().unwrap();
        two_documents(dir.path(), false).await;
        let c = db(dir.path());
        let (seq, data): (i64, Vec<u8>) = c
            .query_row(
                "SELECT seq, data FROM log WHERE doc_id = (SELECT id FROM docs WHERE name = 'bad')
                 ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let flipped = flip_in(&data, "secret");
        assert!(
            DocState::load([flipped.as_slice()]).is_ok(),
            "still decodable"
        );
        c.execute(
            "UPDATE log SET data = ?2 WHERE seq = ?1",
            rusqlite::params![seq, flipped],
        )
        .unwrap();

        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        assert_corrupt(store.load(&name("bad")).await);
        assert_eq!(stored_text(&store, "good").await, "secret tail");
        store.close().await;
        let after: Vec<u8> = c
            .query_row("SELECT data FROM log WHERE seq = ?1", [seq], |r| r.get(0))
            .unwrap();
        assert_eq!(after, flipped, "the damaged row is left as it is");
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_stored_snapshot_fails_the_load_as_corrupt_and_others_load() {
        let dir = tempfile::tempdir().unwrap();
        two_documents(dir.path(), true).await;
        let c = db(dir.path());
        let snapshot: Vec<u8> = c
            .query_row("SELECT snapshot FROM docs WHERE name = 'bad'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let flipped = flip_in(&snapshot, "secret");
        assert!(
            DocState::load([flipped.as_slice()]).is_ok(),
            "still decodable"
        );
        // Damage on disk bypasses SQL; an UPDATE would fire the trigger meant for older
        // binaries rewriting a snapshot, so it is dropped for this edit (the store re-creates it).
        c.execute_batch("DROP TRIGGER docs_snapshot_crc_stale")
            .unwrap();
        c.execute(
            "UPDATE docs SET snapshot = ?1 WHERE name = 'bad'",
            [&flipped],
        )
        .unwrap();

        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        assert_corrupt(store.load(&name("bad")).await);
        assert_eq!(stored_text(&store, "good").await, "secret tail");
        store.close().await;
    }

    #[tokio::test]
    async fn read_log_skips_an_entry_that_fails_its_checksum_and_goes_on_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        two_documents(dir.path(), false).await;
        let c = db(dir.path());
        // seq 2 is bad's "secret"; 3 and 4 are good's.
        let data: Vec<u8> = c
            .query_row("SELECT data FROM log WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        c.execute(
            "UPDATE log SET data = ?1 WHERE seq = 2",
            [flip_in(&data, "secret")],
        )
        .unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let store: SharedStore = std::sync::Arc::new(store);
        assert_eq!(seqs(&store.read_log(0, 10).await.unwrap()), vec![1, 3, 4]);
        // A damaged entry does not count towards the page: a page is never short because of it,
        // so a reader never takes a short page for the end of the log.
        assert_eq!(seqs(&store.read_log(0, 2).await.unwrap()), vec![1, 3]);
        assert_eq!(seqs(&store.read_log(1, 1).await.unwrap()), vec![3]);
        store.close().await;
    }

    #[tokio::test]
    async fn read_snapshots_skips_a_snapshot_that_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        two_documents(dir.path(), true).await;
        let c = db(dir.path());
        let snapshot: Vec<u8> = c
            .query_row("SELECT snapshot FROM docs WHERE name = 'bad'", [], |r| {
                r.get(0)
            })
            .unwrap();
        // As above: damage on disk bypasses the trigger an UPDATE would fire.
        c.execute_batch("DROP TRIGGER docs_snapshot_crc_stale")
            .unwrap();
        c.execute(
            "UPDATE docs SET snapshot = ?1 WHERE name = 'bad'",
            [flip_in(&snapshot, "secret")],
        )
        .unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let store: SharedStore = std::sync::Arc::new(store);
        let names = |page: Vec<(i64, DocName, Vec<u8>)>| -> Vec<String> {
            page.into_iter().map(|(_, d, _)| d.to_string()).collect()
        };
        assert_eq!(names(store.read_snapshots(0, 10).await.unwrap()), ["good"]);
        assert_eq!(names(store.read_snapshots(0, 1).await.unwrap()), ["good"]);
        store.close().await;
    }

    /// The tables `log` and `docs` as stores wrote them before checksums existed.
    const SCHEMA_WITHOUT_CHECKSUMS: &str = "
        CREATE TABLE docs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, snapshot BLOB,
                           snapshot_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE log (seq INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES docs(id),
                          path TEXT NOT NULL DEFAULT '', data BLOB NOT NULL);
        CREATE INDEX log_doc_seq ON log(doc_id, seq);
    ";

    #[tokio::test]
    async fn rows_stored_before_checksums_existed_still_load_and_new_rows_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let client = Doc::new();
        let mut state = DocState::new();
        let mut updates = Vec::new();
        for s in ["c", "b", "a"] {
            let u = edit(&client, s);
            state
                .apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap())
                .unwrap();
            updates.push(u);
        }
        {
            let c = db(dir.path());
            c.execute_batch(SCHEMA_WITHOUT_CHECKSUMS).unwrap();
            c.execute(
                "INSERT INTO docs (id, name, snapshot, snapshot_seq) VALUES (1, 'old', ?1, 1)",
                [DocState::load([updates[0].as_slice()])
                    .unwrap()
                    .full_state()],
            )
            .unwrap();
            for (seq, u) in updates.iter().enumerate().skip(1) {
                c.execute(
                    "INSERT INTO log (seq, doc_id, data) VALUES (?1, 1, ?2)",
                    rusqlite::params![seq as i64 + 1, u],
                )
                .unwrap();
            }
        }
        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        assert_eq!(stored_text(&store, "old").await, "abc");
        assert_eq!(seqs(&store.read_log(0, 10).await.unwrap()), vec![2, 3]);
        assert_eq!(store.read_snapshots(0, 10).await.unwrap().len(), 1);
        // New rows are checksummed: damage to one is caught although its neighbours have none.
        let seq = append(&store, "old", &edit(&client, "new!")).await;
        store.close().await;
        let c = db(dir.path());
        let data: Vec<u8> = c
            .query_row("SELECT data FROM log WHERE seq = ?1", [seq as i64], |r| {
                r.get(0)
            })
            .unwrap();
        c.execute(
            "UPDATE log SET data = ?2 WHERE seq = ?1",
            rusqlite::params![seq as i64, flip_in(&data, "new!")],
        )
        .unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let store: SharedStore = std::sync::Arc::new(store);
        assert!(matches!(
            store.load(&name("old")).await,
            Err(StoreError::Corrupt { .. })
        ));
        store.close().await;
    }

    /// A closed store in `dir` with enough data to span many pages.
    async fn a_stored_database(dir: &Path) -> std::path::PathBuf {
        let store: SharedStore =
            std::sync::Arc::new(SqliteStore::open(dir, SqliteOptions::default()).unwrap());
        for d in 0..20 {
            let client = Doc::new();
            for i in 0..20 {
                let s = format!("{d}-{i}-{}", "x".repeat(500));
                append(&store, &format!("doc{d}"), &edit(&client, &s)).await;
            }
        }
        store.close().await;
        dir.join(DB_FILE)
    }

    /// Opening must fail with an error naming the file and saying what to do.
    fn assert_refused_at_open(dir: &Path, what: &str) {
        let path = dir.join(DB_FILE);
        let err = match SqliteStore::open(dir, SqliteOptions::default()) {
            Ok(_) => panic!("a database with {what} was opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&path.display().to_string()),
            "{what}: no path in {err:?}"
        );
        assert!(
            err.contains("PRAGMA integrity_check"),
            "{what}: no diagnosis in {err:?}"
        );
        assert!(err.contains("backup"), "{what}: no advice in {err:?}");
    }

    #[tokio::test]
    async fn a_database_with_a_damaged_header_is_refused_at_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = a_stored_database(dir.path()).await;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..16].copy_from_slice(b"not a database!\0");
        std::fs::write(&path, bytes).unwrap();
        assert_refused_at_open(dir.path(), "a damaged header");
    }

    #[tokio::test]
    async fn a_truncated_database_is_refused_at_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = a_stored_database(dir.path()).await;
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert_refused_at_open(dir.path(), "half its pages cut off");
    }

    #[tokio::test]
    async fn a_database_with_a_damaged_table_root_page_is_refused_at_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = a_stored_database(dir.path()).await;
        // `docs` is read only when a document loads, so nothing else at open would notice.
        let (root, page_size): (i64, i64) = {
            let c = db(dir.path());
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'docs'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (
                root,
                c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
            )
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let at = ((root - 1) * page_size) as usize;
        bytes[at..at + 64].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        assert_refused_at_open(dir.path(), "a damaged root page");
    }
}
