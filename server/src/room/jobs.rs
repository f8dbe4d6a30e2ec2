//! Merging an encoded document's updates off the room's thread.
//!
//! In encoded mode (`--doc-mode encoded`) a room keeps its document as one merged update plus
//! the updates accepted since ([`concord_crdt::EncodedDoc`]). Folding those into the merged one
//! decodes the whole document (about 35 ms and 30 MB, briefly, for a 500 KB text), so the room
//! never does it between two messages: it hands a [`MergeJob`] to a blocking thread and goes on
//! serving, and swaps the result in when it arrives ([`EncodedDoc::finish`] keeps whatever was
//! accepted meanwhile). One job at a time per room. After each compaction a garbage-collecting
//! pass runs the same way: merged updates keep deleted text, a Doc rebuilt from them drops it.

use concord_crdt::encoded::{JobKind, MergeJob, Merged};
use tokio::sync::Semaphore;
use tokio::sync::oneshot;
use tracing::debug;

use super::Room;

/// Jobs running at once across the node.
const MAX_JOBS: usize = 2;

static JOBS: Semaphore = Semaphore::const_new(MAX_JOBS);

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

    /// Starts a merge of everything unmerged, if the document is encoded and no job runs;
    /// returns whether it started one.
    pub(super) fn merge_now(&mut self) -> bool {
        if self.job.is_some() {
            return false;
        }
        match self.state.encoded().map(|e| e.merge_job_now()) {
            Some(job) => {
                self.start_job(job);
                true
            }
            None => false,
        }
    }

    /// Asks for a garbage-collecting pass: started now if the document is encoded and no job
    /// runs, else when the running job ends. Not while some update waits for another (a Doc
    /// rebuilt then could leave a waiting block out; `EncodedDoc` also refuses such a result).
    pub(super) fn start_gc(&mut self) {
        if self.state.mode() != concord_crdt::DocMode::Encoded {
            return;
        }
        self.gc_wanted = true;
        if self.job.is_some() || self.state.has_pending() {
            return;
        }
        if let Some(job) = self.state.encoded().map(|e| e.gc_job()) {
            self.gc_wanted = false;
            self.start_job(job);
        }
    }

    fn start_job(&mut self, job: MergeJob) {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            // A few at a time across the node: each decodes a whole document (about 30 MB
            // briefly for a 500 KB text).
            let Ok(_permit) = JOBS.acquire().await else {
                return;
            };
            let merged = tokio::task::spawn_blocking(move || {
                let merged = job.run();
                // Blocking threads are not runtime workers, so they never collect their heaps
                // on parking (`memory`): give back what the job churned through here.
                // SAFETY: no preconditions; it only releases this thread's free memory.
                unsafe { libmimalloc_sys::mi_collect(true) };
                merged
            })
            .await;
            if let Ok(merged) = merged {
                let _ = tx.send(merged);
            }
        });
        self.job = Some(rx);
    }

    /// A job's result: swapped in as the new base. Returns whether it was.
    pub(super) fn job_done(&mut self, merged: Option<Merged>) -> bool {
        self.job = None;
        let Some(merged) = merged else { return false };
        let kind = merged.kind();
        let mut swapped = false;
        if let Some(e) = self.state.encoded() {
            swapped = e.finish(merged);
            debug!(doc = %self.name, ?kind, swapped, tail = e.tail_len(), "merge job done");
            if swapped && kind == JobKind::Gc {
                // Same document, without its deleted text: fresh clients get the smaller one.
                self.changed();
            }
        }
        // The job decoded the whole document: give that memory back.
        crate::memory::freed_a_lot();
        if self.compaction_point.is_none() {
            // (A compaction waiting for this merge stores it first, then starts the GC pass.)
            if self.gc_wanted {
                self.start_gc();
            }
            self.maybe_merge();
        }
        swapped
    }
}

/// The running job's result, or never when none runs.
pub(super) async fn finished(job: &mut Option<oneshot::Receiver<Merged>>) -> Option<Merged> {
    match job {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}
