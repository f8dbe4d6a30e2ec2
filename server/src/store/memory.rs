//! An in-memory [`Store`]: the same log, snapshots, feed and peer cursors as
//! [`SqliteStore`](super::sqlite::SqliteStore), kept in process memory and lost on exit.
//!
//! It exists to measure and test what sits above the store without the disk: the replay
//! benchmark (`server/benches/replay.rs`) runs the document actor over it to separate the cost
//! of the room from the cost of SQLite, and tests can use it where a database file would only
//! slow them down. It is not a durability mode of the server.
//!
//! Every write is applied at once, under one lock, in call order, so the order guarantees of the
//! trait hold: sequence numbers grow by one per append, a snapshot covers exactly the appends
//! made before it, and each [`Commit`] is already resolved when it is returned ("durable" means
//! "in this store's memory").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use concord_crdt::{DocName, NodeId};
use tokio::sync::{broadcast, oneshot};

use super::{
    Append, Commit, Incarnation, LogEntry, LogFeed, LogIncarnation, PeerInfo, Seq, Store,
    StoreError, StoredDoc,
};

/// Entries kept for live log readers (as the SQLite store does); one that falls further behind
/// gets `Lagged` and reads [`Store::read_log`] instead.
const FEED_CAPACITY: usize = 16 * 1024;

/// One document, as the `docs` table of the SQLite store holds it.
struct DocRow {
    name: DocName,
    snapshot: Option<Vec<u8>>,
    /// Last sequence the snapshot covers: a load reads log entries after it only.
    snapshot_seq: Seq,
    /// The document's log entries after `snapshot_seq`, which a load returns.
    tail: BTreeMap<Seq, Bytes>,
    /// Highest sequence ever appended for this document (what a compaction covers).
    last_seq: Seq,
}

#[derive(Default)]
struct Inner {
    /// Last sequence handed out; the next append gets one more.
    last_seq: Seq,
    /// Row id by name; ids grow in creation order, like SQLite's `docs.id`.
    ids: HashMap<DocName, i64>,
    docs: BTreeMap<i64, DocRow>,
    /// The node's whole log, for replication: entries leave it when their document is compacted,
    /// unless a known peer has not acknowledged them yet.
    log: BTreeMap<Seq, Arc<LogEntry>>,
    peer_cursors: HashMap<NodeId, Seq>,
    peers: HashMap<NodeId, PeerInfo>,
    received: HashMap<NodeId, (Incarnation, Seq)>,
}

impl Inner {
    fn doc_mut(&mut self, name: &DocName) -> &mut DocRow {
        let next_id = self.docs.keys().next_back().map_or(1, |id| id + 1);
        let id = *self.ids.entry(name.clone()).or_insert(next_id);
        self.docs.entry(id).or_insert_with(|| DocRow {
            name: name.clone(),
            snapshot: None,
            snapshot_seq: 0,
            tail: BTreeMap::new(),
            last_seq: 0,
        })
    }

    /// The smallest sequence every known peer acknowledged; `None` without peers.
    fn min_acked(&self) -> Option<Seq> {
        self.peer_cursors.values().copied().min()
    }

    /// Deletes log entries kept only for replication (covered by their document's snapshot)
    /// once every known peer has acknowledged them.
    fn collect_replicated(&mut self) {
        let Some(min_acked) = self.min_acked() else {
            return;
        };
        let covered: Vec<Seq> = self
            .log
            .range(..=min_acked)
            .filter(|(seq, e)| {
                self.ids
                    .get(&e.doc)
                    .and_then(|id| self.docs.get(id))
                    .is_some_and(|d| **seq <= d.snapshot_seq)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in covered {
            self.log.remove(&seq);
        }
    }
}

/// The in-memory store. Cheap to create; share it as a [`SharedStore`](super::SharedStore).
pub struct MemoryStore {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<LogEntry>>,
    /// Last committed sequence, readable without the lock.
    committed: AtomicU64,
    closed: AtomicBool,
    /// The one incarnation of this log: it lives as long as the process.
    incarnation: LogIncarnation,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            feed: broadcast::channel(FEED_CAPACITY).0,
            committed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            incarnation: LogIncarnation::new(1),
        }
    }

    /// Runs one write under the lock and returns its already resolved commit.
    fn write(&self, f: impl FnOnce(&mut Inner) -> Seq) -> Result<Commit, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let seq = f(&mut self.inner.lock().unwrap());
        let (done, commit) = oneshot::channel();
        let _ = done.send(Ok(seq));
        Ok(commit)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .ids
            .get(doc)
            .and_then(|id| inner.docs.get(id))
            .map(|d| StoredDoc {
                snapshot: d.snapshot.clone(),
                updates: d.tail.values().map(|u| u.to_vec()).collect(),
            }))
    }

    async fn append(&self, entry: Append) -> Result<Commit, StoreError> {
        self.write(|inner| {
            inner.last_seq += 1;
            let seq = inner.last_seq;
            let row = inner.doc_mut(&entry.doc);
            row.tail.insert(seq, entry.update.clone());
            row.last_seq = seq;
            let entry = Arc::new(LogEntry {
                seq,
                doc: entry.doc,
                origin: entry.origin,
                update: entry.update,
            });
            inner.log.insert(seq, entry.clone());
            // Published under the lock, after `committed`: a subscriber (which subscribes under
            // the same lock) sees each entry exactly once, either counted in `committed` or on
            // the feed. Nobody listening is fine.
            self.committed.store(seq, Ordering::Release);
            let _ = self.feed.send(entry);
            seq
        })
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: Vec<u8>,
        through: Option<Seq>,
    ) -> Result<Commit, StoreError> {
        self.write(|inner| {
            let retain_above = inner.min_acked();
            let row = inner.doc_mut(doc);
            let covered = through.map_or(row.last_seq, |t| t.min(row.last_seq));
            row.snapshot = Some(snapshot);
            row.snapshot_seq = row.snapshot_seq.max(covered);
            row.tail = row.tail.split_off(&(covered + 1));
            // Entries some peer has not acknowledged stay in the log for replication.
            let delete_upto = retain_above.map_or(covered, |r| r.min(covered));
            let gone: Vec<Seq> = inner
                .log
                .range(..=delete_upto)
                .filter(|(_, e)| e.doc == *doc)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in gone {
                inner.log.remove(&seq);
            }
            covered
        })
    }

    async fn sequence_point(&self) -> Result<Commit, StoreError> {
        self.write(|inner| inner.last_seq)
    }

    async fn read_doc_log(
        &self,
        doc: &DocName,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .ids
            .get(doc)
            .and_then(|id| inner.docs.get(id))
            .map(|d| {
                d.tail
                    .range(after + 1..)
                    .take(limit)
                    .map(|(seq, u)| (*seq, u.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn subscribe(&self) -> LogFeed {
        let _inner = self.inner.lock().unwrap();
        LogFeed {
            entries: self.feed.subscribe(),
            committed: self.committed.load(Ordering::Acquire),
        }
    }

    fn committed(&self) -> Seq {
        self.committed.load(Ordering::Acquire)
    }

    async fn read_log(&self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .log
            .range(after + 1..)
            .take(limit)
            .map(|(_, e)| LogEntry::clone(e))
            .collect())
    }

    async fn read_snapshots(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .docs
            .range(after_id + 1..)
            .filter_map(|(id, d)| Some((*id, d.name.clone(), d.snapshot.clone()?)))
            .take(limit)
            .collect())
    }

    async fn peer_cursors(&self) -> Result<HashMap<NodeId, Seq>, StoreError> {
        Ok(self.inner.lock().unwrap().peer_cursors.clone())
    }

    async fn set_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        self.write(|inner| {
            let acked = inner.peer_cursors.entry(peer.clone()).or_insert(seq);
            *acked = (*acked).max(seq);
            inner.collect_replicated();
            seq
        })
    }

    async fn reset_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        self.write(|inner| {
            inner.peer_cursors.insert(peer.clone(), seq);
            seq
        })
    }

    fn incarnations(&self) -> Vec<LogIncarnation> {
        vec![self.incarnation]
    }

    /// Writable until closed: memory never fills up here.
    fn health(&self) -> super::StoreHealth {
        if self.closed.load(Ordering::Acquire) {
            super::StoreHealth::Closed
        } else {
            super::StoreHealth::Writable
        }
    }

    async fn log_complete_after(&self, after: Seq) -> Result<bool, StoreError> {
        let inner = self.inner.lock().unwrap();
        let committed = self.committed.load(Ordering::Acquire);
        if after >= committed {
            return Ok(true);
        }
        let held = inner.log.range(after + 1..=committed).count() as Seq;
        Ok(held == committed - after)
    }

    async fn received_cursor(
        &self,
        peer: &NodeId,
    ) -> Result<Option<(Incarnation, Seq)>, StoreError> {
        Ok(self.inner.lock().unwrap().received.get(peer).copied())
    }

    async fn set_received_cursor(
        &self,
        peer: &NodeId,
        of: Incarnation,
        seq: Seq,
    ) -> Result<Commit, StoreError> {
        self.write(|inner| {
            inner.received.insert(peer.clone(), (of, seq));
            seq
        })
    }

    async fn remember_peer(&self, peer: &NodeId, info: PeerInfo) -> Result<Commit, StoreError> {
        self.write(|inner| {
            let known = inner.peers.entry(peer.clone()).or_default();
            let dial_url = info.dial_url.or(known.dial_url.take());
            *known = PeerInfo { dial_url, ..info };
            0
        })
    }

    async fn known_peers(&self) -> Result<HashMap<NodeId, PeerInfo>, StoreError> {
        Ok(self.inner.lock().unwrap().peers.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_crdt::DocState;
    use concord_crdt::yrs::{Doc, Text, Transact, WriteTxn};

    fn name(s: &str) -> DocName {
        DocName::parse(s).unwrap()
    }

    fn edit(doc: &Doc, s: &str) -> Vec<u8> {
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        t.insert(&mut txn, 0, s);
        txn.encode_update_v1()
    }

    async fn append(store: &MemoryStore, doc: &str, update: Vec<u8>) -> Seq {
        let commit = store
            .append(Append {
                doc: name(doc),
                update: update.into(),
                origin: None,
            })
            .await
            .unwrap();
        commit.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn appends_get_consecutive_sequences_and_load_in_order() {
        let store = MemoryStore::new();
        let client = Doc::new();
        assert!(store.load(&name("a")).await.unwrap().is_none());
        assert_eq!(append(&store, "a", edit(&client, "x")).await, 1);
        assert_eq!(append(&store, "b", edit(&client, "y")).await, 2);
        assert_eq!(append(&store, "a", edit(&client, "z")).await, 3);
        assert_eq!(store.committed(), 3);
        let a = store.load(&name("a")).await.unwrap().unwrap();
        assert!(a.snapshot.is_none());
        assert_eq!(a.updates.len(), 2);
        let log = store.read_log(1, 10).await.unwrap();
        assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(log[0].doc, name("b"));
    }

    #[tokio::test]
    async fn compaction_replaces_the_tail_and_keeps_what_peers_lack() {
        let store = MemoryStore::new();
        let client = Doc::new();
        let mut reference = DocState::new();
        for i in 0..5 {
            let u = edit(&client, &i.to_string());
            reference
                .apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap())
                .unwrap();
            append(&store, "d", u).await;
        }
        store
            .set_peer_cursor(&NodeId::parse("peer").unwrap(), 3)
            .await
            .unwrap();
        let covered = store
            .compact(&name("d"), reference.full_state(), None)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(covered, 5);
        let after = edit(&client, "!");
        append(&store, "d", after.clone()).await;
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert_eq!(stored.updates, vec![after]);
        let loaded = DocState::load(stored.parts()).unwrap();
        assert_eq!(loaded.text("t").as_deref(), Some("!43210"));
        // Entries above the peer's cursor stay in the log for replication...
        let seqs = |log: Vec<LogEntry>| log.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.read_log(0, 100).await.unwrap()), vec![4, 5, 6]);
        // ...until the peer acknowledges them.
        store
            .set_peer_cursor(&NodeId::parse("peer").unwrap(), 5)
            .await
            .unwrap();
        assert_eq!(seqs(store.read_log(0, 100).await.unwrap()), vec![6]);
        let snapshots = store.read_snapshots(0, 10).await.unwrap();
        assert_eq!(snapshots.len(), 1);
        assert_eq!(snapshots[0].1, name("d"));
    }

    #[tokio::test]
    async fn the_feed_carries_what_is_committed_after_subscribing() {
        let store = MemoryStore::new();
        let client = Doc::new();
        append(&store, "a", edit(&client, "x")).await;
        let mut feed = store.subscribe();
        assert_eq!(feed.committed, 1);
        append(&store, "a", edit(&client, "y")).await;
        assert_eq!(feed.entries.recv().await.unwrap().seq, 2);
        store.close().await;
        assert!(matches!(
            store
                .append(Append {
                    doc: name("a"),
                    update: Bytes::new(),
                    origin: None
                })
                .await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn cursors_only_move_forward() {
        let store = MemoryStore::new();
        let peer = NodeId::parse("p").unwrap();
        store.set_peer_cursor(&peer, 7).await.unwrap();
        store.set_peer_cursor(&peer, 3).await.unwrap();
        assert_eq!(store.peer_cursors().await.unwrap()[&peer], 7);
        // ...unless reset, which is where a resuming peer's stream starts.
        store.reset_peer_cursor(&peer, 2).await.unwrap();
        assert_eq!(store.peer_cursors().await.unwrap()[&peer], 2);
    }

    #[tokio::test]
    async fn the_log_is_complete_until_compaction_deletes_entries() {
        let store = MemoryStore::new();
        let client = Doc::new();
        let mut reference = DocState::new();
        for i in 0..4 {
            let u = edit(&client, &i.to_string());
            reference
                .apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap())
                .unwrap();
            append(&store, "d", u).await;
        }
        assert!(store.log_complete_after(0).await.unwrap());
        let peer = NodeId::parse("p").unwrap();
        store.set_peer_cursor(&peer, 2).await.unwrap();
        store
            .compact(&name("d"), reference.full_state(), None)
            .await
            .unwrap();
        // 1 and 2 are gone (the peer has them); 3 and 4 wait for it.
        assert!(!store.log_complete_after(0).await.unwrap());
        assert!(!store.log_complete_after(1).await.unwrap());
        assert!(store.log_complete_after(2).await.unwrap());
        assert!(store.log_complete_after(9).await.unwrap());
        let of = store.incarnations()[0].id;
        assert_eq!(store.received_cursor(&peer).await.unwrap(), None);
        store.set_received_cursor(&peer, of, 5).await.unwrap();
        store.set_received_cursor(&peer, of, 4).await.unwrap();
        assert_eq!(store.received_cursor(&peer).await.unwrap(), Some((of, 4)));
    }
}
