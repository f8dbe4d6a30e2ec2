//! Whether a store can take writes right now, known without writing: `/readyz` asks on every
//! probe, and a write per probe would cost an fsync each time. The SQLite writer records the
//! outcome of each commit in a [`HealthCell`] (a failure sets it, the next success clears it), and
//! the store adds what it knows of itself (closed, writer thread gone) in [`StoreHealth`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a store says of its ability to write ([`super::Store::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last commit (or write probe) succeeded, or nothing was written yet.
    Writable,
    /// The last commit failed, and nothing committed since.
    Failing(WriteFailure),
    /// The thread that writes is gone (it stopped or panicked): no write can succeed.
    WriterStopped,
    /// The store was closed (the node is stopping).
    Closed,
}

/// Why the last commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// The error's text, as logs show it.
    pub error: String,
    /// Set when the error was "full" and a size limit (`--max-db-size`) is configured: the
    /// database's size and the limit, in bytes, so the reason says which one ran out.
    pub size: Option<SizeAtFailure>,
}

/// The database's size when a write failed for lack of space, next to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeAtFailure {
    pub db_bytes: u64,
    pub limit_bytes: u64,
}

impl SizeAtFailure {
    /// Whether the database itself is at its limit (less than `slack` bytes below it), rather
    /// than the disk being full.
    pub fn at_limit(&self, slack: u64) -> bool {
        self.db_bytes.saturating_add(slack) >= self.limit_bytes
    }
}

/// The last commit's outcome, written by the writer thread and read by anyone. Reading takes a
/// short lock only while a failure is recorded.
#[derive(Debug, Default)]
pub struct HealthCell {
    failing: AtomicBool,
    failure: Mutex<Option<WriteFailure>>,
}

impl HealthCell {
    /// Records a failed commit (replacing an earlier failure).
    pub fn failed(&self, failure: WriteFailure) {
        *self.failure.lock().unwrap() = Some(failure);
        self.failing.store(true, Ordering::Release);
    }

    /// Records a successful commit; returns whether this ended a failure.
    pub fn succeeded(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return false;
        }
        self.failing.store(false, Ordering::Release);
        self.failure.lock().unwrap().take().is_some()
    }

    /// Whether the last commit failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The recorded failure, if the last commit failed.
    pub fn failure(&self) -> Option<WriteFailure> {
        if !self.is_failing() {
            return None;
        }
        self.failure.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(text: &str) -> WriteFailure {
        WriteFailure {
            error: text.into(),
            size: None,
        }
    }

    #[test]
    fn a_failure_is_reported_until_the_next_success() {
        let cell = HealthCell::default();
        assert_eq!(cell.failure(), None);
        assert!(!cell.succeeded(), "nothing to end");
        cell.failed(failure("disk full"));
        assert!(cell.is_failing());
        assert_eq!(cell.failure(), Some(failure("disk full")));
        cell.failed(failure("I/O error"));
        assert_eq!(
            cell.failure(),
            Some(failure("I/O error")),
            "the latest wins"
        );
        assert!(cell.succeeded(), "a success ends the failure");
        assert_eq!(cell.failure(), None);
        assert!(!cell.succeeded());
    }

    #[test]
    fn at_limit_means_within_the_slack_of_the_limit() {
        let size = |db_bytes| SizeAtFailure {
            db_bytes,
            limit_bytes: 100_000,
        };
        assert!(size(100_000).at_limit(0));
        assert!(size(90_000).at_limit(10_000));
        assert!(
            !size(50_000).at_limit(10_000),
            "far below: the disk is full"
        );
    }
}
