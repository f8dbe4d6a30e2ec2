//! Liveness and readiness, for load balancers and orchestrators: `GET /healthz` answers 200 `ok`
//! while the process serves HTTP; `GET /readyz` answers 200 `ready` only while the store can
//! write and the node is not shutting down, and otherwise 503 with a one-line reason. Both are
//! unauthenticated (they reveal no data) and cheap: readiness reads flags, it never writes.
//!
//! A peer being down does not make a node unready: each region serves its own users alone and
//! catches its peers up later, so taking it out of rotation would only turn a replication delay
//! into an outage. The decision is [`readiness`], a pure function of what the node knows.
//!
//! [`router`] serves both routes on their own (e.g. on an internal listener); the main router
//! mounts [`healthz`] and [`readyz`] next to its other routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::App;
use crate::store::StoreHealth;

/// A failed write counts as "at --max-db-size" when the database was within this fraction of
/// the limit (1/10): the write that failed needed more pages than were left under it.
const LIMIT_SLACK_DIVISOR: u64 = 10;

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Why not, in one line (the 503's body after `not ready: `).
    NotReady(String),
}

/// Whether a node should get traffic: not while it shuts down, and not while its store cannot
/// write. Nothing else counts (peers' links in particular do not).
pub fn readiness(shutting_down: bool, store: &StoreHealth) -> Readiness {
    if shutting_down {
        return Readiness::NotReady("shutting down".into());
    }
    match store {
        StoreHealth::Writable => Readiness::Ready,
        StoreHealth::Closed => Readiness::NotReady("store closed".into()),
        StoreHealth::WriterStopped => Readiness::NotReady("store writer stopped".into()),
        StoreHealth::Failing(failure) => Readiness::NotReady(match failure.size {
            Some(size) if size.at_limit(size.limit_bytes / LIMIT_SLACK_DIVISOR) => format!(
                "database at --max-db-size ({} of {} bytes)",
                size.db_bytes, size.limit_bytes
            ),
            _ => format!("store write failed: {}", one_line(&failure.error)),
        }),
    }
}

/// `text` on one line (an error's text may hold newlines; a probe's reason must not).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `/healthz` and `/readyz` alone, on `app`'s state: for a listener of their own.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// `GET /healthz`: 200 `ok` while the process serves.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 `ready`, or 503 `not ready: <reason>`.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let store = app.registry.store.health();
    match readiness(app.shutdown.is_cancelled(), &store) {
        Readiness::Ready => "ready".into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::health::{SizeAtFailure, WriteFailure};

    fn failing(error: &str, size: Option<(u64, u64)>) -> StoreHealth {
        StoreHealth::Failing(WriteFailure {
            error: error.into(),
            size: size.map(|(db_bytes, limit_bytes)| SizeAtFailure {
                db_bytes,
                limit_bytes,
            }),
        })
    }

    fn not_ready(reason: &str) -> Readiness {
        Readiness::NotReady(reason.into())
    }

    #[test]
    fn ready_only_when_writable_and_not_stopping() {
        assert_eq!(readiness(false, &StoreHealth::Writable), Readiness::Ready);
        assert_eq!(
            readiness(true, &StoreHealth::Writable),
            not_ready("shutting down")
        );
    }

    #[test]
    fn shutting_down_is_the_reason_whatever_the_store() {
        for store in [
            StoreHealth::Closed,
            StoreHealth::WriterStopped,
            failing("storage error: disk I/O error", None),
        ] {
            assert_eq!(readiness(true, &store), not_ready("shutting down"));
        }
    }

    #[test]
    fn a_store_that_cannot_write_says_why() {
        assert_eq!(
            readiness(false, &StoreHealth::Closed),
            not_ready("store closed")
        );
        assert_eq!(
            readiness(false, &StoreHealth::WriterStopped),
            not_ready("store writer stopped")
        );
        assert_eq!(
            readiness(false, &failing("storage error: disk I/O error", None)),
            not_ready("store write failed: storage error: disk I/O error")
        );
    }

    #[test]
    fn a_full_store_names_the_limit_only_when_it_is_at_it() {
        let full = "storage error: database or disk is full";
        assert_eq!(
            readiness(false, &failing(full, Some((95_000, 100_000)))),
            not_ready("database at --max-db-size (95000 of 100000 bytes)")
        );
        // Far below the limit: the disk itself is full.
        assert_eq!(
            readiness(false, &failing(full, Some((40_000, 100_000)))),
            not_ready("store write failed: storage error: database or disk is full")
        );
    }

    #[test]
    fn the_reason_is_one_line() {
        let Readiness::NotReady(reason) =
            readiness(false, &failing("storage error:\nline two\r\n  three", None))
        else {
            panic!("ready")
        };
        assert_eq!(reason, "store write failed: storage error: line two three");
    }
}
