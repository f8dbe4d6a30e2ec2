//! What a room does with each message of its inbox: joins and leaves, client frames (sync,
//! updates, presence), peers' updates, state vectors and presence, and HTTP reads.
//!
//! A wake-up's messages are handled in order. Consecutive document updates are gathered into
//! runs and applied together (`updates`); everything else is handled one message at a time.
//! Whatever an answer shows of the document is placed behind the writes in flight, so that no
//! Step2 or read reveals an update before it is durable.

use bytes::Bytes;
use concord_crdt::yrs::updates::encoder::Encode;
use concord_crdt::{ClientMessage, IncomingUpdate, PeerMessage, encode};
use tokio::time::Instant;
use tracing::debug;

use super::members::Member;
use super::outbox::{Effect, Kind, Outbox};
use super::{REPAIR_EVERY, Room, Source};
use crate::handles::{ConnId, ReadKind, RoomMsg};
use crate::store::StoreError;

impl Room {
    /// Handles one wake-up's messages in order. Consecutive document updates (frames holding
    /// only updates, and updates from peers) are applied in one yrs transaction
    /// ([`DocState::batch`](concord_crdt::DocState::batch)) and stored as one write, and relayed
    /// in order: what members and peers see is what handling them one by one would have shown.
    pub(super) async fn handle_batch(
        &mut self,
        batch: &mut Vec<RoomMsg>,
        outbox: &mut Outbox,
    ) -> Result<(), StoreError> {
        let mut run = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Frame { id, msgs } if msgs.iter().all(ClientMessage::is_update) => {
                    for m in msgs {
                        if let ClientMessage::SyncStep2(u) | ClientMessage::Update(u) = m {
                            run.push((Source::Client(id), u));
                        }
                    }
                }
                RoomMsg::Replicated {
                    update,
                    origin,
                    done,
                } => {
                    run.push((Source::Peer { origin, done }, update));
                }
                other => {
                    self.accept_updates(&mut run, outbox).await?;
                    self.handle(other, outbox).await?;
                }
            }
        }
        self.accept_updates(&mut run, outbox).await
    }

    async fn handle(&mut self, msg: RoomMsg, outbox: &mut Outbox) -> Result<(), StoreError> {
        match msg {
            RoomMsg::Join { client, reply } => {
                // Without a live inbox the room is ending: dropping `reply` makes the join retry.
                let Some(inbox) = self.inbox.upgrade() else {
                    return Ok(());
                };
                let id = client.id;
                self.members.insert(id, Member { client });
                self.send_to(
                    id,
                    Bytes::from(encode::sync_step1(&self.state.state_vector())),
                );
                if let Some(aw) = self.state.awareness_states() {
                    self.send_to(id, Bytes::from(encode::awareness(&aw)));
                }
                let _ = reply.send(Ok(inbox));
            }
            RoomMsg::Leave { id } => {
                self.remove_member(id);
                self.refused.remove(&id);
            }
            RoomMsg::Frame { id, msgs } => {
                for msg in msgs {
                    if self.refused.contains(&id) {
                        break; // refused while handling an earlier message of the frame
                    }
                    self.handle_client_message(id, msg, outbox).await?;
                }
            }
            RoomMsg::Replicated {
                update,
                origin,
                done,
            } => {
                self.accept_update(Source::Peer { origin, done }, update, outbox)
                    .await?;
            }
            RoomMsg::PeerSync { link, sv } => {
                let msg = PeerMessage::SyncStep2 {
                    doc: self.name.clone(),
                    update: self.state.diff(&sv),
                };
                // The peer has something we lack: ask for it too, so both ends are repaired
                // whichever opened the document first. It answers our state vector after
                // applying the Step2 above (same link, same order), so ours shows nothing it
                // lacks and it does not ask back: one round each way.
                // At most once per peer every REPAIR_EVERY: should its answer fail to apply
                // here, the two would otherwise keep asking each other as fast as the link goes.
                let ours = self.state.state_vector();
                let lacking = sv.iter().any(|(client, clock)| ours.get(client) < *clock);
                let now = Instant::now();
                let recently = self
                    .asked_back
                    .get(&link.peer)
                    .is_some_and(|at| now.duration_since(*at) < REPAIR_EVERY);
                if lacking && !recently {
                    self.asked_back.insert(link.peer.clone(), now);
                }
                let ask = (lacking && !recently).then(|| PeerMessage::SyncStep1 {
                    doc: self.name.clone(),
                    sv: ours.encode_v1(),
                });
                // A peer that just opened this document has none of our presence yet (it is only
                // relayed while the room is live there): send it along, as a Step1 gets it too.
                if let (Some(aw), Some(hub)) =
                    (self.state.awareness_states(), self.env.peers.as_ref())
                {
                    link.try_send(&PeerMessage::Awareness {
                        doc: self.name.clone(),
                        path: vec![hub.node_id().clone()],
                        update: aw.encode_v1(),
                    });
                }
                if let Some(ask) = ask {
                    self.place(outbox, None, Kind::Answer, Effect::Peer(link.clone(), msg));
                    self.place(outbox, None, Kind::Answer, Effect::Peer(link, ask));
                } else {
                    self.place(outbox, None, Kind::Answer, Effect::Peer(link, msg));
                }
            }
            RoomMsg::PeerAwareness { path, update } => self.apply_awareness(None, path, update),
            RoomMsg::StateVector { reply } => {
                let _ = reply.send(self.state.state_vector().encode_v1());
            }
            RoomMsg::Read { kind, reply } => {
                let answer = self.exists.then(|| match kind {
                    ReadKind::Update => self.state.full_state(),
                    ReadKind::Text(root) => self.state.text(&root).unwrap_or_default().into_bytes(),
                });
                self.place(outbox, None, Kind::Answer, Effect::Reply(reply, answer));
            }
        }
        Ok(())
    }

    async fn handle_client_message(
        &mut self,
        id: ConnId,
        msg: ClientMessage,
        outbox: &mut Outbox,
    ) -> Result<(), StoreError> {
        match msg {
            ClientMessage::SyncStep1(sv) => {
                let frame = if sv.is_empty() {
                    self.full_step2()
                } else {
                    Bytes::from(encode::sync_step2(&self.state.diff(&sv)))
                };
                self.place(outbox, None, Kind::Answer, Effect::Send(id, frame));
            }
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                self.accept_update(Source::Client(id), update, outbox)
                    .await?;
            }
            // Presence only from members: a dropped connection's states would never be removed.
            ClientMessage::Awareness(update) if self.members.contains_key(&id) => {
                self.apply_awareness(Some(id), Vec::new(), update)
            }
            ClientMessage::Awareness(_) => {}
            ClientMessage::AwarenessQuery => {
                if let Some(aw) = self.state.awareness_states() {
                    self.send_to(id, Bytes::from(encode::awareness(&aw)));
                }
            }
            ClientMessage::Auth | ClientMessage::Unknown(_) => {}
        }
        Ok(())
    }

    /// Applies one update; if it brought something new, stores it and relays it (to members and,
    /// through the log, to peers) once stored, or at once with async durability.
    async fn accept_update(
        &mut self,
        source: Source,
        update: IncomingUpdate,
        outbox: &mut Outbox,
    ) -> Result<(), StoreError> {
        self.accept_updates(&mut vec![(source, update)], outbox)
            .await
    }

    /// Updates waiting for ones they depend on (delivered out of order by different links):
    /// ask the peers for what is missing rather than wait for the log to bring it, and again
    /// every [`REPAIR_EVERY`] until nothing is missing (an answer can be lost on a busy link).
    pub(super) fn repair_gaps(&mut self) {
        self.repair_due = None;
        if !self.state.has_pending() {
            return;
        }
        if let Some(hub) = self.env.peers.as_ref() {
            self.repair_due = Some(Instant::now() + REPAIR_EVERY);
            debug!(doc = %self.name, "updates wait for missing dependencies; asking peers");
            hub.offer_sync(&self.name, &self.state.state_vector());
        }
    }
}
