//! Sends this node's update log to one peer, from the last sequence it acknowledged.
//!
//! Catch-up reads the store in pages; once caught up the stream follows the live feed of
//! committed entries (falling back to the store if it lags). Entries whose path holds the peer are
//! skipped, and a `Progress` marker lets the peer acknowledge past them. At most [`WINDOW`]
//! entries are in flight unacknowledged, so a slow peer slows its own stream and nothing else.
//!
//! A peer seen for the first time (cursor 0) first gets every stored snapshot: compaction has
//! removed from the log what those cover.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use concord_crdt::PeerMessage;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::{debug, info};

use super::{LinkHandle, PeerStats, Replication};
use crate::store::{LogEntry, Seq};

/// Log entries sent but not yet acknowledged, at most.
const WINDOW: u64 = 4096;
/// Entries read from the store at a time while catching up.
const PAGE: usize = 512;

struct Stream {
    hub: Arc<Replication>,
    link: LinkHandle,
    stats: Arc<PeerStats>,
    acked: watch::Receiver<Seq>,
    /// Last sequence sent (or skipped).
    pos: Seq,
    /// Whether entries were skipped since the last message sent.
    skipped: bool,
}

pub async fn stream_log(
    hub: Arc<Replication>,
    link: LinkHandle,
    stats: Arc<PeerStats>,
    cursor: Seq,
    acked: watch::Receiver<Seq>,
) {
    let mut s = Stream {
        hub,
        link,
        stats,
        acked,
        pos: cursor,
        skipped: false,
    };
    if let Err(e) = s.run().await {
        debug!(peer = %s.link.peer, "log stream ended: {e}");
    }
}

impl Stream {
    async fn run(&mut self) -> Result<(), String> {
        let mut feed = self.hub.store.subscribe();
        if self.pos == 0 {
            self.send_snapshots().await?;
        }
        let mut committed = feed.committed;
        loop {
            // Behind the live feed: read the store.
            while self.pos < committed {
                let entries = self
                    .hub
                    .store
                    .read_log(self.pos, PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                if entries.is_empty() {
                    self.pos = committed; // the rest was compacted away after every peer had it
                    break;
                }
                for e in &entries {
                    self.send(e).await?;
                }
            }
            self.flush_progress().await?;
            // Caught up: follow the feed.
            match feed.entries.recv().await {
                Ok(e) => {
                    if e.seq > self.pos {
                        self.send(&e).await?;
                    }
                    if feed.entries.is_empty() {
                        self.flush_progress().await?;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    debug!(peer = %self.link.peer, missed = n, "log feed lagged; reading the store");
                    committed = self.hub.store.committed();
                }
                Err(RecvError::Closed) => return Err("store closed".into()),
            }
        }
    }

    async fn send(&mut self, e: &LogEntry) -> Result<(), String> {
        self.pos = e.seq;
        if e.path.contains(&self.link.peer) {
            // It came from (or through) that peer: never send an update back along its path.
            self.skipped = true;
            return Ok(());
        }
        self.wait_for_window().await?;
        let mut path = e.path.clone();
        path.push(self.hub.me.node_id.clone());
        let msg = PeerMessage::Update {
            seq: e.seq,
            doc: e.doc.clone(),
            path,
            update: e.update.to_vec(),
        };
        self.put(msg.encode()).await?;
        self.stats
            .in_flight
            .lock()
            .unwrap()
            .push_back((e.seq, Instant::now()));
        self.stats.sent_updates.fetch_add(1, Ordering::Relaxed);
        self.skipped = false;
        Ok(())
    }

    /// Lets the peer acknowledge past entries we skipped.
    async fn flush_progress(&mut self) -> Result<(), String> {
        if self.skipped {
            self.skipped = false;
            self.put(PeerMessage::Progress { seq: self.pos }.encode())
                .await?;
        }
        Ok(())
    }

    async fn wait_for_window(&mut self) -> Result<(), String> {
        loop {
            let acked = *self.acked.borrow();
            if self.pos.saturating_sub(acked) <= WINDOW {
                return Ok(());
            }
            self.acked
                .changed()
                .await
                .map_err(|_| "link closed".to_string())?;
        }
    }

    async fn put(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.stats
            .sent_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.link
            .out
            .send(Bytes::from(bytes))
            .await
            .map_err(|_| "link closed".to_string())
    }

    async fn send_snapshots(&mut self) -> Result<(), String> {
        let mut after = 0;
        let mut sent = 0usize;
        loop {
            let page = self
                .hub
                .store
                .read_snapshots(after, 64)
                .await
                .map_err(|e| e.to_string())?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, doc, snapshot) in page {
                let path = vec![self.hub.me.node_id.clone()];
                // seq 0: acknowledging it moves nothing; the log that follows carries the cursor.
                self.put(
                    PeerMessage::Update {
                        seq: 0,
                        doc,
                        path,
                        update: snapshot,
                    }
                    .encode(),
                )
                .await?;
                sent += 1;
            }
        }
        if sent > 0 {
            info!(peer = %self.link.peer, documents = sent, "new peer: sent every stored snapshot before the log");
        }
        Ok(())
    }
}
