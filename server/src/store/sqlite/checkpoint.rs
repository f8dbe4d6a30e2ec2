//! The checkpoint thread: copies the WAL into the database file off the commit path. The writer
//! runs with `wal_autocheckpoint` off, since a checkpoint (with fsyncs of its own) inside
//! whichever commit crossed the threshold would stall every update waiting on that commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tracing::warn;

use crate::store::StoreError;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(200);
/// WAL size past which the checkpointer makes the writer start the WAL over (and the file is
/// truncated back to this size).
pub(super) const WAL_RESTART_BYTES: u64 = 32 * 1024 * 1024;

/// One round: a `PASSIVE` checkpoint, then a `RESTART` if the WAL is past
/// [`WAL_RESTART_BYTES`] and the passive one could copy all of it. When it could not, a reader
/// still holds an older snapshot (`concord backup` holds one for the whole copy). A `RESTART`
/// would then wait for that reader, up to the busy timeout, and block every new commit while it
/// waits: the WAL is left to grow until the reader is done instead.
fn checkpoint(conn: &Connection, wal: &Path) -> rusqlite::Result<()> {
    let (log, copied): (i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(1)?, row.get(2)?))
        })?;
    let big = std::fs::metadata(wal)
        .map(|m| m.len() > WAL_RESTART_BYTES)
        .unwrap_or(false);
    if big && copied == log {
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    Ok(())
}

/// The running checkpoint thread.
pub(super) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the thread that checkpoints the WAL off the commit path. `PASSIVE` checkpoints
    /// never block the writer or readers; they copy what they can and the next one continues.
    /// Under continuous writes the WAL would still never start over, so once it passes
    /// [`WAL_RESTART_BYTES`] a `RESTART` checkpoint (which waits for the writer between two
    /// transactions, mostly with nothing left to copy) rewinds it; see [`checkpoint`].
    pub(super) fn spawn(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let (stop, stopped) = mpsc::channel::<()>();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("concord-store-checkpoint".into())
            .spawn(move || {
                let _node = span.enter();
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_PERIOD)
                {
                    if let Err(e) = checkpoint(&conn, &wal) {
                        warn!("checkpoint failed: {e}");
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                doing: "starting the checkpoint thread".into(),
                error: Arc::new(e),
            })?;
        Ok(Checkpointer { stop, thread })
    }

    /// Stops the thread and waits for it to end (blocks: call it on the blocking pool).
    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
