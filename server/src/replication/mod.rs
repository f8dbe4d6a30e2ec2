//! Multi-region active-active replication between Concord nodes.
//!
//! Every node is a leader for its own clients and a follower of its peers. Peer links are
//! WebSockets (`GET /peer`) carrying every document multiplexed ([`concord_crdt::PeerMessage`]),
//! authenticated by a challenge/response over the shared secret ([`auth`]).
//!
//! - [`socket`]: a link's WebSocket as two bounded channels, whichever library opened it.
//! - [`dial`]: dials the configured peers, retrying with jittered exponential backoff.
//! - [`deliver`]: hands a replicated update to its document's room, or to its lane in the log
//!   when the room is busy; [`ack`]: acknowledges what is durable, in order.
//! - [`link`]: one authenticated link: routes what arrives to the documents, acknowledges it once
//!   durable, and runs [`stream`] for the other direction.
//! - [`resume`]: where a peer's log stream starts, from the incarnation and sequence the peer
//!   says it holds of this node's log (so a wiped or restored node gets its history back).
//! - [`stream`]: sends this node's update log to one peer from there, so catch-up after an outage
//!   costs the missed updates only.
//!
//! - [`routes`]: which neighbour sends which origin's updates (one tree per origin, decided by
//!   [`concord_crdt::routing`]), told to the neighbours as it changes.
//!
//! An update carries its origin; each node asks one neighbour per origin for it, so an update
//! crosses each region once, and a node that stays behind on an origin asks a neighbour that is
//! ahead (grafts). An update that brings nothing new is not stored again, so nothing loops. Gaps
//! from out-of-order delivery are repaired by a state-vector exchange for documents live on both
//! sides.
//!
//! [`Replication`] is the hub: the live links (at most one per peer), per-peer statistics for
//! `/api/status`, and the calls rooms make (announce a live document, relay presence).

pub mod ack;
pub mod auth;
pub mod deliver;
pub mod dial;
mod forget;
pub mod link;
/// What rooms may ask of the peers, through the registry (which holds the hub as this trait, so
/// the room module never depends on replication).
impl PeerRelay for Replication {
    fn node_id(&self) -> &NodeId {
        &self.me.node_id
    }

    fn offer_sync(&self, doc: &DocName, sv: &StateVector) {
        Replication::offer_sync(self, doc, sv)
    }

    fn relay_awareness(&self, doc: &DocName, path: &[NodeId], payload: &[u8]) {
        Replication::relay_awareness(self, doc, path, payload)
    }

    fn originated(&self, n: u64) {
        self.originated.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod peer_sync_tests;
pub mod resume;
pub mod routes;
pub mod socket;
pub mod stream;

use axum::extract::ws::close_code;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_crdt::routing::Router;
use concord_crdt::yrs::StateVector;
use concord_crdt::yrs::updates::encoder::Encode;
use concord_crdt::{DocName, NodeId, PeerMessage};
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::handles::{LinkHandle, PeerRelay};
use crate::registry::Registry;
use crate::store::{PeerInfo, Seq, SharedStore};
use auth::Identity;

/// Largest message on a peer link, both ways: a state-vector answer or a snapshot carries a whole
/// document. (A client message is at most `--max-message-size`; its envelope adds a few bytes.)
pub const PEER_MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Peer sockets allowed to be mid-handshake (not yet authenticated) at once. Each may buffer a
/// message of up to [`PEER_MAX_MESSAGE`] for the handshake's timeout, so this bounds what
/// strangers can make a node hold.
pub const MAX_PENDING_HANDSHAKES: usize = 4;

/// What `/api/status` shows of one peer. Counters are since this process started.
#[derive(Default)]
pub struct PeerStats {
    pub region: Mutex<String>,
    pub url: Mutex<String>,
    pub connected: AtomicBool,
    /// Unix milliseconds of the last message received.
    pub last_contact_ms: AtomicU64,
    /// Last sequence of this node's log the peer acknowledged.
    pub acked: AtomicU64,
    pub sent_updates: AtomicU64,
    /// Messages of the log stream sent (updates, origin names, progress, snapshots), and bytes.
    pub sent_messages: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Times a link to the peer came up (the first, then each reconnection).
    pub links_up: AtomicU64,
    /// Log entries received (`Update` messages).
    pub received_updates: AtomicU64,
    /// Every message received (updates, acknowledgements, state vectors, presence...), and bytes.
    pub received_messages: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Updates sent on the live link and not yet acknowledged, with when they were sent (at most
    /// the stream's window). The oldest one's age is the peer's replication lag.
    pub in_flight: Mutex<VecDeque<(Seq, Instant)>>,
}

impl PeerStats {
    /// Records that the peer acknowledged everything up to `seq`.
    pub fn acknowledged(&self, seq: Seq) {
        self.acked.fetch_max(seq, Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock().unwrap();
        while in_flight.front().is_some_and(|(s, _)| *s <= seq) {
            in_flight.pop_front();
        }
    }

    /// How long the oldest unacknowledged update has been waiting for the peer (0 when it has
    /// everything that was sent).
    pub fn lag(&self) -> Duration {
        let in_flight = self.in_flight.lock().unwrap();
        in_flight
            .front()
            .map_or(Duration::ZERO, |(_, t)| t.elapsed())
    }
}

/// What this node knows of one peer at a moment: the input of `/api/status`.
pub struct PeerView {
    /// The configured URL (or, for a peer that dialed us, the URL it advertises).
    pub url: String,
    pub node_id: Option<NodeId>,
    /// Counters and cursors, once the peer was reached or remembered.
    pub stats: Option<Arc<PeerStats>>,
    /// How long its live link has been silent, if a link is up.
    pub silent: Option<Duration>,
    /// Why dialing it last failed.
    pub last_error: Option<String>,
    /// Whether the pair's link is the one the peer dialed.
    pub inbound: bool,
}

/// A configured peer URL and what dialing it has found out.
#[derive(Default, Clone)]
pub struct DialState {
    pub node_id: Option<NodeId>,
    pub last_error: Option<String>,
}

pub struct Replication {
    pub me: Identity,
    secret: Option<Vec<u8>>,
    /// Base URLs from `--peers`.
    configured: Vec<String>,
    /// How the configured peers are dialed (TLS for `https://` ones).
    pub peer_tls: crate::tls::peer::PeerTls,
    links: DashMap<NodeId, LinkHandle>,
    peers: DashMap<NodeId, Arc<PeerStats>>,
    dials: DashMap<String, DialState>,
    /// Slots for unauthenticated incoming peer sockets ([`MAX_PENDING_HANDSHAKES`]).
    handshakes: Arc<tokio::sync::Semaphore>,
    pub store: SharedStore,
    pub shutdown: CancellationToken,
    /// Every task replication runs: dialers, links (and their log streams and acknowledgement
    /// loops, which write the last cursors), the peer sockets' readers and writers, peer
    /// records. Shutdown waits for them (bounded) before it closes the store, so no cursor write
    /// races the store's close, and every peer gets its `node shutting down` close frame.
    pub tasks: TaskTracker,
    next_link: AtomicU64,
    /// Which neighbour brings which origin ([`routes`]); locked briefly, never on the
    /// per-update path.
    router: Mutex<Router>,
    /// What this node holds of each origin, raised as updates arrive.
    held: routes::Held,
    /// What each neighbour asked us to send it (origin → what it held when it asked).
    relays: DashMap<NodeId, Arc<BTreeMap<NodeId, u64>>>,
    /// Updates this node's own clients wrote (log entries), for `/api/status`.
    pub originated: AtomicU64,
    started: Instant,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Replication {
    pub fn new(
        me: Identity,
        secret: Option<String>,
        configured: Vec<String>,
        peer_tls: crate::tls::peer::PeerTls,
        store: SharedStore,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let me_id = me.node_id.clone();
        Arc::new(Replication {
            me,
            secret: secret.map(String::into_bytes),
            configured,
            peer_tls,
            links: DashMap::new(),
            peers: DashMap::new(),
            dials: DashMap::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES)),
            store,
            shutdown,
            tasks: TaskTracker::new(),
            next_link: AtomicU64::new(1),
            router: Mutex::new(Router::new(me_id)),
            held: routes::Held::default(),
            relays: DashMap::new(),
            originated: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Starts dialing the configured peers; their links deliver into `registry`'s rooms.
    pub fn start(self: &Arc<Self>, registry: &Arc<Registry>) {
        self.start_routing();
        self.start_forgetting();
        for url in &self.configured {
            self.tasks.spawn(
                dial::dial_forever(self.clone(), registry.clone(), url.clone()).in_current_span(),
            );
        }
        if !self.configured.is_empty() {
            info!(node = %self.me.node_id, region = %self.me.region, peers = ?self.configured, "replicating");
        }
    }

    /// Fills status with what the store remembers of the peers (who they are, where we dial
    /// them, what they acknowledged), so a peer not reached since this node started shows its
    /// real cursor and backlog instead of none.
    /// Runs before the node serves anything.
    pub async fn recall_peers(&self) {
        let (cursors, known) = match (
            self.store.peer_cursors().await,
            self.store.known_peers().await,
        ) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot read what is known of the peers; status starts empty");
                return;
            }
        };
        for (id, acked) in cursors {
            self.stats(&id).acked.fetch_max(acked, Ordering::Relaxed);
        }
        for (id, info) in known {
            // What this node holds of the peer's own updates, so that a route through another
            // neighbour starts there rather than at nothing.
            if let Ok(Some((_, seq))) = self.store.received_cursor(&id).await {
                self.held.raise(&id, seq);
            }
            let stats = self.stats(&id);
            {
                let mut region = stats.region.lock().unwrap();
                if region.is_empty() {
                    *region = info.region;
                }
            }
            {
                let mut url = stats.url.lock().unwrap();
                if url.is_empty() {
                    *url = info.url;
                }
            }
            if let Some(dial) = info.dial_url.filter(|u| self.configured.contains(u)) {
                self.set_dial(&dial, |d| {
                    d.node_id.get_or_insert(id);
                });
            }
        }
    }

    /// Records who a peer is, once it authenticated (`dial_url`: the `--peers` URL we reached it
    /// at, when we dialed).
    pub fn remember(&self, peer: &Identity, dial_url: Option<&str>) {
        let info = PeerInfo {
            region: peer.region.clone(),
            url: peer.url.clone(),
            dial_url: dial_url.map(String::from),
        };
        let store = self.store.clone();
        let id = peer.node_id.clone();
        self.tasks.spawn(
            async move {
                if let Err(e) = store.remember_peer(&id, info).await {
                    debug!(peer = %id, error = %e, "could not record the peer");
                }
            }
            .in_current_span(),
        );
    }

    pub fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    /// A slot for one more unauthenticated peer socket, if one is free.
    pub fn handshake_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.handshakes.clone().try_acquire_owned().ok()
    }

    pub fn stats(&self, peer: &NodeId) -> Arc<PeerStats> {
        self.peers.entry(peer.clone()).or_default().clone()
    }

    pub fn is_linked(&self, peer: &NodeId) -> bool {
        self.links.contains_key(peer)
    }

    /// Registers a new link. When the pair already has one (both ends dialed), both nodes keep
    /// the link dialed by the smaller node id, so they agree without talking about it. Returns
    /// whether the new link is kept; the loser is closed.
    fn register(&self, new: LinkHandle) -> bool {
        use dashmap::mapref::entry::Entry;
        match self.links.entry(new.peer.clone()) {
            Entry::Vacant(v) => {
                v.insert(new);
                true
            }
            Entry::Occupied(mut o) => {
                let old = o.get();
                let preferred = self.me.node_id.clone().min(new.peer.clone());
                let keep_new = old.dialer == new.dialer || new.dialer == preferred;
                if keep_new {
                    old.control.close(
                        close_code::NORMAL,
                        "duplicate link: the pair keeps the other one",
                    );
                    o.insert(new);
                }
                keep_new
            }
        }
    }

    /// Whether `link` is still the pair's link (not replaced by a newer one).
    fn is_current(&self, link: &LinkHandle) -> bool {
        self.links.get(&link.peer).is_some_and(|l| l.id == link.id)
    }

    fn unregister(&self, link: &LinkHandle) {
        self.links.remove_if(&link.peer, |_, l| l.id == link.id);
    }

    fn next_link_id(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    fn links(&self) -> Vec<LinkHandle> {
        self.links.iter().map(|l| l.clone()).collect()
    }

    /// A document became live here (or has data waiting for missing dependencies): offer our
    /// state vector to every peer; those that have it live answer with what we lack.
    pub fn offer_sync(&self, doc: &DocName, sv: &StateVector) {
        let msg = PeerMessage::SyncStep1 {
            doc: doc.clone(),
            sv: sv.encode_v1(),
        };
        for link in self.links() {
            let _ = link.try_send(&msg);
        }
    }

    /// Relays a presence update along its origin's tree (the first node of its path): to every
    /// peer that asked us for that origin and is not on the path already.
    pub fn relay_awareness(&self, doc: &DocName, path: &[NodeId], payload: &[u8]) {
        let origin = path.first().unwrap_or(&self.me.node_id);
        let mut forward_path = path.to_vec();
        forward_path.push(self.me.node_id.clone());
        let msg = PeerMessage::Awareness {
            doc: doc.clone(),
            path: forward_path,
            update: payload.to_vec(),
        };
        for link in self.links() {
            if !path.contains(&link.peer) && self.relays_to(&link.peer, origin) {
                link.try_send(&msg);
            }
        }
    }

    /// Every peer this node knows, configured or seen, for `/api/status` (rendered in
    /// [`crate::status`]): configured URLs first, in the order given, then peers that dialed us.
    pub fn peer_views(&self) -> Vec<PeerView> {
        let mut views = Vec::new();
        let mut seen_ids = Vec::new();
        for url in &self.configured {
            let dial = self.dials.get(url).map(|d| d.clone()).unwrap_or_default();
            let stats = dial
                .node_id
                .as_ref()
                .and_then(|id| self.peers.get(id).map(|s| s.clone()));
            if let Some(id) = &dial.node_id {
                seen_ids.push(id.clone());
            }
            let silent = dial.node_id.as_ref().and_then(|id| self.silent_for(id));
            // Both ends may dial; the pair keeps one link, possibly the one the peer dialed.
            let inbound = dial.node_id.as_ref().is_some_and(|id| {
                self.links
                    .get(id)
                    .is_some_and(|l| l.dialer != self.me.node_id)
            });
            views.push(PeerView {
                url: url.clone(),
                node_id: dial.node_id.clone(),
                stats,
                silent,
                last_error: dial.last_error.clone(),
                inbound,
            });
        }
        for entry in self.peers.iter() {
            if seen_ids.contains(entry.key()) {
                continue;
            }
            views.push(PeerView {
                url: entry.value().url.lock().unwrap().clone(),
                node_id: Some(entry.key().clone()),
                stats: Some(entry.value().clone()),
                silent: self.silent_for(entry.key()),
                last_error: None,
                inbound: true,
            });
        }
        views
    }

    /// How long the live link to `peer` has been silent (pings count), if there is one.
    fn silent_for(&self, peer: &NodeId) -> Option<std::time::Duration> {
        self.links.get(peer).map(|l| l.control.silent_for())
    }

    fn set_dial(&self, url: &str, f: impl FnOnce(&mut DialState)) {
        f(&mut self.dials.entry(url.to_string()).or_default());
    }
}
