//! The writer thread, the only one that writes to the database: it takes queued writes ([`Op`])
//! from a bounded channel and writes whatever queued up meanwhile in one transaction with one
//! fsync (**group commit**), then answers each write's commit and publishes the new log entries
//! to the [`Feed`]. A failed transaction is rolled back and fails every write in it.
//!
//! Each commit's outcome goes to the store's [`HealthCell`] (`/readyz`). While the last one
//! failed, the idle writer tries a small write once a second ([`Writer::probe`]), so a node that a
//! load balancer took out of rotation (and so gets no writes) sees space come back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concord_crdt::{DocName, NodeId};
use rusqlite::{Connection, params};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, error, info, warn};

use super::checkpoint::WAL_RESTART_BYTES;
use super::schema::{SCHEMA, add_checksum_columns};
use super::{SqliteOptions, peers};
use crate::store::health::{HealthCell, SizeAtFailure, WriteFailure};
use crate::store::{
    Append, Durability, Incarnation, LogEntry, Origin, PeerInfo, Seq, StoreError, checksum,
};

/// Most writes in one transaction; bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 4096;

/// While writes fail, how often the idle writer probes ([`Writer::probe`]).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// What the probe writes (and deletes in the same transaction): a few pages, so it fails while
/// there is no room for an ordinary write, on a full disk as at `--max-db-size`.
const PROBE_BYTES: i64 = 16 * 1024;

/// A write queued for the writer thread; `done` gets its commit.
pub(super) enum Op {
    /// Log entries appended in order; `done` gets the last one's sequence.
    Append {
        entries: Vec<Append>,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    Compact {
        doc: DocName,
        snapshot: Vec<u8>,
        /// Replace only the entries up to this sequence (`Store::compact`).
        through: Option<Seq>,
        done: oneshot::Sender<Result<Seq, StoreError>>,
    },
    /// The last sequence handed out so far (`Store::sequence_point`).
    Point {
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
pub(super) const FEED_CAPACITY: usize = 16 * 1024;

/// What the writer shares with readers of the log.
pub(super) struct Feed {
    pub(super) entries: broadcast::Sender<Arc<LogEntry>>,
    /// Last committed sequence. Updated before the entries are published, so a subscriber that
    /// reads it after subscribing misses nothing.
    pub(super) committed: AtomicU64,
}

/// Opens the writer's connection: WAL, synchronous commits, the schema, the size limit.
pub(super) fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
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

/// The writer thread's state. Only this thread writes to the database.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) options: SqliteOptions,
    /// The sequence the next appended entry gets.
    pub(super) next_seq: Seq,
    /// Document name → row id, for documents this process has written.
    doc_ids: HashMap<DocName, i64>,
    feed: Arc<Feed>,
    /// Where each commit's outcome is recorded.
    health: Arc<HealthCell>,
    /// When the log was last garbage-collected ([`Writer::collect_if_due`]).
    pub(super) last_gc: Instant,
    /// The log's end, sampled now and then: what was written before
    /// [`RELAY_RETAIN`](super::compaction::RELAY_RETAIN) ago.
    pub(super) recent: std::collections::VecDeque<(Instant, Seq)>,
}

impl Writer {
    /// Starts the writer thread on `conn` (see [`open_writer`]), numbering the log from
    /// `last_seq + 1`.
    pub(super) fn spawn(
        conn: Connection,
        options: SqliteOptions,
        last_seq: Seq,
        feed: Arc<Feed>,
        health: Arc<HealthCell>,
        rx: flume::Receiver<Op>,
    ) -> Result<JoinHandle<()>, StoreError> {
        let writer = Writer {
            conn,
            options,
            next_seq: last_seq + 1,
            doc_ids: HashMap::new(),
            feed,
            health,
            last_gc: Instant::now(),
            recent: std::collections::VecDeque::new(),
        };
        // The store's threads log in the span of the node that opened it (its region).
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("concord-store-writer".into())
            .spawn(move || span.in_scope(|| writer.run(rx)))
            .map_err(|e| StoreError::Io {
                doing: "starting the writer thread".into(),
                error: Arc::new(e),
            })
    }

    fn run(mut self, rx: flume::Receiver<Op>) {
        let mut closing = false;
        while !closing {
            let received = if self.health.is_failing() {
                rx.recv_timeout(PROBE_EVERY)
            } else {
                rx.recv().map_err(|_| flume::RecvTimeoutError::Disconnected)
            };
            let first = match received {
                Ok(op) => op,
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.probe();
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
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
        let changes_before = self.conn.total_changes();
        let mut new_docs = Vec::new();
        match self.try_write(&batch, &mut new_docs) {
            Ok(seqs) => {
                let elapsed = started.elapsed();
                tracing::trace!(
                    writes = batch.len(),
                    elapsed_us = elapsed.as_micros() as u64,
                    "committed"
                );
                let metrics = &self.options.metrics;
                metrics.commit_seconds.observe(elapsed.as_secs_f64());
                let entries = self.next_seq - first_seq;
                if entries > 0 {
                    metrics.commit_batch.observe(entries as f64);
                }
                // A transaction that changed no row writes nothing to the WAL, and syncs nothing.
                if self.conn.total_changes() > changes_before {
                    metrics.fsyncs.inc();
                }
                self.feed
                    .committed
                    .store(self.next_seq - 1, Ordering::Release);
                if self.health.succeeded() {
                    info!("store writes succeed again");
                }
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
                                    origin: entry.origin,
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
                self.options.metrics.write_errors.inc();
                error!(error = %e, writes = batch.len(), "store write failed; the affected documents close their connections");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.record_failure(&e);
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
                        let path = Origin::to_text(entry.origin.as_ref());
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
                Op::Compact {
                    doc,
                    snapshot,
                    through,
                    ..
                } => {
                    let doc_id = self.doc_id(doc, new_docs)?;
                    seqs.push(self.compact(doc_id, snapshot, *through)?);
                }
                Op::Point { .. } => seqs.push(self.next_seq - 1),
                Op::Cursor {
                    peer, seq, reset, ..
                } => {
                    peers::write_cursor(&self.conn, peer, *seq, *reset)?;
                    seqs.push(*seq);
                }
                Op::Received { peer, of, seq, .. } => {
                    peers::write_received(&self.conn, peer, *of, *seq)?;
                    seqs.push(*seq);
                }
                Op::Peer { peer, info, .. } => {
                    peers::write_peer(&self.conn, peer, info)?;
                    seqs.push(0);
                }
                Op::Close => seqs.push(0), // never in a batch: `run` stops at it
            }
        }
        self.collect_if_due(batch)?;
        self.conn.execute_batch("COMMIT")?;
        Ok(seqs)
    }

    /// Records a failed commit (after its rollback) for [`crate::store::Store::health`]; a
    /// full store with `--max-db-size` also records its size.
    fn record_failure(&self, e: &StoreError) {
        let size = match e {
            StoreError::Full(_) if self.options.max_db_bytes > 0 => {
                self.db_bytes().map(|db_bytes| SizeAtFailure {
                    db_bytes,
                    limit_bytes: self.options.max_db_bytes,
                })
            }
            _ => None,
        };
        self.health.failed(WriteFailure {
            error: e.to_string(),
            size,
        });
    }

    /// The database's size in bytes as this connection sees it (committed pages, WAL included).
    fn db_bytes(&self) -> Option<u64> {
        let pragma = |name: &str| {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .ok()
        };
        Some((pragma("page_count")? * pragma("page_size")?) as u64)
    }

    /// While the last commit failed: writes a few pages and deletes them in one committed
    /// transaction. Success means ordinary writes fit again (space was freed), and ends the
    /// failure; a failure is recorded like a failed commit (and logged at debug only: the
    /// commit that failed was logged).
    fn probe(&mut self) {
        let result = (|| -> Result<(), StoreError> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', zeroblob(?1))",
                [PROBE_BYTES],
            )?;
            self.conn
                .execute("DELETE FROM meta WHERE key = 'write_probe'", [])?;
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                if self.health.succeeded() {
                    info!("store writable again (a write probe committed)");
                }
            }
            Err(e) => {
                debug!(error = %e, "store write probe failed");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.record_failure(&e);
            }
        }
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
        | Op::Peer { done, .. }
        | Op::Point { done } => Some(done),
        Op::Close => None,
    }
}
