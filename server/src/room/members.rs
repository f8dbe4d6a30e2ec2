//! A room's members and their presence: who is in the room, how frames reach them, and who owns
//! which awareness client id.
//!
//! Sending never waits: a member whose queue is full is closed (1013, it resyncs on reconnect)
//! so one slow client cannot stall the room, and a member that sent something unusable is
//! closed and remembered as refused. Presence (awareness) is per client id and belongs to
//! whoever set it last (see `Room::presence_owners`): a read-only member may only touch its own
//! ids and ids nobody holds, and a member that leaves takes its ids' presence with it, or other
//! users would keep seeing its cursor. Presence is relayed to members and peers, never stored.

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::yrs::sync::awareness::AwarenessUpdate;
use concord_crdt::yrs::updates::encoder::Encode;
use concord_crdt::{NodeId, encode};
use tracing::{info, warn};

use super::Room;
use crate::handles::{CLOSE_TOO_SLOW, ClientHandle, ConnId, SendError};

/// A member connection. The awareness client ids it announced are those `presence_owners` gives
/// it (removed when it leaves, or other users keep seeing its cursor).
pub(super) struct Member {
    pub(super) client: ClientHandle,
}

impl Room {
    /// Applies presence from a member (`from`) or a peer region (`path`), relays it to members
    /// and to the peers not on its path. Presence is never stored.
    pub(super) fn apply_awareness(
        &mut self,
        from: Option<ConnId>,
        path: Vec<NodeId>,
        mut update: AwarenessUpdate,
    ) {
        let read_only = from
            .and_then(|id| self.members.get(&id))
            .is_some_and(|m| m.client.read_only);
        if let (Some(id), true) = (from, read_only) {
            let (owners, remote) = (&self.presence_owners, &self.remote_presence);
            update.clients.retain(|c, _| match owners.get(c) {
                Some(owner) => *owner == id,
                None => !remote.contains(c),
            });
            if update.clients.is_empty() {
                return;
            }
        }
        let summary = match self.state.apply_awareness(update) {
            Ok(Some(summary)) => summary,
            Ok(None) => return,
            Err(e) => {
                match from {
                    Some(id) => self.reject(id, close_code::INVALID, e.to_string()),
                    None => {
                        warn!(doc = %self.name, error = %e, "a peer's awareness update does not apply")
                    }
                }
                return;
            }
        };
        if let Some(id) = from.filter(|id| self.members.contains_key(id)) {
            for c in summary.added.iter().chain(&summary.updated) {
                self.remote_presence.remove(c);
                self.presence_owners.insert(*c, id);
            }
            for c in &summary.removed {
                self.presence_owners.remove(c);
            }
        } else if from.is_none() {
            self.remote_presence
                .extend(summary.added.iter().chain(&summary.updated));
            for c in &summary.removed {
                self.remote_presence.remove(c);
            }
        }
        if let Some(aw) = self.state.awareness_of(summary.all_changes()) {
            self.broadcast_awareness(&path, &aw);
        }
    }

    /// Sends presence to every member and every peer not on `path`.
    fn broadcast_awareness(&mut self, path: &[NodeId], aw: &AwarenessUpdate) {
        let payload = aw.encode_v1();
        if let Some(hub) = self.env.peers.as_ref() {
            hub.relay_awareness(&self.name, path, &payload);
        }
        self.broadcast(Bytes::from(encode::awareness_payload(&payload)));
    }

    /// Closes one member for sending something unusable; the room and the others carry on.
    pub(super) fn reject(&mut self, id: ConnId, code: u16, reason: String) {
        self.refused.insert(id);
        if let Some(m) = self.members.get(&id) {
            warn!(doc = %self.name, peer = %m.client.peer, %reason, code, "refused a message; closing the connection");
            m.client.close(code, reason);
        }
        self.remove_member(id);
    }

    pub(super) fn send_to(&mut self, id: ConnId, frame: Bytes) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if let Err(e) = m.client.try_send(frame) {
            self.drop_member(id, e);
        }
    }

    /// Sends `frame` to every member, the sender included (y-websocket v4 relies on the echo).
    pub(super) fn broadcast(&mut self, frame: Bytes) {
        let mut failed = Vec::new();
        for (id, m) in &self.members {
            if let Err(e) = m.client.try_send(frame.clone()) {
                failed.push((*id, e));
            }
        }
        for (id, e) in failed {
            self.drop_member(id, e);
        }
    }

    fn drop_member(&mut self, id: ConnId, why: SendError) {
        if let (SendError::Full, Some(m)) = (&why, self.members.get(&id)) {
            info!(doc = %self.name, peer = %m.client.peer, "client too slow (send queue full); disconnecting it");
            m.client.close(
                CLOSE_TOO_SLOW,
                "too slow: send queue full; reconnect to resync",
            );
        }
        self.remove_member(id);
    }

    /// Takes `id` out, and with it the presence it owns (relayed as removed).
    pub(super) fn remove_member(&mut self, id: ConnId) {
        if self.members.remove(&id).is_none() {
            return;
        }
        let mut owned = Vec::new();
        self.presence_owners.retain(|c, owner| {
            let mine = *owner == id;
            if mine {
                owned.push(*c);
            }
            !mine
        });
        if let Some(removal) = self.state.remove_awareness(&owned) {
            self.broadcast_awareness(&[], &removal);
        }
    }
}
