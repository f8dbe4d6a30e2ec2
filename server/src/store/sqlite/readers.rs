//! The read side: a small pool of read-only connections, used on tokio's blocking pool (WAL
//! lets them read while the writer writes), and the queries that run on it: loading a document
//! and paging through the log and the snapshots for replication. Each row's checksum is checked
//! here: a load fails on a damaged row, replication skips it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use concord_crdt::DocName;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::error;

use crate::store::{LogEntry, Origin, Seq, StoreError, StoredDoc, checksum};

/// Read connections to the database file, opened as needed and kept for the next read.
pub(super) struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled read connection, on the blocking pool.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // Take a pooled connection (the lock is held for the pop only); opening a new one is
        // file I/O, so it happens on the blocking pool with the read.
        let pooled = self.pool.lock().unwrap().pop();
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let r = f(&conn);
            Ok::<_, StoreError>((conn, r))
        })
        .await
        .map_err(|e| StoreError::ReadTask(Arc::new(e)))??;
        self.pool.lock().unwrap().push(conn);
        result
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// The stored state of `doc`: its snapshot and the log entries after it. A row that fails its
/// checksum fails the load with [`StoreError::Corrupt`].
pub(super) fn load_doc(conn: &Connection, doc: &DocName) -> Result<Option<StoredDoc>, StoreError> {
    /// id, snapshot, snapshot_seq, snapshot_crc
    type DocRow = (i64, Option<Vec<u8>>, i64, Option<i64>);
    let row: Option<DocRow> = conn
        .prepare_cached(
            "SELECT id, snapshot, snapshot_seq, snapshot_crc FROM docs WHERE name = ?1",
        )?
        .query_row([doc.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((id, snapshot, snapshot_seq, snapshot_crc)) = row else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        doc: doc.to_string(),
        reason,
    };
    if let Some(s) = &snapshot
        && !checksum::matches(snapshot_crc, checksum::snapshot(id, s))
    {
        return Err(corrupt("its snapshot fails its checksum".into()));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, path, data, crc FROM log WHERE doc_id = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![id, snapshot_seq], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut updates = Vec::new();
    for row in rows {
        let (seq, path, data, crc) = row?;
        if !checksum::matches(crc, checksum::log_entry(seq as Seq, id, &path, &data)) {
            return Err(corrupt(format!("log entry {seq} fails its checksum")));
        }
        updates.push(data);
    }
    Ok(Some(StoredDoc { snapshot, updates }))
}

/// Up to `limit` log entries with `seq > after`, in order.
///
/// An entry whose checksum does not match is not returned (it would spread damaged data to the
/// peers): it is logged as an error naming its document and sequence, and the page goes on with
/// the next entries, so a damaged entry never makes a page look like the end of the log. Its
/// document is refused on this node until the row is repaired.
pub(super) fn read_log(
    conn: &Connection,
    after: Seq,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT log.seq, docs.name, log.path, log.data, log.doc_id, log.crc FROM log JOIN docs ON docs.id = log.doc_id
         WHERE log.seq > ?1 ORDER BY log.seq LIMIT ?2",
    )?;
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let wanted = limit - out.len();
        let rows = stmt.query_map(params![after as i64, wanted as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?;
        let mut read = 0;
        for row in rows {
            let (seq, name, path_text, data, doc_id, crc) = row?;
            read += 1;
            after = seq as Seq;
            if !checksum::matches(
                crc,
                checksum::log_entry(seq as Seq, doc_id, &path_text, &data),
            ) {
                error!(doc = %name, seq, "log entry fails its checksum: not sent to peers (its document is refused here until the row is repaired)");
                continue;
            }
            let corrupt = |reason: String| StoreError::Corrupt {
                doc: name.clone(),
                reason,
            };
            let doc = DocName::parse(&name).map_err(|e| corrupt(e.to_string()))?;
            let origin = Origin::parse(&path_text).map_err(corrupt)?;
            out.push(LogEntry {
                seq: seq as Seq,
                doc,
                origin,
                update: Bytes::from(data),
            });
        }
        if read < wanted || out.len() >= limit {
            return Ok(out);
        }
    }
}

/// Up to `limit` snapshots of documents whose row id is above `after_id`, with their ids. A
/// snapshot whose checksum does not match is skipped and logged, like a damaged log entry.
pub(super) fn read_snapshots(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<(i64, DocName, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, snapshot, snapshot_crc FROM docs WHERE id > ?1 AND snapshot IS NOT NULL ORDER BY id LIMIT ?2",
    )?;
    let mut out = Vec::new();
    let mut after = after_id;
    loop {
        let wanted = limit - out.len();
        let rows = stmt.query_map(params![after, wanted as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut read = 0;
        for row in rows {
            let (id, name, snapshot, crc) = row?;
            read += 1;
            after = id;
            if !checksum::matches(crc, checksum::snapshot(id, &snapshot)) {
                error!(doc = %name, "snapshot fails its checksum: not sent to peers (its document is refused here until the row is repaired)");
                continue;
            }
            let doc = DocName::parse(&name).map_err(|e| StoreError::Corrupt {
                doc: name.clone(),
                reason: e.to_string(),
            })?;
            out.push((id, doc, snapshot));
        }
        if read < wanted || out.len() >= limit {
            return Ok(out);
        }
    }
}

/// Up to `limit` log entries of `doc` above `after` (see `Store::read_doc_log`). An entry that
/// fails its checksum fails the read: the room must not skip an update it was promised.
pub(super) fn read_doc_log(
    conn: &Connection,
    doc: &DocName,
    after: Seq,
    limit: usize,
) -> Result<Vec<(Seq, Bytes)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT log.seq, log.path, log.data, log.crc, log.doc_id FROM log JOIN docs ON docs.id = log.doc_id
         WHERE docs.name = ?1 AND log.seq > ?2 ORDER BY log.seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![doc.as_str(), after as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, path, data, crc, id) = row?;
        if !checksum::matches(crc, checksum::log_entry(seq as Seq, id, &path, &data)) {
            return Err(StoreError::Corrupt {
                doc: doc.to_string(),
                reason: format!("log entry {seq} fails its checksum"),
            });
        }
        out.push((seq as Seq, Bytes::from(data)));
    }
    Ok(out)
}

/// Whether the log holds every entry numbered from `after + 1` through `committed`.
pub(super) fn log_complete(
    conn: &Connection,
    after: Seq,
    committed: Seq,
) -> Result<bool, StoreError> {
    let held: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM log WHERE seq > ?1 AND seq <= ?2")?
        .query_row(params![after as i64, committed as i64], |r| r.get(0))?;
    Ok(held as Seq == committed - after)
}
