//! The handles and messages through which the server's tasks talk to each other: a room's
//! inbox messages ([`RoomMsg`]), a connection as its room sees it ([`ClientHandle`]), a peer link
//! as a room answers it ([`LinkHandle`]), and what a room may ask of the peer regions
//! ([`PeerRelay`]). They live here, below everything that uses them, so that connections, rooms,
//! the registry and replication depend on this module and never on each other in a circle:
//! data flows one way, from connections and peer links through the registry into rooms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::yrs::StateVector;
use concord_crdt::yrs::sync::awareness::AwarenessUpdate;
use concord_crdt::{ClientMessage, DocName, IncomingUpdate, NodeId, PeerMessage};

use crate::store::Origin;
use tokio::sync::{mpsc, oneshot};

use crate::control::Control;

/// Identifies a connection within the process.
pub type ConnId = u64;

/// Close code for a client whose send queue filled up: "try again later". It reconnects and
/// resyncs, which costs it one Step2 and costs the room nothing.
pub const CLOSE_TOO_SLOW: u16 = close_code::AGAIN;

/// What the room holds for each member: where to send, and how to end it.
#[derive(Clone)]
pub struct ClientHandle {
    pub id: ConnId,
    pub peer: SocketAddr,
    /// Read-only access: its updates never reach the room (the reader drops them), and it may
    /// only set its own presence.
    pub read_only: bool,
    pub(crate) out: mpsc::Sender<Bytes>,
    pub(crate) control: Arc<Control>,
}

/// Why a frame could not be queued for a client.
pub enum SendError {
    /// The queue is full: the client is too slow and must be dropped.
    Full,
    /// The connection already ended.
    Closed,
}

impl ClientHandle {
    /// Queues one frame without waiting: a room never waits on one of its clients.
    pub fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        self.out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.control.close(code, reason);
    }

    /// A member with no socket behind it, for benchmarks and tests that drive a room directly:
    /// the frames the room sends it arrive on the receiver of `out` (whoever holds it plays the
    /// writer task), and a close is recorded in `control` (its reason and cancelled token).
    /// `peer` only appears in logs.
    pub fn new(
        id: ConnId,
        peer: SocketAddr,
        out: mpsc::Sender<Bytes>,
        control: Arc<Control>,
    ) -> Self {
        ClientHandle {
            id,
            peer,
            read_only: false,
            out,
            control,
        }
    }
}

/// Messages a room accepts.
pub enum RoomMsg {
    /// A connection joins: the room sends it Step1 and the awareness states, then replies.
    Join {
        client: ClientHandle,
        /// Answered with the inbox of the room that took the join: not always the one the
        /// join was sent to (a room being evicted hands its queued joins to its successor).
        reply: oneshot::Sender<Result<mpsc::Sender<RoomMsg>, JoinError>>,
    },
    /// A connection ended: forget it and broadcast the removal of its awareness states.
    Leave { id: ConnId },
    /// The decoded messages of one frame from connection `id`.
    Frame {
        id: ConnId,
        msgs: Vec<ClientMessage>,
    },
    /// An update from a peer region. `done` resolves once it is durable here (or brought
    /// nothing new), which is when the link acknowledges it.
    Replicated {
        update: IncomingUpdate,
        /// Where it was first written (`None`: a repair, stored as this node's own).
        origin: Option<Origin>,
        done: Option<oneshot::Sender<()>>,
    },
    /// A peer's state vector for this document: answer with what it lacks.
    PeerSync { link: LinkHandle, sv: StateVector },
    /// A link to a peer came up: our state vector (encoded), for it to answer with what we lack.
    StateVector { reply: oneshot::Sender<Vec<u8>> },
    /// Presence relayed from a peer region.
    PeerAwareness {
        path: Vec<NodeId>,
        update: AwarenessUpdate,
    },
    /// A read for the HTTP API, answered with committed state only.
    Read {
        kind: ReadKind,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
}

/// What an HTTP read wants. The answer is `None` when the document was never written.
pub enum ReadKind {
    /// The whole document as one Yjs v1 update.
    Update,
    /// The text of the `Y.Text` root with this name, UTF-8.
    Text(String),
}

/// Why a connection could not join its document.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JoinError {
    /// Loading the document failed; the connection is closed with 1011 and this reason.
    #[error("document could not be loaded: {0}")]
    Load(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    Unavailable,
}

/// One live, authenticated link to a peer.
#[derive(Clone)]
pub struct LinkHandle {
    pub peer: NodeId,
    pub(crate) id: u64,
    /// Which end dialed: decides which link survives when both ends dial each other.
    pub(crate) dialer: NodeId,
    pub out: mpsc::Sender<Bytes>,
    pub(crate) control: Arc<Control>,
}

impl LinkHandle {
    /// Queues a message without waiting; repair and presence messages are dropped when the link
    /// is congested (the update log, which must not lose anything, waits instead).
    /// Queues `msg` unless the link's queue is full; returns whether it was queued.
    pub fn try_send(&self, msg: &PeerMessage) -> bool {
        self.out.try_send(Bytes::from(msg.encode())).is_ok()
    }
}

/// What a room asks of the peer regions: implemented by the replication hub, and absent on a
/// node without peers (and in tests that drive rooms alone).
pub trait PeerRelay: Send + Sync {
    /// This node's id: the first entry of the path of what it relays.
    fn node_id(&self) -> &NodeId;
    /// Asks every peer with a live link for what this document lacks: sends them our state
    /// vector, which they answer with a Step2-like update.
    fn offer_sync(&self, doc: &DocName, sv: &StateVector);
    /// Relays presence along its origin's tree, to peers not on `path`.
    fn relay_awareness(&self, doc: &DocName, path: &[NodeId], payload: &[u8]);
    /// Counts `n` updates from this node's own clients appended to the log (for status).
    fn originated(&self, n: u64);
}

/// Replicated updates a document's room could not take when they arrived (its inbox was full):
/// the link wrote them to the log for it instead, acknowledged them once durable, and the room
/// reads them back from there ([`crate::store::Store::read_doc_log`]). So a busy or slow
/// document waits on its own, in the log, and never holds up the other documents of a link.
/// One per document name, for as long as the node runs (rooms come and go; what was written for
/// the document must reach whichever room serves it next).
#[derive(Default)]
pub struct Lane {
    /// The highest log sequence written for the document this way.
    pub written: AtomicU64,
    /// Writes for the document in progress (their sequences not known yet).
    pub writing: AtomicU64,
    /// Wakes the room when `written` rises.
    pub wake: tokio::sync::Notify,
    /// How far the room serving the document has read what was written this way.
    pub applied: AtomicU64,
    /// Set while the room takes a snapshot: a snapshot covers every entry of the document queued
    /// before it, so no write for the lane may be queued between the room's check that it has
    /// read everything and its snapshot's place in the queue ([`Lane::begin_compaction`]).
    compacting: AtomicBool,
    compacted: tokio::sync::Notify,
}

impl Lane {
    /// Whether everything written for the document this way is at or below `applied`: none in
    /// progress, none above. While it is not, later updates for the document go the same way,
    /// so they reach the room in order.
    pub fn caught_up(&self, applied: u64) -> bool {
        self.writing.load(Ordering::SeqCst) == 0 && self.written.load(Ordering::SeqCst) <= applied
    }

    /// [`Lane::caught_up`] as far as the room has said.
    pub fn idle(&self) -> bool {
        self.caught_up(self.applied.load(Ordering::SeqCst))
    }

    /// The room (having read through `applied`) is about to queue a snapshot: true if it may,
    /// and then no write for the lane is queued until [`Lane::end_compaction`]. With both sides
    /// announcing first and checking second (`writing` here, `compacting` in
    /// [`Lane::start_write`]), either the room sees the write and waits for its next chance, or
    /// the write waits until the snapshot is queued.
    pub fn begin_compaction(&self, applied: u64) -> bool {
        self.compacting.store(true, Ordering::SeqCst);
        if self.caught_up(applied) {
            return true;
        }
        self.end_compaction();
        false
    }

    pub fn end_compaction(&self) {
        self.compacting.store(false, Ordering::SeqCst);
        self.compacted.notify_waiters();
    }

    /// A link is about to queue a write for the lane: counts it, and waits while the room is
    /// queuing a snapshot (a moment: the snapshot only has to take its place in the queue).
    pub async fn start_write(&self) {
        self.writing.fetch_add(1, Ordering::SeqCst);
        loop {
            let done = self.compacted.notified();
            if !self.compacting.load(Ordering::SeqCst) {
                return;
            }
            done.await;
        }
    }
}
