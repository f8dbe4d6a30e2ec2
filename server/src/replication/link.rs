//! One authenticated peer link, both directions.
//!
//! First, each side sends a `Resume`: its log's current incarnation and what it holds of the
//! other's log. The log stream to the peer starts only once the peer's `Resume` arrived (a link
//! that does not send one within [`RESUME_TIMEOUT`] is closed), from where
//! [`super::resume::start`] says.
//!
//! Incoming: each message is routed to its document ([`super::deliver`]: the room, or the
//! document's lane in the log when the room is busy), and the routing messages to the router
//! ([`super::routes`]). An `Update` is acknowledged only once it is durable here (or found to
//! bring nothing new); acknowledgements go out in log order ([`super::ack`]), each after what it
//! acknowledges is recorded as received (`received_cursors`), so the peer's cursor for us never
//! runs ahead of our disk nor of the claim we send it next time.
//!
//! Outgoing: [`super::stream::stream_log`] sends our log from the start the peer's claim gives,
//! the origins the peer asked for.

use axum::extract::ws::close_code;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_crdt::replication::Incarnation;
use concord_crdt::replication::MAX_ORIGINS;
use concord_crdt::yrs::StateVector;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::{NodeId, PeerMessage};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, warn};

use super::auth::Identity;
use super::socket::{PeerSocket, SHUTTING_DOWN};
use super::{PeerStats, Replication, now_ms};
use crate::handles::{LinkHandle, RoomMsg};
use crate::registry::Registry;
use crate::store::{Origin, Seq, StoreError};

/// How often, at most, the peer's acknowledged cursor is written to the store.
const PERSIST_CURSOR_EVERY: Duration = Duration::from_millis(200);
/// Updates received but not yet durable, per link.
const ACK_QUEUE: usize = 8192;
/// How long a peer has, once authenticated, to say where to resume.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

/// The span a link's log lines carry: the peer by region and node id.
pub fn peer_span(peer: &Identity) -> tracing::Span {
    tracing::error_span!("peer", peer_region = %peer.region, peer = %peer.node_id)
}

/// Runs an authenticated link until it ends (in the span of [`peer_span`]).
pub async fn run(
    hub: Arc<Replication>,
    registry: Arc<Registry>,
    mut sock: PeerSocket,
    peer: Identity,
    dialer: NodeId,
) {
    let link = LinkHandle {
        peer: peer.node_id.clone(),
        id: hub.next_link_id(),
        dialer,
        out: sock.outgoing.clone(),
        control: sock.control.clone(),
    };
    // `Resume` is the first message on the link, queued before the link is registered: once it
    // is, presence and state vectors are relayed onto it, and the peer refuses a link whose
    // first message is anything else.
    // What we hold of the peer's log, for it to resume from; nothing when unreadable (then it
    // sends everything again, which is always safe).
    let claim = match hub.store.received_cursor(&peer.node_id).await {
        Ok(claim) => claim,
        Err(e) => {
            warn!(peer = %peer.node_id, error = %e, "cannot read what was received from the peer; asking it for everything");
            None
        }
    };
    let history = hub.store.incarnations();
    let Some(mine) = history.last().map(|i| i.id) else {
        sock.control
            .close(close_code::ERROR, "the store has no incarnation");
        return;
    };
    let resume = PeerMessage::Resume {
        incarnation: mine,
        claim,
    };
    if sock
        .outgoing
        .send(Bytes::from(resume.encode()))
        .await
        .is_err()
    {
        return;
    }
    if !hub.register(link.clone()) {
        debug!(peer = %peer.node_id, "duplicate link refused");
        sock.control.close(
            close_code::NORMAL,
            "duplicate link: the pair keeps the other one",
        );
        return;
    }
    let stats = hub.stats(&peer.node_id);
    *stats.region.lock().unwrap() = peer.region.clone();
    *stats.url.lock().unwrap() = peer.url.clone();
    hub.route_link_up(&peer.node_id, &stats);
    stats.links_up.fetch_add(1, Ordering::Relaxed);
    // What an earlier link had in flight is sent again from the cursor by this one.
    stats.in_flight.lock().unwrap().clear();
    stats.last_contact_ms.store(now_ms(), Ordering::Relaxed);

    let (theirs, their_claim) = match wait_for_resume(&mut sock, &stats).await {
        Ok(resume) => resume,
        Err(why) => {
            warn!(peer = %peer.node_id, "{why}; closing the link");
            sock.control.close(close_code::PROTOCOL, why);
            return finish(&hub, &link, &stats, &peer).await;
        }
    };
    let start = super::resume::start(&history, hub.store.committed(), their_claim);
    let cursor = start.after();
    // Where the stream starts becomes the peer's cursor (lower too), committed before the log is
    // checked: from then on compaction keeps every entry after it. The snapshots go first if
    // some entry after it is already gone.
    let ready = async {
        hub.store
            .reset_peer_cursor(&peer.node_id, cursor)
            .await?
            .await
            .unwrap_or(Err(StoreError::Closed))?;
        hub.store.log_complete_after(cursor).await
    };
    let complete = match ready.await {
        Ok(complete) => complete,
        Err(e) => {
            warn!(peer = %peer.node_id, error = %e, "cannot record where the peer resumes; dropping the link");
            sock.control
                .close(close_code::ERROR, "cannot record where the peer resumes");
            return finish(&hub, &link, &stats, &peer).await;
        }
    };
    let snapshots = start.needs_snapshots(complete);
    stats.acked.store(cursor, Ordering::Relaxed);
    info!(url = %peer.url, resume_after = cursor, snapshots, claim = ?their_claim, "peer link up");

    let (acked_tx, acked_rx) = watch::channel(cursor);
    // What the peer asks us to send it (its `Routes`); the stream sends nothing before the first.
    let (carry_tx, carry_rx) = watch::channel(None);
    let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
    let sender = hub.tasks.spawn(
        super::stream::stream_log(
            hub.clone(),
            link.clone(),
            stats.clone(),
            cursor,
            snapshots,
            acked_rx,
            carry_rx,
        )
        .in_current_span(),
    );
    let acker = hub.tasks.spawn(
        super::ack::ack_loop(ack_rx, link.clone(), hub.store.clone(), theirs).in_current_span(),
    );
    let offer = hub
        .tasks
        .spawn(offer_live_docs(registry.clone(), link.clone()).in_current_span());

    let mut persisted = (cursor, Instant::now());
    // The origins the peer named for its updates (`Origin` messages): code k is entry k - 1.
    let mut origins: Vec<NodeId> = Vec::new();
    loop {
        let bytes = tokio::select! {
            // A link being replaced stops at once, whatever is still buffered: its acks must
            // not move the cursor the newer link has reset.
            biased;
            _ = sock.control.token().cancelled() => break,
            b = sock.incoming.recv() => match b { Some(b) => b, None => break },
        };
        stats.last_contact_ms.store(now_ms(), Ordering::Relaxed);
        stats.received_messages.fetch_add(1, Ordering::Relaxed);
        stats
            .received_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let msg = match PeerMessage::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %peer.node_id, error = %e, "undecodable peer message; closing the link");
                sock.control.close(close_code::PROTOCOL, e.to_string());
                break;
            }
        };
        match msg {
            PeerMessage::Update {
                seq,
                doc,
                origin,
                oseq,
                update,
            } => {
                stats.received_updates.fetch_add(1, Ordering::Relaxed);
                let origin = match origin {
                    0 => peer.node_id.clone(),
                    k => match origins.get(k as usize - 1) {
                        Some(o) => o.clone(),
                        None => {
                            warn!(peer = %peer.node_id, code = k, "update names an origin the peer never defined; closing the link");
                            sock.control
                                .close(close_code::PROTOCOL, "update names an undefined origin");
                            break;
                        }
                    },
                };
                // Our own update coming back (a route changing under it): nothing to do.
                let done = if origin == hub.me.node_id {
                    None
                } else {
                    hub.held.raise(&origin, oseq);
                    let origin = Some(Origin {
                        node: origin,
                        seq: oseq,
                    });
                    // A room with a full inbox may hold this up; the link's end (shutdown
                    // included) does not wait for it. Dropping the update is safe: it was not
                    // acknowledged, so the peer sends it again.
                    tokio::select! {
                        biased;
                        _ = sock.control.token().cancelled() => break,
                        done = super::deliver::receive_update(&registry, &peer.node_id, doc, origin, &update) => done,
                    }
                };
                if ack_tx.send((seq, done)).await.is_err() {
                    break;
                }
            }
            PeerMessage::Progress { seq } => {
                if ack_tx.send((seq, None)).await.is_err() {
                    break;
                }
            }
            PeerMessage::Ack { seq } => {
                stats.acknowledged(seq);
                acked_tx.send_if_modified(|acked| {
                    let newer = seq > *acked;
                    if newer {
                        *acked = seq;
                    }
                    newer
                });
                if persisted.1.elapsed() >= PERSIST_CURSOR_EVERY
                    && seq > persisted.0
                    && hub.is_current(&link)
                {
                    let _ = hub.store.set_peer_cursor(&peer.node_id, seq).await;
                    persisted = (seq, Instant::now());
                }
            }
            PeerMessage::SyncStep1 { doc, sv } => {
                let Ok(sv) = StateVector::decode_v1(&sv) else {
                    continue;
                };
                // A busy room misses it rather than stall the link: what it would repair
                // arrives through the log, and a room with updates still waiting for their
                // dependencies asks again (`REPAIR_EVERY`).
                if let Some(room) = registry.live_room(&doc) {
                    let _ = room.tx.try_send(RoomMsg::PeerSync {
                        link: link.clone(),
                        sv,
                    });
                }
            }
            PeerMessage::SyncStep2 { doc, update } => {
                // A repair: whatever it brings is stored as this node's own, so it reaches every
                // region along this node's tree.
                let _ =
                    super::deliver::receive_update(&registry, &peer.node_id, doc, None, &update)
                        .await;
            }
            PeerMessage::Origin { code, node } => {
                if code as usize != origins.len() + 1 || origins.len() >= MAX_ORIGINS {
                    warn!(peer = %peer.node_id, code, "origin defined out of order or beyond the limit; closing the link");
                    sock.control
                        .close(close_code::PROTOCOL, "origin defined out of order");
                    break;
                }
                origins.push(node);
            }
            PeerMessage::Routes { dist, carry } => {
                let wants = hub.on_routes(&peer.node_id, dist, carry);
                carry_tx.send_replace(Some(wants));
            }
            PeerMessage::Have { held } => hub.on_have(&peer.node_id, held),
            PeerMessage::Awareness { doc, path, update } => {
                if path.contains(&hub.me.node_id) {
                    continue;
                }
                let Some(room) = registry.live_room(&doc) else {
                    continue;
                };
                match concord_crdt::message::decode_awareness(&update) {
                    Ok(update) => {
                        // Presence is fleeting: a busy room misses it rather than stall the link.
                        let _ = room.tx.try_send(RoomMsg::PeerAwareness { path, update });
                    }
                    Err(e) => {
                        warn!(peer = %peer.node_id, %doc, error = %e, "undecodable presence from a peer")
                    }
                }
            }
            PeerMessage::Challenge { .. }
            | PeerMessage::Hello { .. }
            | PeerMessage::Welcome { .. }
            | PeerMessage::Resume { .. } => {
                warn!(peer = %peer.node_id, "handshake message on an established link; closing it");
                sock.control
                    .close(close_code::PROTOCOL, "unexpected handshake message");
                break;
            }
        }
    }
    sender.abort();
    acker.abort();
    offer.abort();
    // This link's own acknowledgements; not if a newer link replaced it, which has reset the
    // cursor to where its stream starts.
    let acked = *acked_tx.borrow();
    if acked > persisted.0 && hub.is_current(&link) {
        let _ = hub.store.set_peer_cursor(&peer.node_id, acked).await;
    }
    finish(&hub, &link, &stats, &peer).await;
}

async fn finish(hub: &Replication, link: &LinkHandle, stats: &PeerStats, peer: &Identity) {
    link.control.token().cancel();
    hub.unregister(link);
    if hub.route_link_down(&peer.node_id, stats) {
        let reason = link.control.reason();
        if hub.shutdown.is_cancelled() {
            // Our own shutdown ends every link: expected, not a warning.
            info!("peer link closed: this node is shutting down");
        } else if reason
            .as_ref()
            .is_some_and(|(code, r)| *code == close_code::AWAY && r == SHUTTING_DOWN)
        {
            info!("peer link closed: the peer is shutting down; updates for it wait in the log");
        } else {
            let why = reason.map_or_else(|| "connection lost".into(), |(_, r)| r);
            warn!(reason = %why, "peer link down; local clients are still served, updates for this peer wait in the log");
        }
    }
}

/// Waits for the peer's `Resume`, its first message: the incarnation of its log and what it
/// holds of ours.
async fn wait_for_resume(
    sock: &mut PeerSocket,
    stats: &PeerStats,
) -> Result<(Incarnation, Option<(Incarnation, Seq)>), String> {
    let bytes = tokio::select! {
        _ = sock.control.token().cancelled() => return Err("link closed before the peer's Resume".into()),
        b = tokio::time::timeout(RESUME_TIMEOUT, sock.incoming.recv()) => match b {
            Ok(Some(b)) => b,
            Ok(None) => return Err("link closed before the peer's Resume".into()),
            Err(_) => return Err(format!("peer sent no Resume within {RESUME_TIMEOUT:?}")),
        },
    };
    stats.last_contact_ms.store(now_ms(), Ordering::Relaxed);
    stats.received_messages.fetch_add(1, Ordering::Relaxed);
    stats
        .received_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    match PeerMessage::decode(&bytes) {
        Ok(PeerMessage::Resume { incarnation, claim }) => Ok((incarnation, claim)),
        Ok(_) => Err("peer sent something other than Resume first".into()),
        Err(e) => Err(format!("undecodable first message from the peer: {e}")),
    }
}

/// A link came up: offer the peer our state vector of every document live here. Those it has
/// live too are answered with what we lack (a `SyncStep2`), which repairs any gap the log did not
/// (an update still waiting for its dependencies, say). Sent with backpressure, after the room
/// answers, so thousands of live documents neither flood the link nor stall their rooms.
async fn offer_live_docs(registry: Arc<Registry>, link: LinkHandle) {
    for (doc, room) in registry.live_rooms() {
        let (reply, sv) = oneshot::channel();
        if room.send(RoomMsg::StateVector { reply }).await.is_err() {
            continue;
        }
        let Ok(sv) = sv.await else { continue };
        let msg = PeerMessage::SyncStep1 { doc, sv };
        if link.out.send(Bytes::from(msg.encode())).await.is_err() {
            return;
        }
    }
}

/// Serves an incoming peer link (`GET /peer`): authenticate, then run it. `slot` is one of the
/// few unauthenticated sockets allowed at once; it is freed when the handshake ends. `binding`:
/// the connection's TLS exporter value (empty if plain), which the handshake is bound to.
pub async fn accept(
    hub: Arc<Replication>,
    registry: Arc<Registry>,
    mut sock: PeerSocket,
    remote: std::net::SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    binding: Vec<u8>,
) {
    let Some(secret) = hub.secret().map(<[u8]>::to_vec) else {
        warn!(%remote, "peer link refused: this node has no --peer-secret");
        sock.control.close(
            close_code::POLICY,
            "peer links are disabled on this node (no --peer-secret)",
        );
        return;
    };
    let authenticated = super::auth::accept(&mut sock, &hub.me, &secret, &binding).await;
    drop(slot);
    match authenticated {
        Ok(peer) => {
            hub.remember(&peer, None);
            let span = peer_span(&peer);
            run(hub, registry, sock, peer.clone(), peer.node_id)
                .instrument(span)
                .await
        }
        Err(e) => {
            registry.metrics().refused("peer_auth");
            warn!(%remote, error = %e, "peer link refused");
            sock.control.close(
                close_code::POLICY,
                format!("peer authentication failed: {e}"),
            );
        }
    }
}
