//! Durable storage behind a small trait, with SQLite ([`sqlite::SqliteStore`]) as the embedded
//! default, and [`memory::MemoryStore`] (no disk) for benchmarks and tests.
//!
//! The model is one append-only **update log** per node: every update the node accepts (from a
//! client now, from a peer region later) gets the next node-local sequence number. Per document, a
//! **snapshot** (one merged Yjs update) replaces the log entries it covers when the log grows past
//! a threshold. Loading a document is its snapshot plus the log entries after it.
//!
//! The log doubles as the replication log. Each time a store is opened it starts a new
//! **incarnation** of the log (a random id, with the first sequence it numbers), so a position in
//! the log means something only with the incarnation it was read in: a wiped store, or one
//! restored from a backup, never continues an incarnation it does not have. Each node records
//! what it durably received of each peer's log (`received_cursors`: incarnation and sequence), and
//! peers resume from that (see `replication::resume`). Per peer, the node also keeps the last
//! sequence the peer acknowledged (`peer_cursors`); compaction never deletes an entry a known peer
//! has not acknowledged yet.
//!
//! Writes are asynchronous from the caller's point of view: [`Store::append`] queues the update and
//! returns a [`Commit`] that resolves once the update is durable. The room relays the update only
//! then, which is how "an update anyone received is already on disk" holds.

mod checksum;
pub mod health;
pub mod held;
pub mod memory;
pub mod sqlite;

use std::sync::Arc;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use concord_crdt::{DocName, NodeId};
use tokio::sync::{broadcast, oneshot};

pub use concord_crdt::replication::Incarnation;
pub use health::StoreHealth;

/// A node-local log sequence number. 0 means "nothing".
pub type Seq = u64;

/// One incarnation in a store's history: it numbers the log from `first_seq` until the next
/// incarnation's `first_seq` (the current, last one is open-ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogIncarnation {
    pub id: Incarnation,
    pub first_seq: Seq,
}

impl LogIncarnation {
    /// A fresh incarnation starting at `first_seq`.
    pub fn new(first_seq: Seq) -> Self {
        LogIncarnation {
            id: Incarnation(rand::random()),
            first_seq,
        }
    }
}

/// Errors at the storage boundary. The texts are what logs and close reasons show (a room closes
/// its connections with "storage failure: " and the error), so each keeps the wording it had.
///
/// SQLite's errors are classified by their code ([`StoreError::Full`],
/// [`StoreError::ReadOnly`], [`StoreError::Sqlite`] for the rest); they are shared (`Arc`)
/// because one failed transaction fails every write in it. No variant names another error as
/// its `source`: the text already includes it, and a report that prints the chain (`anyhow`)
/// would say it twice.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No space to write: the disk is full, or the database reached its size limit
    /// (`--max-db-size`). Writes fail until space is freed; what was committed stays readable.
    #[error("storage error: {0}")]
    Full(Arc<rusqlite::Error>),
    /// The database cannot be written: its file or directory is read-only.
    #[error("storage error: {0}")]
    ReadOnly(Arc<rusqlite::Error>),
    /// Any other error SQLite reported: an I/O error, a lock held past the busy timeout...
    #[error("storage error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// The database could not be opened and set up (its pragmas, its schema).
    #[error("storage error: opening {path}: {error}")]
    Open {
        path: String,
        error: Arc<rusqlite::Error>,
    },
    /// The check of the database file at open could not run (damage it finds is
    /// [`StoreError::DamagedFile`]).
    #[error("storage error: checking {path}: {error}")]
    Check {
        path: String,
        error: Arc<rusqlite::Error>,
    },
    /// A step around the database failed: creating the data dir, starting the store's threads.
    #[error("storage error: {doing}: {error}")]
    Io {
        doing: String,
        error: Arc<std::io::Error>,
    },
    /// There is no database where one must already be (`concord forget-peer` on another dir).
    #[error("storage error: no store at {path}")]
    NoStore { path: String },
    /// A read on the blocking pool did not finish (it panicked, or the runtime is stopping).
    #[error("storage error: read task failed: {0}")]
    ReadTask(Arc<tokio::task::JoinError>),
    /// `append_all` was given no entries: a caller's mistake.
    #[error("storage error: append_all of no entries")]
    NothingToAppend,
    /// A stored row could not be read back as what it should be.
    #[error("stored data of {doc:?} is corrupt: {reason}")]
    Corrupt { doc: String, reason: String },
    /// The store was closed (the server is stopping).
    #[error("the store is closed")]
    Closed,
    /// The database file itself is damaged (found when opening it): the server must not start
    /// on it. The message is what the operator reads, so it says what to do.
    #[error(
        "the database file {path} is damaged: {reason}\n\
         Concord does not start on a damaged database. To see the damage, stop every process \
         using it and run: sqlite3 {path} \"PRAGMA integrity_check\"\n\
         Then either restore {path} from a backup, or move it away (with {path}-wal and \
         {path}-shm if present) to start with an empty store: peers, if this node has any, \
         send it their documents again; on a single node what it held is lost, though \
         `sqlite3 {path} .recover` may salvage part of it."
    )]
    DamagedFile { path: String, reason: String },
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's error by its code: a full disk or size limit, a read-only file, the rest.
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(Arc::new(e)),
            Some(rusqlite::ErrorCode::ReadOnly) => StoreError::ReadOnly(Arc::new(e)),
            _ => StoreError::Sqlite(Arc::new(e)),
        }
    }
}

/// What is stored for one document: its snapshot and the log entries after it, in order.
#[derive(Debug, Default, Clone)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
}

impl StoredDoc {
    /// Every stored part, snapshot first: apply them in this order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.snapshot
            .iter()
            .chain(self.updates.iter())
            .map(|v| v.as_slice())
    }

    /// Size of the log tail (entries after the snapshot): what compaction thresholds look at.
    pub fn tail(&self) -> LogTail {
        LogTail {
            entries: self.updates.len() as u64,
            bytes: self.updates.iter().map(|u| u.len() as u64).sum(),
            snapshot_bytes: self.snapshot.as_ref().map_or(0, |s| s.len() as u64),
        }
    }
}

/// How much log a document has accumulated since its snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogTail {
    pub entries: u64,
    pub bytes: u64,
    /// Size of the snapshot the tail follows (0 without one).
    pub snapshot_bytes: u64,
}

/// An update to append to the log.
#[derive(Debug, Clone)]
pub struct Append {
    pub doc: DocName,
    /// A Yjs v1 update, exactly as accepted.
    pub update: Bytes,
    /// Where it was first written: `None` for an update from one of this node's own clients.
    /// Replication routes by it.
    pub origin: Option<Origin>,
}

/// Where a replicated update was first written: the node whose client wrote it, and its sequence
/// in that node's log (0 when unknown: snapshots, and entries stored before origins were).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: NodeId,
    pub seq: Seq,
}

impl Origin {
    /// The text the log's `path` column holds: `node@seq` (node ids cannot hold `@`).
    pub fn to_text(origin: Option<&Origin>) -> String {
        origin.map_or_else(String::new, |o| format!("{}@{}", o.node, o.seq))
    }

    /// Reads [`Origin::to_text`]'s text, and the comma-separated paths stored before origins
    /// were (their first node, sequence unknown).
    pub fn parse(s: &str) -> Result<Option<Origin>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        let (node, seq) = match s.split_once('@') {
            Some((node, seq)) => (
                node,
                seq.parse::<Seq>()
                    .map_err(|e| format!("origin sequence {seq:?}: {e}"))?,
            ),
            None => (s.split(',').next().unwrap_or(s), 0),
        };
        Ok(Some(Origin {
            node: NodeId::parse(node)?,
            seq,
        }))
    }
}

/// A committed log entry, as replication reads it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: Seq,
    pub doc: DocName,
    pub origin: Option<Origin>,
    pub update: Bytes,
}

/// A live view of the log: entries committed from now on, and the last sequence committed
/// before. Entries up to `committed` are readable with [`Store::read_log`]; later ones arrive on
/// `entries` (a bounded ring: a reader that falls behind gets `Lagged` and reads the store).
pub struct LogFeed {
    pub entries: broadcast::Receiver<Arc<LogEntry>>,
    pub committed: Seq,
}

/// Resolves once a queued write is durable (or failed). For an append it carries the sequence
/// number the update got.
pub type Commit = oneshot::Receiver<Result<Seq, StoreError>>;

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Commit (with fsync) before relaying: nothing relayed is ever lost, even on power loss.
    Sync,
    /// Relay first, commit within the commit delay (plus the write in progress, e.g. a large
    /// compaction): lower latency, but a crash can lose what was relayed and not yet committed.
    Async,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored state of `doc`, or `None` if it was never written.
    async fn load(&self, doc: &DocName) -> Result<Option<StoredDoc>, StoreError>;

    /// Queues `entry` for the log. Waits only if the write queue is full (backpressure).
    async fn append(&self, entry: Append) -> Result<Commit, StoreError>;

    /// Queues `entries` (at least one) for the log, in order, as one write: the commit resolves
    /// with the last one's sequence once all of them are durable. A room appends the updates of
    /// one wake-up this way; this default appends them one by one.
    async fn append_all(&self, entries: Vec<Append>) -> Result<Commit, StoreError> {
        let mut last = None;
        for entry in entries {
            last = Some(self.append(entry).await?);
        }
        last.ok_or(StoreError::NothingToAppend)
    }

    /// Queues the replacement of `doc`'s log entries so far with `snapshot`, which must contain
    /// every update appended for `doc` before this call (a room compacts only once it has read
    /// what links wrote for it, see [`crate::handles::Lane`]). Entries a peer has not
    /// acknowledged stay in the log (for replication) but are no longer read on load.
    ///
    /// With `through`, only the entries up to that sequence are replaced (the snapshot contains
    /// those, made from a [`Store::sequence_point`] taken earlier); later ones stay the log a
    /// load reads after the snapshot.
    async fn compact(
        &self,
        doc: &DocName,
        snapshot: Vec<u8>,
        through: Option<Seq>,
    ) -> Result<Commit, StoreError>;

    /// Queues a mark: its commit resolves with the last sequence handed out to writes queued
    /// before it (and every write queued after it gets a higher one). A room takes one when it
    /// starts merging its document off its task, then compacts through it.
    async fn sequence_point(&self) -> Result<Commit, StoreError>;

    /// Up to `limit` log entries of `doc` above `after`, in order, with their sequences: what a
    /// live room catches up with when updates were written to the log for it
    /// ([`crate::handles::Lane`]).
    async fn read_doc_log(
        &self,
        doc: &DocName,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError>;

    /// Flushes queued writes and closes the store. Later calls fail with [`StoreError::Closed`].
    async fn close(&self);

    /// Subscribes to committed log entries (see [`LogFeed`]).
    fn subscribe(&self) -> LogFeed;

    /// The last sequence number committed.
    fn committed(&self) -> Seq;

    /// Up to `limit` log entries with `seq > after`, in order.
    async fn read_log(&self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, StoreError>;

    /// Up to `limit` stored snapshots of documents whose row id is above `after_id`, with their
    /// ids: a peer seen for the first time needs them, since compaction removed what they cover
    /// from the log.
    async fn read_snapshots(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError>;

    /// The last sequence each known peer acknowledged.
    async fn peer_cursors(&self) -> Result<HashMap<NodeId, Seq>, StoreError>;

    /// Records that `peer` acknowledged everything up to `seq` (queued like a write; the
    /// returned commit may be ignored: a lost cursor only means a few entries are sent again).
    async fn set_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError>;

    /// Sets `peer`'s acknowledged cursor to exactly `seq`, lower or higher (queued like a write):
    /// where its log stream resumes. Until it commits, compaction may still go by the old value.
    async fn reset_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError>;

    /// The incarnations of this store's log, oldest first; the last one is current (started when
    /// this store was opened).
    fn incarnations(&self) -> Vec<LogIncarnation>;

    /// Whether the log still holds every entry numbered above `after` (up to the last committed
    /// one): false once compaction deleted some of them, which a peer resuming there must then
    /// get from the snapshots. (Sequence numbers are handed out without gaps.)
    async fn log_complete_after(&self, after: Seq) -> Result<bool, StoreError>;

    /// What this node holds of `peer`'s log: everything through the sequence, as numbered in the
    /// incarnation; `None` when nothing was recorded.
    async fn received_cursor(
        &self,
        peer: &NodeId,
    ) -> Result<Option<(Incarnation, Seq)>, StoreError>;

    /// Records that everything of `peer`'s log through `seq` of incarnation `of` is durable here
    /// (queued like a write; replaces what was recorded).
    async fn set_received_cursor(
        &self,
        peer: &NodeId,
        of: Incarnation,
        seq: Seq,
    ) -> Result<Commit, StoreError>;

    /// Records who `peer` is (queued like a write). A `None` `dial_url` keeps the one recorded.
    async fn remember_peer(&self, peer: &NodeId, info: PeerInfo) -> Result<Commit, StoreError>;

    /// Every peer ever linked with, as last recorded: what status shows of a peer that has not
    /// been reached since this node started.
    async fn known_peers(&self) -> Result<HashMap<NodeId, PeerInfo>, StoreError>;

    /// Whether writes can succeed now, as the last commit found (no write per call): what
    /// `/readyz` reports. See [`health`].
    fn health(&self) -> StoreHealth;
}

/// What a node remembers of a peer across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub region: String,
    /// The URL the peer advertises (`--public-url`).
    pub url: String,
    /// The `--peers` URL this node dialed it at, if it ever did.
    pub dial_url: Option<String>,
}

pub type SharedStore = Arc<dyn Store>;
