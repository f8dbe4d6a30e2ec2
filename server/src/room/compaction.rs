//! The compaction policy: when a room replaces its document's log with a snapshot.
//!
//! A document loads from its snapshot plus the log written since, so the log must not grow
//! without bound; but a snapshot encodes the whole document, which holds up everything queued
//! behind it. [`due`] weighs the two (pure, tested below); [`Room::maybe_compact`] asks it once
//! per wake-up and writes the snapshot through the outbox like any other write.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::debug;

use concord_crdt::DocMode;

use super::outbox::Outbox;
use super::{Room, RoomConfig};
use crate::store::{LogTail, StoreError};

/// The longest a room spent compacting (encoding its snapshot and queueing the write), in ms,
/// since the server started: how long compaction held a room up (`/api/status`).
static LONGEST_MS: AtomicU64 = AtomicU64::new(0);

/// [`LONGEST_MS`].
pub fn longest_compaction_ms() -> u64 {
    LONGEST_MS.load(Ordering::Relaxed)
}

/// How far past its compaction threshold a room with messages waiting lets its log grow before
/// it compacts anyway.
const BUSY_COMPACTION_FACTOR: u64 = 4;

/// Whether a log `tail` is due for compaction: past `--compact-after-bytes`, or past
/// `--compact-after-updates` entries that also weigh at least half the snapshot. The second
/// condition keeps compaction's cost (encoding the whole document) proportional to what was
/// written: a big document typed into a keystroke at a time would otherwise be re-encoded every
/// thousand keystrokes. Loads stay bounded: at most the snapshot plus half its size again in log
/// entries (or the byte threshold).
///
/// While more messages wait (`busy`), compaction is put off until the log is
/// [`BUSY_COMPACTION_FACTOR`] times over the threshold: a room catches up first and compacts in
/// its next quiet moment.
fn due(tail: LogTail, cfg: &RoomConfig, busy: bool) -> bool {
    let k = if busy { BUSY_COMPACTION_FACTOR } else { 1 };
    tail.bytes >= cfg.compact_after_bytes.saturating_mul(k)
        || (tail.entries >= cfg.compact_after_updates.saturating_mul(k)
            && tail.bytes >= (tail.snapshot_bytes / 2).saturating_mul(k))
}

impl Room {
    /// Compacts if [`due`]. A live document encodes its snapshot here: the store writes in order,
    /// so it covers exactly the updates appended so far, and it waits while the room has not
    /// read everything a link wrote for it (`lane`). An encoded document's snapshot is its merged
    /// form, which takes decoding all of it: that runs off this task ([`Room::compact_merged`]).
    pub(super) async fn maybe_compact(
        &mut self,
        outbox: &mut Outbox,
        busy: bool,
    ) -> Result<(), StoreError> {
        let tail = self.tail;
        if !due(tail, &self.env.config, busy) {
            return Ok(());
        }
        if self.state.mode() == DocMode::Encoded {
            return self.start_merge_for_compaction().await;
        }
        if !self.lane.begin_compaction(self.lane_read) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let snapshot = self.state.full_state();
        let snapshot_bytes = snapshot.len() as u64;
        let queued = self.env.store.compact(&self.name, snapshot, None).await;
        self.lane.end_compaction();
        let commit = queued?;
        self.compacted(started, tail, snapshot_bytes, LogTail::default());
        outbox.push(commit, Vec::new());
        Ok(())
    }

    /// Encoded mode: marks the log's position (a sequence point, queued with the same care for
    /// the lane as a snapshot), then merges off this task. Everything the room accepted so far
    /// was queued before the point and is in the merge; what it accepts meanwhile comes after
    /// both, and stays in the log ([`Room::compact_merged`]).
    async fn start_merge_for_compaction(&mut self) -> Result<(), StoreError> {
        if self.job.is_some() || self.compaction_point.is_some() {
            return Ok(()); // asked again when the running job ends
        }
        if !self.lane.begin_compaction(self.lane_read) {
            return Ok(());
        }
        let point = self.env.store.sequence_point().await;
        self.lane.end_compaction();
        self.compaction_point = Some(point?);
        self.merge_now();
        Ok(())
    }

    /// The merge a compaction waited for is done (`swapped`: it is the document's merged form
    /// now): stores it as the snapshot of the log through the sequence point taken before it.
    pub(super) async fn compact_merged(
        &mut self,
        outbox: &mut Outbox,
        swapped: bool,
    ) -> Result<(), StoreError> {
        let Some(point) = self.compaction_point.take() else {
            return Ok(());
        };
        if !swapped {
            // Tried again when due again; meanwhile what the job's end would have started.
            if self.gc_wanted {
                self.start_gc();
            }
            self.maybe_merge();
            return Ok(());
        }
        // Queued before the merge started: resolved by now, or within a commit.
        let through = point.await.map_err(|_| StoreError::Closed)??;
        let started = std::time::Instant::now();
        let Some(e) = self.state.encoded() else {
            return Ok(());
        };
        let (snapshot, after) = (
            e.base(),
            LogTail {
                entries: e.tail_len() as u64,
                bytes: e.tail_bytes() as u64,
                snapshot_bytes: 0,
            },
        );
        let snapshot_bytes = snapshot.len() as u64;
        let commit = self
            .env
            .store
            .compact(&self.name, snapshot.to_vec(), Some(through))
            .await?;
        let tail = self.tail;
        self.compacted(started, tail, snapshot_bytes, after);
        outbox.push(commit, Vec::new());
        Ok(())
    }

    /// Bookkeeping after a snapshot was queued: the log left is `after`.
    fn compacted(
        &mut self,
        started: std::time::Instant,
        tail: LogTail,
        snapshot_bytes: u64,
        after: LogTail,
    ) {
        let took = started.elapsed();
        LONGEST_MS.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
        debug!(doc = %self.name, entries = tail.entries, bytes = tail.bytes, snapshot_bytes, ?took, "compacted");
        self.tail = LogTail {
            snapshot_bytes,
            ..after
        };
        // An encoded document keeps deleted text until a Doc rebuilds it: do that now, off this
        // task, so the next snapshot (and every fresh client's Step2) leaves it out.
        self.start_gc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;

    fn config() -> RoomConfig {
        RoomConfig {
            evict_after: std::time::Duration::from_secs(1),
            durability: Durability::Sync,
            compact_after_updates: 100,
            compact_after_bytes: 10_000,
            doc_queue: 16,
            doc_mode: concord_crdt::DocMode::default(),
        }
    }

    fn tail(entries: u64, bytes: u64, snapshot_bytes: u64) -> LogTail {
        LogTail {
            entries,
            bytes,
            snapshot_bytes,
        }
    }

    #[test]
    fn a_log_past_the_byte_threshold_is_compacted() {
        assert!(!due(tail(1, 9_999, 0), &config(), false));
        assert!(due(tail(1, 10_000, 0), &config(), false));
    }

    #[test]
    fn many_entries_are_compacted_only_once_they_weigh_half_the_snapshot() {
        // 100 keystrokes into an 8 KB document: not yet worth re-encoding it.
        assert!(!due(tail(100, 3_999, 8_000), &config(), false));
        assert!(due(tail(100, 4_000, 8_000), &config(), false));
        assert!(!due(tail(99, 4_000, 8_000), &config(), false));
    }

    #[test]
    fn a_busy_room_puts_compaction_off_up_to_four_times_the_threshold() {
        assert!(!due(tail(1, 39_999, 0), &config(), true));
        assert!(due(tail(1, 40_000, 0), &config(), true));
        assert!(!due(tail(399, 16_000, 8_000), &config(), true));
        assert!(due(tail(400, 16_000, 8_000), &config(), true));
    }
}
