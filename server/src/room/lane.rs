//! A room reading back the replicated updates a link wrote to the log for it while its inbox was
//! full ([`Lane`](crate::handles::Lane)).
//!
//! They are durable already (the link acknowledged them once committed), so what they change is
//! relayed to the members at once. The room reads them in the log's order, after whatever it has
//! read before (`lane_read`, which starts where its load ended); reading its own appends again on
//! the way costs nothing but time (they bring nothing new). Compaction waits until the room has
//! read everything written for it ([`Lane::begin_compaction`](crate::handles::Lane)).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use concord_crdt::{Applied, IncomingUpdate, encode};
use tracing::{debug, warn};

use super::Room;
use crate::metrics::{Source, Verdict};
use crate::store::StoreError;

/// Log entries read at a time.
const PAGE: usize = 256;

impl Room {
    /// Applies what was written for this document to the log and not read yet.
    pub(super) async fn read_lane(&mut self) -> Result<(), StoreError> {
        let mut read = 0usize;
        loop {
            let written = self.lane.written.load(Ordering::SeqCst);
            if written <= self.lane_read {
                break;
            }
            let page = self
                .env
                .store
                .read_doc_log(&self.name, self.lane_read, PAGE)
                .await?;
            let Some(&(last, _)) = page.last() else {
                // Nothing there (compacted by an earlier room that had read it): done.
                self.lane_read = written;
                break;
            };
            let mut relay: Vec<Bytes> = Vec::new();
            {
                let mut batch = self.state.batch();
                for (seq, bytes) in &page {
                    match IncomingUpdate::decode(bytes) {
                        Ok(u) => {
                            // Counted only when new: what it brings nothing is most often
                            // the room's own append read again, not a peer's update.
                            if let Ok(Applied::Changed) = batch.apply(u.decoded, bytes.clone()) {
                                relay.push(bytes.clone());
                            }
                        }
                        Err(e) => {
                            warn!(doc = %self.name, seq, error = %e, "an update written to the log for this document does not decode; skipping it")
                        }
                    }
                }
            }
            read += page.len();
            self.env
                .metrics
                .updates(Source::Peer, Verdict::New, relay.len() as u64);
            self.lane_read = last;
            self.exists = true;
            if !relay.is_empty() {
                self.changed();
            }
            for bytes in relay {
                self.tail.entries += 1;
                self.tail.bytes += bytes.len() as u64;
                self.broadcast(Bytes::from(encode::update(&bytes)));
            }
        }
        self.lane
            .applied
            .fetch_max(self.lane_read, Ordering::SeqCst);
        if read > 0 {
            debug!(doc = %self.name, entries = read, through = self.lane_read, "read replicated updates written to the log while the room was busy");
            if self.repair_due.is_none() {
                self.repair_gaps();
            }
        }
        Ok(())
    }
}
