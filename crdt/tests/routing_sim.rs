//! A deterministic simulation of the routing logic ([`concord_crdt::routing`]) with no sockets:
//! the per-origin trees, the lazy repair by `Have` and grafts, and the [`CarryFilter`] that picks
//! what each log stream sends. Unit tests pin single decisions; only thousands of seeded runs over
//! random topologies (3 to 12 nodes: mesh, ring, star, line, random graphs), random cuts, heals,
//! node restarts and message reordering show that the decisions add up: a healthy cluster
//! delivers each update to each other node exactly once; with faults, every part of the cluster
//! that stays connected converges on its own, everything converges once healed, and duplicates
//! stay bounded.
//!
//! The model, in memory and in simulated milliseconds: each node has a [`Router`] and a log of
//! `(origin, oseq)` entries (its own writes have `oseq` = their log sequence, as on a server). A
//! node logs an entry it does not hold yet (an update that brings nothing new is not logged
//! again) and tells its router. A link is two FIFO queues with a random delay per message (so
//! messages on different links overtake each other); each direction runs a log stream like the
//! server's: it walks the sender's log, sends what the [`CarryFilter`] admits, marks what it
//! skipped with `Progress`, and goes back where [`CarryFilter::set`] says. The receiver
//! acknowledges how far the stream got (sent or skipped): that is its resume claim, where the
//! next link's stream starts. A cut loses what is in flight; a killed node keeps its log and
//! claims (its store) and comes back with a fresh router.
//!
//! Each run: links up, routes settle (then they must be shortest paths), writes and faults for
//! a few seconds, then only the lasting faults remain until each connected part converged and
//! went quiet (routes, grafts and streams checked), then everything heals until all converged
//! and went quiet (checked again).
//!
//! A failure prints its seed; replay it with
//! `ROUTING_SIM_SEED=<seed> ROUTING_SIM_TRACE=1 cargo test -p concord-crdt --test routing_sim -- --nocapture`.
//! `ROUTING_SIM_SEEDS=<n>` runs more seeds (`--release` for tens of thousands).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet, VecDeque};
use std::time::Instant;

use concord_crdt::routing::{CarryFilter, GRAFT_AFTER_MS, Route, Router};
use concord_crdt::{NodeId, PeerMessage};

/// How often each node ticks its router and sends the routes that changed.
const ROUTES_EVERY_MS: u64 = 100;
/// How often each node sends `Have` (when what it holds changed).
const HAVE_EVERY_MS: u64 = 1000;
/// How often the simulation checks whether it is settled, converged or quiet.
const CHECK_EVERY_MS: u64 = 50;
/// A message takes 1 to this many milliseconds on a link (FIFO per direction).
const MAX_DELAY_MS: u64 = 200;
/// A log stream follows its log after 0 to this many milliseconds (so routes often arrive while
/// it is behind, not only at its end).
const MAX_STREAM_LAG_MS: u64 = 30;
/// Writes happen in the first this many milliseconds after the routes settled.
const WRITES_UNTIL_MS: u64 = 9_000;
/// Faults (cuts, kills) start in the first this many milliseconds.
const FAULTS_UNTIL_MS: u64 = 6_000;
/// A fault that does not last until the end lasts at most this long.
const LONGEST_FAULT_MS: u64 = 3_000;
/// From then on only the lasting faults remain: each part of the cluster that is still connected
/// must converge on its own (by grafts, for the origins it cannot reach), then everything heals.
const STABLE_AT_MS: u64 = FAULTS_UNTIL_MS + LONGEST_FAULT_MS + 500;
/// Convergence (of each part, then of the whole) must take less than this long.
const CONVERGE_WITHIN_MS: u64 = 60_000;
/// How long the cluster runs on once converged, before the final checks (a late graft or
/// duplicate would show up here).
const RUN_ON_MS: u64 = GRAFT_AFTER_MS + 2 * HAVE_EVERY_MS;

/// Seeds run by default: enough to take each test about 10 s in a debug build.
const HEALTHY_SEEDS: u64 = 1000;
const FAULTY_SEEDS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver {
        link: usize,
        dir: usize,
        generation: u64,
    },
    Pump {
        link: usize,
        dir: usize,
        generation: u64,
    },
    Tick(usize),
    Have(usize),
    Check,
    /// A client writes at this node (`None`: at a random live node).
    Write(Option<usize>),
    Cut(usize),
    Heal(usize),
    Kill(usize),
    Revive(usize),
    /// The temporary faults are over.
    Stable,
}

#[derive(Debug)]
enum Msg {
    /// The entry at `seq` of the sender's log.
    Update {
        seq: u64,
        origin: usize,
        oseq: u64,
    },
    /// The sender's stream skipped entries up to `seq`.
    Progress {
        seq: u64,
    },
    Control(PeerMessage),
}

struct Node {
    id: NodeId,
    router: Router,
    /// `(origin, oseq)`; an entry's log sequence is its index + 1.
    log: Vec<(usize, u64)>,
    holds: HashSet<(usize, u64)>,
    alive: bool,
    /// Something that can change its routes happened since it last sent them: a link up or
    /// down, a `Routes` message, a first update of an origin, a graft begun or ended.
    routes_changed: bool,
}

/// One direction of a link: the sender's log stream and the messages in flight.
struct Stream {
    filter: CarryFilter,
    /// Last log sequence sent or skipped.
    pos: u64,
    /// Messages in flight with their arrival times (non-decreasing: the link is FIFO).
    queue: VecDeque<(u64, Msg)>,
    pump_pending: bool,
    /// Entries were skipped since the last message sent.
    skipped: bool,
}

struct Link {
    ends: [usize; 2],
    cut: bool,
    /// Bumped at every up and down, so events of an earlier connection are dropped.
    generation: u64,
    /// `streams[d]` sends from `ends[d]` to `ends[1 - d]`; `None` while the link is down.
    streams: Option<[Stream; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Settling,
    Running,
    /// Only the lasting faults remain (since `at`); the run waits for each connected part to
    /// converge.
    Partitioned {
        at: u64,
    },
    PartitionConverged {
        at: u64,
    },
    /// Everything healed at `at`.
    Healed {
        at: u64,
    },
    Converged {
        at: u64,
    },
}

/// What one run did, printed (by `Debug`) with a failure or the worst run.
#[derive(Debug, Default, Clone)]
#[allow(dead_code)] // `links` and `topology` are only printed.
struct Outcome {
    nodes: usize,
    links: usize,
    topology: &'static str,
    faults: usize,
    writes: u64,
    /// Updates received, new or not.
    deliveries: u64,
    /// Updates received that the node already held.
    duplicates: u64,
    /// Updates received below what the node already claimed to hold of their origin.
    late: u64,
    grafts: u64,
    /// How long each connected part took to converge once only the lasting faults remained.
    partition_ms: u64,
    /// `Routes` messages sent.
    routes: u64,
    converge_ms: u64,
}

struct Sim {
    rng: fastrand::Rng,
    faulty: bool,
    trace: bool,
    now: u64,
    next_event: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    links: Vec<Link>,
    index: BTreeMap<NodeId, usize>,
    /// Each node's links: `(neighbour, link)`.
    adjacent: Vec<Vec<(usize, usize)>>,
    written: Vec<(usize, u64)>,
    /// `(v, from)`: how far `v` acknowledged `from`'s log stream (kept in `v`'s store).
    claims: BTreeMap<(usize, usize), u64>,
    /// What `ends[d]` of each link grafted from the other end at its last tick, to count new
    /// grafts.
    grafted: Vec<[BTreeSet<NodeId>; 2]>,
    /// When the last `Routes` message arrived.
    last_routes_at: u64,
    phase: Phase,
    out: Outcome,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            eprintln!("{:>6} {}", $sim.now, format!($($arg)*));
        }
    };
}

impl Sim {
    fn new(seed: u64, faulty: bool, trace: bool) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=12);
        // Node ids in a random order, so that the tie-break on ids is not the topology's order.
        let mut names: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut names);
        let nodes: Vec<Node> = names
            .iter()
            .map(|k| {
                let id = NodeId::parse(&format!("n{k:02}")).unwrap();
                Node {
                    router: Router::new(id.clone()),
                    id,
                    log: Vec::new(),
                    holds: HashSet::new(),
                    alive: true,
                    routes_changed: true,
                }
            })
            .collect();
        let (topology, pairs) = topology(&mut rng, n);
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, v)| (v.id.clone(), i))
            .collect();
        let mut adjacent = vec![Vec::new(); n];
        let links: Vec<Link> = pairs
            .iter()
            .enumerate()
            .map(|(l, &(a, b))| {
                adjacent[a].push((b, l));
                adjacent[b].push((a, l));
                Link {
                    ends: [a, b],
                    cut: false,
                    generation: 0,
                    streams: None,
                }
            })
            .collect();
        let out = Outcome {
            nodes: n,
            links: links.len(),
            topology,
            ..Outcome::default()
        };
        let mut sim = Sim {
            rng,
            faulty,
            trace,
            now: 0,
            next_event: 0,
            events: BinaryHeap::new(),
            nodes,
            links,
            index,
            adjacent,
            written: Vec::new(),
            claims: BTreeMap::new(),
            grafted: vec![Default::default(); pairs.len()],
            last_routes_at: 0,
            phase: Phase::Settling,
            out,
        };
        trace!(sim, "{topology}: {n} nodes, links {:?}", sim.link_names());
        for l in 0..sim.links.len() {
            sim.link_up(l);
        }
        for v in 0..n {
            let t = sim.rng.u64(0..ROUTES_EVERY_MS);
            sim.schedule(t, Ev::Tick(v));
            let h = sim.rng.u64(0..HAVE_EVERY_MS);
            sim.schedule(h, Ev::Have(v));
        }
        sim.schedule(CHECK_EVERY_MS, Ev::Check);
        sim
    }

    fn link_names(&self) -> Vec<String> {
        self.links
            .iter()
            .map(|l| format!("{}-{}", self.nodes[l.ends[0]].id, self.nodes[l.ends[1]].id))
            .collect()
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.next_event += 1;
        self.events.push(Reverse((at, self.next_event, ev)));
    }

    /// The writes, cuts, kills and heals of this run, from `t0` (the routes have settled).
    fn scenario(&mut self, t0: u64) {
        let n = self.nodes.len();
        let writes = self.rng.usize(1..=40);
        for _ in 0..writes {
            let at = t0 + self.rng.u64(0..=WRITES_UNTIL_MS);
            self.schedule(at, Ev::Write(None));
        }
        if self.faulty {
            let faults = self.rng.usize(1..=6);
            self.out.faults = faults;
            for _ in 0..faults {
                let at = t0 + self.rng.u64(0..=FAULTS_UNTIL_MS);
                // A quarter of the faults last until everything heals; the rest from a flap of
                // 20 ms (less than a message's delay) to 3 s (more than a graft's delay).
                let until =
                    (self.rng.u8(..4) != 0).then(|| at + self.rng.u64(20..=LONGEST_FAULT_MS));
                let (ev, end, heal) = if self.rng.bool() {
                    let l = self.rng.usize(..self.links.len());
                    let end = self.links[l].ends[self.rng.usize(..2)];
                    (Ev::Cut(l), end, Ev::Heal(l))
                } else {
                    let v = self.rng.usize(..n);
                    (Ev::Kill(v), v, Ev::Revive(v))
                };
                self.schedule(at, ev);
                // Often an update written just before the fault, at its end.
                if self.rng.bool() {
                    let w = at.saturating_sub(self.rng.u64(0..=50)).max(t0);
                    self.schedule(w, Ev::Write(Some(end)));
                }
                if let Some(until) = until {
                    self.schedule(until, heal);
                }
            }
        }
        self.schedule(t0 + STABLE_AT_MS, Ev::Stable);
    }

    fn heal_all(&mut self) {
        trace!(self, "heal everything");
        for l in 0..self.links.len() {
            self.links[l].cut = false;
        }
        for v in 0..self.nodes.len() {
            self.revive(v);
        }
        for l in 0..self.links.len() {
            self.link_up(l);
        }
    }

    fn run(mut self) -> Result<Outcome, String> {
        while let Some(Reverse((at, _, ev))) = self.events.pop() {
            self.now = at;
            match ev {
                Ev::Deliver {
                    link,
                    dir,
                    generation,
                } => {
                    if self.links[link].generation == generation {
                        self.deliver(link, dir)?;
                    }
                }
                Ev::Pump {
                    link,
                    dir,
                    generation,
                } => {
                    if self.links[link].generation == generation {
                        self.pump(link, dir);
                    }
                }
                Ev::Tick(v) => {
                    self.schedule(at + ROUTES_EVERY_MS, Ev::Tick(v));
                    if self.nodes[v].alive {
                        self.tick(v);
                    }
                }
                Ev::Have(v) => {
                    self.schedule(at + HAVE_EVERY_MS, Ev::Have(v));
                    if self.nodes[v].alive {
                        for (to, msg) in self.nodes[v].router.have_to_send() {
                            self.send(v, &to, Msg::Control(msg));
                        }
                    }
                }
                Ev::Check => {
                    self.schedule(at + CHECK_EVERY_MS, Ev::Check);
                    if self.check()? {
                        return Ok(self.out);
                    }
                }
                Ev::Write(at_node) => self.write(at_node),
                Ev::Cut(l) => {
                    trace!(self, "cut {}", self.link_names()[l]);
                    self.links[l].cut = true;
                    self.link_down(l);
                }
                Ev::Heal(l) => {
                    if self.links[l].cut {
                        trace!(self, "heal {}", self.link_names()[l]);
                        self.links[l].cut = false;
                        self.link_up(l);
                    }
                }
                Ev::Kill(v) => self.kill(v),
                Ev::Revive(v) => self.revive(v),
                Ev::Stable => {
                    trace!(self, "only the lasting faults remain");
                    self.phase = Phase::Partitioned { at: self.now };
                }
            }
        }
        unreachable!("ticks never stop")
    }

    /// Moves the run along its phases; true when it is over and passed every check.
    fn check(&mut self) -> Result<bool, String> {
        match self.phase {
            Phase::Settling => {
                // Nothing in flight, and every node ticked since the last routes arrived without
                // sending more: the routes will not change any more.
                if self.in_flight() == 0 && self.now >= self.last_routes_at + 2 * ROUTES_EVERY_MS {
                    self.check_routes()?;
                    self.no_routes_unsent()?;
                    trace!(self, "routes settled");
                    self.phase = Phase::Running;
                    self.scenario(self.now);
                }
            }
            Phase::Running => {}
            Phase::Partitioned { at } => {
                if self.parts_converged() && self.quiet() {
                    self.out.partition_ms = self.now - at;
                    trace!(self, "each connected part converged");
                    self.phase = Phase::PartitionConverged { at: self.now };
                } else if self.now > at + CONVERGE_WITHIN_MS {
                    return Err(format!(
                        "connected parts not converged {CONVERGE_WITHIN_MS} ms after the last \
                         temporary fault\n{}",
                        self.diagnose()
                    ));
                }
            }
            Phase::PartitionConverged { at } => {
                if self.settled_since(at)? {
                    self.final_checks()?;
                    self.heal_all();
                    self.phase = Phase::Healed { at: self.now };
                }
            }
            Phase::Healed { at } => {
                if self.converged() && self.quiet() {
                    self.out.converge_ms = self.now - at;
                    trace!(self, "converged");
                    self.phase = Phase::Converged { at: self.now };
                } else if self.now > at + CONVERGE_WITHIN_MS {
                    return Err(format!(
                        "not converged {CONVERGE_WITHIN_MS} ms after everything healed\n{}",
                        self.diagnose()
                    ));
                }
            }
            Phase::Converged { at } => {
                if self.settled_since(at)? {
                    self.final_checks()?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Converged at `at`: whether it ran on long enough for a late graft or duplicate to show,
    /// with nothing in flight and the routes settled.
    fn settled_since(&self, at: u64) -> Result<bool, String> {
        if self.now > at + CONVERGE_WITHIN_MS {
            return Err("never quiet after converging".into());
        }
        Ok(self.now >= at + RUN_ON_MS
            && self.quiet()
            && self.now >= self.last_routes_at + 2 * ROUTES_EVERY_MS)
    }

    /// The live nodes, in groups connected by links that are up.
    fn parts(&self) -> Vec<Vec<usize>> {
        let mut seen = vec![false; self.nodes.len()];
        let mut parts = Vec::new();
        for v in 0..self.nodes.len() {
            if seen[v] || !self.nodes[v].alive {
                continue;
            }
            let part: Vec<usize> = self
                .hops_to(v)
                .iter()
                .enumerate()
                .filter_map(|(p, d)| d.map(|_| p))
                .collect();
            for &p in &part {
                seen[p] = true;
            }
            parts.push(part);
        }
        parts
    }

    /// Every live node holds every update held anywhere in its connected part.
    fn parts_converged(&self) -> bool {
        self.parts().iter().all(|part| {
            let all: HashSet<&(usize, u64)> = part
                .iter()
                .flat_map(|&v| self.nodes[v].holds.iter())
                .collect();
            part.iter().all(|&v| self.nodes[v].holds.len() == all.len())
        })
    }

    /// Every router has sent the routes it has (the simulation asks only after a change).
    fn no_routes_unsent(&mut self) -> Result<(), String> {
        for v in &mut self.nodes {
            if v.alive {
                let unsent = v.router.routes_to_send();
                if !unsent.is_empty() {
                    return Err(format!("{} has routes it did not send: {unsent:?}", v.id));
                }
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.links
            .iter()
            .filter_map(|l| l.streams.as_ref())
            .flat_map(|s| s.iter())
            .map(|s| s.queue.len())
            .sum()
    }

    /// Nothing in flight and every stream at the end of its log.
    fn quiet(&self) -> bool {
        self.links.iter().all(|l| {
            l.streams.as_ref().is_none_or(|s| {
                s.iter().enumerate().all(|(d, s)| {
                    s.queue.is_empty()
                        && !s.pump_pending
                        && s.pos == self.nodes[l.ends[d]].log.len() as u64
                })
            })
        })
    }

    fn converged(&self) -> bool {
        self.nodes
            .iter()
            .all(|v| self.written.iter().all(|w| v.holds.contains(w)))
    }

    /// Once converged and quiet: the routes are shortest paths, no graft is left and each stream
    /// sends what its receiver asks for.
    fn final_checks(&mut self) -> Result<(), String> {
        if !self.parts_converged() {
            return Err(format!(
                "lost updates after converging\n{}",
                self.diagnose()
            ));
        }
        self.check_routes()?;
        self.no_routes_unsent()?;
        for (v, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            for &(b, _) in &self.adjacent[v] {
                let peer = &self.nodes[b].id;
                let grafted = node.router.grafted(peer);
                if !grafted.is_empty() {
                    return Err(format!(
                        "{} still grafts {grafted:?} from {peer} once converged",
                        node.id
                    ));
                }
            }
        }
        // Each stream sends exactly what its receiver asks for, and the sender's router knows it.
        for l in &self.links {
            let Some(streams) = l.streams.as_ref() else {
                continue;
            };
            for (d, s) in streams.iter().enumerate() {
                let (from, to) = (&self.nodes[l.ends[d]], &self.nodes[l.ends[1 - d]]);
                let sent: BTreeSet<NodeId> = s.filter.origins().cloned().collect();
                let asked = to.router.carries(&from.id);
                let relays: BTreeSet<NodeId> = from.router.relays(&to.id).into_keys().collect();
                if sent != asked || relays != asked {
                    return Err(format!(
                        "stream {}→{} sends {sent:?}, relays {relays:?}, but {} asks for {asked:?}",
                        from.id, to.id, to.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every live node routes every origin it can reach by a shortest path (the smallest-id
    /// neighbour among those one hop closer), and none it cannot reach.
    fn check_routes(&self) -> Result<(), String> {
        let n = self.nodes.len();
        for o in 0..n {
            let dist = self.hops_to(o);
            for v in 0..n {
                if v == o || !self.nodes[v].alive {
                    continue;
                }
                let origin = &self.nodes[o].id;
                let expected = dist[v].map(|d| {
                    let via = self
                        .up_neighbours(v)
                        .into_iter()
                        .filter(|&p| dist[p] == Some(d - 1))
                        .map(|p| self.nodes[p].id.clone())
                        .min()
                        .expect("a shortest path has a next hop");
                    Route {
                        distance: d,
                        via: Some(via),
                    }
                });
                let got = self.nodes[v].router.route(origin);
                if got != expected {
                    return Err(format!(
                        "{} routes {origin} as {got:?}, the shortest path is {expected:?}",
                        self.nodes[v].id
                    ));
                }
            }
        }
        Ok(())
    }

    fn up_neighbours(&self, v: usize) -> Vec<usize> {
        self.adjacent[v]
            .iter()
            .filter(|(_, l)| self.links[*l].streams.is_some())
            .map(|&(b, _)| b)
            .collect()
    }

    /// Hops from every node to `o` over the links that are up.
    fn hops_to(&self, o: usize) -> Vec<Option<u8>> {
        let mut dist = vec![None; self.nodes.len()];
        if !self.nodes[o].alive {
            return dist;
        }
        dist[o] = Some(0);
        let mut queue = VecDeque::from([o]);
        while let Some(v) = queue.pop_front() {
            for p in self.up_neighbours(v) {
                if dist[p].is_none() {
                    dist[p] = Some(dist[v].unwrap() + 1);
                    queue.push_back(p);
                }
            }
        }
        dist
    }

    fn diagnose(&self) -> String {
        let parts: Vec<Vec<&NodeId>> = self
            .parts()
            .iter()
            .map(|p| p.iter().map(|&v| &self.nodes[v].id).collect())
            .collect();
        let mut s = format!("connected parts {parts:?}\n");
        for v in &self.nodes {
            if !v.alive {
                s += &format!("{} is down\n", v.id);
                continue;
            }
            let missing: Vec<String> = self
                .written
                .iter()
                .filter(|w| !v.holds.contains(w))
                .map(|&(o, oseq)| format!("{}:{oseq}", self.nodes[o].id))
                .collect();
            if missing.is_empty() {
                continue;
            }
            s += &format!("{} lacks {missing:?}\n", v.id);
            let origins: BTreeSet<usize> = self
                .written
                .iter()
                .filter(|w| !v.holds.contains(w))
                .map(|w| w.0)
                .collect();
            for o in origins {
                let oid = &self.nodes[o].id;
                s += &format!(
                    "  of {oid} it holds {}, routes {:?}\n",
                    v.router.held(oid),
                    v.router.route(oid)
                );
            }
            for p in self.up_neighbours(self.index[&v.id]) {
                let pid = &self.nodes[p].id;
                s += &format!(
                    "  from {pid} it takes {:?} (grafted {:?})\n",
                    v.router.carries(pid),
                    v.router.grafted(pid)
                );
            }
        }
        s
    }

    fn link_up(&mut self, l: usize) {
        let [a, b] = self.links[l].ends;
        if self.links[l].cut
            || self.links[l].streams.is_some()
            || !self.nodes[a].alive
            || !self.nodes[b].alive
        {
            return;
        }
        trace!(self, "up {}", self.link_names()[l]);
        let (ida, idb) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
        self.nodes[a].router.link_up(idb);
        self.nodes[b].router.link_up(ida);
        self.nodes[a].routes_changed = true;
        self.nodes[b].routes_changed = true;
        // The receiver's resume claim on the sender's log: how far the sender's stream got, as
        // acknowledged by the receiver (entries sent, or skipped and marked by `Progress`).
        let claim = |to: usize, from: usize| self.claims.get(&(to, from)).copied().unwrap_or(0);
        let (claim_a, claim_b) = (claim(b, a), claim(a, b));
        let stream = |from: &Node, own_start: u64| Stream {
            filter: CarryFilter::new(from.id.clone(), own_start).in_order(),
            pos: own_start,
            queue: VecDeque::new(),
            pump_pending: false,
            skipped: true,
        };
        let streams = [
            stream(&self.nodes[a], claim_a),
            stream(&self.nodes[b], claim_b),
        ];
        self.links[l].generation += 1;
        self.links[l].streams = Some(streams);
        self.dirty(a);
        self.dirty(b);
    }

    fn link_down(&mut self, l: usize) {
        if self.links[l].streams.take().is_none() {
            return;
        }
        trace!(self, "down {}", self.link_names()[l]);
        self.links[l].generation += 1;
        let [a, b] = self.links[l].ends;
        let (ida, idb) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
        self.nodes[a].router.link_down(&idb);
        self.nodes[b].router.link_down(&ida);
        self.nodes[a].routes_changed = true;
        self.nodes[b].routes_changed = true;
        self.grafted[l] = Default::default();
    }

    fn kill(&mut self, v: usize) {
        if !self.nodes[v].alive {
            return;
        }
        trace!(self, "kill {}", self.nodes[v].id);
        for i in 0..self.adjacent[v].len() {
            let l = self.adjacent[v][i].1;
            self.link_down(l);
        }
        self.nodes[v].alive = false;
    }

    /// A restarted node keeps its log (the store) and starts a fresh router that holds what the
    /// log holds.
    fn revive(&mut self, v: usize) {
        if self.nodes[v].alive {
            return;
        }
        trace!(self, "revive {}", self.nodes[v].id);
        let node = &mut self.nodes[v];
        node.alive = true;
        node.router = Router::new(node.id.clone());
        node.routes_changed = true;
        let mut held: BTreeMap<usize, u64> = BTreeMap::new();
        for &(o, oseq) in &node.log {
            let h = held.entry(o).or_insert(0);
            *h = (*h).max(oseq);
        }
        for (o, oseq) in held {
            let oid = self.nodes[o].id.clone();
            self.nodes[v].router.hold(&oid, oseq, self.now);
        }
        for i in 0..self.adjacent[v].len() {
            let l = self.adjacent[v][i].1;
            self.link_up(l);
        }
    }

    fn write(&mut self, at_node: Option<usize>) {
        let v = match at_node {
            Some(v) if self.nodes[v].alive => v,
            Some(_) => return,
            None => {
                let alive: Vec<usize> = (0..self.nodes.len())
                    .filter(|&v| self.nodes[v].alive)
                    .collect();
                if alive.is_empty() {
                    return;
                }
                alive[self.rng.usize(..alive.len())]
            }
        };
        let node = &mut self.nodes[v];
        let oseq = node.log.len() as u64 + 1;
        node.log.push((v, oseq));
        node.holds.insert((v, oseq));
        let id = node.id.clone();
        node.router.hold(&id, oseq, self.now);
        self.written.push((v, oseq));
        self.out.writes += 1;
        trace!(self, "write {id}:{oseq}");
        self.dirty(v);
    }

    fn tick(&mut self, v: usize) {
        self.nodes[v].router.tick(self.now);
        for &(p, l) in &self.adjacent[v] {
            if self.links[l].streams.is_none() {
                continue;
            }
            let dir = usize::from(self.links[l].ends[0] != v);
            let pid = &self.nodes[p].id;
            let now = self.nodes[v].router.grafted(pid);
            let before = &mut self.grafted[l][dir];
            let new = now.difference(before).count() as u64;
            if new > 0 {
                trace!(self, "{} grafts {now:?} from {pid}", self.nodes[v].id);
                self.out.grafts += new;
            }
            if now != *before {
                self.nodes[v].routes_changed = true;
                *before = now;
            }
        }
        // Routes are a function of the router's state: asking for them only after it changed
        // keeps thousands of runs fast ([`Sim::no_routes_unsent`] checks nothing was missed).
        if !std::mem::take(&mut self.nodes[v].routes_changed) {
            return;
        }
        let routes = self.nodes[v].router.routes_to_send();
        self.out.routes += routes.len() as u64;
        for (to, msg) in routes {
            self.send(v, &to, Msg::Control(msg));
        }
    }

    fn send(&mut self, from: usize, to: &NodeId, msg: Msg) {
        let to = self.index[to];
        let l = self.adjacent[from]
            .iter()
            .find(|(p, _)| *p == to)
            .expect("a link to every neighbour")
            .1;
        let dir = usize::from(self.links[l].ends[0] != from);
        let delay = self.rng.u64(1..=MAX_DELAY_MS);
        let generation = self.links[l].generation;
        let streams = self.links[l]
            .streams
            .as_mut()
            .expect("routers only name links that are up");
        let queue = &mut streams[dir].queue;
        let at = queue.back().map_or(0, |m| m.0).max(self.now + delay);
        queue.push_back((at, msg));
        self.schedule(
            at,
            Ev::Deliver {
                link: l,
                dir,
                generation,
            },
        );
    }

    /// `v`'s log or a filter changed: its streams will look at it soon.
    fn dirty(&mut self, v: usize) {
        for i in 0..self.adjacent[v].len() {
            let l = self.adjacent[v][i].1;
            let dir = usize::from(self.links[l].ends[0] != v);
            self.dirty_stream(l, dir);
        }
    }

    fn dirty_stream(&mut self, l: usize, dir: usize) {
        let generation = self.links[l].generation;
        let lag = self.rng.u64(0..=MAX_STREAM_LAG_MS);
        let Some(streams) = self.links[l].streams.as_mut() else {
            return;
        };
        if !streams[dir].pump_pending {
            streams[dir].pump_pending = true;
            self.schedule(
                self.now + lag,
                Ev::Pump {
                    link: l,
                    dir,
                    generation,
                },
            );
        }
    }

    /// The stream from `ends[dir]` sends what its filter admits, up to the end of the log.
    fn pump(&mut self, l: usize, dir: usize) {
        let from = self.links[l].ends[dir];
        let to = self.nodes[self.links[l].ends[1 - dir]].id.clone();
        let mut send = Vec::new();
        {
            let stream = &mut self.links[l].streams.as_mut().expect("up")[dir];
            stream.pump_pending = false;
            let log = &self.nodes[from].log;
            while stream.pos < log.len() as u64 {
                stream.pos += 1;
                let (origin, oseq) = log[stream.pos as usize - 1];
                let origin_id = (origin != from).then(|| &self.nodes[origin].id);
                if stream.filter.admits(origin_id, stream.pos, oseq) {
                    send.push(Msg::Update {
                        seq: stream.pos,
                        origin,
                        oseq,
                    });
                    stream.skipped = false;
                } else {
                    stream.skipped = true;
                }
            }
            // Like the server's stream: the peer acknowledges past what was skipped (and, at
            // the start, records its claim).
            if std::mem::take(&mut stream.skipped) {
                send.push(Msg::Progress { seq: stream.pos });
            }
        }
        for msg in send {
            self.send(from, &to, msg);
        }
    }

    /// `v` durably holds `from`'s log up to `seq` (as the stream walked it): its resume claim.
    fn acknowledge(&mut self, v: usize, from: usize, seq: u64) {
        let claim = self.claims.entry((v, from)).or_insert(0);
        *claim = (*claim).max(seq);
    }

    fn deliver(&mut self, l: usize, dir: usize) -> Result<(), String> {
        let (from, to) = (self.links[l].ends[dir], self.links[l].ends[1 - dir]);
        let (at, msg) = self.links[l].streams.as_mut().expect("up")[dir]
            .queue
            .pop_front()
            .expect("one event per message");
        assert_eq!(at, self.now, "FIFO delivery order");
        let from_id = self.nodes[from].id.clone();
        match msg {
            Msg::Progress { seq } => {
                self.acknowledge(to, from, seq);
            }
            Msg::Update { seq, origin, oseq } => {
                self.acknowledge(to, from, seq);
                self.out.deliveries += 1;
                let oid = self.nodes[origin].id.clone();
                let node = &mut self.nodes[to];
                if origin == to {
                    return Err(format!(
                        "{} was sent its own update {oid}:{oseq} by {from_id}",
                        node.id
                    ));
                }
                if !node.holds.insert((origin, oseq)) {
                    self.out.duplicates += 1;
                    trace!(self, "{} ← {from_id}: {oid}:{oseq} again", node.id);
                    return Ok(());
                }
                if oseq < node.router.held(&oid) {
                    self.out.late += 1;
                }
                node.log.push((origin, oseq));
                // A first update of an origin may name it for the first time.
                node.routes_changed |= node.router.held(&oid) == 0;
                node.router.hold(&oid, oseq, self.now);
                self.dirty(to);
            }
            Msg::Control(PeerMessage::Routes { dist, carry }) => {
                trace!(
                    self,
                    "{} ← {from_id}: routes {dist:?} carry {carry:?}", self.nodes[to].id
                );
                self.last_routes_at = self.now;
                let wants: BTreeMap<NodeId, u64> = carry.iter().cloned().collect();
                self.nodes[to].router.on_routes(&from_id, dist, carry);
                self.nodes[to].routes_changed = true;
                // The reply stream, from `to` back to `from`, applies the request.
                let back = 1 - dir;
                let stream = &mut self.links[l].streams.as_mut().expect("up")[back];
                if let Some(rewind) = stream.filter.set(&wants, stream.pos) {
                    stream.pos = rewind;
                }
                self.dirty_stream(l, back);
            }
            Msg::Control(PeerMessage::Have { held }) => {
                self.nodes[to].router.on_have(&from_id, held, self.now);
            }
            Msg::Control(other) => unreachable!("routers send only routes and have: {other:?}"),
        }
        Ok(())
    }
}

/// A random connected topology over `n` nodes: its kind and its links.
fn topology(rng: &mut fastrand::Rng, n: usize) -> (&'static str, Vec<(usize, usize)>) {
    let mut pairs = Vec::new();
    let kind = match rng.u8(..6) {
        0 => {
            for a in 0..n {
                for b in a + 1..n {
                    pairs.push((a, b));
                }
            }
            "mesh"
        }
        1 => {
            for a in 0..n {
                pairs.push((a, (a + 1) % n));
            }
            "ring"
        }
        2 => {
            for b in 1..n {
                pairs.push((0, b));
            }
            "star"
        }
        3 => {
            for a in 1..n {
                pairs.push((a - 1, a));
            }
            "line"
        }
        _ => {
            // A random spanning tree, plus each other pair with a random probability.
            for b in 1..n {
                pairs.push((rng.usize(..b), b));
            }
            let p = rng.f64() * 0.5;
            for a in 0..n {
                for b in a + 1..n {
                    if !pairs.contains(&(a, b)) && rng.f64() < p {
                        pairs.push((a, b));
                    }
                }
            }
            "random"
        }
    };
    (kind, pairs)
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: ROUTING_SIM_SEED={seed} ROUTING_SIM_TRACE=1 cargo test -p concord-crdt --test routing_sim -- --nocapture"
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Runs the seeds of one kind of run (`ROUTING_SIM_SEED` alone if set), checking each outcome.
fn run_seeds(
    faulty: bool,
    default_seeds: u64,
    check: impl Fn(&Outcome) -> Result<(), String>,
) -> Vec<(u64, Outcome)> {
    let seeds: Vec<u64> = match env_u64("ROUTING_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("ROUTING_SIM_SEEDS").unwrap_or(default_seeds)).collect(),
    };
    let trace = seeds.len() == 1 && std::env::var_os("ROUTING_SIM_TRACE").is_some();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for seed in seeds {
        let outcome = Sim::new(seed, faulty, trace)
            .run()
            .and_then(|o| check(&o).map(|()| o))
            .unwrap_or_else(|e| panic!("seed {seed} fails: {e}\n{}", replay_hint(seed)));
        outcomes.push((seed, outcome));
    }
    let kind = if faulty { "faulty" } else { "healthy" };
    eprintln!(
        "{} {kind} runs in {:.1} s",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    outcomes
}

/// Copies of each update received, per node that had to receive it (1.0 is the ideal).
fn copies(o: &Outcome) -> f64 {
    o.deliveries as f64 / (o.writes * (o.nodes as u64 - 1)) as f64
}

#[test]
fn a_healthy_cluster_delivers_every_update_once_to_every_node() {
    let outcomes = run_seeds(false, HEALTHY_SEEDS, |o| {
        let expected = o.writes * (o.nodes as u64 - 1);
        if o.deliveries != expected || o.duplicates != 0 || o.late != 0 || o.grafts != 0 {
            return Err(format!(
                "with no faults every update must reach each other node once: {expected} deliveries expected, {o:?}"
            ));
        }
        Ok(())
    });
    let writes: u64 = outcomes.iter().map(|(_, o)| o.writes).sum();
    eprintln!("healthy: {writes} updates, each received exactly once by every other node");
}

#[test]
fn cuts_kills_and_heals_converge_with_bounded_duplicates() {
    let outcomes = run_seeds(true, FAULTY_SEEDS, |o| {
        // Each update reaches each other node at most twice, plus a few for every fault (what
        // was in flight when routes changed).
        let bound = 2 * o.writes * (o.nodes as u64 - 1) + 4 * o.faults as u64 * o.nodes as u64;
        // Each origin's updates arrive in order: what a node says it holds of an origin (the
        // highest origin sequence) is all it holds below that too.
        if o.late > 0 {
            return Err(format!("updates arrived below what was held: {o:?}"));
        }
        if o.deliveries > bound {
            return Err(format!(
                "{} deliveries, more than {bound}: {o:?}",
                o.deliveries
            ));
        }
        Ok(())
    });
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(|(_, o)| f(o)).sum::<u64>();
    let (deliveries, needed) = (
        sum(|o| o.deliveries),
        sum(|o| o.writes * (o.nodes as u64 - 1)),
    );
    let (worst_seed, worst) = outcomes
        .iter()
        .max_by(|a, b| copies(&a.1).total_cmp(&copies(&b.1)))
        .expect("at least one run");
    let slowest = outcomes
        .iter()
        .map(|(_, o)| o.converge_ms)
        .max()
        .unwrap_or(0);
    let slowest_part = outcomes
        .iter()
        .map(|(_, o)| o.partition_ms)
        .max()
        .unwrap_or(0);
    eprintln!(
        "faulty: {} updates; copies per update per node {:.3} on average, worst {:.2} (seed {worst_seed}: {worst:?}); \
         {} duplicates, {} late, {} grafts; slowest convergence {slowest_part} ms for a connected part after the last temporary fault, \
         {slowest} ms for all after healing",
        sum(|o| o.writes),
        deliveries as f64 / needed as f64,
        copies(worst),
        sum(|o| o.duplicates),
        sum(|o| o.late),
        sum(|o| o.grafts),
    );
}
