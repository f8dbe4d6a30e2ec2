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
//!
//! This file holds the room's state and its loop (load, serve, stop) and places effects by the
//! rule. The rest, one job per file: `messages` (what each message does), `updates` (a run of
//! updates applied in one transaction, stored as one write, with its verdicts), `outbox` (the
//! rule "effects wait for their commit" and the queue that enforces it), `members` (members,
//! broadcasts and who owns which presence), `compaction` (when the log becomes a snapshot) and
//! `stop` (the eviction handoff, store failures and `refuse_all`).
//!
//! The room depends on nothing above it: the registry starts it with a [`RoomEnv`] and is seen
//! only as a [`Directory`].

mod compaction;
mod jobs;
mod lane;
mod members;
mod messages;
mod outbox;
mod step2;
mod stop;
mod updates;

pub use compaction::longest_compaction_ms;
pub use step2::full_states_encoded;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use concord_crdt::yrs::ClientID;
use concord_crdt::{DocName, DocState, NodeId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::error;

use crate::handles::{ConnId, JoinError, Lane, PeerRelay, RoomMsg};
use crate::store::{Durability, LogTail, Origin, SharedStore, StoreError};
use members::Member;
use outbox::{Effect, Kind, Outbox, When};
use stop::{Stop, refuse_all};

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
    /// How the document is held in memory (`--doc-mode`).
    pub doc_mode: concord_crdt::DocMode,
}

/// What every room of a node shares, handed to each room by whoever starts it (the registry).
pub struct RoomEnv {
    pub config: RoomConfig,
    pub store: SharedStore,
    /// The peer regions, if any: rooms ask them for what they lack and relay presence to them.
    pub peers: Option<Arc<dyn PeerRelay>>,
    /// Cancelled when the server stops; rooms flush and exit.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The node's metrics: documents loaded, live and evicted, and updates by verdict.
    pub metrics: Arc<crate::metrics::Metrics>,
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

/// Where an update came from.
enum Source {
    Client(ConnId),
    Peer {
        origin: Option<Origin>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// Most inbox messages a room handles per wake-up before it looks at commits and timers again.
const INBOX_BATCH: usize = 64;

/// How often, at most, a room with updates waiting for missing dependencies asks its peers.
const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// Replicated updates written to the log for this document while the inbox was full, and
    /// how far this room has read them ([`Lane`]).
    lane: Arc<Lane>,
    lane_read: crate::store::Seq,
    /// The Step2 for clients that have nothing, while the document has not changed since
    /// (`step2`).
    full_step2: Option<bytes::Bytes>,
    /// The merge of an encoded document running off this task, if any (`jobs`).
    job: Option<tokio::sync::oneshot::Receiver<concord_crdt::Merged>>,
    /// The log position an encoded document's compaction covers, taken when the merge it waits
    /// for started (`compaction`).
    compaction_point: Option<crate::store::Commit>,
    /// A garbage-collecting pass is due once the running job ends (`jobs`).
    gc_wanted: bool,
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
        (inbox, mut rx): (mpsc::WeakSender<RoomMsg>, mpsc::Receiver<RoomMsg>),
        lane: Arc<Lane>,
    ) {
        // Whatever was committed before the load is in it, updates written to the lane included.
        let loaded_through = env.store.committed();
        let load_started = std::time::Instant::now();
        let loaded = match env.store.load(&name).await {
            Ok(stored) => stored
                .map(|s| {
                    DocState::load_with(env.config.doc_mode, s.parts())
                        .map(|state| (state, s.tail()))
                })
                .transpose()
                .map_err(|e| format!("stored data is corrupt: {e}")),
            Err(e) => Err(e.to_string()),
        };
        let (state, exists, tail) = match loaded {
            Ok(Some((state, tail))) => (state, true, tail),
            Ok(None) => (
                DocState::new_with(env.config.doc_mode),
                false,
                LogTail::default(),
            ),
            Err(reason) => {
                // Never serve an empty document in place of stored data: refuse everyone waiting
                // and leave, so a later connection tries the load again.
                error!(doc = %name, %reason, "document load failed");
                directory.remove_if_current(&name, generation);
                refuse_all(&mut rx, JoinError::Load(reason), &name, &env.store).await;
                return;
            }
        };
        env.metrics
            .document_load_seconds
            .observe(load_started.elapsed().as_secs_f64());
        env.metrics.documents_loaded.inc();
        if tail.bytes + tail.snapshot_bytes >= 1 << 20 {
            // Decoding a large document allocated several times its size: give that back.
            crate::memory::freed_a_lot();
        }
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
            lane,
            lane_read: loaded_through,
            full_step2: None,
            job: None,
            compaction_point: None,
            gc_wanted: false,
        };
        room.lane
            .applied
            .fetch_max(loaded_through, std::sync::atomic::Ordering::SeqCst);
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
                released = outbox.next() => match released {
                    Ok(effects) => {
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
                    self.maybe_merge();
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
                merged = jobs::finished(&mut self.job) => {
                    let swapped = self.job_done(merged);
                    // A compaction may have waited for this merge, or for any job to end.
                    if let Err(e) = self.compact_merged(outbox, swapped).await {
                        return Stop::StoreFailed(e);
                    }
                    if let Err(e) = self.maybe_compact(outbox, !rx.is_empty()).await {
                        return Stop::StoreFailed(e);
                    }
                }
                _ = self.lane.wake.notified() => {
                    if let Err(e) = self.read_lane().await {
                        return Stop::StoreFailed(e);
                    }
                }
                _ = &mut cancelled => return Stop::Shutdown,
            }
        }
    }

    /// Runs `effect` now or queues it, as the rule ([`outbox::when`]) says for its `kind`. What
    /// waits goes behind the newest write in flight: the one a run of updates is about to make
    /// (`this_run`, the effects that will wait for it), if any, else the outbox's newest.
    fn place(
        &mut self,
        outbox: &mut Outbox,
        this_run: Option<&mut Vec<Effect>>,
        kind: Kind,
        effect: Effect,
    ) {
        let in_flight = this_run.is_some() || !outbox.is_empty();
        match (
            outbox::when(kind, self.env.config.durability, in_flight),
            this_run,
        ) {
            (When::AfterCommit, Some(then)) => then.push(effect),
            (When::AfterCommit, None) => {
                if let Some(effect) = outbox.defer(effect) {
                    self.run_effect(effect);
                }
            }
            (When::Now, _) => self.run_effect(effect),
        }
    }

    /// Runs the effects of every write at the front of the outbox that has already committed.
    fn run_committed(&mut self, outbox: &mut Outbox) -> Result<(), StoreError> {
        while let Some(released) = outbox.try_release() {
            self.run_effects(released?);
        }
        Ok(())
    }

    fn run_effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            self.run_effect(effect);
        }
    }

    fn run_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Broadcast(frame) => self.broadcast(frame),
            Effect::Send(id, frame) => self.send_to(id, frame),
            Effect::Reply(reply, answer) => {
                let _ = reply.send(answer);
            }
            Effect::Done(done) => {
                let _ = done.send(());
            }
            Effect::Peer(link, msg) => {
                let _ = link.try_send(&msg);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
