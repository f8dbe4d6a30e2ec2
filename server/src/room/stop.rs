//! How a room stops: evicted when idle, at shutdown, or because the store failed.
//!
//! Each way out keeps a promise. Every write in flight completes before the state is dropped;
//! messages that arrive after an eviction are handed to the room that succeeds it (through the
//! [`Directory`](super::Directory)), so none is lost between the two; and when the store fails,
//! or a document cannot be loaded, nothing is served from memory that the disk does not hold:
//! members are closed, joins refused, and peers' updates still stored ([`refuse_all`]).

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::DocName;
use tokio::sync::mpsc;
use tracing::{debug, error};

use super::Room;
use super::outbox::Outbox;
use crate::handles::{JoinError, RoomMsg};
use crate::store::{Append, SharedStore, StoreError};

/// Why a room stopped serving.
pub(super) enum Stop {
    Evicted,
    Shutdown,
    StoreFailed(StoreError),
}

impl Room {
    /// Eviction point and shutdown: every write in flight completes before the state is dropped.
    pub(super) async fn finish(
        mut self,
        stop: Stop,
        rx: &mut mpsc::Receiver<RoomMsg>,
        mut outbox: Outbox,
    ) {
        match stop {
            Stop::Evicted | Stop::Shutdown => {
                while !outbox.is_empty() {
                    match outbox.next().await {
                        Ok(effects) => self.run_effects(effects),
                        Err(e) => return self.fail_store(e, rx).await,
                    }
                }
                if matches!(stop, Stop::Evicted) {
                    debug!(doc = %self.name, "evicted idle document");
                    self.env.metrics.documents_evicted.inc();
                    crate::memory::freed_a_lot();
                } else {
                    self.directory
                        .remove_if_current(&self.name, self.generation);
                }
                // Messages that arrived after the decision go to a fresh room, which loads what
                // was just committed. (On shutdown they are dropped: the server is stopping.)
                rx.close();
                while let Some(msg) = rx.recv().await {
                    if let RoomMsg::Frame { id, .. } = &msg
                        && self.refused.contains(id)
                    {
                        continue; // refused here: the successor must not apply it either
                    }
                    if matches!(stop, Stop::Evicted) {
                        let _ = self.directory.clone().deliver(self.name.clone(), msg).await;
                    }
                }
            }
            Stop::StoreFailed(e) => self.fail_store(e, rx).await,
        }
    }

    /// A write failed: what is in memory is ahead of the disk and must not be served. Close every
    /// member with 1011 (their clients keep their edits and resend them on reconnect) and leave,
    /// so the next connection reloads what is actually stored.
    async fn fail_store(mut self, e: StoreError, rx: &mut mpsc::Receiver<RoomMsg>) {
        error!(doc = %self.name, error = %e, members = self.members.len(), "write failed; closing the document's connections");
        self.directory
            .remove_if_current(&self.name, self.generation);
        for (_, m) in self.members.drain() {
            m.client
                .close(close_code::ERROR, format!("storage failure: {e}"));
        }
        let error = JoinError::Load(format!("storage failure: {e}"));
        refuse_all(rx, error, &self.name, &self.env.store).await;
    }
}

/// Answers every queued join with `error` and drops everything else, then closes the inbox.
///
/// Updates from peers are not refused: the document cannot be served here, but other regions
/// must not stall behind it (a link acknowledges in order) and nothing may be lost. They go
/// straight to the log, which a load reads once the document is readable again and which relays
/// them onward; the link acknowledges them once they are durable.
pub(super) async fn refuse_all(
    rx: &mut mpsc::Receiver<RoomMsg>,
    error: JoinError,
    doc: &DocName,
    store: &SharedStore,
) {
    rx.close();
    while let Some(msg) = rx.recv().await {
        match msg {
            RoomMsg::Join { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            RoomMsg::Replicated {
                update,
                origin,
                done,
            } => {
                let append = Append {
                    doc: doc.clone(),
                    update: Bytes::from(update.bytes),
                    origin,
                };
                let stored = match store.append(append).await {
                    Ok(commit) => matches!(commit.await, Ok(Ok(_))),
                    Err(_) => false,
                };
                if stored && let Some(done) = done {
                    let _ = done.send(());
                }
            }
            _ => {}
        }
    }
}
