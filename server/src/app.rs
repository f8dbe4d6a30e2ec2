//! The state every route and connection shares ([`App`]): the configuration, the live documents,
//! the replication hub, the shutdown signal and the limits. Built by [`crate::node`], handed to
//! [`crate::http`] and [`crate::connection`]; it depends on them through nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeArgs;
use crate::registry::Registry;
use crate::replication::Replication;
use crate::{auth, limits, metrics};

/// Shared server state, handed to every route and connection.
pub struct App {
    pub config: ServeArgs,
    pub registry: Arc<Registry>,
    pub replication: Arc<Replication>,
    /// Cancelled on SIGINT/SIGTERM: stops accepting and closes every connection with 1001.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown waits for their close frames to go out.
    pub tasks: TaskTracker,
    pub next_conn_id: AtomicU64,
    /// Decides who may read, write and operate (see [`auth`]).
    pub gate: auth::Gate,
    /// Places for client connections under `--max-connections` and `--max-connections-per-ip`.
    pub admission: Arc<limits::Admission>,
    /// This node's Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<metrics::Metrics>,
}
