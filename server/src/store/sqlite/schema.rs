//! The database's tables, in one place: the SQL that creates them ([`SCHEMA`], [`RESUME_SCHEMA`]),
//! the additions made to databases created before a column existed ([`add_checksum_columns`]),
//! and reading back where the log's numbering stands ([`last_seq`]). Anything that changes the
//! on-disk format changes here.

use rusqlite::{Connection, OptionalExtension};
use tracing::info;

use crate::store::{Seq, StoreError};

/// The main tables: documents and their snapshots, the log, what peers acknowledged, who they
/// are, and `meta` (see the map in [`super`]).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    snapshot     BLOB,
    snapshot_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    seq    INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES docs(id),
    path   TEXT NOT NULL DEFAULT '',
    data   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_doc_seq ON log(doc_id, seq);
CREATE TABLE IF NOT EXISTS peer_cursors (
    node_id   TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    node_id  TEXT PRIMARY KEY,
    region   TEXT NOT NULL,
    url      TEXT NOT NULL,
    dial_url TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Tables for resuming replication (created on open, so a database from before them opens):
/// - `incarnations`: one row per open of the store, with the first sequence that open numbers;
///   ordered by `first_seq` then `rowid` (an open that wrote nothing leaves an empty range).
/// - `received_cursors`: per peer, the incarnation of its log and the sequence through which
///   everything it sent is durable here. Written before the acknowledgement goes out.
pub const RESUME_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incarnations (
    id        TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS received_cursors (
    peer        TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL
);
";

/// Adds the checksum columns to a database created before they existed. Rows already there keep
/// a NULL checksum, which reads accept (see [`checksum::matches`](crate::store::checksum::matches)).
pub(super) fn add_checksum_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, column) in [("log", "crc"), ("docs", "snapshot_crc")] {
        let has: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} INTEGER"))?;
            // Worth telling only for a database that has rows from before: a new one gets the
            // column on its first open too, which is no news.
            let older_rows: bool =
                conn.query_row(&format!("SELECT EXISTS(SELECT 1 FROM {table})"), [], |r| {
                    r.get(0)
                })?;
            if older_rows {
                info!(
                    table,
                    column, "added checksum column; rows stored before have none"
                );
            }
        }
    }
    // A binary from before checksums (run after a downgrade) rewrites a snapshot without its
    // checksum; the database itself then drops the stale checksum, so the snapshot is read like
    // any row from before checksums instead of being refused as damaged when this version
    // returns. Damage on disk does not go through SQL and is still caught.
    conn.execute_batch(
        "CREATE TRIGGER IF NOT EXISTS docs_snapshot_crc_stale
         AFTER UPDATE OF snapshot ON docs
         WHEN NEW.snapshot_crc IS OLD.snapshot_crc AND NEW.snapshot IS NOT OLD.snapshot
         BEGIN UPDATE docs SET snapshot_crc = NULL WHERE id = NEW.id; END;",
    )?;
    Ok(())
}

/// The last sequence number handed out: the log's newest entry, or what compaction recorded
/// when it deleted the newest entries.
pub(super) fn last_seq(conn: &Connection) -> Result<Seq, StoreError> {
    let from_meta: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let from_meta: Seq = from_meta.and_then(|v| v.parse().ok()).unwrap_or(0);
    let from_log: Option<i64> = conn.query_row("SELECT MAX(seq) FROM log", [], |r| r.get(0))?;
    Ok(from_meta.max(from_log.unwrap_or(0) as Seq))
}
