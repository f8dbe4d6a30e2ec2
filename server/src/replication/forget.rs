//! A running node lets go of a peer that `concord forget-peer` removed from its store. That
//! command edits the database from another process, so without this the node would show the
//! peer (down, its backlog growing) in `/api/status`, `concord status` and the metrics until it
//! restarted, and `ConcordPeerDown` would page for a peer that is gone on purpose: after a
//! restore, say, whose old node id is forgotten on every peer.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_crdt::NodeId;
use tracing::{Instrument, info, warn};

use super::Replication;

/// How often the store is asked which peers it still knows.
const EVERY: Duration = Duration::from_secs(5);

impl Replication {
    /// Runs [`Replication::forget_unknown_peers`] every few seconds until shutdown.
    pub(super) fn start_forgetting(self: &Arc<Self>) {
        let hub = self.clone();
        self.tasks.spawn(
            async move {
                let mut tick = tokio::time::interval(EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = hub.shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    hub.forget_unknown_peers().await;
                }
            }
            .in_current_span(),
        );
    }

    /// Drops the status of every peer that is neither linked, nor dialed under the `--peers`
    /// URLs, nor known to the store (no cursor, no record): one forgotten with `forget-peer`.
    pub async fn forget_unknown_peers(&self) {
        let (cursors, known) = match (
            self.store.peer_cursors().await,
            self.store.known_peers().await,
        ) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot read which peers the store knows; keeping them all");
                return;
            }
        };
        let dialed: HashSet<NodeId> = self
            .dials
            .iter()
            .filter_map(|d| d.value().node_id.clone())
            .collect();
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            .map(|entry| entry.key().clone())
            .filter(|id| {
                !self.links.contains_key(id)
                    && !dialed.contains(id)
                    && !cursors.contains_key(id)
                    && !known.contains_key(id)
            })
            .collect();
        for id in gone {
            // Checked again under the entry's lock: a link may have come up meanwhile.
            if self
                .peers
                .remove_if(&id, |_, stats| !stats.connected.load(Ordering::Relaxed))
                .is_some()
            {
                info!(peer = %id, "forgot peer: the store no longer knows it (concord forget-peer)");
            }
        }
    }
}
