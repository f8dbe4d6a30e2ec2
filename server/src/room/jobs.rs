//! Merging an encoded document's updates off the room's thread.
//!
//! In encoded mode (`--doc-mode encoded`) a room keeps its document as one merged update plus
//! the updates accepted since ([`concord_crdt::EncodedDoc`]). Folding those into the merged one
//! decodes the whole document (about 35 ms and 30 MB, briefly, for a 500 KB text), so the room
//! never does it between two messages: it hands a [`MergeJob`] to a blocking thread and goes on
//! serving, and swaps the result in when it arrives ([`EncodedDoc::finish`] keeps whatever was
//! accepted meanwhile). One job at a time per room. After each compaction a garbage-collecting
//! pass runs the same way: merged updates keep deleted text, a Doc rebuilt from them drops it.

use concord_crdt::encoded::{MergeJob, Merged};
use tokio::sync::oneshot;
use tracing::debug;

use super::Room;

impl Room {
    /// Starts a merge if the document is encoded, its tail is long enough and no job runs.
    pub(super) fn maybe_merge(&mut self) {
        if self.job.is_some() {
            return;
        }
        if let Some(job) = self.state.encoded().and_then(|e| e.merge_job()) {
            self.start_job(job);
        }
    }

    /// Starts a garbage-collecting pass if the document is encoded and no job runs.
    pub(super) fn start_gc(&mut self) {
        if self.job.is_some() {
            return;
        }
        if let Some(job) = self.state.encoded().map(|e| e.gc_job()) {
            self.start_job(job);
        }
    }

    fn start_job(&mut self, job: MergeJob) {
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(job.run());
        });
        self.job = Some(rx);
    }

    /// A job's result: swapped in as the new base.
    pub(super) fn job_done(&mut self, merged: Option<Merged>) {
        self.job = None;
        let Some(merged) = merged else { return };
        let kind = merged.kind();
        if let Some(e) = self.state.encoded() {
            let swapped = e.finish(merged);
            debug!(doc = %self.name, ?kind, swapped, tail = e.tail_len(), "merge job done");
        }
        // The job decoded the whole document: give that memory back.
        crate::memory::freed_a_lot();
        self.maybe_merge();
    }
}

/// The running job's result, or never when none runs.
pub(super) async fn finished(job: &mut Option<oneshot::Receiver<Merged>>) -> Option<Merged> {
    match job {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}
