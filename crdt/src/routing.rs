//! Which neighbour sends this node which origin's updates: the routing half of replication, kept
//! free of clocks and sockets (time is a number of milliseconds passed in) so that seeded
//! simulations can run it over thousands of topologies, cuts and reorderings.
//!
//! It is a broadcast in the manner of Plumtree (Leitão, Pereira, Rodrigues, "Epidemic Broadcast
//! Trees", 2007), with the tree built by distance vector instead of by pruning:
//!
//! - **Eager push along one tree per origin.** Each node picks, for every origin it can reach, a
//!   *parent*: the neighbour fewest hops from it (a direct link to the origin always wins; ties
//!   go to the smaller node id). It asks that neighbour, and only that one, to *carry* the
//!   origin ([`Router::carries`]), saying how far it already holds it. In a healthy mesh every
//!   parent is the origin itself, so an update crosses each link once: N-1 copies for N regions.
//!   Distances are advertised with poison reverse (a node tells its parent for an origin that it
//!   cannot reach that origin), and count at most [`UNREACHABLE`] - 1 hops, so a lost route
//!   is dropped rather than counted to infinity. A cut link is routed around as soon as its end
//!   is noticed: the next advertisement names another parent.
//! - **Lazy push of what each holds.** Every node tells its neighbours the highest origin
//!   sequence it holds of each origin ([`Router::have_to_send`]). A neighbour that stays ahead
//!   of us on an origin for [`GRAFT_AFTER_MS`], while our parent for it is not, is *grafted*: we
//!   ask it to carry that origin too, from what we hold, until we have caught up with it. This
//!   repairs what the tree missed: updates sent in the seconds before a cut was noticed, and
//!   those of an origin that went down after only some of its neighbours had them.
//!
//! [`CarryFilter`] is the sending side: which log entries a stream sends one peer, and where it
//! must go back to when the peer asks for an origin it did not ask for before.

use std::collections::{BTreeMap, BTreeSet};

use crate::replication::{MAX_ORIGINS, NodeId, PeerMessage, UNREACHABLE};

/// How far below what a peer says it holds of an origin a new carry starts. A relay logs an
/// origin's updates one document at a time, not always in the origin's order, so the highest
/// origin sequence a node received may lie above one it lacks; going back this far sends it
/// again (with what the peer already has, which it ignores). It costs only on a change of route,
/// and only what the log still retains.
pub const REORDER_SLACK: u64 = 1024;

/// How long a neighbour must stay ahead of us on an origin (with our parent for it no further
/// ahead) before we ask it for the rest. Longer than a slow link's delay, so a healthy tree never
/// grafts; short enough that what the tree missed arrives within seconds.
pub const GRAFT_AFTER_MS: u64 = 1500;

/// How an origin is reached from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Hops from this node (0 for itself).
    pub distance: u8,
    /// The neighbour that carries it here (`None` for this node itself).
    pub via: Option<NodeId>,
}

/// What a neighbour was last told: the distances advertised to it and the origins asked of it.
type Told = (Vec<(NodeId, u8)>, Vec<NodeId>);

#[derive(Default)]
struct Neighbour {
    /// Distances it advertised to us.
    dist: BTreeMap<NodeId, u8>,
    /// What it holds of each origin, as it last said.
    held: BTreeMap<NodeId, u64>,
    /// The origins it asked us to send it, with what it held when it asked.
    wants: BTreeMap<NodeId, u64>,
    /// Origins it is ahead of us on: (the position it had that we lack, since when).
    ahead: BTreeMap<NodeId, (u64, u64)>,
    /// Origins we asked it for beyond the tree, to catch up.
    grafted: BTreeSet<NodeId>,
    /// The routes we last told it (distances and carried origins), to send only changes.
    told: Option<Told>,
    /// What we last told it we hold.
    told_held: BTreeMap<NodeId, u64>,
}

/// One node's routing state: its live neighbours and what it holds of every origin.
pub struct Router {
    me: NodeId,
    links: BTreeMap<NodeId, Neighbour>,
    held: BTreeMap<NodeId, u64>,
}

impl Router {
    pub fn new(me: NodeId) -> Self {
        Router {
            me,
            links: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// A link to `peer` came up (a replacement for an existing one starts afresh).
    pub fn link_up(&mut self, peer: NodeId) {
        self.links.insert(peer, Neighbour::default());
    }

    /// The link to `peer` is gone: its routes, wants and grafts go with it.
    pub fn link_down(&mut self, peer: &NodeId) {
        self.links.remove(peer);
    }

    pub fn is_up(&self, peer: &NodeId) -> bool {
        self.links.contains_key(peer)
    }

    /// `from`'s routes arrived: the distances it advertises, and what it wants us to send it.
    pub fn on_routes(&mut self, from: &NodeId, dist: Vec<(NodeId, u8)>, carry: Vec<(NodeId, u64)>) {
        if let Some(n) = self.links.get_mut(from) {
            n.dist = dist.into_iter().collect();
            n.wants = carry.into_iter().collect();
        }
    }

    /// `from` says what it holds of the origins whose position changed since it last said.
    pub fn on_have(&mut self, from: &NodeId, held: Vec<(NodeId, u64)>, now: u64) {
        let Some(n) = self.links.get_mut(from) else {
            return;
        };
        for (origin, theirs) in held {
            n.held.insert(origin, theirs);
        }
        for (origin, &theirs) in &n.held {
            if *origin == self.me {
                continue;
            }
            let mine = self.held.get(origin).copied().unwrap_or(0);
            if theirs > mine {
                n.ahead.entry(origin.clone()).or_insert((theirs, now));
            } else {
                n.ahead.remove(origin);
            }
        }
    }

    /// This node now holds `origin` up to `oseq` (its own updates included).
    pub fn hold(&mut self, origin: &NodeId, oseq: u64, now: u64) {
        let mine = self.held.entry(origin.clone()).or_insert(0);
        if oseq <= *mine {
            return;
        }
        *mine = oseq;
        let mine = *mine;
        for n in self.links.values_mut() {
            let Some(&(target, _)) = n.ahead.get(origin) else {
                continue;
            };
            if mine >= target {
                match n.held.get(origin) {
                    Some(&theirs) if theirs > mine => {
                        n.ahead.insert(origin.clone(), (theirs, now));
                    }
                    _ => {
                        n.ahead.remove(origin);
                    }
                }
            }
        }
    }

    /// What this node holds of `origin`.
    pub fn held(&self, origin: &NodeId) -> u64 {
        self.held.get(origin).copied().unwrap_or(0)
    }

    /// Grafts what has been missing long enough, and drops grafts that have caught up.
    pub fn tick(&mut self, now: u64) {
        let mut graft: Vec<(NodeId, NodeId)> = Vec::new();
        let mut grafted_now: BTreeSet<NodeId> = BTreeSet::new();
        for (peer, n) in &self.links {
            for (origin, &(target, since)) in &n.ahead {
                if now.saturating_sub(since) < GRAFT_AFTER_MS
                    || n.grafted.contains(origin)
                    || grafted_now.contains(origin)
                {
                    continue;
                }
                let parent = self.parent(origin);
                if parent.as_ref() == Some(peer) {
                    continue;
                }
                // Our parent has it too (the origin itself always has): it is on its way, only
                // slow. A direct link that died unnoticed is routed around once noticed.
                let parent_has = parent.as_ref() == Some(origin)
                    || parent
                        .and_then(|p| self.links.get(&p))
                        .and_then(|p| p.held.get(origin))
                        .is_some_and(|&h| h >= target);
                // One neighbour at a time catches us up on an origin.
                let already = self.links.values().any(|m| m.grafted.contains(origin));
                if !parent_has && !already {
                    graft.push((peer.clone(), origin.clone()));
                    grafted_now.insert(origin.clone());
                }
            }
        }
        for (peer, origin) in graft {
            if let Some(n) = self.links.get_mut(&peer) {
                n.grafted.insert(origin);
            }
        }
        let held = &self.held;
        for n in self.links.values_mut() {
            let theirs = &n.held;
            n.grafted.retain(|o| {
                held.get(o).copied().unwrap_or(0) < theirs.get(o).copied().unwrap_or(0)
            });
        }
    }

    /// How `origin` is reached: the neighbour with the fewest hops to it (a direct link always
    /// wins), ties to the smaller node id. `None` when no neighbour can reach it.
    pub fn route(&self, origin: &NodeId) -> Option<Route> {
        if *origin == self.me {
            return Some(Route {
                distance: 0,
                via: None,
            });
        }
        let mut best: Option<(u8, &NodeId)> = None;
        for (peer, n) in &self.links {
            let d = if peer == origin {
                1
            } else {
                match n.dist.get(origin) {
                    Some(&d) if d < UNREACHABLE - 1 => d + 1,
                    _ => continue,
                }
            };
            let better = match best {
                None => true,
                Some((bd, _)) => d < bd || (d == bd && peer == origin),
            };
            if better {
                best = Some((d, peer));
            }
        }
        best.map(|(distance, via)| Route {
            distance,
            via: Some(via.clone()),
        })
    }

    /// The neighbour that carries `origin` to this node on the tree.
    pub fn parent(&self, origin: &NodeId) -> Option<NodeId> {
        self.route(origin).and_then(|r| r.via)
    }

    /// Every origin this node can name: itself, its neighbours, what they advertise and what it
    /// holds.
    pub fn origins(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.held.keys().cloned().collect();
        all.insert(self.me.clone());
        for (peer, n) in &self.links {
            all.insert(peer.clone());
            all.extend(n.dist.keys().cloned());
        }
        all
    }

    /// The origins we want `peer` to send us: those it is our parent for, and grafts.
    pub fn carries(&self, peer: &NodeId) -> BTreeSet<NodeId> {
        let Some(n) = self.links.get(peer) else {
            return BTreeSet::new();
        };
        let mut set: BTreeSet<NodeId> = self
            .origins()
            .into_iter()
            .filter(|o| self.parent(o).as_ref() == Some(peer))
            .collect();
        set.extend(n.grafted.iter().cloned());
        set
    }

    /// The origins `peer` grafted from us beyond its tree (a subset of [`Router::carries`]).
    pub fn grafted(&self, peer: &NodeId) -> BTreeSet<NodeId> {
        self.links
            .get(peer)
            .map(|n| n.grafted.clone())
            .unwrap_or_default()
    }

    /// The origins `peer` asked us to send it, with what it held when it asked.
    pub fn relays(&self, peer: &NodeId) -> BTreeMap<NodeId, u64> {
        self.links
            .get(peer)
            .map(|n| n.wants.clone())
            .unwrap_or_default()
    }

    /// The distances we advertise to `peer`, given our route to every origin: poisoned for the
    /// origins it is our parent for.
    fn advert(routes: &[(NodeId, Route)], peer: &NodeId) -> Vec<(NodeId, u8)> {
        routes
            .iter()
            .map(|(o, r)| {
                let d = if r.via.as_ref() == Some(peer) {
                    UNREACHABLE
                } else {
                    r.distance
                };
                (o.clone(), d)
            })
            .take(MAX_ORIGINS)
            .collect()
    }

    /// The `Routes` message for every neighbour whose routes changed since we last told it.
    pub fn routes_to_send(&mut self) -> Vec<(NodeId, PeerMessage)> {
        // Every origin's route, once for all neighbours (what `carries` does per neighbour).
        let routes: Vec<(NodeId, Route)> = self
            .origins()
            .into_iter()
            .filter_map(|o| self.route(&o).map(|r| (o, r)))
            .collect();
        let mut out = Vec::new();
        for (peer, n) in &mut self.links {
            let dist = Self::advert(&routes, peer);
            let mut carry: BTreeSet<NodeId> = routes
                .iter()
                .filter(|(_, r)| r.via.as_ref() == Some(peer))
                .map(|(o, _)| o.clone())
                .collect();
            carry.extend(n.grafted.iter().cloned());
            // A message lists at most MAX_ORIGINS origins (the decoder refuses more).
            let carry: Vec<NodeId> = carry.into_iter().take(MAX_ORIGINS).collect();
            let now = (dist, carry);
            if n.told.as_ref() == Some(&now) {
                continue;
            }
            n.told = Some(now.clone());
            let (dist, carry) = now;
            let carry = carry
                .into_iter()
                .map(|o| {
                    let h = self.held.get(&o).copied().unwrap_or(0);
                    (o, h)
                })
                .collect();
            out.push((peer.clone(), PeerMessage::Routes { dist, carry }));
        }
        out
    }

    /// The `Have` message for every neighbour not yet told what we hold now: only the origins
    /// whose position changed since we last told it, and neither it nor us (it never asks us for
    /// its own updates, nor for ours beyond its direct link).
    pub fn have_to_send(&mut self) -> Vec<(NodeId, PeerMessage)> {
        let mut out = Vec::new();
        for (peer, n) in &mut self.links {
            let changed: Vec<(NodeId, u64)> = self
                .held
                .iter()
                .filter(|(o, h)| *o != peer && **o != self.me && n.told_held.get(*o) != Some(*h))
                .map(|(o, h)| (o.clone(), *h))
                .take(MAX_ORIGINS)
                .collect();
            if changed.is_empty() {
                continue;
            }
            n.told_held.extend(changed.iter().cloned());
            out.push((peer.clone(), PeerMessage::Have { held: changed }));
        }
        out
    }

    /// Sending to `peer` failed: tell it everything again next time.
    pub fn untell(&mut self, peer: &NodeId) {
        if let Some(n) = self.links.get_mut(peer) {
            n.told = None;
            n.told_held.clear();
        }
    }
}

/// What one peer's log stream sends: the entries of the origins the peer asked for, each from
/// where it asked. Entries are this node's log, in sequence order; an entry's origin is `None`
/// for this node's own.
pub struct CarryFilter {
    me: NodeId,
    /// Where the peer's claim on our own log starts the stream.
    own_start: u64,
    windows: BTreeMap<NodeId, Window>,
    /// Whether the peer's log may hold an origin's updates out of that origin's order (a real
    /// relay's does: see [`REORDER_SLACK`]; [`CarryFilter::in_order`] says it does not).
    reordered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    /// Entries at or below this log sequence were already sent (or skipped) for this origin.
    after_seq: u64,
    /// The peer holds this origin up to here (0: nothing).
    after_oseq: u64,
}

impl CarryFilter {
    /// A filter for a stream that starts after `own_start` of our log. It admits our own entries
    /// from the start (a neighbour always takes a direct link's end from that end) and others
    /// from the peer's first carry request ([`CarryFilter::set`]): what the stream skips, the
    /// peer acknowledges and does not ask for again on the next link, so our own entries must
    /// not wait for a request that a dropped link may never deliver.
    pub fn new(me: NodeId, own_start: u64) -> Self {
        let own = Window {
            after_seq: own_start,
            after_oseq: 0,
        };
        CarryFilter {
            windows: BTreeMap::from([(me.clone(), own)]),
            me,
            own_start,
            reordered: true,
        }
    }

    /// A filter for a node whose log keeps each origin's updates in that origin's order (the
    /// routing simulation's): new carries start exactly at what the peer holds, and entries past
    /// the peer's claim are not sent again for what it holds.
    pub fn in_order(mut self) -> Self {
        self.reordered = false;
        self
    }

    /// Applies the peer's latest carry request (origin → what it holds of it) with the stream at
    /// `pos`. Returns where the stream must go back to, if the peer asked for an origin whose
    /// entries the stream has already passed (0: read the retained log from its start).
    pub fn set(&mut self, carry: &BTreeMap<NodeId, u64>, pos: u64) -> Option<u64> {
        self.windows.retain(|o, _| carry.contains_key(o));
        let mut rewind: Option<u64> = None;
        let mut added: Vec<(NodeId, Window)> = Vec::new();
        for (origin, &held) in carry {
            if self.windows.contains_key(origin) {
                continue;
            }
            let window = if *origin == self.me {
                Window {
                    after_seq: self.own_start,
                    after_oseq: 0,
                }
            } else {
                Window {
                    after_seq: 0,
                    after_oseq: if self.reordered {
                        held.saturating_sub(REORDER_SLACK)
                    } else {
                        held
                    },
                }
            };
            if window.after_seq < pos {
                rewind = Some(rewind.map_or(window.after_seq, |r| r.min(window.after_seq)));
            }
            added.push((origin.clone(), window));
        }
        if rewind.is_some() {
            // Origins carried before were sent up to `pos`: going back must not send them again.
            for w in self.windows.values_mut() {
                w.after_seq = w.after_seq.max(pos);
            }
        }
        self.windows.extend(added);
        rewind
    }

    /// Whether the entry at `seq` of our log, from `origin` (`None`: ours) at `oseq` in its
    /// origin's log, goes to the peer.
    pub fn admits(&self, origin: Option<&NodeId>, seq: u64, oseq: u64) -> bool {
        let origin = origin.unwrap_or(&self.me);
        let Some(w) = self.windows.get(origin) else {
            return false;
        };
        // Past the peer's claim on our log it has received nothing from us: whatever it holds
        // of another origin, an entry there may be one it lacks (relays log an origin's updates
        // out of its order, one document at a time).
        seq > w.after_seq
            && (*origin == self.me
                || w.after_oseq == 0
                || oseq > w.after_oseq
                || (self.reordered && seq > self.own_start))
    }

    /// The origins the peer asked for.
    pub fn origins(&self) -> impl Iterator<Item = &NodeId> {
        self.windows.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    /// Delivers every routes message between the routers until none changes.
    fn settle(nodes: &mut BTreeMap<NodeId, Router>) {
        for _ in 0..100 {
            let mut msgs = Vec::new();
            for (me, r) in nodes.iter_mut() {
                for (to, m) in r.routes_to_send() {
                    msgs.push((me.clone(), to, m));
                }
            }
            if msgs.is_empty() {
                return;
            }
            for (from, to, m) in msgs {
                if let (Some(r), PeerMessage::Routes { dist, carry }) = (nodes.get_mut(&to), m) {
                    r.on_routes(&from, dist, carry);
                }
            }
        }
        panic!("routes did not settle");
    }

    fn cluster(names: &[&str], links: &[(&str, &str)]) -> BTreeMap<NodeId, Router> {
        let mut nodes: BTreeMap<NodeId, Router> =
            names.iter().map(|n| (id(n), Router::new(id(n)))).collect();
        for (a, b) in links {
            nodes.get_mut(&id(a)).unwrap().link_up(id(b));
            nodes.get_mut(&id(b)).unwrap().link_up(id(a));
        }
        settle(&mut nodes);
        nodes
    }

    fn cut(nodes: &mut BTreeMap<NodeId, Router>, a: &str, b: &str) {
        nodes.get_mut(&id(a)).unwrap().link_down(&id(b));
        nodes.get_mut(&id(b)).unwrap().link_down(&id(a));
        settle(nodes);
    }

    #[test]
    fn a_mesh_takes_every_origin_directly() {
        let nodes = cluster(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("a", "c")]);
        for (me, r) in &nodes {
            for o in ["a", "b", "c"].map(id) {
                if o != *me {
                    assert_eq!(r.parent(&o), Some(o.clone()), "{me} takes {o} directly");
                    assert_eq!(r.carries(&o), BTreeSet::from([o.clone()]));
                }
            }
        }
    }

    #[test]
    fn a_cut_link_is_routed_around_and_the_detour_ends_when_it_heals() {
        let mut nodes = cluster(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("a", "c")]);
        cut(&mut nodes, "a", "c");
        let c = &nodes[&id("c")];
        assert_eq!(c.parent(&id("a")), Some(id("b")));
        assert_eq!(c.carries(&id("b")), BTreeSet::from([id("a"), id("b")]));
        assert_eq!(
            nodes[&id("b")]
                .relays(&id("c"))
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
            vec![id("a"), id("b")]
        );
        for (a, b) in [("a", "c"), ("c", "a")] {
            nodes.get_mut(&id(a)).unwrap().link_up(id(b));
        }
        settle(&mut nodes);
        assert_eq!(nodes[&id("c")].parent(&id("a")), Some(id("a")));
        assert_eq!(nodes[&id("c")].carries(&id("b")), BTreeSet::from([id("b")]));
    }

    #[test]
    fn a_ring_goes_the_other_way_round_when_a_node_is_down() {
        let names = ["a", "b", "c", "d", "e"];
        let ring: Vec<(&str, &str)> = (0..5).map(|i| (names[i], names[(i + 1) % 5])).collect();
        let mut nodes = cluster(&names, &ring);
        assert_eq!(nodes[&id("a")].route(&id("c")).unwrap().distance, 2);
        // b goes down: a reaches c the long way, through e and d.
        cut(&mut nodes, "a", "b");
        cut(&mut nodes, "b", "c");
        let r = nodes[&id("a")].route(&id("c")).unwrap();
        assert_eq!((r.distance, r.via), (3, Some(id("e"))));
        assert_eq!(nodes[&id("a")].route(&id("b")), None, "b is unreachable");
    }

    #[test]
    fn a_neighbour_that_stays_ahead_is_grafted_until_we_catch_up() {
        // A ring a-b-c-d-a; c takes a through b. Then a goes down, after d got more of its
        // updates than b and c did: no tree reaches a any more, but d still has them.
        let mut nodes = cluster(
            &["a", "b", "c", "d"],
            &[("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")],
        );
        assert_eq!(nodes[&id("c")].parent(&id("a")), Some(id("b")));
        cut(&mut nodes, "a", "b");
        cut(&mut nodes, "a", "d");
        let c = nodes.get_mut(&id("c")).unwrap();
        assert_eq!(c.route(&id("a")), None);
        c.hold(&id("a"), 10, 0);
        c.on_have(&id("d"), vec![(id("a"), 15)], 1000);
        c.tick(1000 + GRAFT_AFTER_MS - 1);
        assert!(c.grafted(&id("d")).is_empty(), "not before the delay");
        c.tick(1000 + GRAFT_AFTER_MS);
        assert_eq!(c.grafted(&id("d")), BTreeSet::from([id("a")]));
        let sent = c.routes_to_send();
        let to_d = sent.iter().find(|(to, _)| *to == id("d")).unwrap();
        assert!(
            matches!(&to_d.1, PeerMessage::Routes { carry, .. } if carry.contains(&(id("a"), 10)))
        );
        c.hold(&id("a"), 15, 3000);
        c.tick(3000);
        assert!(c.grafted(&id("d")).is_empty(), "caught up: the graft ends");
    }

    #[test]
    fn a_direct_parent_is_never_second_guessed() {
        let mut nodes = cluster(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("a", "c")]);
        let c = nodes.get_mut(&id("c")).unwrap();
        c.on_have(&id("b"), vec![(id("a"), 15)], 0);
        c.tick(10 * GRAFT_AFTER_MS);
        assert!(c.grafted(&id("b")).is_empty(), "a itself sends its updates");
    }

    #[test]
    fn no_graft_while_the_parent_has_it_too() {
        // A line a-b-c-d: d takes a through c, which is as far ahead as b.
        let mut nodes = cluster(&["a", "b", "c", "d"], &[("a", "b"), ("b", "c"), ("c", "d")]);
        let d = nodes.get_mut(&id("d")).unwrap();
        assert_eq!(d.parent(&id("a")), Some(id("c")));
        d.on_have(&id("c"), vec![(id("a"), 15)], 0);
        d.tick(10 * GRAFT_AFTER_MS);
        assert!(
            d.grafted(&id("c")).is_empty(),
            "c is the parent: it sends them"
        );
    }

    #[test]
    fn a_carry_filter_goes_back_for_a_new_origin_only() {
        let (me, x, y) = (id("me"), id("x"), id("y"));
        let mut f = CarryFilter::new(me.clone(), 100);
        assert_eq!(f.set(&BTreeMap::from([(me.clone(), 0)]), 100), None);
        assert!(f.admits(None, 101, 101));
        assert!(!f.admits(None, 100, 100));
        assert!(!f.admits(Some(&x), 102, 5));
        // Streamed to 200; now the peer wants x, of which it holds up to 100,007 (plus the
        // slack: new carries start that far below).
        let held = REORDER_SLACK + 100_007;
        assert_eq!(
            f.set(&BTreeMap::from([(me.clone(), 0), (x.clone(), held)]), 200),
            Some(0)
        );
        assert!(!f.admits(None, 150, 150), "own entries already sent");
        assert!(f.admits(None, 201, 201));
        assert!(
            f.admits(Some(&x), 90, 100_008),
            "above what it holds, less the slack"
        );
        assert!(
            !f.admits(Some(&x), 91, 100_007),
            "the peer holds x up to there (less the slack)"
        );
        assert!(
            f.admits(Some(&x), 151, 100_007),
            "past the peer's claim on our log it got nothing from us"
        );
        assert!(!f.admits(Some(&y), 152, 9));
        // x dropped: nothing of it any more, and no going back.
        assert_eq!(f.set(&BTreeMap::from([(me.clone(), 0)]), 300), None);
        assert!(!f.admits(Some(&x), 301, 20));
    }

    /// Found by the routing simulation (crdt/tests/routing_sim.rs): the peer acknowledges what
    /// the stream skipped (`Progress`) and resumes the next link from there. Our own updates the
    /// peer lacked at link-up were skipped until its first `Routes`, and the link dropped before
    /// the rewind resent them: the peer's claim was past updates it never got, and nothing
    /// repairs that (we are its parent for our own origin, and a parent is never grafted). A
    /// direct link always carries its ends' own origins, so they go from the start.
    #[test]
    fn our_own_updates_go_before_the_first_carry_request() {
        let (me, x) = (id("me"), id("x"));
        let mut f = CarryFilter::new(me.clone(), 100);
        assert!(f.admits(None, 101, 101));
        assert!(!f.admits(None, 100, 100), "the peer holds up to its claim");
        assert!(
            !f.admits(Some(&x), 102, 5),
            "other origins wait for the request"
        );
        // The first request names us: the stream has nothing to go back for.
        assert_eq!(f.set(&BTreeMap::from([(me.clone(), 0)]), 150), None);
        assert!(f.admits(None, 151, 151));
    }
}
