//! A link's acknowledgements: sent in log order once what they cover is durable here and
//! recorded as received, batched every [`ACK_EVERY`].

use std::time::Duration;

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::PeerMessage;
use concord_crdt::replication::Incarnation;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::handles::LinkHandle;
use crate::store::{Seq, SharedStore, StoreError};

/// How often acknowledgements are sent (when there is something new to acknowledge).
const ACK_EVERY: Duration = Duration::from_millis(20);

/// Acknowledges received updates in log order once each is durable. Each acknowledgement goes
/// out once what it covers is recorded as received from the peer's log incarnation `of`
/// (`received_cursors`, written with the store's next group commit): the claim this node sends
/// on its next link-up is never behind what the peer's cursor says. A marker at 0 (the start of
/// a stream to a node holding nothing) is recorded too, though it acknowledges nothing.
pub(super) async fn ack_loop(
    mut rx: mpsc::Receiver<(Seq, Option<oneshot::Receiver<()>>)>,
    link: LinkHandle,
    store: SharedStore,
    of: Incarnation,
) {
    let mut pending = FuturesOrdered::new();
    let mut ackable: Option<Seq> = None;
    let mut recorded: Option<Seq> = None;
    let mut sent: Seq = 0;
    let mut tick = tokio::time::interval(ACK_EVERY);
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some((seq, durable)) = item else { return };
                pending.push_back(async move {
                    match durable {
                        Some(d) => d.await.map(|_| seq),
                        None => Ok(seq),
                    }
                });
            }
            Some(done) = pending.next(), if !pending.is_empty() => match done {
                Ok(seq) => ackable = ackable.max(Some(seq)),
                Err(_) => {
                    // The document could not store it: do not acknowledge; the peer sends it
                    // again when the link comes back.
                    link.control.close(close_code::ERROR, "a replicated update could not be stored");
                    return;
                }
            },
            _ = tick.tick() => {
                let Some(seq) = ackable.filter(|_| ackable > recorded) else { continue };
                let written = async {
                    store
                        .set_received_cursor(&link.peer, of, seq)
                        .await?
                        .await
                        .unwrap_or(Err(StoreError::Closed))
                };
                if let Err(e) = written.await {
                    warn!(peer = %link.peer, error = %e, "cannot record what was received; closing the link");
                    link.control.close(close_code::ERROR, "cannot record what was received");
                    return;
                }
                recorded = Some(seq);
                if seq > sent {
                    sent = seq;
                    if link.out.send(Bytes::from(PeerMessage::Ack { seq: sent }.encode())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
