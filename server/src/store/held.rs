//! A [`Store`] whose commits wait until a test releases them: the tool for testing "nothing
//! anyone sees reflects an update before its commit" directly, instead of hoping a `kill -9`
//! lands in the right millisecond.
//!
//! [`HeldStore`] wraps another store (usually [`MemoryStore`](super::memory::MemoryStore)) and
//! passes every call through, except that the [`Commit`]s of `append`, `append_all` and
//! `compact` are held back in order. The test then decides: [`HeldStore::release`] resolves the
//! oldest ones with the wrapped store's result, [`HeldStore::fail`] resolves them with an error,
//! as a full disk would. Everything else (loads, the log, its feed, `committed`, cursors) is the
//! wrapped store's, where the write has already landed: so it tests what the room makes visible,
//! not what replication reads from the store (a test of "peers get committed entries only" needs
//! a store that holds the feed back too).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use concord_crdt::replication::Incarnation;
use concord_crdt::{DocName, NodeId};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::{
    Append, Commit, LogEntry, LogFeed, LogIncarnation, PeerInfo, Seq, SharedStore, Store,
    StoreError, StoredDoc,
};

/// A write the wrapped store accepted, whose commit the caller has not been told of yet.
struct Held {
    inner: Commit,
    outer: oneshot::Sender<Result<Seq, StoreError>>,
}

pub struct HeldStore {
    inner: SharedStore,
    held: Mutex<VecDeque<Held>>,
    /// Woken whenever a write is held, for [`HeldStore::wait_held`].
    arrived: Notify,
    /// Whether commits are held ([`HeldStore::passing`] lets them through).
    hold_commits: bool,
    /// Loads of these documents wait for a permit ([`HeldStore::gate_load`]).
    gates: Mutex<HashMap<DocName, Arc<Semaphore>>>,
}

impl HeldStore {
    pub fn new(inner: SharedStore) -> Self {
        HeldStore {
            inner,
            held: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            hold_commits: true,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// A store whose commits pass through (only loads can be held, by [`HeldStore::gate_load`]).
    pub fn passing(inner: SharedStore) -> Self {
        HeldStore {
            hold_commits: false,
            ..HeldStore::new(inner)
        }
    }

    /// From now on, loading `doc` waits until a permit is added to the returned semaphore (a
    /// document that takes long to load, made deterministic).
    pub fn gate_load(&self, doc: &DocName) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.gates.lock().unwrap().insert(doc.clone(), gate.clone());
        gate
    }

    /// How many commits are held.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Waits until at least `n` commits are held.
    pub async fn wait_held(&self, n: usize) {
        loop {
            let notified = self.arrived.notified();
            if self.held() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Resolves the oldest `n` held commits (all of them if fewer), in order, with what the
    /// wrapped store answered. Returns how many it released.
    pub async fn release(&self, n: usize) -> usize {
        let batch = self.take(n);
        let count = batch.len();
        for h in batch {
            let result = h.inner.await.unwrap_or(Err(StoreError::Closed));
            let _ = h.outer.send(result);
        }
        count
    }

    /// Resolves the oldest `n` held commits with the error a full disk gives
    /// ([`StoreError::Full`]), whose message is `reason`.
    pub fn fail(&self, n: usize, reason: &str) -> usize {
        let batch = self.take(n);
        let count = batch.len();
        for h in batch {
            let full = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some(reason.to_string()),
            );
            let _ = h.outer.send(Err(full.into()));
        }
        count
    }

    fn take(&self, n: usize) -> Vec<Held> {
        let mut held = self.held.lock().unwrap();
        let n = n.min(held.len());
        held.drain(..n).collect()
    }

    fn hold(&self, inner: Commit) -> Commit {
        if !self.hold_commits {
            return inner;
        }
        let (outer, commit) = oneshot::channel();
        self.held.lock().unwrap().push_back(Held { inner, outer });
        self.arrived.notify_waiters();
        commit
    }
}

#[async_trait]
impl Store for HeldStore {
    async fn load(&self, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
        let gate = self.gates.lock().unwrap().get(doc).cloned();
        if let Some(gate) = gate {
            let _ = gate.acquire().await.map_err(|_| StoreError::Closed)?;
        }
        self.inner.load(doc).await
    }

    async fn append(&self, entry: Append) -> Result<Commit, StoreError> {
        let inner = self.inner.append(entry).await?;
        Ok(self.hold(inner))
    }

    async fn append_all(&self, entries: Vec<Append>) -> Result<Commit, StoreError> {
        let inner = self.inner.append_all(entries).await?;
        Ok(self.hold(inner))
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: Vec<u8>,
        through: Option<Seq>,
    ) -> Result<Commit, StoreError> {
        let inner = self.inner.compact(doc, snapshot, through).await?;
        Ok(self.hold(inner))
    }

    async fn sequence_point(&self) -> Result<Commit, StoreError> {
        self.inner.sequence_point().await
    }

    async fn read_doc_log(
        &self,
        doc: &DocName,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        self.inner.read_doc_log(doc, after, limit).await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn subscribe(&self) -> LogFeed {
        self.inner.subscribe()
    }

    fn committed(&self) -> Seq {
        self.inner.committed()
    }

    async fn read_log(&self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.read_log(after, limit).await
    }

    async fn read_snapshots(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError> {
        self.inner.read_snapshots(after_id, limit).await
    }

    async fn peer_cursors(&self) -> Result<HashMap<NodeId, Seq>, StoreError> {
        self.inner.peer_cursors().await
    }

    async fn set_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        self.inner.set_peer_cursor(peer, seq).await
    }

    async fn reset_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        self.inner.reset_peer_cursor(peer, seq).await
    }

    fn incarnations(&self) -> Vec<LogIncarnation> {
        self.inner.incarnations()
    }

    /// The wrapped store's (the commits it fails on purpose are not store failures).
    fn health(&self) -> super::StoreHealth {
        self.inner.health()
    }

    async fn log_complete_after(&self, after: Seq) -> Result<bool, StoreError> {
        self.inner.log_complete_after(after).await
    }

    async fn received_cursor(
        &self,
        peer: &NodeId,
    ) -> Result<Option<(Incarnation, Seq)>, StoreError> {
        self.inner.received_cursor(peer).await
    }

    async fn set_received_cursor(
        &self,
        peer: &NodeId,
        of: Incarnation,
        seq: Seq,
    ) -> Result<Commit, StoreError> {
        self.inner.set_received_cursor(peer, of, seq).await
    }

    async fn remember_peer(&self, peer: &NodeId, info: PeerInfo) -> Result<Commit, StoreError> {
        self.inner.remember_peer(peer, info).await
    }

    async fn known_peers(&self) -> Result<HashMap<NodeId, PeerInfo>, StoreError> {
        self.inner.known_peers().await
    }
}
