//! Several real `concord` processes replicating through test-owned delay proxies: a simulated
//! multi-region deployment on loopback.
//!
//! Links are directed: `(i, j)` means node `i` lists a proxy in front of node `j` in `--peers`.
//! Each proxy can be cut, silenced (blackholed) or limited in bandwidth.
//! Listing both `(i, j)` and `(j, i)` makes both ends dial, as in a mesh where every node lists
//! every other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use concord_crdt::DocState;
use concord_server::delay_proxy::DelayProxy;

use crate::server::{Server, http_get, server_doc};

pub const SECRET: &str = "test-cluster-secret";

pub struct Cluster {
    pub nodes: Vec<Server>,
    pub proxies: HashMap<(usize, usize), DelayProxy>,
}

/// Every ordered pair: a mesh where each node lists every other.
pub fn mesh(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
        .collect()
}

/// Each node lists its successor.
pub fn ring(n: usize) -> Vec<(usize, usize)> {
    (0..n).map(|i| (i, (i + 1) % n)).collect()
}

/// Spokes 1..n list the hub 0.
pub fn star(n: usize) -> Vec<(usize, usize)> {
    (1..n).map(|i| (i, 0)).collect()
}

impl Cluster {
    /// Starts `n` nodes (regions `r0`, `r1`, ...) linked by `edges` with `delay` one way. With
    /// `--tls-cert` in `extra`, peers are `https://localhost:PORT` (the proxy passes TLS through).
    pub async fn start(
        n: usize,
        edges: &[(usize, usize)],
        delay: Duration,
        extra: &[&str],
    ) -> Cluster {
        let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut proxies = HashMap::new();
        for &(i, j) in edges {
            let p = DelayProxy::start("127.0.0.1:0".parse().unwrap(), placeholder, delay)
                .await
                .unwrap();
            proxies.insert((i, j), p);
        }
        let mut nodes = Vec::new();
        let tls = extra.contains(&"--tls-cert");
        for i in 0..n {
            let peers: Vec<String> = edges
                .iter()
                .filter(|(from, _)| *from == i)
                .map(|e| match tls {
                    true => format!("https://localhost:{}", proxies[e].addr.port()),
                    false => format!("http://{}", proxies[e].addr),
                })
                .collect();
            let region = format!("r{i}");
            let node_id = format!("node-{i}");
            let peers = peers.join(",");
            let mut args = vec![
                "--region",
                &region,
                "--node-id",
                &node_id,
                "--peer-secret",
                SECRET,
            ];
            if !peers.is_empty() {
                args.extend(["--peers", &peers]);
            }
            args.extend(extra);
            nodes.push(Server::start(&args).await);
        }
        let c = Cluster { nodes, proxies };
        c.aim_proxies();
        c
    }

    /// Points every proxy at its node's current address (after a restart the port changes).
    pub fn aim_proxies(&self) {
        for (&(_, j), p) in &self.proxies {
            p.set_target(self.nodes[j].addr);
        }
    }

    /// Cuts (or heals) both directions between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        for k in [(a, b), (b, a)] {
            if let Some(p) = self.proxies.get(&k) {
                p.cut();
            }
        }
    }

    /// Blackholes both directions between `a` and `b`: sockets stay open, nothing arrives, until
    /// [`Cluster::heal`].
    pub fn silence(&self, a: usize, b: usize) {
        for k in [(a, b), (b, a)] {
            if let Some(p) = self.proxies.get(&k) {
                p.silence();
            }
        }
    }

    /// Limits both directions between `a` and `b` to `bytes_per_sec` each way (None: no limit).
    pub fn set_bandwidth(&self, a: usize, b: usize, bytes_per_sec: Option<u64>) {
        for k in [(a, b), (b, a)] {
            if let Some(p) = self.proxies.get(&k) {
                p.set_bandwidth(bytes_per_sec);
            }
        }
    }

    /// Ends a cut or a silence between `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) {
        for k in [(a, b), (b, a)] {
            if let Some(p) = self.proxies.get(&k) {
                p.heal();
            }
        }
    }

    pub async fn status(&self, i: usize) -> serde_json::Value {
        let (_, body) = http_get(&self.nodes[i].http_url("/api/status")).await;
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until every node has a live link to each of its neighbours.
    pub async fn wait_linked(&self, edges: &[(usize, usize)]) {
        for (i, node) in self.nodes.iter().enumerate() {
            let expected: Vec<String> = edges
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(b)
                    } else if b == i {
                        Some(a)
                    } else {
                        None
                    }
                })
                .map(|j| format!("node-{j}"))
                .collect();
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            node.wait_linked_to(&expected, Duration::from_secs(20))
                .await;
        }
    }

    /// Each node's copy of `doc` (None where it has never been written).
    pub async fn docs(&self, doc: &str) -> Vec<Option<DocState>> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.docs_on(&all, doc).await
    }

    /// The copies of `doc` on `nodes` only (the others may be down).
    pub async fn docs_on(&self, nodes: &[usize], doc: &str) -> Vec<Option<DocState>> {
        let mut out = Vec::new();
        for &i in nodes {
            out.push(server_doc(&self.nodes[i], doc).await);
        }
        out
    }

    /// Waits until every node holds `doc` with the same state vector and the same encoded
    /// content, and returns its text root `t`.
    pub async fn wait_converged(&self, doc: &str, within: Duration) -> String {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_converged_on(&all, doc, within).await
    }

    /// [`Cluster::wait_converged`] among `nodes` only (the others may be down).
    pub async fn wait_converged_on(&self, nodes: &[usize], doc: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let docs = self.docs_on(nodes, doc).await;
            if let Some(text) = converged(&docs) {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                let summary: Vec<_> = docs
                    .iter()
                    .map(|d| {
                        d.as_ref()
                            .map(|d| (d.state_vector(), d.text("t").map(|t| t.len())))
                    })
                    .collect();
                panic!("{doc} did not converge within {within:?}: {summary:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replicated updates (`received_updates`) and peer messages of any kind
    /// (`received_messages`) received, summed over every node and peer.
    pub async fn received(&self) -> (u64, u64) {
        let (mut updates, mut messages) = (0, 0);
        for i in 0..self.nodes.len() {
            for p in self.status(i).await["peers"].as_array().unwrap() {
                updates += p["received_updates"].as_u64().unwrap_or(0);
                messages += p["received_messages"].as_u64().unwrap_or(0);
            }
        }
        (updates, messages)
    }
}

/// Replication traffic summed over some nodes, from `/api/status`: Update messages and bytes
/// received from peers, and log entries written by the nodes' own clients. Fields absent from an
/// older node count as 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub received_updates: u64,
    pub received_bytes: u64,
    pub originated: u64,
}

impl Traffic {
    /// Copies per update and peer bytes per update over the window since `before`.
    pub fn per_update_since(&self, before: &Traffic) -> (f64, f64) {
        let originated = self.originated.saturating_sub(before.originated).max(1) as f64;
        (
            self.received_updates
                .saturating_sub(before.received_updates) as f64
                / originated,
            self.received_bytes.saturating_sub(before.received_bytes) as f64 / originated,
        )
    }
}

impl Cluster {
    /// [`Traffic`] summed over `nodes` (which must be up).
    pub async fn traffic(&self, nodes: &[usize]) -> Traffic {
        let mut t = Traffic::default();
        for &i in nodes {
            let s = self.status(i).await;
            t.originated += s["replication"]["originated_updates"].as_u64().unwrap_or(0);
            for p in s["peers"].as_array().unwrap() {
                t.received_updates += p["received_updates"].as_u64().unwrap_or(0);
                t.received_bytes += p["received_bytes"].as_u64().unwrap_or(0);
            }
        }
        t
    }

    /// Polls node `i`'s status until `cond` holds and returns it; panics after `within`, with
    /// `what` and the last status.
    pub async fn wait_status(
        &self,
        i: usize,
        within: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.status(i).await;
            if cond(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i}: {what} not reached within {within:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The entry for node `j` in a status's `peers`.
pub fn peer_entry(status: &serde_json::Value, j: usize) -> Option<&serde_json::Value> {
    let id = format!("node-{j}");
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"].as_str() == Some(id.as_str()))
}

/// Whether the list `field` (`carries`, `relays`, `grafted`) of node `j`'s entry in `status`
/// names node `origin`.
pub fn link_lists(status: &serde_json::Value, j: usize, field: &str, origin: usize) -> bool {
    let origin = format!("node-{origin}");
    peer_entry(status, j)
        .and_then(|p| p[field].as_array())
        .is_some_and(|l| l.iter().any(|o| o.as_str() == Some(origin.as_str())))
}

/// `Some(text)` when every copy exists and all have identical state vectors and identical full
/// encodings once re-encoded from a fresh document (encoding order of a live doc can differ).
fn converged(docs: &[Option<DocState>]) -> Option<String> {
    let first = docs.first()?.as_ref()?;
    let sv = first.state_vector();
    let text = first.text("t").unwrap_or_default();
    let canonical = |d: &DocState| {
        DocState::load([d.full_state().as_slice()])
            .ok()
            .map(|c| c.full_state())
    };
    let reference = canonical(first)?;
    for d in docs.iter().skip(1) {
        let d = d.as_ref()?;
        if d.state_vector() != sv
            || d.text("t").unwrap_or_default() != text
            || canonical(d)? != reference
        {
            return None;
        }
    }
    Some(text)
}
