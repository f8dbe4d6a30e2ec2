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
    /// transactions, mostly with nothing left to copy) rewinds it.
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
                    let big = std::fs::metadata(&wal)
                        .map(|m| m.len() > WAL_RESTART_BYTES)
                        .unwrap_or(false);
                    let mode = if big { "RESTART" } else { "PASSIVE" };
                    if let Err(e) =
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                    {
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
