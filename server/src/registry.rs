//! The live documents: a `DashMap` from name to the room that owns it.
//!
//! The map is sharded, so joins to different documents do not contend, and no lock is held
//! across an `.await`: a lookup clones the room's sender and releases the shard at once. A room
//! removes itself when it is evicted or fails to load; the generation number makes sure it only
//! removes itself, never a successor started in the meantime.
//!
//! Every room holds a [`DocSlot`] of `--max-live-docs` until its task ends. A client reserves
//! the slot of a document that is not live ([`Registry::reserve`], refused at the limit) before
//! its upgrade and hands it to [`Registry::join_with`], which gives it to the room it starts; a
//! document already live is joined whatever the count. Peers' replicated updates and a closing
//! room's queued messages go through [`Registry::deliver`], which starts the room regardless:
//! refusing them would lose data (see [`crate::limits`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_crdt::DocName;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::handles::{ClientHandle, JoinError, Lane, PeerRelay, RoomMsg};
use crate::limits::{DocSlot, LiveDocs, Refusal};
use crate::metrics::Metrics;
use crate::room::{Directory, Room, RoomConfig, RoomEnv};
use crate::store::SharedStore;

/// A live room: its inbox, and which incarnation of the document it is.
#[derive(Clone)]
pub struct RoomHandle {
    pub tx: mpsc::Sender<RoomMsg>,
    generation: u64,
    /// Where replicated updates for the document wait when the inbox is full.
    pub lane: Arc<Lane>,
}

pub struct Registry {
    docs: DashMap<DocName, RoomHandle>,
    /// Each live document's [`Lane`] (where replicated updates wait in the log while its room is
    /// too busy to take them), dropped when the room is evicted with nothing left to read.
    lanes: DashMap<DocName, Arc<Lane>>,
    next_generation: AtomicU64,
    /// What every room shares: configuration, store, peers, the shutdown signal.
    env: Arc<RoomEnv>,
    pub store: SharedStore,
    /// Cancelled when the server stops; rooms flush and exit.
    pub shutdown: CancellationToken,
    /// Tracks room tasks so shutdown can wait for them to finish writing.
    pub tasks: TaskTracker,
    /// The node's span (its region), which every room's log lines carry, whoever started it.
    span: tracing::Span,
    /// Running rooms, against `--max-live-docs`.
    live_docs: Arc<LiveDocs>,
}

/// How many times a join retries when it races with its room's eviction.
const JOIN_RETRIES: usize = 8;

impl Registry {
    /// `peers` is what rooms relay to (the replication hub), or `None` on a node without peers
    /// and in tests that drive rooms alone. No limit on live documents.
    pub fn new(
        config: RoomConfig,
        store: SharedStore,
        shutdown: CancellationToken,
        peers: Option<Arc<dyn PeerRelay>>,
    ) -> Arc<Self> {
        Registry::with_max_live_docs(config, store, shutdown, peers, 0)
    }

    /// [`Registry::new`] with at most `max_live_docs` documents opened by clients (0: no limit).
    pub fn with_max_live_docs(
        config: RoomConfig,
        store: SharedStore,
        shutdown: CancellationToken,
        peers: Option<Arc<dyn PeerRelay>>,
        max_live_docs: usize,
    ) -> Arc<Self> {
        Registry::with_metrics(
            config,
            store,
            shutdown,
            peers,
            max_live_docs,
            Arc::default(),
        )
    }

    /// [`Registry::with_max_live_docs`], counting into a node's `metrics`.
    pub fn with_metrics(
        config: RoomConfig,
        store: SharedStore,
        shutdown: CancellationToken,
        peers: Option<Arc<dyn PeerRelay>>,
        max_live_docs: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Registry {
            docs: DashMap::new(),
            lanes: DashMap::new(),
            next_generation: AtomicU64::new(1),
            env: Arc::new(RoomEnv {
                config,
                store: store.clone(),
                peers,
                shutdown: shutdown.clone(),
                metrics,
            }),
            store,
            shutdown,
            tasks: TaskTracker::new(),
            span: tracing::Span::current(),
            live_docs: LiveDocs::new(max_live_docs),
        })
    }

    /// The room of `name`, started (and loading) if it is not live, whatever the number of live
    /// documents.
    pub fn room(self: &Arc<Self>, name: &DocName) -> RoomHandle {
        self.start(name, None)
    }

    /// A place under `--max-live-docs` for a client about to join `name`: `None` if the
    /// document is live (joining it needs none), or the refusal (logged) when the limit is
    /// reached. Two clients racing to open one document may both reserve; the place the room
    /// does not use is freed when [`Registry::join_with`] finds the room started.
    pub fn reserve(&self, name: &DocName) -> Result<Option<DocSlot>, Refusal> {
        if self.live_room(name).is_some() {
            return Ok(None);
        }
        self.live_docs
            .try_reserve()
            .map(Some)
            .inspect_err(|refusal| self.live_docs.refused(name.as_str(), refusal))
    }

    /// The live room of `name`, or a new one holding `slot` (a fresh slot, whatever the limit,
    /// if none is given). Started under the map's shard lock, so one name never has two rooms.
    fn start(self: &Arc<Self>, name: &DocName, slot: Option<DocSlot>) -> RoomHandle {
        if let Some(h) = self.live_room(name) {
            return h;
        }
        match self.docs.entry(name.clone()) {
            Entry::Occupied(e) if !e.get().tx.is_closed() => e.get().clone(),
            entry => {
                let slot = slot.unwrap_or_else(|| self.live_docs.reserve());
                entry.insert(self.spawn(name, slot)).clone()
            }
        }
    }

    fn spawn(self: &Arc<Self>, name: &DocName, slot: DocSlot) -> RoomHandle {
        let (tx, rx) = mpsc::channel(self.env.config.doc_queue);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // The document's lane, shared by its rooms while it is in use (a lane still holding
        // updates goes to the next room); dropped with an evicted room that has read it all.
        let lane = self.lanes.entry(name.clone()).or_default().clone();
        let run = Room::run(
            name.clone(),
            generation,
            self.env.clone(),
            self.clone(),
            (tx.downgrade(), rx),
            lane.clone(),
        );
        let live = crate::metrics::GaugeHeld::new(&self.env.metrics.documents_live);
        self.tasks.spawn(
            async move {
                run.await;
                drop(live);
                drop(slot); // the room's state is gone: its place is free
            }
            .instrument(self.span.clone()),
        );
        RoomHandle {
            tx,
            generation,
            lane,
        }
    }

    /// Joins `client` to the room of `name` once the document is loaded. Returns the inbox of
    /// the room it joined.
    pub async fn join(
        self: &Arc<Self>,
        name: &DocName,
        client: ClientHandle,
    ) -> Result<mpsc::Sender<RoomMsg>, JoinError> {
        self.join_with(name, client, None).await
    }

    /// [`Registry::join`] with the place [`Registry::reserve`] gave the client, used if the
    /// room has to be started. A room started on a retry (the first one closed meanwhile, so a
    /// place was just freed) takes a place whatever the limit.
    pub async fn join_with(
        self: &Arc<Self>,
        name: &DocName,
        client: ClientHandle,
        mut slot: Option<DocSlot>,
    ) -> Result<mpsc::Sender<RoomMsg>, JoinError> {
        for _ in 0..JOIN_RETRIES {
            if self.shutdown.is_cancelled() {
                return Err(JoinError::Unavailable);
            }
            let room = self.start(name, slot.take());
            let (reply, answer) = oneshot::channel();
            if room
                .tx
                .send(RoomMsg::Join {
                    client: client.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                continue; // the room closed between lookup and send
            }
            match answer.await {
                Ok(Ok(inbox)) => return Ok(inbox),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue, // the room was evicted with our join queued
            }
        }
        Err(JoinError::Unavailable)
    }

    /// Sends `msg` to the room of `name`. A room closes its inbox when it is evicted or fails
    /// to load; a message that finds it closed goes to the successor room instead (which loads
    /// the document again), so nothing sent here is silently dropped. Gives the message back
    /// only if every try found a closed inbox (the server is stopping).
    pub async fn deliver(self: &Arc<Self>, name: &DocName, msg: RoomMsg) -> Result<(), RoomMsg> {
        let first = self.room(name);
        self.deliver_via(first, name, msg).await
    }

    /// [`Registry::deliver`], trying `first` before looking the room up again: a handle taken
    /// earlier may belong to a room that has closed since (tests use this to make that happen).
    pub async fn deliver_via(
        self: &Arc<Self>,
        first: RoomHandle,
        name: &DocName,
        mut msg: RoomMsg,
    ) -> Result<(), RoomMsg> {
        let mut room = first;
        for _ in 0..JOIN_RETRIES {
            match room.tx.send(msg).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => msg = back,
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            room = self.room(name);
        }
        Err(msg)
    }

    /// Removes `name` if it is still the room of that `generation`. Returns whether it did.
    pub fn remove_if_current(&self, name: &DocName, generation: u64) -> bool {
        let removed = self
            .docs
            .remove_if(name, |_, h| h.generation == generation)
            .is_some();
        if removed {
            self.lanes.remove_if(name, |_, lane| lane.idle());
        }
        removed
    }

    /// The lane of `name`: the one its current room reads (`room`'s, unless a newer room took
    /// over meanwhile).
    pub fn lane(&self, name: &DocName, room: &RoomHandle) -> Arc<Lane> {
        self.lanes
            .entry(name.clone())
            .or_insert_with(|| room.lane.clone())
            .clone()
    }

    /// The live room of `name`, if any (does not start one).
    pub fn live_room(&self, name: &DocName) -> Option<RoomHandle> {
        self.docs
            .get(name)
            .map(|h| h.clone())
            .filter(|h| !h.tx.is_closed())
    }

    /// Every live document and its room's inbox (a snapshot: rooms come and go meanwhile).
    pub fn live_rooms(&self) -> Vec<(DocName, mpsc::Sender<RoomMsg>)> {
        self.docs
            .iter()
            .filter(|e| !e.tx.is_closed())
            .map(|e| (e.key().clone(), e.tx.clone()))
            .collect()
    }

    /// Number of live documents.
    pub fn live(&self) -> usize {
        self.docs.len()
    }

    /// The node's metrics, which rooms count into.
    pub fn metrics(&self) -> &Metrics {
        &self.env.metrics
    }
}

/// Rooms see the registry only through [`Directory`].
impl Directory for Registry {
    fn remove_if_current(&self, name: &DocName, generation: u64) -> bool {
        Registry::remove_if_current(self, name, generation)
    }

    fn deliver(
        self: Arc<Self>,
        name: DocName,
        msg: RoomMsg,
    ) -> futures_util::future::BoxFuture<'static, Result<(), RoomMsg>> {
        Box::pin(async move { Registry::deliver(&self, &name, msg).await })
    }
}
