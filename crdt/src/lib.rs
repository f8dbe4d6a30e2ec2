//! `concord-crdt`: Concord's pure document and protocol layer. No tokio, sockets or files:
//! everything here is tested and fuzzed with bytes alone.
//!
//! - [`name`]: document names, validated ([`DocName`]).
//! - [`message`]: incoming y-websocket frames decoded into typed [`ClientMessage`]s, with typed
//!   [`DecodeError`]s that carry their WebSocket close code.
//! - [`encode`]: outgoing frames, one message per frame.
//! - [`doc`]: [`DocState`], a `yrs::Doc` plus awareness, owned by one server task; it applies
//!   updates and says whether they brought anything new ([`Applied`]), one at a time or several
//!   in one transaction ([`Batch`]).
//! - [`encoded`]: [`EncodedDoc`], the same document kept as its encoded updates (a fraction of a
//!   Doc's memory); a [`DocState`] in [`DocMode::Encoded`] uses it.
//! - [`replication`]: the envelope nodes exchange over peer links ([`PeerMessage`]) between
//!   nodes named by [`NodeId`].
//! - [`routing`]: which neighbour sends this node which origin's updates (one tree per origin,
//!   repaired by what neighbours say they hold), and which log entries a stream sends a peer.
//! - [`sample`]: large sample documents (words typed at random places) for load tests.
//!
//! The codecs themselves come from `yrs` (`yrs::sync`, lib0 encoding); this crate adds the
//! validation, limits and types the server needs around them.

pub mod doc;
pub mod encode;
pub mod encoded;
pub mod message;
pub mod name;
pub mod replication;
pub mod routing;
pub mod sample;

pub use doc::{Applied, ApplyError, Batch, DocMode, DocState};
pub use encoded::{EncodedDoc, JobKind, MergeJob, Merged};
pub use message::{ClientMessage, DecodeError, IncomingUpdate, decode_frame};
pub use name::{DocName, NameError};
pub use replication::{NodeId, PeerDecodeError, PeerMessage};
pub use yrs;
