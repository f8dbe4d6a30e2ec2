//! What replication costs, from the servers' own counters: two readings of every region's
//! `/api/status` that bracket the measured window, differenced. Copies per update is the sum over
//! nodes and peers of `received_updates` divided by the updates written in the window (the sum of
//! `replication.originated_updates`, or, for servers that do not report it, the updates the
//! generator sent, each of which the run checks was written); a healthy mesh delivers each update once to every other
//! region, N-1 copies. Peer messages and bytes per update use the same denominator. Pure: the
//! readings come from [`crate::status_sampler`].

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// Where the number of updates written in the window comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Denominator {
    /// Σ `replication.originated_updates` (every node reports it at both readings).
    Server,
    /// The generator's own count of updates sent in the window. The run fails unless every
    /// replica ends identical, so each was written; deletions have no Yjs id to match an echo
    /// by, so sends are counted rather than echoes.
    Client,
}

impl Denominator {
    pub fn as_str(self) -> &'static str {
        match self {
            Denominator::Server => "server",
            Denominator::Client => "client",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicationCost {
    pub regions: usize,
    pub denominator: Denominator,
    /// Updates written in the window (the denominator).
    pub updates: u64,
    /// Σ `received_updates`, `received_messages`, `received_bytes` over nodes and peers.
    pub copies: u64,
    pub peer_messages: u64,
    pub peer_bytes: u64,
    pub copies_per_update: f64,
    pub peer_messages_per_update: f64,
    pub peer_bytes_per_update: f64,
    /// N-1: every other region receives each update once.
    pub ideal_copies_per_update: f64,
    /// `copies_per_update / (N-1)`: 1 is the ideal.
    pub copies_over_ideal: f64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CostError {
    #[error("one region: nothing is replicated")]
    SingleRegion,
    #[error("no /api/status from {region} at the {at} of the window")]
    MissingStatus { region: String, at: &'static str },
    #[error("no update was written in the window")]
    NoUpdates,
}

/// The cost over the window between `start` and `end`, one status per region (in `names`'
/// order, `None` where it could not be read). `client_updates` is the generator's count of
/// updates sent in the window, used when a server does not report its own.
pub fn compute(
    names: &[String],
    start: &[Option<Value>],
    end: &[Option<Value>],
    client_updates: u64,
) -> Result<ReplicationCost, CostError> {
    let n = names.len();
    if n < 2 {
        return Err(CostError::SingleRegion);
    }
    let mut pairs = Vec::with_capacity(n);
    for (i, region) in names.iter().enumerate() {
        let read = |v: &[Option<Value>], at| {
            v.get(i).cloned().flatten().ok_or(CostError::MissingStatus {
                region: region.clone(),
                at,
            })
        };
        pairs.push((read(start, "start")?, read(end, "end")?));
    }
    let (mut copies, mut messages, mut bytes) = (0, 0, 0);
    let mut originated = Some(0);
    for (a, b) in &pairs {
        let before = peer_counters(a);
        for (key, now) in peer_counters(b) {
            // A peer first seen at the end counts from zero.
            let was = before.get(&key).copied().unwrap_or_default();
            copies += delta(was.updates, now.updates);
            messages += delta(was.messages, now.messages);
            bytes += delta(was.bytes, now.bytes);
        }
        let own = |s: &Value| s["replication"]["originated_updates"].as_u64();
        originated = match (originated, own(a), own(b)) {
            (Some(sum), Some(x), Some(y)) => Some(sum + delta(x, y)),
            _ => None,
        };
    }
    let (denominator, updates) = match originated {
        Some(u) => (Denominator::Server, u),
        None => (Denominator::Client, client_updates),
    };
    if updates == 0 {
        return Err(CostError::NoUpdates);
    }
    let per = |x: u64| x as f64 / updates as f64;
    let ideal = (n - 1) as f64;
    Ok(ReplicationCost {
        regions: n,
        denominator,
        updates,
        copies,
        peer_messages: messages,
        peer_bytes: bytes,
        copies_per_update: per(copies),
        peer_messages_per_update: per(messages),
        peer_bytes_per_update: per(bytes),
        ideal_copies_per_update: ideal,
        copies_over_ideal: per(copies) / ideal,
    })
}

#[derive(Clone, Copy, Default)]
struct Counters {
    updates: u64,
    messages: u64,
    bytes: u64,
}

/// One node's peer counters by peer (node id, else URL). A peer listed twice counts once.
fn peer_counters(status: &Value) -> HashMap<String, Counters> {
    let mut out = HashMap::new();
    for p in status["peers"].as_array().into_iter().flatten() {
        let Some(key) = p["node_id"].as_str().or(p["url"].as_str()) else {
            continue;
        };
        let c = |f: &str| p[f].as_u64().unwrap_or(0);
        out.entry(key.to_string()).or_insert(Counters {
            updates: c("received_updates"),
            messages: c("received_messages"),
            bytes: c("received_bytes"),
        });
    }
    out
}

/// How much a counter grew; one that went down was reset (its node restarted) and counts from 0.
fn delta(before: u64, after: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(id: &str, updates: u64, messages: u64, bytes: u64) -> Value {
        json!({ "url": format!("http://{id}"), "node_id": id, "connected": true,
                "received_updates": updates, "received_messages": messages,
                "received_bytes": bytes, "sent_updates": 0, "sent_bytes": 0 })
    }

    fn node(originated: Option<u64>, peers: Vec<Value>) -> Option<Value> {
        let mut s = json!({ "node_id": "x", "committed_seq": 0, "peers": peers });
        if let Some(o) = originated {
            s["replication"] = json!({ "originated_updates": o, "origins": [] });
        }
        Some(s)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn a_full_mesh_costs_n_minus_1_copies_from_the_servers_counts() {
        // 3 nodes, each writes 10 updates in the window; each receives 10 from each of 2 peers.
        let start = vec![
            node(
                Some(5),
                vec![peer("r1", 7, 20, 700), peer("r2", 7, 20, 700)],
            ),
            node(
                Some(5),
                vec![peer("r0", 7, 20, 700), peer("r2", 7, 20, 700)],
            ),
            node(
                Some(5),
                vec![peer("r0", 7, 20, 700), peer("r1", 7, 20, 700)],
            ),
        ];
        let end = vec![
            node(
                Some(15),
                vec![peer("r1", 17, 35, 1700), peer("r2", 17, 35, 1700)],
            ),
            node(
                Some(15),
                vec![peer("r0", 17, 35, 1700), peer("r2", 17, 35, 1700)],
            ),
            node(
                Some(15),
                vec![peer("r0", 17, 35, 1700), peer("r1", 17, 35, 1700)],
            ),
        ];
        let c = compute(&names(3), &start, &end, 999).unwrap();
        assert_eq!(c.denominator, Denominator::Server);
        assert_eq!(
            (c.updates, c.copies, c.peer_messages, c.peer_bytes),
            (30, 60, 90, 6000)
        );
        assert_eq!(c.copies_per_update, 2.0);
        assert_eq!(c.peer_messages_per_update, 3.0);
        assert_eq!(c.peer_bytes_per_update, 200.0);
        assert_eq!(c.ideal_copies_per_update, 2.0);
        assert_eq!(c.copies_over_ideal, 1.0);
    }

    #[test]
    fn servers_without_originated_updates_fall_back_to_the_clients_count() {
        // Today's server: no `replication` object. One node of three lacking it is enough.
        let start = vec![
            node(None, vec![peer("r1", 0, 0, 0)]),
            node(Some(0), vec![peer("r0", 0, 0, 0)]),
        ];
        let end = vec![
            node(None, vec![peer("r1", 12, 15, 1200)]),
            node(Some(3), vec![peer("r0", 8, 9, 800)]),
        ];
        let c = compute(&names(2), &start, &end, 20).unwrap();
        assert_eq!(c.denominator, Denominator::Client);
        assert_eq!(c.updates, 20);
        assert_eq!(c.copies_per_update, 1.0);
        assert_eq!(c.peer_bytes_per_update, 100.0);
        assert_eq!(c.copies_over_ideal, 1.0);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["denominator"], "client");
    }

    #[test]
    fn a_peer_missing_at_the_start_counts_from_zero_and_one_missing_at_the_end_not_at_all() {
        let start = vec![
            node(Some(0), vec![peer("r1", 4, 4, 40)]),
            node(Some(0), vec![peer("r0", 100, 100, 100)]),
        ];
        let end = vec![
            // r0's peer r2 was not listed at the start.
            node(Some(4), vec![peer("r1", 10, 10, 100), peer("r2", 3, 3, 30)]),
            // r1 lost its peer entry: nothing to difference.
            node(Some(6), vec![]),
        ];
        let c = compute(&names(2), &start, &end, 0).unwrap();
        assert_eq!((c.copies, c.peer_messages, c.peer_bytes), (9, 9, 90));
        assert_eq!(c.updates, 10);
    }

    #[test]
    fn a_peer_listed_twice_counts_once_and_a_reset_counter_counts_from_zero() {
        let start = vec![
            node(Some(0), vec![peer("r1", 50, 50, 500)]),
            node(Some(0), vec![]),
        ];
        let end = vec![
            // The counter went down: the peer restarted; its 5 count, not -45.
            node(Some(0), vec![peer("r1", 5, 5, 50), peer("r1", 5, 5, 50)]),
            node(Some(5), vec![]),
        ];
        let c = compute(&names(2), &start, &end, 0).unwrap();
        assert_eq!((c.copies, c.peer_messages, c.peer_bytes), (5, 5, 50));
    }

    #[test]
    fn unreadable_statuses_single_regions_and_empty_windows_are_errors() {
        let ok = || node(Some(1), vec![]);
        assert_eq!(
            compute(&names(2), &[ok(), None], &[ok(), ok()], 5),
            Err(CostError::MissingStatus {
                region: "r1".into(),
                at: "start"
            })
        );
        assert_eq!(
            compute(&names(2), &[ok(), ok()], &[ok()], 5),
            Err(CostError::MissingStatus {
                region: "r1".into(),
                at: "end"
            })
        );
        assert_eq!(
            compute(&names(1), &[ok()], &[ok()], 5),
            Err(CostError::SingleRegion)
        );
        assert_eq!(
            compute(&names(2), &[ok(), ok()], &[ok(), ok()], 5),
            Err(CostError::NoUpdates)
        );
        assert_eq!(
            compute(&names(2), &[node(None, vec![]), ok()], &[ok(), ok()], 0),
            Err(CostError::NoUpdates)
        );
    }
}
