//! The Step2 that answers a fresh client, encoded once per document version and shared.
//!
//! A client that opens a document with nothing (an empty state vector, as every new tab does)
//! is sent the whole document. For a large document that is the costly part of a join: a
//! 500 KB text encodes to a 2 MB Step2 in 12-35 ms. When a hundred clients open it at once
//! (a meeting opening its agenda), the room encodes it once and hands every one of them the same
//! [`Bytes`]: the members' queues and sockets share it, nobody holds a copy. Any change to the
//! document drops the cached frame; the next fresh join encodes the new version.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use concord_crdt::encode;

use super::Room;

/// Full states encoded for a fresh client's Step2, since the server started (`/api/status`).
static ENCODED: AtomicU64 = AtomicU64::new(0);

/// How many times this server encoded a document's full state for a fresh client.
pub fn full_states_encoded() -> u64 {
    ENCODED.load(Ordering::Relaxed)
}

impl Room {
    /// The Step2 frame for a client that has nothing: the cached one, or a new encoding.
    pub(super) fn full_step2(&mut self) -> Bytes {
        let state = &self.state;
        self.full_step2
            .get_or_insert_with(|| {
                ENCODED.fetch_add(1, Ordering::Relaxed);
                Bytes::from(encode::sync_step2(&state.full_state_bytes()))
            })
            .clone()
    }

    /// The document changed: the cached Step2 no longer describes it.
    pub(super) fn changed(&mut self) {
        self.full_step2 = None;
    }
}
