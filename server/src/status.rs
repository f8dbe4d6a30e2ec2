//! The JSON of `GET /api/status`, next to its route: this node, its documents and connections,
//! and every peer it knows (from [`crate::replication::Replication::peer_views`]). The field
//! names are the operators' interface (docs/replication.md lists them), so they live in one place.
//! [`sample`] reads the same sources for the metrics a scrape reads ([`crate::metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::metrics::{NodeSample, PeerSample};
use crate::replication::{PeerStats, PeerView, Replication, now_ms};
use crate::store::Seq;

/// The whole status document.
pub fn render(hub: &Replication, documents: usize, connections: usize) -> Value {
    let committed = hub.store.committed();
    let views = hub.peer_views();
    let peers: Vec<Value> = views
        .iter()
        .map(|view| peer(hub, view, committed))
        .collect();
    let regions: std::collections::HashMap<String, String> = views
        .iter()
        .filter_map(|v| {
            let id = v.node_id.as_ref()?.to_string();
            let region = v.stats.as_ref()?.region.lock().unwrap().clone();
            (!region.is_empty()).then_some((id, region))
        })
        .collect();
    let origins: Vec<Value> = hub
        .origin_views()
        .into_iter()
        .map(|o| {
            let region = if o.origin == hub.me.node_id {
                Some(hub.me.region.clone())
            } else {
                regions.get(o.origin.as_str()).cloned()
            };
            json!({
                "origin": o.origin.as_str(),
                "region": region,
                "distance": o.route.as_ref().map(|r| r.distance),
                "via": o.route.and_then(|r| r.via).map(|v| v.to_string()),
                "position": o.held,
            })
        })
        .collect();
    json!({
        "node_id": hub.me.node_id.as_str(),
        "region": hub.me.region,
        "url": hub.me.url,
        "committed_seq": committed,
        "peers": peers,
        // Routing (docs/replication.md): what this node's own clients wrote, and how each origin
        // reaches it.
        "replication": {
            "originated_updates": hub.originated.load(Ordering::Relaxed),
            "origins": origins,
        },
        "documents": documents,
        "full_states_encoded": crate::room::full_states_encoded(),
        "longest_compaction_ms": crate::room::longest_compaction_ms(),
        "connections": connections,
    })
}

fn peer(hub: &Replication, view: &PeerView, committed: Seq) -> Value {
    let stats = view.stats.as_deref();
    let routes = view
        .node_id
        .as_ref()
        .map(|id| hub.link_routes(id))
        .unwrap_or_default();
    let ids = |set: &std::collections::BTreeSet<concord_crdt::NodeId>| {
        set.iter().map(|i| i.to_string()).collect::<Vec<_>>()
    };
    let connected = stats.is_some_and(|s| s.connected.load(Ordering::Relaxed));
    let acked = stats.map(|s| s.acked.load(Ordering::Relaxed)).unwrap_or(0);
    // A live link hears from its peer at least every ping; otherwise the last message counts.
    let last_contact = match view.silent {
        Some(silent) => Some(now_ms().saturating_sub(silent.as_millis() as u64)),
        None => stats
            .map(|s| s.last_contact_ms.load(Ordering::Relaxed))
            .filter(|t| *t > 0),
    };
    let counter =
        |f: fn(&PeerStats) -> &AtomicU64| stats.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0);
    json!({
        "url": view.url,
        "node_id": view.node_id.as_ref().map(|i| i.as_str()),
        "region": stats.map(|s| s.region.lock().unwrap().clone()),
        // The URL the peer advertises for its clients (the dialed URL may be a proxy).
        "public_url": stats.map(|s| s.url.lock().unwrap().clone()).filter(|u| !u.is_empty()),
        "direction": if view.inbound { "inbound" } else { "outbound" },
        "connected": connected,
        "last_contact_ms": last_contact,
        "last_contact_ago_ms": last_contact.map(|t| now_ms().saturating_sub(t)),
        "acked_seq": acked,
        "backlog": committed.saturating_sub(acked),
        // Replication lag: how long the oldest update sent and not yet durable at the peer has
        // waited (0 when it has everything sent; null while the link is down).
        "lag_ms": stats.filter(|_| connected).map(|s| s.lag().as_millis() as u64),
        "sent_updates": counter(|s| &s.sent_updates),
        "sent_bytes": counter(|s| &s.sent_bytes),
        "received_updates": counter(|s| &s.received_updates),
        "received_messages": counter(|s| &s.received_messages),
        "received_bytes": counter(|s| &s.received_bytes),
        "last_error": view.last_error,
        // The origins this link brings us (its tree and grafts), those we send on it, and those
        // it brings only to catch up.
        "carries": ids(&routes.carries),
        "relays": ids(&routes.relays),
        "grafted": ids(&routes.grafted),
    })
}

/// What a metrics scrape reads of the node: its committed sequence, the size of its database
/// files in `data_dir`, and every peer it knows by node id (a peer never reached has no id yet,
/// and no series).
pub fn sample(hub: &Replication, data_dir: &std::path::Path, max_db_size: u64) -> NodeSample {
    let committed = hub.store.committed();
    let db = data_dir.join(crate::store::sqlite::DB_FILE);
    let wal = data_dir.join(format!("{}-wal", crate::store::sqlite::DB_FILE));
    let store_size_bytes = [db, wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let peers = hub
        .peer_views()
        .into_iter()
        .filter_map(|view| {
            let stats = view.stats?;
            let node_id = view.node_id?;
            let count = |f: fn(&PeerStats) -> &AtomicU64| f(&stats).load(Ordering::Relaxed);
            let acked = stats.acked.load(Ordering::Relaxed);
            Some(PeerSample {
                peer: node_id.to_string(),
                region: stats.region.lock().unwrap().clone(),
                up: stats.connected.load(Ordering::Relaxed),
                acked_seq: acked,
                backlog_entries: committed.saturating_sub(acked),
                lag_seconds: stats.lag().as_secs_f64(),
                messages_sent: count(|s| &s.sent_messages),
                bytes_sent: count(|s| &s.sent_bytes),
                messages_received: count(|s| &s.received_messages),
                bytes_received: count(|s| &s.received_bytes),
                reconnects: count(|s| &s.links_up).saturating_sub(1),
            })
        })
        .collect();
    NodeSample {
        node_id: hub.me.node_id.to_string(),
        committed_seq: committed,
        store_size_bytes,
        store_max_size_bytes: max_db_size,
        store_writable: hub.store.health() == crate::store::StoreHealth::Writable,
        disk: disk_space(data_dir),
        peers,
    }
}

/// Bytes available to an unprivileged writer on the file system holding `dir`, and its size.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs only writes the struct it is given; `path` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let block = st.f_frsize as u64;
        Some((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}
