//! The metrics read at scrape time rather than counted: the node's identity, its committed log
//! sequence, the store's size on disk, and every peer link. The node's wiring gives a function
//! that samples them ([`super::Metrics::sample_with`]); this file only encodes the sample.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Sampler;

/// What a scrape reads of the node.
#[derive(Debug, Clone, Default)]
pub struct NodeSample {
    pub node_id: String,
    pub committed_seq: u64,
    /// The database files (db and WAL), in bytes.
    pub store_size_bytes: u64,
    /// `--max-db-size` (0: no limit).
    pub store_max_size_bytes: u64,
    /// Whether the store can write now (what `/readyz` asks it).
    pub store_writable: bool,
    /// The file system holding the data directory: bytes available to the server, and its size
    /// (`None` where it cannot be read).
    pub disk: Option<(u64, u64)>,
    pub peers: Vec<PeerSample>,
}

/// What a scrape reads of one peer (identified by node id: configured peers and those that
/// dialed in, a bounded set).
#[derive(Debug, Clone, Default)]
pub struct PeerSample {
    pub peer: String,
    pub region: String,
    pub up: bool,
    pub acked_seq: u64,
    pub backlog_entries: u64,
    pub lag_seconds: f64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub reconnects: u64,
}

pub(super) struct NodeCollector {
    sampler: Arc<OnceLock<Sampler>>,
}

impl NodeCollector {
    pub(super) fn new(sampler: Arc<OnceLock<Sampler>>) -> Self {
        NodeCollector { sampler }
    }
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = self.sampler.get().and_then(|sample| sample()) else {
            return Ok(());
        };
        {
            let mut info = encoder.encode_descriptor(
                "concord_node_info",
                "This node: its id and the server's version (always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("node_id", sample.node_id.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "concord_committed_seq",
            "This node's last committed log sequence",
            sample.committed_seq as i64,
        )?;
        gauge(
            &mut encoder,
            "concord_store_size_bytes",
            "Database files on disk (db and WAL), in bytes",
            sample.store_size_bytes as i64,
        )?;
        gauge(
            &mut encoder,
            "concord_store_writable",
            "1 while the store can write (its last commit or write probe succeeded), 0 while it cannot",
            i64::from(sample.store_writable),
        )?;
        gauge(
            &mut encoder,
            "concord_store_max_size_bytes",
            "--max-db-size, in bytes (0: no limit)",
            sample.store_max_size_bytes as i64,
        )?;
        if let Some((available, capacity)) = sample.disk {
            gauge(
                &mut encoder,
                "concord_store_disk_available_bytes",
                "Bytes available to the server on the file system of the data directory",
                available as i64,
            )?;
            gauge(
                &mut encoder,
                "concord_store_disk_capacity_bytes",
                "Size of the file system of the data directory, in bytes",
                capacity as i64,
            )?;
        }
        if sample.peers.is_empty() {
            return Ok(());
        }
        let peers = &sample.peers;
        peer_gauges(
            &mut encoder,
            peers,
            "concord_peer_up",
            "1 while the link to the peer is connected",
            |p| i64::from(p.up) as f64,
        )?;
        peer_gauges(
            &mut encoder,
            peers,
            "concord_peer_acked_seq",
            "Last sequence of this node's log the peer acknowledged",
            |p| p.acked_seq as f64,
        )?;
        peer_gauges(
            &mut encoder,
            peers,
            "concord_peer_backlog_entries",
            "Log entries the peer has not acknowledged (committed seq minus acked seq)",
            |p| p.backlog_entries as f64,
        )?;
        peer_gauges(
            &mut encoder,
            peers,
            "concord_peer_lag_seconds",
            "Age of the oldest update sent to the peer and not yet acknowledged (0 when none)",
            |p| p.lag_seconds,
        )?;
        peer_counters(
            &mut encoder,
            peers,
            "concord_peer_messages_sent",
            "Messages of the log stream sent to the peer",
            |p| p.messages_sent,
        )?;
        peer_counters(
            &mut encoder,
            peers,
            "concord_peer_bytes_sent",
            "Bytes of the log stream sent to the peer",
            |p| p.bytes_sent,
        )?;
        peer_counters(
            &mut encoder,
            peers,
            "concord_peer_messages_received",
            "Messages received from the peer",
            |p| p.messages_received,
        )?;
        peer_counters(
            &mut encoder,
            peers,
            "concord_peer_bytes_received",
            "Bytes received from the peer",
            |p| p.bytes_received,
        )?;
        peer_counters(
            &mut encoder,
            peers,
            "concord_peer_reconnects",
            "Times the link to the peer was established again after the first time",
            |p| p.reconnects,
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn peer_labels(p: &PeerSample) -> [(&'static str, &str); 2] {
    [
        ("peer", p.peer.as_str()),
        ("peer_region", p.region.as_str()),
    ]
}

fn peer_gauges(
    encoder: &mut DescriptorEncoder,
    peers: &[PeerSample],
    name: &str,
    help: &str,
    value: impl Fn(&PeerSample) -> f64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for p in peers {
        let labels = peer_labels(p);
        ConstGauge::new(value(p)).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn peer_counters(
    encoder: &mut DescriptorEncoder,
    peers: &[PeerSample],
    name: &str,
    help: &str,
    value: impl Fn(&PeerSample) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for p in peers {
        let labels = peer_labels(p);
        ConstCounter::new(value(p)).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}
