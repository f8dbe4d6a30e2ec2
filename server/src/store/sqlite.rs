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
//! ([`super::checksum`]), added to older databases at open ([`add_checksum_columns`]); rows
//! written before have none and are read as before. A load that meets a mismatch fails with
//! [`StoreError::Corrupt`]; replication reads skip the entry and log it. At open,
//! `PRAGMA quick_check` refuses a damaged file ([`check_file`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use concord_crdt::{DocName, NodeId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, error, info, warn};

use super::{
    Append, Commit, Durability, Incarnation, LogEntry, LogFeed, LogIncarnation, PeerInfo, Seq,
    Store, StoreError, StoredDoc, checksum,
};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    snapshot     BLOB,
    snapshot_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    seq    INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES docs(id),
    path   TEXT NOT NULL DEFAULT '',
    data   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_doc_seq ON log(doc_id, seq);
CREATE TABLE IF NOT EXISTS peer_cursors (
    node_id   TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    node_id  TEXT PRIMARY KEY,
    region   TEXT NOT NULL,
    url      TEXT NOT NULL,
    dial_url TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Sync,
            commit_delay: Duration::from_millis(2),
            max_db_bytes: 0,
            queue: 8192,
        }
    }
}

/// Most writes in one transaction; bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 4096;

enum Op {
    /// Log entries appended in order; `done` gets the last one's sequence.
    Append {
        entries: Vec<Append>,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    Compact {
        doc: DocName,
        snapshot: Vec<u8>,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    Cursor {
        peer: NodeId,
        seq: Seq,
        /// Set exactly `seq` (lower too) rather than move forward only.
        reset: bool,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    /// What this node durably received of a peer's log.
    Received {
        peer: NodeId,
        of: Incarnation,
        seq: Seq,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    Peer {
        peer: NodeId,
        info: PeerInfo,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    /// Stop after writing everything queued before this.
    Close,
}

/// Entries kept for log readers that follow the feed live; one that falls further behind reads
/// the database instead.
const FEED_CAPACITY: usize = 16 * 1024;

/// How often log entries that only replication still needed are garbage-collected.
const LOG_GC_PERIOD: Duration = Duration::from_secs(10);

/// What the writer shares with readers of the log.
struct Feed {
    entries: broadcast::Sender<Arc<LogEntry>>,
    /// Last committed sequence. Updated before the entries are published, so a subscriber that
    /// reads it after subscribing misses nothing.
    committed: AtomicU64,
}

pub struct SqliteStore {
    path: PathBuf,
    feed: Arc<Feed>,
    /// The writer's queue. Not behind a lock: every append of every document goes through it.
    tx: flume::Sender<Op>,
    /// Set by [`Store::close`]; later writes fail with [`StoreError::Closed`].
    closed: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped on close to stop the checkpointer.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    /// This log's incarnations, the current one last (fixed once open).
    incarnations: Vec<LogIncarnation>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("creating data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join(DB_FILE);
        check_file(&path, FULL_CHECK_MAX_BYTES)?;
        let at_path = |e: StoreError| match e {
            StoreError::Backend(m) => {
                StoreError::Backend(format!("opening {}: {m}", path.display()))
            }
            e => e,
        };
        let conn = open_writer(&path, &options).map_err(at_path)?;
        let last_seq = last_seq(&conn).map_err(at_path)?;
        let incarnations = start_incarnation(&conn, last_seq).map_err(at_path)?;
        let (tx, rx) = flume::bounded(options.queue);
        let feed = Arc::new(Feed {
            entries: broadcast::channel(FEED_CAPACITY).0,
            committed: AtomicU64::new(last_seq),
        });
        let writer = Writer {
            conn,
            options,
            next_seq: last_seq + 1,
            doc_ids: HashMap::new(),
            feed: feed.clone(),
            last_gc: Instant::now(),
        };
        // The store's threads log in the span of the node that opened it (its region).
        let span = tracing::Span::current();
        let handle = std::thread::Builder::new()
            .name("concord-store-writer".into())
            .spawn(move || span.in_scope(|| writer.run(rx)))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        let checkpointer = spawn_checkpointer(&path)?;
        info!(path = %path.display(), last_seq, "store opened");
        Ok(SqliteStore {
            path,
            feed,
            tx,
            closed: AtomicBool::new(false),
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
            readers: Mutex::new(Vec::new()),
            incarnations,
        })
    }

    /// Runs `f` on a pooled read connection, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // Take a pooled connection (the lock is held for the pop only); opening a new one is
        // file I/O, so it happens on the blocking pool with the read.
        let pooled = self.readers.lock().unwrap().pop();
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let r = f(&conn);
            Ok::<_, StoreError>((conn, r))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))??;
        self.readers.lock().unwrap().push(conn);
        result
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
    async fn load(&self, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
        let name = doc.clone();
        self.read(move |conn| load_doc(conn, &name)).await
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
            return Err(StoreError::Backend("append_all of no entries".into()));
        }
        self.submit(|done| Op::Append { entries, done }).await
    }

    async fn compact(&self, doc: &DocName, snapshot: Vec<u8>) -> Result<Commit, StoreError> {
        let doc = doc.clone();
        self.submit(|done| Op::Compact {
            doc,
            snapshot,
            done,
        })
        .await
    }

    async fn close(&self) {
        // The writer writes what was queued before the `Close`, then stops; anything queued after
        // it is dropped, and its commit resolves as failed.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send_async(Op::Close).await;
        let checkpointer = self.checkpointer.lock().unwrap().take();
        if let Some((stop, handle)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
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
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT log.seq, docs.name, log.path, log.data, log.doc_id, log.crc FROM log JOIN docs ON docs.id = log.doc_id
                 WHERE log.seq > ?1 ORDER BY log.seq LIMIT ?2",
            )?;
            let mut out = Vec::new();
            let mut after = after;
            loop {
                let wanted = limit - out.len();
                let rows = stmt.query_map(params![after as i64, wanted as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Vec<u8>>(3)?, r.get::<_, i64>(4)?, r.get::<_, Option<i64>>(5)?))
                })?;
                let mut read = 0;
                for row in rows {
                    let (seq, name, path_text, data, doc_id, crc) = row?;
                    read += 1;
                    after = seq as Seq;
                    if !checksum::matches(crc, checksum::log_entry(seq as Seq, doc_id, &path_text, &data)) {
                        error!(doc = %name, seq, "log entry fails its checksum: not sent to peers (its document is refused here until the row is repaired)");
                        continue;
                    }
                    let corrupt = |reason: String| StoreError::Corrupt { doc: name.clone(), reason };
                    let doc = DocName::parse(&name).map_err(|e| corrupt(e.to_string()))?;
                    let path = parse_path(&path_text).map_err(corrupt)?;
                    out.push(LogEntry { seq: seq as Seq, doc, path, update: Bytes::from(data) });
                }
                if read < wanted || out.len() >= limit {
                    return Ok(out);
                }
            }
        })
        .await
    }

    /// A snapshot whose checksum does not match is skipped and logged, like a damaged log entry.
    async fn read_snapshots(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, snapshot, snapshot_crc FROM docs WHERE id > ?1 AND snapshot IS NOT NULL ORDER BY id LIMIT ?2",
            )?;
            let mut out = Vec::new();
            let mut after = after_id;
            loop {
                let wanted = limit - out.len();
                let rows = stmt.query_map(params![after, wanted as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, Option<i64>>(3)?))
                })?;
                let mut read = 0;
                for row in rows {
                    let (id, name, snapshot, crc) = row?;
                    read += 1;
                    after = id;
                    if !checksum::matches(crc, checksum::snapshot(id, &snapshot)) {
                        error!(doc = %name, "snapshot fails its checksum: not sent to peers (its document is refused here until the row is repaired)");
                        continue;
                    }
                    let doc = DocName::parse(&name).map_err(|e| StoreError::Corrupt { doc: name.clone(), reason: e.to_string() })?;
                    out.push((id, doc, snapshot));
                }
                if read < wanted || out.len() >= limit {
                    return Ok(out);
                }
            }
        })
        .await
    }

    async fn peer_cursors(&self) -> Result<HashMap<NodeId, Seq>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT node_id, acked_seq FROM peer_cursors")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = HashMap::new();
            for row in rows {
                let (id, seq) = row?;
                if let Ok(id) = NodeId::parse(&id) {
                    out.insert(id, seq as Seq);
                }
            }
            Ok(out)
        })
        .await
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
        self.read(move |conn| {
            let held: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM log WHERE seq > ?1 AND seq <= ?2")?
                .query_row(params![after as i64, committed as i64], |r| r.get(0))?;
            Ok(held as Seq == committed - after)
        })
        .await
    }

    async fn received_cursor(
        &self,
        peer: &NodeId,
    ) -> Result<Option<(Incarnation, Seq)>, StoreError> {
        let peer = peer.clone();
        self.read(move |conn| {
            let row: Option<(String, i64)> = conn
                .prepare_cached("SELECT incarnation, seq FROM received_cursors WHERE peer = ?1")?
                .query_row([peer.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row.map(|(of, seq)| {
                Incarnation::parse(&of)
                    .map(|of| (of, seq as Seq))
                    .map_err(|reason| StoreError::Corrupt {
                        doc: format!("received cursor of peer {peer}"),
                        reason,
                    })
            })
            .transpose()
        })
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
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT node_id, region, url, dial_url FROM peers")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PeerInfo {
                        region: r.get(1)?,
                        url: r.get(2)?,
                        dial_url: r.get(3)?,
                    },
                ))
            })?;
            let mut out = HashMap::new();
            for row in rows {
                let (id, info) = row?;
                if let Ok(id) = NodeId::parse(&id) {
                    out.insert(id, info);
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Paths are stored as comma-separated node ids (node ids cannot contain commas).
fn parse_path(s: &str) -> Result<Vec<NodeId>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(NodeId::parse).collect()
}

fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Why FULL: in WAL mode a transaction is committed once its frames are in the WAL file.
    // `synchronous = FULL` fsyncs the WAL at every commit, so when COMMIT returns the update is
    // on stable storage and survives a power loss, not only a crash of this process. (`NORMAL`
    // would fsync only at checkpoints: a committed update could vanish with the power.) The
    // room relays an update only after its COMMIT returned, so whatever any client or peer has
    // received is on disk. Group commit keeps the cost at one fsync per batch, not per update.
    // In `async` mode, relaying does not wait for the commit; the setting stays FULL so what is
    // committed is still safe.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints (copying the WAL into the database file, with fsyncs of their own) would run
    // inside whichever commit crossed the threshold and stall every update waiting on it; the
    // checkpointer thread does them instead.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_RESTART_BYTES as i64)?;
    conn.execute_batch(SCHEMA)?;
    add_checksum_columns(&conn)?;
    if options.max_db_bytes > 0 {
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (options.max_db_bytes as i64 / page).max(1);
        conn.pragma_update(None, "max_page_count", pages)?;
    }
    Ok(conn)
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(200);
/// WAL size past which the checkpointer makes the writer start the WAL over (and the file is
/// truncated back to this size).
const WAL_RESTART_BYTES: u64 = 32 * 1024 * 1024;

/// Starts the thread that checkpoints the WAL off the commit path. `PASSIVE` checkpoints never
/// block the writer or readers; they copy what they can and the next one continues. Under
/// continuous writes the WAL would still never start over, so once it passes
/// [`WAL_RESTART_BYTES`] a `RESTART` checkpoint (which waits for the writer between two
/// transactions, mostly with nothing left to copy) rewinds it.
fn spawn_checkpointer(
    path: &Path,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let span = tracing::Span::current();
    let handle = std::thread::Builder::new()
        .name("concord-store-checkpoint".into())
        .spawn(move || {
            let _node = span.enter();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_PERIOD)
            {
                let big = std::fs::metadata(&wal)
                    .map(|m| m.len() > WAL_RESTART_BYTES)
                    .unwrap_or(false);
                let mode = if big { "RESTART" } else { "PASSIVE" };
                if let Err(e) =
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                {
                    warn!("checkpoint failed: {e}");
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("starting the checkpoint thread: {e}")))?;
    Ok((stop, handle))
}

/// Removes what the store in `dir` keeps for peer `node_id` (its cursor and record), so log
/// entries no longer wait for it. Returns whether it was known. Safe while a server runs on the
/// same store (SQLite serialises the writers).
pub fn forget_peer(dir: &Path, node_id: &str) -> Result<bool, StoreError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(StoreError::Backend(format!(
            "no store at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(RESUME_SCHEMA)?;
    let cursors = conn.execute("DELETE FROM peer_cursors WHERE node_id = ?1", [node_id])?;
    let records = conn.execute("DELETE FROM peers WHERE node_id = ?1", [node_id])?;
    let received = conn.execute("DELETE FROM received_cursors WHERE peer = ?1", [node_id])?;
    Ok(cursors + records + received > 0)
}

/// Tables for resuming replication (created on open, so a database from before them opens):
/// - `incarnations`: one row per open of the store, with the first sequence that open numbers;
///   ordered by `first_seq` then `rowid` (an open that wrote nothing leaves an empty range).
/// - `received_cursors`: per peer, the incarnation of its log and the sequence through which
///   everything it sent is durable here. Written before the acknowledgement goes out.
pub const RESUME_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incarnations (
    id        TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS received_cursors (
    peer        TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL
);
";

/// Starts a new incarnation of the log (numbering from `last_seq + 1`) and returns the whole
/// history, oldest first.
fn start_incarnation(conn: &Connection, last_seq: Seq) -> Result<Vec<LogIncarnation>, StoreError> {
    conn.execute_batch(RESUME_SCHEMA)?;
    let new = LogIncarnation::new(last_seq + 1);
    conn.execute(
        "INSERT INTO incarnations (id, first_seq) VALUES (?1, ?2)",
        params![new.id.to_string(), new.first_seq as i64],
    )?;
    let mut stmt =
        conn.prepare("SELECT id, first_seq FROM incarnations ORDER BY first_seq, rowid")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut history = Vec::new();
    for row in rows {
        let (id, first_seq) = row?;
        let id = Incarnation::parse(&id).map_err(|reason| StoreError::Corrupt {
            doc: "incarnations".into(),
            reason,
        })?;
        history.push(LogIncarnation {
            id,
            first_seq: first_seq as Seq,
        });
    }
    if history.last() != Some(&new) {
        return Err(StoreError::Corrupt {
            doc: "incarnations".into(),
            reason: "the new incarnation does not sort last".into(),
        });
    }
    Ok(history)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Adds the checksum columns to a database created before they existed. Rows already there keep
/// a NULL checksum, which reads accept (see [`checksum::matches`]).
fn add_checksum_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, column) in [("log", "crc"), ("docs", "snapshot_crc")] {
        let has: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} INTEGER"))?;
            // Worth telling only for a database that has rows from before: a new one gets the
            // column on its first open too, which is no news.
            let older_rows: bool =
                conn.query_row(&format!("SELECT EXISTS(SELECT 1 FROM {table})"), [], |r| {
                    r.get(0)
                })?;
            if older_rows {
                info!(
                    table,
                    column, "added checksum column; rows stored before have none"
                );
            }
        }
    }
    // A binary from before checksums (run after a downgrade) rewrites a snapshot without its
    // checksum; the database itself then drops the stale checksum, so the snapshot is read like
    // any row from before checksums instead of being refused as damaged when this version
    // returns. Damage on disk does not go through SQL and is still caught.
    conn.execute_batch(
        "CREATE TRIGGER IF NOT EXISTS docs_snapshot_crc_stale
         AFTER UPDATE OF snapshot ON docs
         WHEN NEW.snapshot_crc IS OLD.snapshot_crc AND NEW.snapshot IS NOT OLD.snapshot
         BEGIN UPDATE docs SET snapshot_crc = NULL WHERE id = NEW.id; END;",
    )?;
    Ok(())
}

/// Database files up to this size are checked page by page at open (`PRAGMA quick_check`, about
/// 2 to 15 s for 1 GiB on the reference machine); larger ones get the cheaper [`check_edges`].
const FULL_CHECK_MAX_BYTES: u64 = 1 << 30;

/// Refuses a damaged database file at startup, with a message that names it and says what to do
/// ([`StoreError::DamagedFile`]), rather than failing later on whatever page is damaged.
///
/// Up to `full_check_max` bytes, `PRAGMA quick_check` reads every page and checks the b-tree
/// structure; it skips what `integrity_check` adds (index contents against tables), which is
/// several times slower. It took 0.19 to 0.47 s for a 110 MB database in the page cache, 0.9 to
/// 1.6 s once evicted from it. A larger file gets [`check_edges`], which reads a few pages per
/// table but still catches a damaged header, a truncated file and a damaged table root page;
/// damage elsewhere in it shows when a document touching it is loaded (that document is then
/// refused with 1011, the others are served).
fn check_file(path: &Path, full_check_max: u64) -> Result<(), StoreError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // a new store
    };
    let started = Instant::now();
    let full = meta.len() <= full_check_max;
    let damaged = |reason: String| StoreError::DamagedFile {
        path: path.display().to_string(),
        reason,
    };
    let check = || -> Result<Vec<String>, rusqlite::Error> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        if !full {
            check_edges(&conn)?;
            return Ok(vec!["ok".into()]);
        }
        let mut stmt = conn.prepare("PRAGMA quick_check(10)")?;
        stmt.query_map([], |r| r.get::<_, String>(0))?.collect()
    };
    match check() {
        Ok(report) if report == ["ok"] => {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let check = if full {
                "quick_check"
            } else {
                "table edges only"
            };
            info!(path = %path.display(), bytes = meta.len(), check, elapsed_ms, "store file checked");
            Ok(())
        }
        Ok(report) => Err(damaged(report.join("; "))),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            Err(damaged(e.to_string()))
        }
        Err(e) => Err(StoreError::Backend(format!(
            "checking {}: {e}",
            path.display()
        ))),
    }
}

/// The cheap check of a large file: reads the header, the schema and, for every table, the pages
/// from its root to its first and its last row. SQLite itself refuses a file shorter than its
/// header says at the first read.
fn check_edges(conn: &Connection) -> Result<(), rusqlite::Error> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in tables {
        for order in ["ASC", "DESC"] {
            let sql = format!(
                "SELECT COUNT(*) FROM (SELECT rowid FROM \"{}\" ORDER BY rowid {order} LIMIT 1)",
                table.replace('"', "\"\"")
            );
            conn.query_row(&sql, [], |_| Ok(()))?;
        }
    }
    Ok(())
}

fn last_seq(conn: &Connection) -> Result<Seq, StoreError> {
    let from_meta: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let from_meta: Seq = from_meta.and_then(|v| v.parse().ok()).unwrap_or(0);
    let from_log: Option<i64> = conn.query_row("SELECT MAX(seq) FROM log", [], |r| r.get(0))?;
    Ok(from_meta.max(from_log.unwrap_or(0) as Seq))
}

fn load_doc(conn: &Connection, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
    /// id, snapshot, snapshot_seq, snapshot_crc
    type DocRow = (i64, Option<Vec<u8>>, i64, Option<i64>);
    let row: Option<DocRow> = conn
        .prepare_cached(
            "SELECT id, snapshot, snapshot_seq, snapshot_crc FROM docs WHERE name = ?1",
        )?
        .query_row([doc.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((id, snapshot, snapshot_seq, snapshot_crc)) = row else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        doc: doc.to_string(),
        reason,
    };
    if let Some(s) = &snapshot
        && !checksum::matches(snapshot_crc, checksum::snapshot(id, s))
    {
        return Err(corrupt("its snapshot fails its checksum".into()));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, path, data, crc FROM log WHERE doc_id = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![id, snapshot_seq], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut updates = Vec::new();
    for row in rows {
        let (seq, path, data, crc) = row?;
        if !checksum::matches(crc, checksum::log_entry(seq as Seq, id, &path, &data)) {
            return Err(corrupt(format!("log entry {seq} fails its checksum")));
        }
        updates.push(data);
    }
    Ok(Some(StoredDoc { snapshot, updates }))
}

/// The writer thread's state. Only this thread writes to the database.
struct Writer {
    conn: Connection,
    options: SqliteOptions,
    next_seq: Seq,
    /// Document name → row id, for documents this process has written.
    doc_ids: HashMap<DocName, i64>,
    feed: Arc<Feed>,
    last_gc: Instant,
}

impl Writer {
    fn run(mut self, rx: flume::Receiver<Op>) {
        let mut closing = false;
        while !closing {
            let Ok(first) = rx.recv() else { break };
            let mut batch = Vec::new();
            let mut next = Some(first);
            // Sync: take whatever queued up during the previous commit (that is the group
            // commit). Async: gather for up to the commit delay (fewer, larger transactions).
            let deadline = Instant::now() + self.options.commit_delay;
            while let Some(op) = next.take() {
                if matches!(op, Op::Close) {
                    closing = true;
                    break;
                }
                batch.push(op);
                if batch.len() >= MAX_BATCH {
                    break;
                }
                next = match self.options.durability {
                    Durability::Sync => rx.try_recv().ok(),
                    Durability::Async => rx.recv_deadline(deadline).ok(),
                };
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
        }
        if let Err(e) = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            warn!("final checkpoint failed: {e}");
        }
    }

    fn write_batch(&mut self, batch: Vec<Op>) {
        let first_seq = self.next_seq;
        let started = Instant::now();
        let mut new_docs = Vec::new();
        match self.try_write(&batch, &mut new_docs) {
            Ok(seqs) => {
                tracing::trace!(
                    writes = batch.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "committed"
                );
                self.feed
                    .committed
                    .store(self.next_seq - 1, Ordering::Release);
                for (op, seq) in batch.into_iter().zip(seqs) {
                    match op {
                        Op::Append { entries, done } => {
                            let _ = done.send(Ok(seq));
                            // `seq` is the last entry's; they got consecutive ones.
                            let first = seq + 1 - entries.len() as Seq;
                            for (entry, seq) in entries.into_iter().zip(first..) {
                                // Nobody listening is fine: replication reads the log when it
                                // starts.
                                let _ = self.feed.entries.send(Arc::new(LogEntry {
                                    seq,
                                    doc: entry.doc,
                                    path: entry.path,
                                    update: entry.update,
                                }));
                            }
                        }
                        other => {
                            if let Some(done) = done_of(other) {
                                let _ = done.send(Ok(seq));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                error!(error = %e, writes = batch.len(), "store write failed; the affected documents close their connections");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.next_seq = first_seq;
                for name in new_docs {
                    self.doc_ids.remove(&name);
                }
                for op in batch {
                    if let Some(done) = done_of(op) {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Writes the batch in one transaction; returns each op's sequence number.
    fn try_write(
        &mut self,
        batch: &[Op],
        new_docs: &mut Vec<DocName>,
    ) -> Result<Vec<Seq>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut seqs = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    let mut doc_ids = Vec::with_capacity(entries.len());
                    for entry in entries {
                        doc_ids.push(self.doc_id(&entry.doc, new_docs)?);
                    }
                    let mut insert = self.conn.prepare_cached(
                        "INSERT INTO log (seq, doc_id, path, data, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for (entry, doc_id) in entries.iter().zip(doc_ids) {
                        let seq = self.next_seq;
                        let path = entry
                            .path
                            .iter()
                            .map(NodeId::as_str)
                            .collect::<Vec<_>>()
                            .join(",");
                        let crc = checksum::log_entry(seq, doc_id, &path, &entry.update);
                        insert.execute(params![
                            seq as i64,
                            doc_id,
                            path,
                            entry.update.as_ref(),
                            crc
                        ])?;
                        self.next_seq += 1;
                    }
                    seqs.push(self.next_seq - 1);
                }
                Op::Compact { doc, snapshot, .. } => {
                    let doc_id = self.doc_id(doc, new_docs)?;
                    seqs.push(self.compact(doc_id, snapshot)?);
                }
                Op::Cursor {
                    peer, seq, reset, ..
                } => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO peer_cursors (node_id, acked_seq) VALUES (?1, ?2)
                             ON CONFLICT(node_id) DO UPDATE SET acked_seq =
                             CASE WHEN ?3 THEN excluded.acked_seq ELSE MAX(acked_seq, excluded.acked_seq) END",
                        )?
                        .execute(params![peer.as_str(), *seq as i64, *reset])?;
                    seqs.push(*seq);
                }
                Op::Received { peer, of, seq, .. } => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO received_cursors (peer, incarnation, seq) VALUES (?1, ?2, ?3)
                             ON CONFLICT(peer) DO UPDATE SET incarnation = excluded.incarnation, seq = excluded.seq",
                        )?
                        .execute(params![peer.as_str(), of.to_string(), *seq as i64])?;
                    seqs.push(*seq);
                }
                Op::Peer { peer, info, .. } => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO peers (node_id, region, url, dial_url) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT(node_id) DO UPDATE SET region = excluded.region, url = excluded.url,
                             dial_url = COALESCE(excluded.dial_url, peers.dial_url)",
                        )?
                        .execute(params![peer.as_str(), info.region, info.url, info.dial_url])?;
                    seqs.push(0);
                }
                Op::Close => seqs.push(0), // never in a batch: `run` stops at it
            }
        }
        if self.last_gc.elapsed() >= LOG_GC_PERIOD
            && batch.iter().any(|op| matches!(op, Op::Cursor { .. }))
        {
            self.last_gc = Instant::now();
            self.collect_replicated()?;
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(seqs)
    }

    /// Replaces the log entries of `doc_id` so far with `snapshot`. Entries that some peer has
    /// not acknowledged are kept for replication; `snapshot_seq` marks them as covered.
    fn compact(&mut self, doc_id: i64, snapshot: &[u8]) -> Result<Seq, StoreError> {
        let covered: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(seq) FROM log WHERE doc_id = ?1")?
            .query_row([doc_id], |r| r.get(0))?;
        let covered = covered.unwrap_or(0);
        self.conn
            .prepare_cached(
                "UPDATE docs SET snapshot = ?2, snapshot_seq = MAX(snapshot_seq, ?3), snapshot_crc = ?4 WHERE id = ?1",
            )?
            .execute(params![doc_id, snapshot, covered, checksum::snapshot(doc_id, snapshot)])?;
        let retain_above: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(acked_seq) FROM peer_cursors")?
            .query_row([], |r| r.get(0))?;
        let delete_upto = retain_above.map_or(covered, |r| r.min(covered));
        // Deleting may remove the newest entry of the whole log; remember the highest sequence
        // handed out so numbering never goes back after a restart.
        self.conn
            .prepare_cached("INSERT INTO meta (key, value) VALUES ('last_seq', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
            .execute([(self.next_seq - 1).to_string()])?;
        self.conn
            .prepare_cached("DELETE FROM log WHERE doc_id = ?1 AND seq <= ?2")?
            .execute(params![doc_id, delete_upto])?;
        Ok(covered as Seq)
    }

    /// Deletes log entries that only replication still kept (already covered by their document's
    /// snapshot) once every known peer has acknowledged them.
    fn collect_replicated(&mut self) -> Result<(), StoreError> {
        let min_acked: Option<i64> =
            self.conn
                .query_row("SELECT MIN(acked_seq) FROM peer_cursors", [], |r| r.get(0))?;
        let Some(min_acked) = min_acked else {
            return Ok(());
        };
        let n = self.conn.execute(
            "DELETE FROM log WHERE seq <= ?1 AND seq <= (SELECT snapshot_seq FROM docs WHERE docs.id = log.doc_id)",
            [min_acked],
        )?;
        if n > 0 {
            debug!(
                deleted = n,
                "collected log entries every peer has acknowledged"
            );
        }
        Ok(())
    }

    fn doc_id(&mut self, name: &DocName, new_docs: &mut Vec<DocName>) -> Result<i64, StoreError> {
        if let Some(id) = self.doc_ids.get(name) {
            return Ok(*id);
        }
        self.conn
            .prepare_cached("INSERT INTO docs (name) VALUES (?1) ON CONFLICT(name) DO NOTHING")?
            .execute([name.as_str()])?;
        let id: i64 = self
            .conn
            .prepare_cached("SELECT id FROM docs WHERE name = ?1")?
            .query_row([name.as_str()], |r| r.get(0))?;
        self.doc_ids.insert(name.clone(), id);
        new_docs.push(name.clone());
        Ok(id)
    }
}

fn done_of(op: Op) -> Option<oneshot::Sender<Result<Seq, StoreError>>> {
    match op {
        Op::Append { done, .. }
        | Op::Compact { done, .. }
        | Op::Cursor { done, .. }
        | Op::Received { done, .. }
        | Op::Peer { done, .. } => Some(done),
        Op::Close => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_crdt::DocState;
    use concord_crdt::yrs::{Doc, GetString, ReadTxn, Text, Transact, WriteTxn};
    use proptest::prelude::*;

    fn name(s: &str) -> DocName {
        DocName::parse(s).unwrap()
    }

    async fn append(store: &SqliteStore, doc: &str, update: Vec<u8>) -> Seq {
        let commit = store
            .append(Append {
                doc: name(doc),
                update: update.into(),
                path: vec![],
            })
            .await
            .unwrap();
        commit.await.unwrap().unwrap()
    }

    fn edit(doc: &Doc, at: u32, s: &str) -> Vec<u8> {
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        let at = at.min(t.len(&txn));
        t.insert(&mut txn, at, s);
        txn.encode_update_v1()
    }

    #[tokio::test]
    async fn sequence_numbers_grow_across_restarts_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let client = Doc::new();
        {
            let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
            assert_eq!(append(&store, "a", edit(&client, 0, "x")).await, 1);
            assert_eq!(append(&store, "b", edit(&client, 0, "y")).await, 2);
            let covered = store
                .compact(&name("b"), vec![0, 0])
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(covered, 2);
            store.close().await;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        // seq 2 was compacted away, yet numbering continues after it
        assert_eq!(append(&store, "a", edit(&client, 0, "z")).await, 3);
        assert!(store.load(&name("never")).await.unwrap().is_none());
        store.close().await;
        assert!(matches!(
            store
                .append(Append {
                    doc: name("a"),
                    update: Bytes::new(),
                    path: vec![]
                })
                .await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn append_all_writes_entries_in_order_with_consecutive_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let client = Doc::new();
        let mut feed = store.subscribe();
        assert_eq!(append(&store, "a", edit(&client, 0, "a")).await, 1);
        let other = Doc::new();
        let entries: Vec<Append> = [("a", "b"), ("new", "c"), ("a", "d")]
            .into_iter()
            .map(|(doc, s)| Append {
                doc: name(doc),
                update: edit(if doc == "a" { &client } else { &other }, 9, s).into(),
                path: vec![],
            })
            .collect();
        let last = store
            .append_all(entries)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last, 4, "the commit carries the last entry's sequence");
        assert_eq!(store.committed(), 4);
        let mut seqs: Vec<(Seq, String)> = Vec::new();
        for _ in 0..4 {
            // The feed is sent to right after the commits are answered.
            let e = tokio::time::timeout(Duration::from_secs(5), feed.entries.recv())
                .await
                .unwrap()
                .unwrap();
            seqs.push((e.seq, e.doc.to_string()));
        }
        assert_eq!(
            seqs,
            [(1, "a"), (2, "a"), (3, "new"), (4, "a")].map(|(s, d)| (s, d.to_string()))
        );
        let logged: Vec<Seq> = store
            .read_log(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(logged, [1, 2, 3, 4]);
        let a = store.load(&name("a")).await.unwrap().unwrap();
        let text = DocState::load(a.parts()).unwrap().text("t").unwrap();
        assert_eq!(text, "abd");
        assert!(store.append_all(Vec::new()).await.is_err());
        store.close().await;
    }

    #[tokio::test]
    async fn compaction_keeps_entries_peers_have_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let client = Doc::new();
        for i in 0..5 {
            append(&store, "d", edit(&client, 0, &i.to_string())).await;
        }
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.execute(
                "INSERT INTO peer_cursors (node_id, acked_seq) VALUES ('peer', 3)",
                [],
            )
            .unwrap();
        }
        let state = DocState::load(store.load(&name("d")).await.unwrap().unwrap().parts()).unwrap();
        store
            .compact(&name("d"), state.full_state())
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let left: Vec<i64> = c
            .prepare("SELECT seq FROM log ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            left,
            vec![4, 5],
            "entries above the slowest peer's cursor stay"
        );
        // ...but a load reads the snapshot only.
        let stored = store.load(&name("d")).await.unwrap().unwrap();
        assert!(stored.snapshot.is_some() && stored.updates.is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn a_full_store_reports_errors_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            max_db_bytes: 256 * 1024,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(dir.path(), opts).unwrap();
        let client = Doc::new();
        let mut ok = 0;
        let mut failed = None;
        for i in 0..1000 {
            let commit = store
                .append(Append {
                    doc: name("full"),
                    update: edit(&client, 0, &"x".repeat(4096)).into(),
                    path: vec![],
                })
                .await
                .unwrap();
            match commit.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let (_, e) = failed.expect("writes past the size limit must fail");
        assert!(e.to_string().contains("full"), "{e}");
        let stored = store.load(&name("full")).await.unwrap().unwrap();
        assert_eq!(
            stored.updates.len(),
            ok,
            "every acknowledged write is still there"
        );
        store.close().await;
    }

    /// The cheap check of large files still catches the damage the full one is there for.
    #[tokio::test]
    async fn the_check_of_large_files_catches_a_damaged_header_truncation_and_root_page() {
        for damage in ["header", "truncated", "root page"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(DB_FILE);
            {
                let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
                for d in 0..20 {
                    let client = Doc::new();
                    for _ in 0..10 {
                        append(
                            &store,
                            &format!("doc{d}"),
                            edit(&client, 0, &"x".repeat(900)),
                        )
                        .await;
                    }
                }
                store.close().await;
            }
            assert!(
                check_file(&path, 0).is_ok(),
                "{damage}: an intact file passes"
            );
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                "header" => bytes[..16].copy_from_slice(b"not a database!\0"),
                "truncated" => bytes.truncate(bytes.len() / 2),
                _ => {
                    let c = Connection::open(&path).unwrap();
                    let root: i64 = c
                        .query_row(
                            "SELECT rootpage FROM sqlite_schema WHERE name = 'docs'",
                            [],
                            |r| r.get(0),
                        )
                        .unwrap();
                    let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
                    bytes[((root - 1) * page) as usize..][..64].fill(0xA5);
                }
            }
            std::fs::write(&path, bytes).unwrap();
            match check_file(&path, 0) {
                Err(StoreError::DamagedFile { path: p, .. }) => {
                    assert_eq!(p, path.display().to_string())
                }
                other => panic!("{damage}: not refused: {other:?}"),
            }
        }
    }

    fn edits() -> impl Strategy<Value = Vec<(u8, u32, String, bool)>> {
        proptest::collection::vec((0u8..3, 0u32..50, "[a-z]{1,8}", any::<bool>()), 1..60)
    }

    proptest! {
        // A fixed seed: every run tries the same cases (`PROPTEST_RNG_SEED` picks others). A
        // failure is kept in proptest-regressions/ (committed) and replayed first.
        #![proptest_config(ProptestConfig {
            cases: 48,
            rng_seed: match ProptestConfig::default().rng_seed {
                prop::test_runner::RngSeed::Random => prop::test_runner::RngSeed::Fixed(12),
                chosen => chosen,
            },
            ..ProptestConfig::default()
        })]

        /// Random updates from several clients, stored, compacted at random points, reloaded:
        /// the reloaded document has the same state vector and content as one built in memory.
        #[test]
        fn store_compact_reload_round_trip(ops in edits()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
                let clients: Vec<Doc> = (0..3).map(|_| Doc::new()).collect();
                let mut reference = DocState::new();
                for (who, at, text, compact) in ops {
                    let u = edit(&clients[who as usize], at, &text);
                    reference.apply_update(concord_crdt::IncomingUpdate::decode(&u).unwrap()).unwrap();
                    append(&store, "p", u).await;
                    if compact {
                        store.compact(&name("p"), reference.full_state()).await.unwrap().await.unwrap().unwrap();
                    }
                }
                store.close().await;
                let reopened = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
                let loaded = DocState::load(reopened.load(&name("p")).await.unwrap().unwrap().parts()).unwrap();
                prop_assert_eq!(loaded.state_vector(), reference.state_vector());
                prop_assert_eq!(loaded.text("t"), reference.text("t"));
                let txn = loaded.doc().transact();
                let _ = txn.get_text("t").map(|t| t.get_string(&txn));
                reopened.close().await;
                Ok(())
            })?;
        }
    }
}
