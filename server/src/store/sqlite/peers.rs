//! What the store keeps about other nodes and about its own log's history: per peer, the
//! cursor it acknowledged, what this node received of its log and who it is; the incarnations
//! of this log; and `concord forget-peer`, which drops a peer for good. The writer thread runs
//! the writes ([`write_cursor`], [`write_received`], [`write_peer`]) inside its batches.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use concord_crdt::NodeId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::DB_FILE;
use super::schema::{RESUME_SCHEMA, SCHEMA};
use crate::store::{Incarnation, LogIncarnation, PeerInfo, Seq, StoreError};

/// Starts a new incarnation of the log (numbering from `last_seq + 1`) and returns the whole
/// history, oldest first.
pub(super) fn start_incarnation(
    conn: &Connection,
    last_seq: Seq,
) -> Result<Vec<LogIncarnation>, StoreError> {
    conn.execute_batch(RESUME_SCHEMA)?;
    let new = LogIncarnation::new(last_seq + 1);
    conn.execute(
        "INSERT INTO incarnations (id, first_seq) VALUES (?1, ?2)",
        params![new.id.to_string(), new.first_seq as i64],
    )?;
    let mut stmt =
        conn.prepare("SELECT id, first_seq FROM incarnations ORDER BY first_seq, rowid")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut history = Vec::new();
    for row in rows {
        let (id, first_seq) = row?;
        let id = Incarnation::parse(&id).map_err(|reason| StoreError::Corrupt {
            doc: "incarnations".into(),
            reason,
        })?;
        history.push(LogIncarnation {
            id,
            first_seq: first_seq as Seq,
        });
    }
    if history.last() != Some(&new) {
        return Err(StoreError::Corrupt {
            doc: "incarnations".into(),
            reason: "the new incarnation does not sort last".into(),
        });
    }
    Ok(history)
}

/// The last sequence each known peer acknowledged.
pub(super) fn peer_cursors(conn: &Connection) -> Result<HashMap<NodeId, Seq>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT node_id, acked_seq FROM peer_cursors")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, seq) = row?;
        if let Ok(id) = NodeId::parse(&id) {
            out.insert(id, seq as Seq);
        }
    }
    Ok(out)
}

/// What this node holds of `peer`'s log: its incarnation and the sequence through which
/// everything is durable here.
pub(super) fn received_cursor(
    conn: &Connection,
    peer: &NodeId,
) -> Result<Option<(Incarnation, Seq)>, StoreError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT incarnation, seq FROM received_cursors WHERE peer = ?1")?
        .query_row([peer.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(of, seq)| {
        Incarnation::parse(&of)
            .map(|of| (of, seq as Seq))
            .map_err(|reason| StoreError::Corrupt {
                doc: format!("received cursor of peer {peer}"),
                reason,
            })
    })
    .transpose()
}

/// Every peer ever linked with, as last recorded.
pub(super) fn known_peers(conn: &Connection) -> Result<HashMap<NodeId, PeerInfo>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT node_id, region, url, dial_url FROM peers")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            PeerInfo {
                region: r.get(1)?,
                url: r.get(2)?,
                dial_url: r.get(3)?,
            },
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, info) = row?;
        if let Ok(id) = NodeId::parse(&id) {
            out.insert(id, info);
        }
    }
    Ok(out)
}

/// Records that `peer` acknowledged `seq`: moves its cursor forward only, or sets it to exactly
/// `seq` with `reset`.
pub(super) fn write_cursor(
    conn: &Connection,
    peer: &NodeId,
    seq: Seq,
    reset: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO peer_cursors (node_id, acked_seq) VALUES (?1, ?2)
         ON CONFLICT(node_id) DO UPDATE SET acked_seq =
         CASE WHEN ?3 THEN excluded.acked_seq ELSE MAX(acked_seq, excluded.acked_seq) END",
    )?
    .execute(params![peer.as_str(), seq as i64, reset])?;
    Ok(())
}

/// Records that everything of `peer`'s log through `seq` of incarnation `of` is durable here.
pub(super) fn write_received(
    conn: &Connection,
    peer: &NodeId,
    of: Incarnation,
    seq: Seq,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO received_cursors (peer, incarnation, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT(peer) DO UPDATE SET incarnation = excluded.incarnation, seq = excluded.seq",
    )?
    .execute(params![peer.as_str(), of.to_string(), seq as i64])?;
    Ok(())
}

/// Records who `peer` is; a `None` `dial_url` keeps the one recorded.
pub(super) fn write_peer(
    conn: &Connection,
    peer: &NodeId,
    info: &PeerInfo,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO peers (node_id, region, url, dial_url) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(node_id) DO UPDATE SET region = excluded.region, url = excluded.url,
         dial_url = COALESCE(excluded.dial_url, peers.dial_url)",
    )?
    .execute(params![peer.as_str(), info.region, info.url, info.dial_url])?;
    Ok(())
}

/// Removes what the store in `dir` keeps for peer `node_id` (its cursor and record), so log
/// entries no longer wait for it. Returns whether it was known. Safe while a server runs on the
/// same store (SQLite serialises the writers).
pub fn forget_peer(dir: &Path, node_id: &str) -> Result<bool, StoreError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(StoreError::NoStore {
            path: path.display().to_string(),
        });
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(RESUME_SCHEMA)?;
    let cursors = conn.execute("DELETE FROM peer_cursors WHERE node_id = ?1", [node_id])?;
    let records = conn.execute("DELETE FROM peers WHERE node_id = ?1", [node_id])?;
    let received = conn.execute("DELETE FROM received_cursors WHERE peer = ?1", [node_id])?;
    Ok(cursors + records + received > 0)
}
