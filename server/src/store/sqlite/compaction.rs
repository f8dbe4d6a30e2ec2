//! Compaction and log garbage collection, run by the writer inside its transactions. A
//! document's snapshot replaces its log entries, except those some peer has not acknowledged
//! yet: they stay for replication (marked as covered by `snapshot_seq`) until every known peer
//! has them, and a periodic pass then deletes them.

use std::time::{Duration, Instant};

use rusqlite::params;
use tracing::debug;

use super::writer::{Op, Writer};
use crate::store::{Seq, StoreError, checksum};

/// How often log entries that only replication still needed are garbage-collected.
const LOG_GC_PERIOD: Duration = Duration::from_secs(10);

/// How long a node with peers keeps log entries after they were written, whatever the peers
/// acknowledged. A peer acknowledges entries it did not ask for (another origin's, which it
/// takes directly) as it passes them; should its direct link turn out to have died silently
/// (noticed after 8 s), it asks this node for them, and they must still be here.
pub(super) const RELAY_RETAIN: Duration = Duration::from_secs(30);

impl Writer {
    /// Replaces the log entries of `doc_id` so far (up to `through`, if given) with `snapshot`. Entries that some peer has
    /// not acknowledged are kept for replication; `snapshot_seq` marks them as covered.
    pub(super) fn compact(
        &mut self,
        doc_id: i64,
        snapshot: &[u8],
        through: Option<Seq>,
    ) -> Result<Seq, StoreError> {
        let covered: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(seq) FROM log WHERE doc_id = ?1")?
            .query_row([doc_id], |r| r.get(0))?;
        let covered = covered.unwrap_or(0);
        let covered = through.map_or(covered, |t| covered.min(t as i64));
        self.conn
            .prepare_cached(
                "UPDATE docs SET snapshot = ?2, snapshot_seq = MAX(snapshot_seq, ?3), snapshot_crc = ?4 WHERE id = ?1",
            )?
            .execute(params![doc_id, snapshot, covered, checksum::snapshot(doc_id, snapshot)])?;
        let retain_above: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(acked_seq) FROM peer_cursors")?
            .query_row([], |r| r.get(0))?;
        let delete_upto = match retain_above {
            None => covered,
            Some(r) => r.min(covered).min(self.relay_floor() as i64),
        };
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
        let min_acked = min_acked.min(self.relay_floor() as i64);
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

    /// The last sequence written at least `relay_retain` ([`RELAY_RETAIN`] by default) ago, as far as this writer has
    /// noticed (it samples its position when asked, so it errs towards keeping more).
    fn relay_floor(&mut self) -> Seq {
        let now = Instant::now();
        let last = self.next_seq - 1;
        if self
            .recent
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            self.recent.push_back((now, last));
        }
        let retain = self.options.relay_retain;
        while self.recent.len() >= 2 && now.duration_since(self.recent[1].0) >= retain {
            self.recent.pop_front();
        }
        match self.recent.front() {
            Some((at, seq)) if now.duration_since(*at) >= retain => *seq,
            _ => 0,
        }
    }

    /// Collects what every peer has acknowledged ([`Writer::collect_replicated`]), at most once
    /// per [`LOG_GC_PERIOD`] and only in a batch that moves a peer cursor.
    pub(super) fn collect_if_due(&mut self, batch: &[Op]) -> Result<(), StoreError> {
        if self.last_gc.elapsed() >= LOG_GC_PERIOD
            && batch.iter().any(|op| matches!(op, Op::Cursor { .. }))
        {
            self.last_gc = Instant::now();
            self.collect_replicated()?;
        }
        Ok(())
    }
}
