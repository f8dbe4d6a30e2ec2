//! The document actor: one task per live document owns its [`DocState`] and its members.
//!
//! Everything that touches a document arrives as a [`RoomMsg`] on one bounded channel, so the
//! state needs no lock and updates are applied in one order. Broadcasts never wait on a client:
//! a member whose queue is full is dropped (it resyncs on reconnect) so one slow client cannot
//! stall the room.
//!
//! **Durability.** A new update is applied in memory at once and appended to the store, but what
//! it makes visible (its broadcast, and any Step2 or HTTP read computed after it) waits in the
//! [`Outbox`] until the store has committed it. Updates keep flowing while earlier ones commit:
//! the store batches them into one transaction (group commit), and the outbox releases effects in
//! order as commits complete. With `--durability async` broadcasts skip the outbox; so do those
//! of updates from peers, which are on disk at their origin already (peers are sent committed
//! entries only) and are acknowledged to the peer only once committed here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::yrs::ClientID;
use concord_crdt::yrs::sync::awareness::AwarenessUpdate;
use concord_crdt::yrs::updates::encoder::Encode;
use concord_crdt::{
    Applied, ApplyError, ClientMessage, DocName, DocState, IncomingUpdate, NodeId, PeerMessage,
    encode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::handles::{
    CLOSE_TOO_SLOW, ClientHandle, ConnId, JoinError, LinkHandle, PeerRelay, ReadKind, RoomMsg,
    SendError,
};
use crate::store::{Append, Commit, Durability, LogTail, Seq, SharedStore, StoreError};

/// What a room needs of the server's configuration (the registry hands it to every room, as the
/// store has its `SqliteOptions`), instead of the whole command line.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// How long a room stays live after its last member leaves (`--evict-after`).
    pub evict_after: std::time::Duration,
    /// Whether broadcasts wait for the commit (`--durability`).
    pub durability: Durability,
    /// Compaction thresholds (`--compact-after-updates`, `--compact-after-bytes`).
    pub compact_after_updates: u64,
    pub compact_after_bytes: u64,
    /// Messages queued for one room before senders wait (`--doc-queue`).
    pub doc_queue: usize,
}

/// What every room of a node shares, handed to each room by whoever starts it (the registry).
pub struct RoomEnv {
    pub config: RoomConfig,
    pub store: SharedStore,
    /// The peer regions, if any: rooms ask them for what they lack and relay presence to them.
    pub peers: Option<Arc<dyn PeerRelay>>,
    /// Cancelled when the server stops; rooms flush and exit.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The directory of live rooms, as a room sees it: where it takes itself out when it stops,
/// and where it hands on messages that arrive after it closed. The registry implements it;
/// defined here so that the room depends on nothing above it.
pub trait Directory: Send + Sync {
    /// Removes `name` if it is still the room of that `generation`; returns whether it did.
    fn remove_if_current(&self, name: &DocName, generation: u64) -> bool;
    /// Sends `msg` to the current room of `name` (starting one if needed); gives it back only
    /// if no room took it (the server is stopping).
    fn deliver(
        self: Arc<Self>,
        name: DocName,
        msg: RoomMsg,
    ) -> futures_util::future::BoxFuture<'static, Result<(), RoomMsg>>;
}

/// A member connection. The awareness client ids it announced are those `presence_owners` gives
/// it (removed when it leaves, or other users keep seeing its cursor).
struct Member {
    client: ClientHandle,
}

/// Something visible that must wait for earlier writes to be durable.
enum Effect {
    Broadcast(Bytes),
    Send(ConnId, Bytes),
    /// Tell a peer link an update is durable (so it may acknowledge it).
    Done(oneshot::Sender<()>),
    /// Answer a peer's state vector.
    Peer(LinkHandle, PeerMessage),
    Reply(oneshot::Sender<Option<Vec<u8>>>, Option<Vec<u8>>),
}

/// Writes in flight, oldest first, each with the effects that wait for it.
struct Pending {
    commit: Commit,
    then: Vec<Effect>,
}

#[derive(Default)]
struct Outbox(VecDeque<Pending>);

impl Outbox {
    /// Queues `effect` behind every write in flight, or returns it if nothing is in flight.
    fn defer(&mut self, effect: Effect) -> Option<Effect> {
        match self.0.back_mut() {
            Some(p) => {
                p.then.push(effect);
                None
            }
            None => Some(effect),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest write if it has completed, without waiting.
    fn try_next(&mut self) -> Option<(Result<Seq, StoreError>, Vec<Effect>)> {
        let p = self.0.front_mut()?;
        let r = match p.commit.try_recv() {
            Ok(r) => r,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => Err(StoreError::Closed),
        };
        let p = self.0.pop_front().expect("front exists");
        Some((r, p.then))
    }

    /// Waits for the oldest write; pending forever when there is none (for `select!`).
    async fn next(&mut self) -> (Result<Seq, StoreError>, Vec<Effect>) {
        match self.0.front_mut() {
            Some(p) => {
                let r = (&mut p.commit).await.unwrap_or(Err(StoreError::Closed));
                let p = self.0.pop_front().expect("front exists");
                (r, p.then)
            }
            None => std::future::pending().await,
        }
    }
}

/// Where an update came from.
enum Source {
    Client(ConnId),
    Peer {
        path: Vec<NodeId>,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Most inbox messages a room handles per wake-up before it looks at commits and timers again.
const INBOX_BATCH: usize = 64;

/// How far past its compaction threshold a room with messages waiting lets its log grow before
/// it compacts anyway ([`Room::maybe_compact`]).
const BUSY_COMPACTION_FACTOR: u64 = 4;

/// How often, at most, a room with updates waiting for missing dependencies asks its peers.
const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a room stopped serving.
enum Stop {
    Evicted,
    Shutdown,
    StoreFailed(StoreError),
}

pub struct Room {
    name: DocName,
    generation: u64,
    /// This room's own inbox, handed to connections that join. Weak, so that the room does not
    /// keep its own channel open.
    inbox: mpsc::WeakSender<RoomMsg>,
    env: Arc<RoomEnv>,
    directory: Arc<dyn Directory>,
    members: HashMap<ConnId, Member>,
    /// Presence is per client id, and each id belongs to whoever set it last: the member that
    /// announced it, or (`remote_presence`) another region. A read-only member may only set or
    /// remove the ids it owns and ids nobody holds, so a viewer cannot rewrite or remove anyone
    /// else's cursor. A member with write access may take an id over (a client reconnecting
    /// before its old socket is found dead, or moving to another region, keeps its client id);
    /// the member it took it from then no longer removes it when it leaves.
    presence_owners: HashMap<ClientID, ConnId>,
    remote_presence: HashSet<ClientID>,
    /// Connections closed for sending something invalid: whatever they queued after it is
    /// ignored. Forgotten when their `Leave` arrives (the last message a connection sends).
    ///
    /// A member dropped for any other reason (its socket ended, its queue filled) is not listed:
    /// the updates it wrote before it went are still in the inbox and are edits like any other.
    refused: HashSet<ConnId>,
    state: DocState,
    /// Whether the document has ever been written (404 for the HTTP API otherwise).
    exists: bool,
    /// Log written since the last snapshot, to decide when to compact.
    tail: LogTail,
    /// While some update waits for missing dependencies: when to ask the peers again.
    repair_due: Option<Instant>,
    /// When this room last answered a peer's state vector with one of its own (to be sent what
    /// it lacks), per peer.
    asked_back: HashMap<NodeId, Instant>,
}

impl Room {
    /// Loads the document, then serves messages until the room is evicted, the server stops, or
    /// the store fails. Nothing is answered before the load completes: messages (joins included)
    /// wait in the channel.
    pub async fn run(
        name: DocName,
        generation: u64,
        env: Arc<RoomEnv>,
        directory: Arc<dyn Directory>,
        inbox: mpsc::WeakSender<RoomMsg>,
        mut rx: mpsc::Receiver<RoomMsg>,
    ) {
        let loaded = match env.store.load(&name).await {
            Ok(stored) => stored
                .map(|s| DocState::load(s.parts()).map(|state| (state, s.tail())))
                .transpose()
                .map_err(|e| format!("stored data is corrupt: {e}")),
            Err(e) => Err(e.to_string()),
        };
        let (state, exists, tail) = match loaded {
            Ok(Some((state, tail))) => (state, true, tail),
            Ok(None) => (DocState::new(), false, LogTail::default()),
            Err(reason) => {
                // Never serve an empty document in place of stored data: refuse everyone waiting
                // and leave, so a later connection tries the load again.
                error!(doc = %name, %reason, "document load failed");
                directory.remove_if_current(&name, generation);
                refuse_all(&mut rx, JoinError::Load(reason), &name, &env.store).await;
                return;
            }
        };
        if let Some(hub) = &env.peers {
            // Peers that have this document live too answer with whatever we lack.
            hub.offer_sync(&name, &state.state_vector());
        }
        let mut room = Room {
            name,
            generation,
            inbox,
            env,
            directory,
            members: HashMap::new(),
            presence_owners: HashMap::new(),
            remote_presence: HashSet::new(),
            refused: HashSet::new(),
            state,
            exists,
            tail,
            repair_due: None,
            asked_back: HashMap::new(),
        };
        let mut outbox = Outbox::default();
        let stop = room.serve(&mut rx, &mut outbox).await;
        room.finish(stop, &mut rx, outbox).await;
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<RoomMsg>, outbox: &mut Outbox) -> Stop {
        let evict_after = self.env.config.evict_after;
        // Created once: a fresh `cancelled()` per iteration would lock the token to register a
        // waiter for every message.
        let shutdown = self.env.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut idle_since = Some(Instant::now());
        let mut batch = Vec::with_capacity(INBOX_BATCH);
        loop {
            let deadline = idle_since.map(|t| t + evict_after);
            tokio::select! {
                (result, effects) = outbox.next() => match result {
                    Ok(_) => {
                        self.run_effects(effects);
                        if let Err(e) = self.run_committed(outbox) {
                            return Stop::StoreFailed(e);
                        }
                    }
                    Err(e) => return Stop::StoreFailed(e),
                },
                // Everything already queued is taken in one wake-up: `recv_many` frees the
                // inbox's slots once per batch, so a sender blocked on a full inbox is woken
                // once per batch rather than once per message.
                n = rx.recv_many(&mut batch, INBOX_BATCH) => {
                    if n == 0 {
                        return Stop::Shutdown;
                    }
                    if let Err(e) = self.handle_batch(&mut batch, outbox).await {
                        return Stop::StoreFailed(e);
                    }
                    if let Err(e) = self.maybe_compact(outbox, !rx.is_empty()).await {
                        return Stop::StoreFailed(e);
                    }
                    // Writes the store already committed (an in-memory store, or a group commit
                    // that covered this batch) release their effects now, not one per loop turn.
                    if let Err(e) = self.run_committed(outbox) {
                        return Stop::StoreFailed(e);
                    }
                    idle_since = self.members.is_empty().then(Instant::now);
                }
                _ = sleep_until_opt(deadline), if outbox.is_empty() => {
                    if self.directory.remove_if_current(&self.name, self.generation) {
                        return Stop::Evicted;
                    }
                    idle_since = None;
                }
                _ = sleep_until_opt(self.repair_due) => self.repair_gaps(),
                _ = &mut cancelled => return Stop::Shutdown,
            }
        }
    }

    /// Eviction point and shutdown: every write in flight completes before the state is dropped.
    async fn finish(mut self, stop: Stop, rx: &mut mpsc::Receiver<RoomMsg>, mut outbox: Outbox) {
        match stop {
            Stop::Evicted | Stop::Shutdown => {
                while !outbox.is_empty() {
                    match outbox.next().await {
                        (Ok(_), effects) => self.run_effects(effects),
                        (Err(e), _) => return self.fail_store(e, rx).await,
                    }
                }
                if matches!(stop, Stop::Evicted) {
                    debug!(doc = %self.name, "evicted idle document");
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

    /// Handles one wake-up's messages in order. Consecutive document updates (frames holding
    /// only updates, and updates from peers) are applied in one yrs transaction
    /// ([`DocState::batch`]) and stored as one write, and relayed in order: what members and
    /// peers see is what handling them one by one would have shown.
    async fn handle_batch(
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
                RoomMsg::Replicated { update, path, done } => {
                    run.push((Source::Peer { path, done }, update));
                }
                other => {
                    self.accept_updates(&mut run, outbox).await?;
                    self.handle(other, outbox).await?;
                }
            }
        }
        self.accept_updates(&mut run, outbox).await
    }

    /// Applies `run` in one transaction, then stores the updates that changed the document in
    /// one write and relays them in order. Like [`Room::handle`], it skips updates from a
    /// connection that was refused, in this run or before; updates from a member that has just
    /// been dropped (its socket ended while they were queued) are kept.
    async fn accept_updates(
        &mut self,
        run: &mut Vec<(Source, IncomingUpdate)>,
        outbox: &mut Outbox,
    ) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let mut refused: Vec<ConnId> = Vec::new();
        let verdicts: Vec<Option<Result<Applied, ApplyError>>> = {
            let earlier = &self.refused;
            let mut batch = self.state.batch();
            run.iter_mut()
                .map(|(source, update)| {
                    if let Source::Client(id) = source
                        && (earlier.contains(id) || refused.contains(id))
                    {
                        return None;
                    }
                    let verdict = batch.apply(std::mem::take(&mut update.decoded));
                    if let (Err(_), Source::Client(id)) = (&verdict, &*source) {
                        refused.push(*id);
                    }
                    Some(verdict)
                })
                .collect()
        };
        // What changed the document is appended as one write; its broadcasts (sync durability)
        // and the peers' acknowledgements wait for that write, in order.
        let mut appends = Vec::new();
        let mut then = Vec::new();
        for ((source, update), verdict) in run.drain(..).zip(verdicts) {
            let Some(verdict) = verdict else { continue };
            let from_peer = matches!(source, Source::Peer { .. });
            let (path, done) = match (source, verdict) {
                (Source::Client(_), Ok(Applied::Changed)) => (Vec::new(), None),
                (Source::Client(_), Ok(Applied::Unchanged)) => continue,
                (Source::Client(id), Err(e)) => {
                    self.reject(id, close_code::INVALID, e.to_string());
                    continue;
                }
                (Source::Peer { path, done }, Ok(Applied::Changed)) => (path, done),
                // Nothing new (or unusable), but it may be new only to writes still in flight,
                // this run's included: acknowledge it once those are durable.
                (Source::Peer { path, done }, verdict) => {
                    if let Err(e) = verdict {
                        warn!(doc = %self.name, ?path, error = %e, "a peer's update does not apply; skipping it");
                    }
                    if let Some(done) = done {
                        if appends.is_empty() {
                            self.effect(outbox, Effect::Done(done));
                        } else {
                            then.push(Effect::Done(done));
                        }
                    }
                    continue;
                }
            };
            let bytes = Bytes::from(update.bytes);
            let frame = Bytes::from(encode::update(&bytes));
            self.tail.entries += 1;
            self.tail.bytes += bytes.len() as u64;
            appends.push(Append {
                doc: self.name.clone(),
                update: bytes,
                path,
            });
            // A peer's update is already on disk at its origin (peers are sent committed
            // entries only), and the link acknowledges it only once it is durable here too, so
            // the peer keeps it until then: relaying it at once loses nothing in a crash and
            // keeps a second fsync off the cross-region path.
            match (self.env.config.durability, from_peer) {
                (Durability::Sync, false) => then.push(Effect::Broadcast(frame)),
                (Durability::Sync, true) | (Durability::Async, _) => self.broadcast(frame),
            }
            then.extend(done.map(Effect::Done));
        }
        if appends.is_empty() {
            return Ok(());
        }
        let commit = self.env.store.append_all(appends).await?;
        self.exists = true;
        outbox.0.push_back(Pending { commit, then });
        if self.repair_due.is_none() {
            self.repair_gaps();
        }
        Ok(())
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
            RoomMsg::Replicated { update, path, done } => {
                self.accept_update(Source::Peer { path, done }, update, outbox)
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
                    self.effect(outbox, Effect::Peer(link.clone(), msg));
                    self.effect(outbox, Effect::Peer(link, ask));
                } else {
                    self.effect(outbox, Effect::Peer(link, msg));
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
                self.effect(outbox, Effect::Reply(reply, answer));
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
                let frame = Bytes::from(encode::sync_step2(&self.state.diff(&sv)));
                self.effect(outbox, Effect::Send(id, frame));
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
    fn repair_gaps(&mut self) {
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

    /// Applies presence from a member (`from`) or a peer region (`path`), relays it to members
    /// and to the peers not on its path. Presence is never stored.
    fn apply_awareness(
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

    /// Replaces the log with a snapshot once the log since the last one passes a threshold:
    /// `--compact-after-bytes`, or `--compact-after-updates` entries that also weigh at least half
    /// the snapshot. The second condition keeps compaction's cost (encoding the whole document)
    /// proportional to what was written: a big document typed into a keystroke at a time would
    /// otherwise be re-encoded every thousand keystrokes. Loads stay bounded: at most the
    /// snapshot plus half its size again in log entries (or the byte threshold).
    ///
    /// Checked once per wake-up. While more messages wait (`busy`), compaction, which holds up
    /// everything queued behind it for as long as encoding the whole document takes, is put off
    /// until the log is [`BUSY_COMPACTION_FACTOR`] times over the threshold: a room catches up
    /// first and compacts in its next quiet moment.
    async fn maybe_compact(&mut self, outbox: &mut Outbox, busy: bool) -> Result<(), StoreError> {
        let cfg = &self.env.config;
        let tail = self.tail;
        let k = if busy { BUSY_COMPACTION_FACTOR } else { 1 };
        let due = tail.bytes >= cfg.compact_after_bytes.saturating_mul(k)
            || (tail.entries >= cfg.compact_after_updates.saturating_mul(k)
                && tail.bytes >= (tail.snapshot_bytes / 2).saturating_mul(k));
        if !due {
            return Ok(());
        }
        debug!(doc = %self.name, entries = tail.entries, bytes = tail.bytes, "compacting");
        // The store writes in order, so this snapshot covers exactly the updates appended so far.
        let snapshot = self.state.full_state();
        let snapshot_bytes = snapshot.len() as u64;
        let commit = self.env.store.compact(&self.name, snapshot).await?;
        outbox.0.push_back(Pending {
            commit,
            then: Vec::new(),
        });
        self.tail = LogTail {
            snapshot_bytes,
            ..LogTail::default()
        };
        Ok(())
    }

    /// Runs the effects of every write at the front of the outbox that has already committed.
    fn run_committed(&mut self, outbox: &mut Outbox) -> Result<(), StoreError> {
        while let Some((result, effects)) = outbox.try_next() {
            result?;
            self.run_effects(effects);
        }
        Ok(())
    }

    /// Runs `effect` now if nothing is in flight, otherwise after everything in flight commits.
    fn effect(&mut self, outbox: &mut Outbox, effect: Effect) {
        if let Some(effect) = outbox.defer(effect) {
            self.run_effects(vec![effect]);
        }
    }

    fn run_effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Broadcast(frame) => self.broadcast(frame),
                Effect::Send(id, frame) => self.send_to(id, frame),
                Effect::Reply(reply, answer) => {
                    let _ = reply.send(answer);
                }
                Effect::Done(done) => {
                    let _ = done.send(());
                }
                Effect::Peer(link, msg) => link.try_send(&msg),
            }
        }
    }

    /// Closes one member for sending something unusable; the room and the others carry on.
    fn reject(&mut self, id: ConnId, code: u16, reason: String) {
        self.refused.insert(id);
        if let Some(m) = self.members.get(&id) {
            warn!(doc = %self.name, peer = %m.client.peer, %reason, code, "refused a message; closing the connection");
            m.client.close(code, reason);
        }
        self.remove_member(id);
    }

    fn send_to(&mut self, id: ConnId, frame: Bytes) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if let Err(e) = m.client.try_send(frame) {
            self.drop_member(id, e);
        }
    }

    /// Sends `frame` to every member, the sender included (y-websocket v4 relies on the echo).
    fn broadcast(&mut self, frame: Bytes) {
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

    fn remove_member(&mut self, id: ConnId) {
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

/// Answers every queued join with `error` and drops everything else, then closes the inbox.
///
/// Updates from peers are not refused: the document cannot be served here, but other regions
/// must not stall behind it (a link acknowledges in order) and nothing may be lost. They go
/// straight to the log, which a load reads once the document is readable again and which relays
/// them onward; the link acknowledges them once they are durable.
async fn refuse_all(
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
            RoomMsg::Replicated { update, path, done } => {
                let append = Append {
                    doc: doc.clone(),
                    update: Bytes::from(update.bytes),
                    path,
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
