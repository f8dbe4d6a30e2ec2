//! Sends this node's update log to one peer, from where the peer's `Resume` says it holds
//! everything ([`super::resume`]).
//!
//! Catch-up reads the store in pages; once caught up the stream follows the live feed of
//! committed entries (falling back to the store if it lags). It sends only the entries whose
//! origin the peer asked for in its `Routes` ([`CarryFilter`]): our own, and those of the origins
//! it takes through us (a detour, or a graft to catch up). Nothing is sent before the peer's
//! first `Routes`. When the peer asks for an origin it did not before, the stream goes back and
//! sends that origin's entries above what the peer holds of it, from what the log still
//! retains. Skipped entries are covered by a `Progress` marker, so the peer acknowledges past
//! them. Origins other than ours are named once per link (`Origin`) and then sent as a small
//! code. At most [`WINDOW`] entries are in flight unacknowledged, so a slow peer slows its own
//! stream and nothing else.
//!
//! A peer that holds nothing of this log (new, wiped, or with a record from an incarnation this
//! log does not have), or one resuming before entries compaction deleted, first gets every stored
//! snapshot: they are all that is left of the deleted entries. The stream then always sends a
//! `Progress` marker at its start, so the peer records a claim on this log's current incarnation
//! (even at 0) and is not sent the snapshots again on its next reconnect; and it sends one after
//! any entries it skipped or found deleted, so the peer's claim reaches the end of the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use concord_crdt::routing::CarryFilter;
use concord_crdt::{NodeId, PeerMessage};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use axum::extract::ws::close_code;

use super::{LinkHandle, PeerStats, Replication};
use crate::store::{LogEntry, Seq, StoreError};

/// Log entries sent but not yet acknowledged, at most.
const WINDOW: u64 = 4096;
/// Entries read from the store at a time while catching up.
const PAGE: usize = 512;

struct Stream {
    hub: Arc<Replication>,
    link: LinkHandle,
    stats: Arc<PeerStats>,
    acked: watch::Receiver<Seq>,
    /// What the peer asks us to send ([`CarryFilter::set`] on each change).
    carry: watch::Receiver<Option<Carry>>,
    filter: CarryFilter,
    /// The codes of the origins named on this link so far.
    codes: HashMap<NodeId, u32>,
    /// Last sequence sent (or skipped).
    pos: Seq,
    /// While `pos` is below this, the stream is going back over entries for an origin the peer
    /// just asked for: entries missing there are not a gap in what the peer's cursor promises.
    rewound_until: Seq,
    /// Whether entries were skipped since the last message sent, the last of them, and when a
    /// `Progress` marker covers them if no update does first ([`PROGRESS_AFTER`]).
    skipped: bool,
    skipped_to: Seq,
    progress_due: Option<tokio::time::Instant>,
}

/// How long skipped entries wait for an update to cover them before a `Progress` marker does.
/// An update's acknowledgement covers everything before it, so a busy link needs no markers;
/// a link whose entries are all skipped sends at most a few a second.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// A peer's carry request: origin → the highest origin sequence it holds of it.
pub type Carry = Arc<BTreeMap<NodeId, u64>>;

pub async fn stream_log(
    hub: Arc<Replication>,
    link: LinkHandle,
    stats: Arc<PeerStats>,
    start: Seq,
    snapshots: bool,
    acked: watch::Receiver<Seq>,
    carry: watch::Receiver<Option<Carry>>,
) {
    let filter = CarryFilter::new(hub.me.node_id.clone(), start);
    let mut s = Stream {
        hub,
        link,
        stats,
        acked,
        carry,
        filter,
        codes: HashMap::new(),
        pos: start,
        rewound_until: 0,
        skipped: false,
        skipped_to: start,
        progress_due: None,
    };
    if let Err(e) = s.run(snapshots).await {
        debug!(peer = %s.link.peer, "log stream ended: {e}");
    }
}

/// Why a log stream ended. Each ends its link's stream; only [`StreamEnd::LogCompacted`] also
/// closes the link (the next one starts with the snapshots).
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("the link closed")]
    LinkClosed,
    #[error("the store closed")]
    StoreClosed,
    #[error("cannot read the log: {0}")]
    Store(#[from] StoreError),
    #[error(
        "log entries after {0} were compacted away while streaming; restarting the link to send the snapshots"
    )]
    LogCompacted(Seq),
}

impl Stream {
    async fn run(&mut self, snapshots: bool) -> Result<(), StreamEnd> {
        // Nothing before the peer says what it wants.
        self.carry
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StreamEnd::LinkClosed)?;
        self.apply_carry();
        let mut feed = self.hub.store.subscribe();
        if snapshots {
            self.send_snapshots().await?;
        }
        // Acknowledged once everything before it (the snapshots) is durable at the peer, which
        // then records that it holds this log through the start, in its current incarnation.
        self.skip(self.pos);
        self.flush_progress().await?;
        let mut committed = feed.committed;
        loop {
            // Behind the live feed: read the store.
            while self.pos < committed {
                let entries = self.hub.store.read_log(self.pos, PAGE).await?;
                // Entries after the start are kept for this peer until it acknowledges them,
                // so a gap (other than a damaged row, which still exists) means they were
                // deleted behind its back. Unless this stream began with the snapshots, which
                // cover them, end the link: the next one finds the log incomplete and sends
                // the snapshots first. Never skip ahead silently.
                if !snapshots
                    && self.pos >= self.rewound_until
                    && entries.first().map(|e| e.seq) != Some(self.pos + 1)
                {
                    let complete = self.hub.store.log_complete_after(self.pos).await?;
                    if !complete {
                        let end = StreamEnd::LogCompacted(self.pos);
                        warn!(peer = %self.link.peer, "{end}");
                        self.link.control.close(close_code::ERROR, end.to_string());
                        return Err(end);
                    }
                }
                if entries.is_empty() {
                    // The rest was compacted away (the peer has it, or got the snapshots): let
                    // the peer acknowledge up to here.
                    self.pos = committed;
                    self.skip(committed);
                    // At once: a peer that reconnects must not be sent the snapshots again.
                    self.flush_progress().await?;
                    break;
                }
                for e in &entries {
                    self.send(e).await?;
                }
            }
            // Caught up: follow the feed, unless the peer asks for more.
            let due = self.progress_due;
            let next = tokio::select! {
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.flush_progress().await?;
                    continue;
                }
                changed = self.carry.changed() => {
                    changed.map_err(|_| StreamEnd::LinkClosed)?;
                    if self.apply_carry() {
                        committed = self.hub.store.committed();
                    }
                    continue;
                }
                next = feed.entries.recv() => next,
            };
            match next {
                Ok(e) => {
                    if e.seq > self.pos {
                        self.send(&e).await?;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    debug!(peer = %self.link.peer, missed = n, "log feed lagged; reading the store");
                    committed = self.hub.store.committed();
                }
                Err(RecvError::Closed) => return Err(StreamEnd::StoreClosed),
            }
        }
    }

    /// Applies the peer's latest carry request; returns whether the stream went back.
    fn apply_carry(&mut self) -> bool {
        let Some(carry) = self.carry.borrow_and_update().clone() else {
            return false;
        };
        match self.filter.set(&carry, self.pos) {
            Some(back) => {
                debug!(peer = %self.link.peer, from = back, to = self.pos, origins = ?carry.keys().collect::<Vec<_>>(), "peer asks for another origin: going back over the log");
                self.rewound_until = self.rewound_until.max(self.pos);
                self.pos = back;
                true
            }
            None => false,
        }
    }

    async fn send(&mut self, e: &LogEntry) -> Result<(), StreamEnd> {
        self.pos = e.seq;
        let origin = e.origin.as_ref();
        let oseq = origin.map_or(e.seq, |o| o.seq);
        if !self.filter.admits(origin.map(|o| &o.node), e.seq, oseq) {
            self.skip(e.seq);
            return Ok(());
        }
        self.wait_for_window().await?;
        let code = match origin {
            None => 0,
            Some(o) => self.code(&o.node).await?,
        };
        let msg = PeerMessage::Update {
            seq: e.seq,
            doc: e.doc.clone(),
            origin: code,
            oseq,
            update: e.update.to_vec(),
        };
        self.put(msg.encode()).await?;
        self.stats
            .in_flight
            .lock()
            .unwrap()
            .push_back((e.seq, Instant::now()));
        self.stats.sent_updates.fetch_add(1, Ordering::Relaxed);
        // Its acknowledgement covers what was skipped before it.
        self.skipped = false;
        self.progress_due = None;
        Ok(())
    }

    /// The code of `node` on this link, naming it first if this is its first update here.
    async fn code(&mut self, node: &NodeId) -> Result<u32, StreamEnd> {
        if let Some(&c) = self.codes.get(node) {
            return Ok(c);
        }
        let code = self.codes.len() as u32 + 1;
        self.put(
            PeerMessage::Origin {
                code,
                node: node.clone(),
            }
            .encode(),
        )
        .await?;
        self.codes.insert(node.clone(), code);
        Ok(code)
    }

    /// Entries through `seq` were not sent to the peer.
    fn skip(&mut self, seq: Seq) {
        self.skipped = true;
        self.skipped_to = seq;
        self.progress_due
            .get_or_insert_with(|| tokio::time::Instant::now() + PROGRESS_AFTER);
    }

    /// Lets the peer acknowledge past entries we skipped.
    async fn flush_progress(&mut self) -> Result<(), StreamEnd> {
        self.progress_due = None;
        if self.skipped {
            self.skipped = false;
            self.put(
                PeerMessage::Progress {
                    seq: self.skipped_to,
                }
                .encode(),
            )
            .await?;
        }
        Ok(())
    }

    async fn wait_for_window(&mut self) -> Result<(), StreamEnd> {
        loop {
            let acked = *self.acked.borrow();
            if self.pos.saturating_sub(acked) <= WINDOW {
                return Ok(());
            }
            // Skipped entries count in the window: let the peer acknowledge them.
            if self.skipped {
                self.flush_progress().await?;
            }
            self.acked
                .changed()
                .await
                .map_err(|_| StreamEnd::LinkClosed)?;
        }
    }

    async fn put(&self, bytes: Vec<u8>) -> Result<(), StreamEnd> {
        self.stats.sent_messages.fetch_add(1, Ordering::Relaxed);
        self.stats
            .sent_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.link
            .out
            .send(Bytes::from(bytes))
            .await
            .map_err(|_| StreamEnd::LinkClosed)
    }

    async fn send_snapshots(&mut self) -> Result<(), StreamEnd> {
        let mut after = 0;
        let mut sent = 0usize;
        loop {
            let page = self.hub.store.read_snapshots(after, 64).await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, doc, snapshot) in page {
                // seq 0: acknowledging it moves nothing; the log that follows carries the cursor.
                self.put(
                    PeerMessage::Update {
                        seq: 0,
                        doc,
                        origin: 0,
                        oseq: 0,
                        update: snapshot,
                    }
                    .encode(),
                )
                .await?;
                sent += 1;
            }
        }
        if sent > 0 {
            info!(peer = %self.link.peer, documents = sent, after = self.pos, "peer lacks deleted log entries: sent every stored snapshot before the log");
        }
        Ok(())
    }
}
