//! The document actor: one task per live document owns its [`DocState`] and its members.
//!
//! Everything that touches a document arrives as a [`RoomMsg`] on one bounded channel, so the
//! state needs no lock and updates are applied in one order. Broadcasts never wait on a client:
//! a member whose queue is full is dropped (it resyncs on reconnect) so one slow client cannot
//! stall the room.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::yrs::ClientID;
use concord_crdt::{Applied, ClientMessage, DocName, DocState, encode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connection::{CLOSE_TOO_SLOW, ClientHandle, ConnId, SendError};
use crate::registry::{JoinError, Registry};

/// Messages a room accepts.
pub enum RoomMsg {
    /// A connection joins: the room sends it Step1 and the awareness states, then replies.
    Join {
        client: ClientHandle,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A connection ended: forget it and broadcast the removal of its awareness states.
    Leave { id: ConnId },
    /// The decoded messages of one frame from connection `id`.
    Frame {
        id: ConnId,
        msgs: Vec<ClientMessage>,
    },
}

/// A member connection and the awareness client ids it announced (removed when it leaves, or
/// other users keep seeing its cursor).
struct Member {
    client: ClientHandle,
    awareness_ids: Vec<ClientID>,
}

pub struct Room {
    name: DocName,
    generation: u64,
    registry: Arc<Registry>,
    rx: mpsc::Receiver<RoomMsg>,
    members: HashMap<ConnId, Member>,
}

impl Room {
    pub fn new(
        name: DocName,
        generation: u64,
        registry: Arc<Registry>,
        rx: mpsc::Receiver<RoomMsg>,
    ) -> Self {
        Room {
            name,
            generation,
            registry,
            rx,
            members: HashMap::new(),
        }
    }

    /// Loads the document, then serves messages until the room is evicted or the server stops.
    pub async fn run(mut self) {
        // Load point: storage plugs in here. Nothing is answered before this completes; messages
        // (joins included) wait in the channel.
        let mut state = match self.load().await {
            Ok(state) => state,
            Err(reason) => return self.fail(reason).await,
        };
        let evict_after = self.registry.config.evict_after;
        let mut idle_since = Some(Instant::now());
        let shutdown = self.registry.shutdown.clone();
        loop {
            let deadline = idle_since.map(|t| t + evict_after);
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(&mut state, msg);
                    idle_since = if self.members.is_empty() { Some(Instant::now()) } else { None };
                }
                _ = sleep_until_opt(deadline) => {
                    // Eviction point: storage flushes here before the state is dropped.
                    if self.registry.remove_if_current(&self.name, self.generation) {
                        debug!(doc = %self.name, "evicting idle document");
                        self.rx.close();
                        // Messages already queued lose their room: dropping a join's reply makes
                        // that connection retry on a fresh room.
                        while self.rx.recv().await.is_some() {}
                        break;
                    }
                    idle_since = None;
                }
                _ = shutdown.cancelled() => break,
            }
        }
    }

    async fn load(&mut self) -> Result<DocState, String> {
        Ok(DocState::new())
    }

    /// The document could not be loaded: refuse every waiting connection with the cause and
    /// leave the registry, so that a later connection tries again. No empty document is created.
    async fn fail(mut self, reason: String) {
        warn!(doc = %self.name, %reason, "document load failed");
        self.registry.remove_if_current(&self.name, self.generation);
        self.rx.close();
        while let Some(msg) = self.rx.recv().await {
            if let RoomMsg::Join { reply, .. } = msg {
                let _ = reply.send(Err(JoinError::Load(reason.clone())));
            }
        }
    }

    fn handle(&mut self, state: &mut DocState, msg: RoomMsg) {
        match msg {
            RoomMsg::Join { client, reply } => {
                let id = client.id;
                let mut hello = vec![Bytes::from(encode::sync_step1(&state.state_vector()))];
                if let Some(aw) = state.awareness_states() {
                    hello.push(Bytes::from(encode::awareness(&aw)));
                }
                self.members.insert(
                    id,
                    Member {
                        client,
                        awareness_ids: Vec::new(),
                    },
                );
                for frame in hello {
                    self.send_to(state, id, frame);
                }
                let _ = reply.send(Ok(()));
            }
            RoomMsg::Leave { id } => self.remove_member(state, id),
            RoomMsg::Frame { id, msgs } => {
                for msg in msgs {
                    if !self.members.contains_key(&id) {
                        return; // dropped while handling an earlier message of the frame
                    }
                    self.handle_client_message(state, id, msg);
                }
            }
        }
    }

    fn handle_client_message(&mut self, state: &mut DocState, id: ConnId, msg: ClientMessage) {
        match msg {
            ClientMessage::SyncStep1(sv) => {
                let frame = encode::sync_step2(&state.diff(&sv));
                self.send_to(state, id, Bytes::from(frame));
            }
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                let frame = encode::update(&update.bytes);
                match state.apply_update(update) {
                    Ok(Applied::Changed) => self.broadcast(state, Bytes::from(frame)),
                    Ok(Applied::Unchanged) => {}
                    Err(e) => self.reject(state, id, close_code::INVALID, e.to_string()),
                }
            }
            ClientMessage::Awareness(update) => match state.apply_awareness(update) {
                Ok(Some(summary)) => {
                    if let Some(member) = self.members.get_mut(&id) {
                        for c in summary.added.iter().chain(&summary.updated) {
                            if !member.awareness_ids.contains(c) {
                                member.awareness_ids.push(*c);
                            }
                        }
                        member
                            .awareness_ids
                            .retain(|c| !summary.removed.contains(c));
                    }
                    if let Some(aw) = state.awareness_of(summary.all_changes()) {
                        self.broadcast(state, Bytes::from(encode::awareness(&aw)));
                    }
                }
                Ok(None) => {}
                Err(e) => self.reject(state, id, close_code::INVALID, e.to_string()),
            },
            ClientMessage::AwarenessQuery => {
                if let Some(aw) = state.awareness_states() {
                    self.send_to(state, id, Bytes::from(encode::awareness(&aw)));
                }
            }
            ClientMessage::Auth | ClientMessage::Unknown(_) => {}
        }
    }

    /// Closes one member for sending something unusable; the room and the others carry on.
    fn reject(&mut self, state: &mut DocState, id: ConnId, code: u16, reason: String) {
        if let Some(m) = self.members.get(&id) {
            warn!(doc = %self.name, peer = %m.client.peer, %reason, code, "refused a message; closing the connection");
            m.client.close(code, reason);
        }
        self.remove_member(state, id);
    }

    fn send_to(&mut self, state: &mut DocState, id: ConnId, frame: Bytes) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if let Err(e) = m.client.try_send(frame) {
            self.drop_member(state, id, e);
        }
    }

    /// Sends `frame` to every member, the sender included (y-websocket v4 relies on the echo).
    fn broadcast(&mut self, state: &mut DocState, frame: Bytes) {
        let mut failed = Vec::new();
        for (id, m) in &self.members {
            if let Err(e) = m.client.try_send(frame.clone()) {
                failed.push((*id, e));
            }
        }
        for (id, e) in failed {
            self.drop_member(state, id, e);
        }
    }

    fn drop_member(&mut self, state: &mut DocState, id: ConnId, why: SendError) {
        if let (SendError::Full, Some(m)) = (&why, self.members.get(&id)) {
            info!(doc = %self.name, peer = %m.client.peer, "client too slow (send queue full); disconnecting it");
            m.client.close(
                CLOSE_TOO_SLOW,
                "too slow: send queue full; reconnect to resync",
            );
        }
        self.remove_member(state, id);
    }

    fn remove_member(&mut self, state: &mut DocState, id: ConnId) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        if let Some(removal) = state.remove_awareness(&member.awareness_ids) {
            self.broadcast(state, Bytes::from(encode::awareness(&removal)));
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
