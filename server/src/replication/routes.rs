//! The node's side of routing: the [`Router`](concord_crdt::routing::Router) behind a short
//! lock, what this node holds of each origin, and the task that tells the neighbours.
//!
//! The decisions are [`concord_crdt::routing`]'s (pure, simulated there). This module feeds it
//! the events (links up and down, the neighbours' `Routes` and `Have`, what arrives) and sends
//! what it answers: routes as soon as they change, grafts on a tick of [`TICK`], and what this
//! node holds every [`HAVE_EVERY`] when it changed. The per-update path touches no lock:
//! arrivals raise a per-origin atomic ([`Held`]), which the tick hands to the router.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_crdt::NodeId;
use concord_crdt::routing::{Route, Router};
use dashmap::DashMap;
use tracing::{Instrument, debug};

use super::{PeerStats, Replication};

/// How often grafts are decided and changed routes resent.
pub const TICK: Duration = Duration::from_millis(100);
/// How often, at most, each neighbour is told what this node holds (what changed only). With
/// [`GRAFT_AFTER_MS`](concord_crdt::routing::GRAFT_AFTER_MS), what the tree missed arrives
/// within about 4 s; in a healthy mesh it costs one small message per link every 2 s.
pub const HAVE_EVERY: Duration = Duration::from_secs(2);

/// The highest origin sequence held of each origin, raised as updates arrive.
#[derive(Default)]
pub struct Held(DashMap<NodeId, Arc<AtomicU64>>);

impl Held {
    pub fn raise(&self, origin: &NodeId, oseq: u64) {
        if let Some(h) = self.0.get(origin) {
            h.fetch_max(oseq, Ordering::Relaxed);
            return;
        }
        self.0
            .entry(origin.clone())
            .or_default()
            .fetch_max(oseq, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(NodeId, u64)> {
        self.0
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect()
    }
}

/// One origin as `/api/status` shows it.
pub struct OriginView {
    pub origin: NodeId,
    pub route: Option<Route>,
    pub held: u64,
}

/// One link's routing as `/api/status` shows it.
#[derive(Default)]
pub struct LinkRoutes {
    /// Origins this link brings us (tree and grafts).
    pub carries: BTreeSet<NodeId>,
    /// Origins we send on it.
    pub relays: BTreeSet<NodeId>,
    /// Origins it brings us only to catch up.
    pub grafted: BTreeSet<NodeId>,
}

impl Replication {
    /// Milliseconds since this node started: the router's clock.
    fn clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A link to `peer` is up: route through it, and tell every neighbour what changed.
    pub(super) fn route_link_up(&self, peer: &NodeId, stats: &PeerStats) {
        self.reroute(|router| {
            stats.connected.store(true, Ordering::Relaxed);
            router.link_up(peer.clone());
        });
    }

    /// A link to `peer` ended: unless a newer one registered meanwhile, route around the peer
    /// and mark it disconnected. Returns whether it did. Both ends decide under the router's
    /// lock, after the link (un)registered: a link replaced while it ends neither wipes its
    /// successor's routes nor marks it down.
    pub(super) fn route_link_down(&self, peer: &NodeId, stats: &PeerStats) -> bool {
        self.reroute(|router| {
            if self.links.contains_key(peer) {
                return false;
            }
            router.link_down(peer);
            self.relays.remove(peer);
            stats.connected.store(false, Ordering::Relaxed);
            true
        })
    }

    /// `peer`'s routes arrived: its distances, and what it wants us to send it (returned, for
    /// its log stream).
    pub(super) fn on_routes(
        &self,
        peer: &NodeId,
        dist: Vec<(NodeId, u8)>,
        carry: Vec<(NodeId, u64)>,
    ) -> Arc<BTreeMap<NodeId, u64>> {
        let wants: Arc<BTreeMap<NodeId, u64>> = Arc::new(carry.iter().cloned().collect());
        self.relays.insert(peer.clone(), wants.clone());
        self.reroute(|router| router.on_routes(peer, dist, carry));
        wants
    }

    pub(super) fn on_have(&self, peer: &NodeId, held: Vec<(NodeId, u64)>) {
        let now = self.clock();
        self.router.lock().unwrap().on_have(peer, held, now);
    }

    /// Whether `peer` asked us to send it `origin`'s updates (presence follows the same trees).
    pub(super) fn relays_to(&self, peer: &NodeId, origin: &NodeId) -> bool {
        self.relays
            .get(peer)
            .is_some_and(|wants| wants.contains_key(origin))
    }

    /// Applies `change` to the router, then sends every neighbour whose routes changed its new
    /// routes (one lock for both; the sends come after it). A send that fails (its queue is
    /// full) is retried on the next tick.
    fn reroute<T>(&self, change: impl FnOnce(&mut Router) -> T) -> T {
        let (out, msgs) = {
            let mut router = self.router.lock().unwrap();
            let out = change(&mut router);
            (out, router.routes_to_send())
        };
        self.send_each(msgs);
        out
    }

    fn send_each(&self, msgs: Vec<(NodeId, concord_crdt::PeerMessage)>) {
        for (peer, msg) in msgs {
            let sent = self.links.get(&peer).is_some_and(|l| l.try_send(&msg));
            if !sent {
                debug!(%peer, "routes not sent (link busy or gone); resending on the next tick");
                self.router.lock().unwrap().untell(&peer);
            }
        }
    }

    /// Hands what arrived to the router, grafts what is due, and tells the neighbours.
    fn routing_tick(&self, tell_held: bool) {
        let now = self.clock();
        let held = self.held.snapshot();
        let own = self.store.committed();
        let (routes, haves) = {
            let mut router = self.router.lock().unwrap();
            let me = router.me().clone();
            router.hold(&me, own, now);
            for (origin, oseq) in held {
                router.hold(&origin, oseq, now);
            }
            router.tick(now);
            let routes = router.routes_to_send();
            let haves = if tell_held {
                router.have_to_send()
            } else {
                Vec::new()
            };
            (routes, haves)
        };
        self.send_each(routes);
        self.send_each(haves);
    }

    /// Runs the routing tick until shutdown.
    pub(super) fn start_routing(self: &Arc<Self>) {
        let hub = self.clone();
        self.tasks.spawn(
            async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let every = (HAVE_EVERY.as_millis() / TICK.as_millis()).max(1) as u64;
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = hub.shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    n += 1;
                    hub.routing_tick(n.is_multiple_of(every));
                }
            }
            .in_current_span(),
        );
    }

    /// Every origin this node knows, with its route and what is held of it.
    pub fn origin_views(&self) -> Vec<OriginView> {
        let router = self.router.lock().unwrap();
        router
            .origins()
            .into_iter()
            .map(|origin| OriginView {
                route: router.route(&origin),
                held: router.held(&origin),
                origin,
            })
            .collect()
    }

    /// What the link to `peer` carries each way.
    pub fn link_routes(&self, peer: &NodeId) -> LinkRoutes {
        let router = self.router.lock().unwrap();
        if !router.is_up(peer) {
            return LinkRoutes::default();
        }
        LinkRoutes {
            carries: router.carries(peer),
            relays: router.relays(peer).into_keys().collect(),
            grafted: router.grafted(peer),
        }
    }
}
