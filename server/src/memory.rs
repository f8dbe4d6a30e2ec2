//! Giving memory back to the OS after documents leave it.
//!
//! glibc's malloc keeps freed memory in its arenas: after a busy hour, RSS would stay at its
//! peak even with every document evicted. Rooms call [`freed_a_lot`] when they drop a document;
//! at most once per [`TRIM_PERIOD`], a background task then asks glibc to return free pages
//! (`malloc_trim`). Trimming walks the arenas, so it is debounced rather than done per eviction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static FREED: AtomicBool = AtomicBool::new(false);

/// How often, at most, memory is trimmed.
pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// Notes that a large amount of memory was just freed (a document was evicted).
pub fn freed_a_lot() {
    FREED.store(true, Ordering::Relaxed);
}

/// Runs until `stop` is cancelled, trimming after evictions.
pub async fn trim_task(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if FREED.swap(false, Ordering::Relaxed) {
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
