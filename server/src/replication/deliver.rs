//! Handing a replicated update to its document, without ever waiting for one document: the
//! room takes it if its inbox has space and nothing written for it waits in the log; otherwise
//! it goes to the document's [`Lane`](crate::handles::Lane) in the log, acknowledged once
//! durable, and the room reads it back from there. So a busy or slow document never holds up
//! the other documents of a link.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use concord_crdt::{DocName, IncomingUpdate, NodeId};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::handles::RoomMsg;
use crate::metrics::{Source, Verdict};
use crate::registry::{Registry, RoomHandle};
use crate::store::{Append, Origin};

/// Hands a replicated update to its document. Returns what resolves once it is durable, or fails
/// if it could not be stored (`None` only when there is nothing to wait for: our own update
/// coming back, or one that cannot be decoded).
pub async fn receive_update(
    registry: &Arc<Registry>,
    from: &NodeId,
    doc: DocName,
    origin: Option<Origin>,
    update: &[u8],
) -> Option<oneshot::Receiver<()>> {
    let update = match IncomingUpdate::decode(update) {
        Ok(u) => u,
        Err(e) => {
            let metrics = registry.metrics();
            metrics.updates(Source::Peer, Verdict::Refused, 1);
            warn!(peer = %from, %doc, error = %e, "peer sent an undecodable update; skipping it");
            return None;
        }
    };
    let (done, durable) = oneshot::channel();
    let msg = RoomMsg::Replicated {
        update,
        origin,
        done: Some(done),
    };
    // The room takes it if its inbox has space and nothing written for it waits in the log (so
    // the document's updates reach it in order). Otherwise the update waits in the log, on its
    // own: the link never waits for one document.
    let room = registry.room(&doc);
    let msg = if room.lane.idle() {
        match room.tx.try_send(msg) {
            Ok(()) => return Some(durable),
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
            Err(mpsc::error::TrySendError::Closed(msg)) => {
                // A room that closed its inbox meanwhile (evicted, or its load failed) hands the
                // update to its successor. If it still cannot be delivered, `done` is dropped
                // with the message: the acknowledgement loop sees a failure and closes the link
                // unacknowledged, so the peer sends it again. It is never treated as "nothing to
                // wait for".
                if registry.deliver_via(room, &doc, msg).await.is_err() {
                    warn!(peer = %from, %doc, "a replicated update could not be handed to its document");
                }
                return Some(durable);
            }
        }
    } else {
        msg
    };
    let RoomMsg::Replicated {
        update,
        origin,
        done: Some(done),
    } = msg
    else {
        unreachable!("built above");
    };
    to_lane(registry, &room, doc, origin, update, done).await;
    Some(durable)
}

/// Writes a replicated update to the log for a room too busy to take it (its [`Lane`](crate::handles::Lane)); `done`
/// fires once it is durable, and the room reads it from there. Dropped (the link then closes
/// unacknowledged, and the peer sends it again) if the store fails.
async fn to_lane(
    registry: &Arc<Registry>,
    room: &RoomHandle,
    doc: DocName,
    origin: Option<Origin>,
    update: IncomingUpdate,
    done: oneshot::Sender<()>,
) {
    let lane = registry.lane(&doc, room);
    lane.start_write().await;
    let append = Append {
        doc,
        update: Bytes::from(update.bytes),
        origin,
    };
    let commit = registry.store.append(append).await;
    tokio::spawn(async move {
        let stored = match commit {
            Ok(commit) => commit.await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        if let Some(seq) = stored {
            lane.written.fetch_max(seq, Ordering::SeqCst);
        }
        lane.writing.fetch_sub(1, Ordering::SeqCst);
        lane.wake.notify_one();
        if stored.is_some() {
            let _ = done.send(());
        }
    });
}
