//! Prometheus metrics, one registry per node ([`Metrics`], held in `App`), so that the demo and
//! the tests, which run several nodes in one process, keep their numbers apart. Every series
//! carries the node's `region` label. The names are the operators' interface (the alerts and
//! the dashboard query them): they are all registered here, in one place.
//!
//! What is counted as it happens is a `prometheus-client` counter, gauge or histogram, handed to
//! the code that counts it (a counter is one atomic: no lock, no allocation per update; a
//! histogram takes an uncontended lock and is only observed per commit or per load). What is a
//! state rather than an event (peer links, the store's size, the committed sequence, the
//! process) is read at scrape time: [`node`] encodes a [`NodeSample`] that the node's wiring
//! provides, [`process`] reads `/proc/self`.
//!
//! This module depends on nothing else in the crate, so every part of the server may count into
//! it without a cycle.

mod node;
mod process;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use node::{NodeSample, PeerSample};

/// The content type of [`Metrics::render`]'s text: the OpenMetrics text format, which
/// `prometheus-client` writes (with its `# EOF` line).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where an update came from (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client = 0,
    Peer = 1,
}

/// What the node made of an update (the `verdict` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It changed the document: stored and relayed.
    New = 0,
    /// Everything in it was known already.
    Known = 1,
    /// It could not be decoded or applied, or the sender may not write.
    Refused = 2,
}

const SOURCES: [&str; 2] = ["client", "peer"];
const VERDICTS: [&str; 3] = ["new", "known", "refused"];

/// The reasons an auth refusal is counted under (the `reason` label of
/// `concord_auth_refusals_total`): a fixed set, so the label stays bounded. Each starts at 0 in
/// the exposition; a kind not listed here is counted as `other`.
pub const REFUSAL_KINDS: [&str; 10] = [
    "missing_token",
    "invalid_token",
    "expired_token",
    "forbidden",
    "backend_error",
    "connection_limit",
    "per_ip_limit",
    "live_doc_limit",
    "peer_auth",
    "other",
];

/// Close codes counted one by one; anything else is `other`, and a connection that ended
/// without a close code (lost, or found dead) is `none`.
const FIRST_CODE: u16 = 1000;
const LAST_CODE: u16 = 1015;
const CODE_SLOTS: usize = (LAST_CODE - FIRST_CODE + 1) as usize + 2;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// What the store's writer thread counts: handed to it when the store is opened (a clone shares
/// the same series). The default is a set of series registered nowhere (tests, tools).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Seconds one group commit took (write and fsync).
    pub commit_seconds: Histogram,
    /// Log entries written by one group commit.
    pub commit_batch: Histogram,
    /// Commits that wrote something (and so synced the WAL to disk).
    pub fsyncs: Counter,
    /// Transactions that failed (disk full, `--max-db-size`, I/O error).
    pub write_errors: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            fsyncs: Counter::default(),
            write_errors: Counter::default(),
        }
    }
}

/// What the scrape-time collector reads, once the node is wired (see [`Metrics::sample_with`]).
type Sampler = Box<dyn Fn() -> Option<NodeSample> + Send + Sync>;

/// One held unit of a gauge: `inc` now, `dec` when dropped, so the gauge comes back down
/// whatever way its holder ends (a panic included).
pub struct GaugeHeld(Gauge);

impl GaugeHeld {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeHeld(gauge.clone())
    }
}

impl Drop for GaugeHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One node's metrics: the registry and the handles the code counts with.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    closed: Vec<Counter>,
    pub client_messages_sent: Counter,
    pub client_bytes_sent: Counter,
    pub documents_live: Gauge,
    pub documents_loaded: Counter,
    pub documents_evicted: Counter,
    pub document_load_seconds: Histogram,
    updates: [[Counter; 3]; 2],
    refusals: Vec<Counter>,
    pub store: StoreMetrics,
    sampler: Arc<OnceLock<Sampler>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// Metrics of a node without a region (tests and tools that build rooms alone).
    fn default() -> Self {
        Metrics::new("")
    }
}

impl Metrics {
    /// Registers every metric, each series labelled `region="<region>"`.
    pub fn new(region: &str) -> Self {
        let mut registry = Registry::with_labels(std::iter::once((
            Cow::Borrowed("region"),
            Cow::Owned(region.to_string()),
        )));
        let r = &mut registry;

        let connections_open = Gauge::default();
        r.register(
            "concord_connections_open",
            "Open client WebSocket connections",
            connections_open.clone(),
        );
        let closed_family = Family::<Labels, Counter>::default();
        r.register(
            "concord_connections_closed",
            "Client connections closed, by close code (other: a code outside 1000-1015; none: \
             the connection ended without one)",
            closed_family.clone(),
        );
        let closed = (0..CODE_SLOTS)
            .map(|slot| closed_family.get_or_create_owned(&[("code", code_label(slot))]))
            .collect();
        let client_messages_sent = Counter::default();
        r.register(
            "concord_client_messages_sent",
            "Messages written to client sockets (deliveries)",
            client_messages_sent.clone(),
        );
        let client_bytes_sent = Counter::default();
        r.register(
            "concord_client_bytes_sent",
            "Bytes of the messages written to client sockets",
            client_bytes_sent.clone(),
        );

        let documents_live = Gauge::default();
        r.register(
            "concord_documents_live",
            "Documents in memory (rooms)",
            documents_live.clone(),
        );
        let documents_loaded = Counter::default();
        r.register(
            "concord_documents_loaded",
            "Documents loaded from the store (rooms started)",
            documents_loaded.clone(),
        );
        let documents_evicted = Counter::default();
        r.register(
            "concord_documents_evicted",
            "Rooms stopped after idling",
            documents_evicted.clone(),
        );
        let document_load_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        r.register(
            "concord_document_load_seconds",
            "Time to load a document before serving it",
            document_load_seconds.clone(),
        );

        let updates_family = Family::<Labels2, Counter>::default();
        r.register(
            "concord_updates",
            "Document updates received and judged, by source and verdict",
            updates_family.clone(),
        );
        let updates = SOURCES.map(|source| {
            VERDICTS.map(|verdict| {
                updates_family.get_or_create_owned(&[("source", source), ("verdict", verdict)])
            })
        });

        let refusals_family = Family::<Labels, Counter>::default();
        r.register(
            "concord_auth_refusals",
            "Refused requests and peer handshakes, by reason",
            refusals_family.clone(),
        );
        let refusals = REFUSAL_KINDS
            .iter()
            .map(|kind| refusals_family.get_or_create_owned(&[("reason", kind)]))
            .collect();

        let store = StoreMetrics::default();
        r.register(
            "concord_store_commit_seconds",
            "One group commit of the store (write and fsync)",
            store.commit_seconds.clone(),
        );
        r.register(
            "concord_store_commit_batch_updates",
            "Log entries written per group commit",
            store.commit_batch.clone(),
        );
        r.register(
            "concord_store_fsyncs",
            "Store commits that synced to disk",
            store.fsyncs.clone(),
        );
        r.register(
            "concord_store_write_errors",
            "Failed store writes (disk full, --max-db-size, I/O errors)",
            store.write_errors.clone(),
        );

        let sampler: Arc<OnceLock<Sampler>> = Arc::default();
        r.register_collector(Box::new(node::NodeCollector::new(sampler.clone())));
        r.register_collector(Box::new(process::ProcessCollector));

        Metrics {
            registry,
            connections_open,
            closed,
            client_messages_sent,
            client_bytes_sent,
            documents_live,
            documents_loaded,
            documents_evicted,
            document_load_seconds,
            updates,
            refusals,
            store,
            sampler,
        }
    }

    /// Counts `n` updates from `source` judged `verdict`.
    pub fn updates(&self, source: Source, verdict: Verdict, n: u64) {
        if n > 0 {
            self.updates[source as usize][verdict as usize].inc_by(n);
        }
    }

    /// Counts a client connection that ended with close code `code` (`None`: without one).
    pub fn connection_closed(&self, code: Option<u16>) {
        let slot = match code {
            Some(c @ FIRST_CODE..=LAST_CODE) => (c - FIRST_CODE) as usize,
            Some(_) => CODE_SLOTS - 2,
            None => CODE_SLOTS - 1,
        };
        self.closed[slot].inc();
    }

    /// Counts a refusal of kind `kind` (one of [`REFUSAL_KINDS`]; anything else is `other`).
    pub fn refused(&self, kind: &str) {
        let slot = REFUSAL_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(REFUSAL_KINDS.len() - 1);
        self.refusals[slot].inc();
    }

    /// Gives the scrape what is read at scrape time: `sample` answers `None` once the node is
    /// gone. Only the first call counts.
    pub fn sample_with(&self, sample: impl Fn() -> Option<NodeSample> + Send + Sync + 'static) {
        let _ = self.sampler.set(Box::new(sample));
    }

    /// The whole exposition, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; the collectors do not either.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `code` label of slot `slot` of the closed-connections counters.
fn code_label(slot: usize) -> &'static str {
    const CODES: [&str; CODE_SLOTS] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015", "other", "none",
    ];
    CODES[slot]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_under_their_labels() {
        let m = Metrics::new("eu");
        m.updates(Source::Client, Verdict::New, 3);
        m.updates(Source::Peer, Verdict::Refused, 1);
        m.connection_closed(Some(1000));
        m.connection_closed(Some(4000));
        m.connection_closed(None);
        m.refused("invalid_token");
        m.refused("no such kind");
        let text = m.render();
        for line in [
            r#"concord_updates_total{region="eu",source="client",verdict="new"} 3"#,
            r#"concord_updates_total{region="eu",source="peer",verdict="refused"} 1"#,
            r#"concord_updates_total{region="eu",source="peer",verdict="known"} 0"#,
            r#"concord_connections_closed_total{region="eu",code="1000"} 1"#,
            r#"concord_connections_closed_total{region="eu",code="other"} 1"#,
            r#"concord_connections_closed_total{region="eu",code="none"} 1"#,
            r#"concord_auth_refusals_total{region="eu",reason="invalid_token"} 1"#,
            r#"concord_auth_refusals_total{region="eu",reason="other"} 1"#,
            r#"concord_store_commit_seconds_count{region="eu"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
