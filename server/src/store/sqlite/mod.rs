//! The embedded store: SQLite in WAL mode, one file (`concord.db`) in the data dir.
//!
//! Writes go through one writer thread fed by a bounded channel, which gives **group commit**:
//! whatever queued up while the previous transaction was being synced is written in the next
//! single transaction, with one fsync, whatever documents it belongs to. Reads (loads) run on
//! tokio's blocking pool over a small pool of read connections; WAL lets them proceed while the
//! writer writes.
//!
//! Schema (see [`SCHEMA`]):
//! - `docs`: one row per document ever written: its id, name, snapshot and the log sequence the
//!   snapshot covers (`snapshot_seq`).
//! - `log`: the node's update log. `seq` is the node-local sequence number (the replication
//!   cursor), `path` the nodes the update passed through.
//! - `peer_cursors`: per peer region, the last `seq` it acknowledged. Compaction keeps every
//!   entry above the smallest of them.
//! - `peers`: who each peer is (region, advertised URL, the `--peers` URL it was dialed at), so
//!   status can show a peer not reached since a restart with its real cursor and backlog.
//! - `meta`: `last_seq` (written with each compaction), so sequence numbers never go backwards
//!   even when compaction deleted the newest entries.
//! - `incarnations` and `received_cursors` ([`RESUME_SCHEMA`]): the incarnations of this log (one
//!   more each time the store is opened), and per peer what this node durably received of that
//!   peer's log (its incarnation and sequence), where the peer's stream resumes.
//!
//! Integrity: `log.crc` and `docs.snapshot_crc` hold a checksum of each entry and snapshot
//! ([`super::checksum`]), added to older databases at open ([`schema::add_checksum_columns`]);
//! rows written before have none and are read as before. A load that meets a mismatch fails with
//! [`StoreError::Corrupt`]; replication reads skip the entry and log it. At open,
//! `PRAGMA quick_check` refuses a damaged file ([`file_check::check_file`]).
//!
//! This file opens the store and answers the [`Store`] trait; each job has its own file:
//!
//! | file | job |
//! |---|---|
//! | `schema.rs` | the tables, columns added to older databases, where numbering stands |
//! | `file_check.rs` | refusing a damaged database file at open |
//! | `readers.rs` | the pool of read connections; loads, log and snapshot pages |
//! | `writer.rs` | the writer thread: batching, group commit, the live feed of the log |
//! | `compaction.rs` | snapshots replacing log entries; log GC once every peer has them |
//! | `checkpoint.rs` | the thread that checkpoints the WAL off the commit path |
//! | `peers.rs` | peer cursors and records, the log's incarnations, `forget-peer` |
//! | `backup.rs` | `concord backup` and `concord restore`: consistent copies of the live file |

pub mod backup;
mod checkpoint;
mod compaction;
mod file_check;
mod peers;
mod readers;
mod schema;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use async_trait::async_trait;
use concord_crdt::{DocName, NodeId};
use tokio::sync::{broadcast, oneshot};
use tracing::info;

use super::health::HealthCell;
use super::{
    Append, Commit, Durability, Incarnation, LogEntry, LogFeed, LogIncarnation, PeerInfo, Seq,
    Store, StoreError, StoreHealth, StoredDoc,
};
use checkpoint::Checkpointer;
use readers::Readers;
use writer::{FEED_CAPACITY, Feed, Op, Writer};

pub use peers::forget_peer;
pub use schema::{RESUME_SCHEMA, SCHEMA};

/// Name of the database file inside the data dir.
pub const DB_FILE: &str = "concord.db";

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// With [`Durability::Async`]: how long the writer gathers writes into one transaction. A
    /// relayed update waits this, plus whatever the writer is still writing (a large compaction:
    /// a few ms per MB of snapshot), plus its own commit.
    pub commit_delay: Duration,
    /// Refuse writes once the database reaches this size (0: no limit). A full store makes
    /// writes fail, exactly like a full disk.
    pub max_db_bytes: u64,
    /// Queued writes before appenders wait.
    pub queue: usize,
    /// With peers, how long log entries are kept after they were written, whatever the peers
    /// acknowledged (see `compaction::RELAY_RETAIN`, the default).
    pub relay_retain: Duration,
    /// Where the writer thread counts its commits, their batches, fsyncs and failures.
    pub metrics: crate::metrics::StoreMetrics,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Sync,
            commit_delay: Duration::from_millis(2),
            max_db_bytes: 0,
            queue: 8192,
            relay_retain: compaction::RELAY_RETAIN,
            metrics: Default::default(),
        }
    }
}

pub struct SqliteStore {
    feed: Arc<Feed>,
    /// The writer's queue. Not behind a lock: every append of every document goes through it.
    tx: flume::Sender<Op>,
    /// Set by [`Store::close`]; later writes fail with [`StoreError::Closed`].
    closed: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The last commit's outcome, recorded by the writer ([`Store::health`]).
    health: Arc<HealthCell>,
    /// Stopped on close.
    checkpointer: Mutex<Option<Checkpointer>>,
    readers: Readers,
    /// This log's incarnations, the current one last (fixed once open).
    incarnations: Vec<LogIncarnation>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            doing: format!("creating data dir {}", dir.display()),
            error: Arc::new(e),
        })?;
        let path = dir.join(DB_FILE);
        file_check::check_file(&path, file_check::FULL_CHECK_MAX_BYTES)?;
        let at_path = |e: StoreError| match e {
            StoreError::Full(e) | StoreError::ReadOnly(e) | StoreError::Sqlite(e) => {
                StoreError::Open {
                    path: path.display().to_string(),
                    error: e,
                }
            }
            e => e,
        };
        let conn = writer::open_writer(&path, &options).map_err(at_path)?;
        let last_seq = schema::last_seq(&conn).map_err(at_path)?;
        let incarnations = peers::start_incarnation(&conn, last_seq).map_err(at_path)?;
        let (tx, rx) = flume::bounded(options.queue);
        let feed = Arc::new(Feed {
            entries: broadcast::channel(FEED_CAPACITY).0,
            committed: AtomicU64::new(last_seq),
        });
        let health = Arc::new(HealthCell::default());
        let handle = Writer::spawn(conn, options, last_seq, feed.clone(), health.clone(), rx)?;
        let checkpointer = Checkpointer::spawn(&path)?;
        info!(path = %path.display(), last_seq, "store opened");
        Ok(SqliteStore {
            feed,
            tx,
            closed: AtomicBool::new(false),
            writer: Mutex::new(Some(handle)),
            health,
            checkpointer: Mutex::new(Some(checkpointer)),
            readers: Readers::new(path),
            incarnations,
        })
    }

    async fn submit(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<Seq, StoreError>>) -> Op,
    ) -> Result<Commit, StoreError> {
        let (done, commit) = oneshot::channel();
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.tx
            .send_async(op(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(commit)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn read_doc_log(
        &self,
        doc: &DocName,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        let name = doc.clone();
        self.readers
            .read(move |conn| readers::read_doc_log(conn, &name, after, limit))
            .await
    }

    async fn load(&self, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
        let name = doc.clone();
        self.readers
            .read(move |conn| readers::load_doc(conn, &name))
            .await
    }

    async fn append(&self, entry: Append) -> Result<Commit, StoreError> {
        self.submit(|done| Op::Append {
            entries: vec![entry],
            done,
        })
        .await
    }

    async fn append_all(&self, entries: Vec<Append>) -> Result<Commit, StoreError> {
        if entries.is_empty() {
            return Err(StoreError::NothingToAppend);
        }
        self.submit(|done| Op::Append { entries, done }).await
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: Vec<u8>,
        through: Option<Seq>,
    ) -> Result<Commit, StoreError> {
        let doc = doc.clone();
        self.submit(|done| Op::Compact {
            doc,
            snapshot,
            through,
            done,
        })
        .await
    }

    async fn sequence_point(&self) -> Result<Commit, StoreError> {
        self.submit(|done| Op::Point { done }).await
    }

    async fn close(&self) {
        // The writer writes what was queued before the `Close`, then stops; anything queued after
        // it is dropped, and its commit resolves as failed.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send_async(Op::Close).await;
        let checkpointer = self.checkpointer.lock().unwrap().take();
        if let Some(checkpointer) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
        }
        let handle = self.writer.lock().unwrap().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            info!("store closed");
        }
    }

    fn subscribe(&self) -> LogFeed {
        let entries = self.feed.entries.subscribe();
        LogFeed {
            entries,
            committed: self.feed.committed.load(Ordering::Acquire),
        }
    }

    fn committed(&self) -> Seq {
        self.feed.committed.load(Ordering::Acquire)
    }

    /// An entry whose checksum does not match is not returned (it would spread damaged data to
    /// the peers): it is logged as an error naming its document and sequence, and the page goes
    /// on with the next entries, so a damaged entry never makes a page look like the end of the
    /// log. Its document is refused on this node until the row is repaired.
    async fn read_log(&self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.readers
            .read(move |conn| readers::read_log(conn, after, limit))
            .await
    }

    /// A snapshot whose checksum does not match is skipped and logged, like a damaged log entry.
    async fn read_snapshots(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError> {
        self.readers
            .read(move |conn| readers::read_snapshots(conn, after_id, limit))
            .await
    }

    async fn peer_cursors(&self) -> Result<HashMap<NodeId, Seq>, StoreError> {
        self.readers.read(peers::peer_cursors).await
    }

    async fn set_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        let peer = peer.clone();
        self.submit(|done| Op::Cursor {
            peer,
            seq,
            reset: false,
            done,
        })
        .await
    }

    async fn reset_peer_cursor(&self, peer: &NodeId, seq: Seq) -> Result<Commit, StoreError> {
        let peer = peer.clone();
        self.submit(|done| Op::Cursor {
            peer,
            seq,
            reset: true,
            done,
        })
        .await
    }

    fn incarnations(&self) -> Vec<LogIncarnation> {
        self.incarnations.clone()
    }

    async fn log_complete_after(&self, after: Seq) -> Result<bool, StoreError> {
        let committed = self.committed();
        if after >= committed {
            return Ok(true);
        }
        self.readers
            .read(move |conn| readers::log_complete(conn, after, committed))
            .await
    }

    async fn received_cursor(
        &self,
        peer: &NodeId,
    ) -> Result<Option<(Incarnation, Seq)>, StoreError> {
        let peer = peer.clone();
        self.readers
            .read(move |conn| peers::received_cursor(conn, &peer))
            .await
    }

    async fn set_received_cursor(
        &self,
        peer: &NodeId,
        of: Incarnation,
        seq: Seq,
    ) -> Result<Commit, StoreError> {
        let peer = peer.clone();
        self.submit(|done| Op::Received {
            peer,
            of,
            seq,
            done,
        })
        .await
    }

    async fn remember_peer(&self, peer: &NodeId, info: PeerInfo) -> Result<Commit, StoreError> {
        let peer = peer.clone();
        self.submit(|done| Op::Peer { peer, info, done }).await
    }

    async fn known_peers(&self) -> Result<HashMap<NodeId, PeerInfo>, StoreError> {
        self.readers.read(peers::known_peers).await
    }

    /// Closed, the writer thread gone, the last commit failed (until a commit or the writer's
    /// write probe succeeds), or writable.
    fn health(&self) -> StoreHealth {
        if self.closed.load(Ordering::Acquire) {
            return StoreHealth::Closed;
        }
        let writer_gone = self
            .writer
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|h| h.is_finished());
        if writer_gone {
            return StoreHealth::WriterStopped;
        }
        match self.health.failure() {
            Some(failure) => StoreHealth::Failing(failure),
            None => StoreHealth::Writable,
        }
    }
}

#[cfg(test)]
mod tests;
