//! Giving memory back to the OS after documents leave it.
//!
//! Allocators keep freed memory for reuse: after a busy hour, RSS would stay at its peak even
//! with every document evicted. Rooms call [`freed_a_lot`] when they drop a document; at most
//! once per [`TRIM_PERIOD`], a background task then asks glibc (SQLite's allocator) to return
//! free pages, and bumps an epoch that makes every runtime worker collect its own mimalloc heap
//! (the `concord` binary's allocator) the next time it runs out of work ([`on_worker_park`]):
//! mimalloc heaps are per thread, and only their own thread can collect them. Collecting walks
//! the heaps, so it is debounced rather than done per eviction.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static FREED: AtomicBool = AtomicBool::new(false);

/// Tasks spawned to wake sleeping workers so they collect (more than any worker count here).
const WAKE_TASKS: usize = 16;

/// Collections run after an eviction, one per [`TRIM_PERIOD`].
const COLLECT_ROUNDS: u32 = 3;

/// Bumped when workers should collect their heaps.
static COLLECT_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COLLECTED_EPOCH: Cell<u64> = const { Cell::new(0) };
}

/// For the runtime's `on_thread_park`: collects this worker's mimalloc heap if a collection was
/// asked for since its last one. Otherwise one atomic load: workers park all the time.
pub fn on_worker_park() {
    let epoch = COLLECT_EPOCH.load(Ordering::Relaxed);
    if COLLECTED_EPOCH.get() != epoch {
        COLLECTED_EPOCH.set(epoch);
        // SAFETY: no preconditions; it only releases this thread's free memory.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// How often, at most, memory is trimmed.
pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// Notes that a large amount of memory was just freed (a document was evicted).
pub fn freed_a_lot() {
    FREED.store(true, Ordering::Relaxed);
}

/// Runs until `stop` is cancelled, trimming after evictions.
pub async fn trim_task(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    // Collections still to run for the last eviction. One is not always enough: a worker woken
    // by nothing collects late, and memory freed on one thread but owned by another's heap is
    // only released once its owner collects after that free.
    let mut rounds = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if FREED.swap(false, Ordering::Relaxed) {
                    rounds = COLLECT_ROUNDS;
                }
                if rounds > 0 {
                    rounds -= 1;
                    COLLECT_EPOCH.fetch_add(1, Ordering::Relaxed);
                    // A worker collects when it next parks; idle ones are asleep already. A few
                    // short tasks wake them (the runtime hands new work to sleeping workers), and
                    // they park again right after.
                    for _ in 0..WAKE_TASKS {
                        tokio::spawn(tokio::task::yield_now());
                    }
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: neither has preconditions; they only release free memory. mimalloc holds what
    // Rust allocates (the `concord` binary's allocator); glibc still holds SQLite's page cache.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
