//! The rule "effects wait for their commit", and the outbox that enforces it.
//!
//! A room applies an update in memory at once and hands it to the store, which commits it in the
//! background (group commit). What the update makes visible (its broadcast, a peer link's
//! acknowledgement, a Step2 or HTTP read computed after it) must not be seen before that commit,
//! or a crash could lose an edit someone already saw. [`when`] decides whether an effect runs now
//! or waits; [`Outbox`] holds the writes in flight, oldest first, each with the effects that wait
//! for it, and releases them strictly in commit order. Nothing here does I/O: the room runs what
//! is released.

use std::collections::VecDeque;

use bytes::Bytes;
use concord_crdt::PeerMessage;
use tokio::sync::oneshot;

use crate::handles::{ConnId, LinkHandle};
use crate::store::{Commit, Durability, StoreError};

/// Something visible that must wait for earlier writes to be durable.
pub(super) enum Effect {
    Broadcast(Bytes),
    Send(ConnId, Bytes),
    /// Tell a peer link an update is durable (so it may acknowledge it).
    Done(oneshot::Sender<()>),
    /// Answer a peer's state vector.
    Peer(LinkHandle, PeerMessage),
    Reply(oneshot::Sender<Option<Vec<u8>>>, Option<Vec<u8>>),
}

/// What an effect is, as far as [`when`] is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The broadcast of an update that changed the document; `from_peer` if another region
    /// sent it.
    Relay { from_peer: bool },
    /// Telling a peer link that its update is durable here ([`Effect::Done`]).
    Ack,
    /// Anything computed from the document as it is now: a Step2, an HTTP read, a peer's Step2.
    Answer,
}

/// Whether an effect runs now or waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    Now,
    /// Behind the newest write in flight: it runs once that write and every earlier one have
    /// committed, after the effects queued before it.
    AfterCommit,
}

/// The rule. `in_flight` says whether any write is in flight, the one being made for this
/// effect's own update included.
///
/// - With `sync` durability a client's update is relayed only once committed.
/// - A peer's update is relayed at once: it is on disk at its origin already (peers are sent
///   committed entries only), and the peer keeps it until the link acknowledges it, which waits
///   for the commit here. Relaying it at once loses nothing in a crash and keeps a second fsync
///   off the cross-region path.
/// - With `async` durability every broadcast runs at once.
/// - Acknowledgements and answers wait for every write in flight: an answer computed after an
///   update must not show it before it is durable, and an update that brought nothing new may
///   be new only to the writes still in flight.
pub(super) fn when(kind: Kind, durability: Durability, in_flight: bool) -> When {
    match kind {
        Kind::Relay { from_peer } => match (durability, from_peer) {
            (Durability::Sync, false) => When::AfterCommit,
            (Durability::Sync, true) | (Durability::Async, _) => When::Now,
        },
        Kind::Ack | Kind::Answer if in_flight => When::AfterCommit,
        Kind::Ack | Kind::Answer => When::Now,
    }
}

/// A write in flight with the effects that wait for it.
struct Pending {
    commit: Commit,
    then: Vec<Effect>,
}

/// Writes in flight, oldest first. Effects come out in commit order: only the oldest write's,
/// only once it has committed, and none of a write that failed.
#[derive(Default)]
pub(super) struct Outbox(VecDeque<Pending>);

impl Outbox {
    /// Adds a write just handed to the store, with the effects that wait for it.
    pub(super) fn push(&mut self, commit: Commit, then: Vec<Effect>) {
        self.0.push_back(Pending { commit, then });
    }

    /// Queues `effect` behind every write in flight, or returns it if nothing is in flight.
    pub(super) fn defer(&mut self, effect: Effect) -> Option<Effect> {
        match self.0.back_mut() {
            Some(p) => {
                p.then.push(effect);
                None
            }
            None => Some(effect),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest write's effects if it has committed, without waiting; its error if it failed
    /// (its effects are dropped: a failed commit releases nothing).
    pub(super) fn try_release(&mut self) -> Option<Result<Vec<Effect>, StoreError>> {
        let p = self.0.front_mut()?;
        let r = match p.commit.try_recv() {
            Ok(r) => r,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => Err(StoreError::Closed),
        };
        let p = self.0.pop_front().expect("front exists");
        Some(r.map(|_| p.then))
    }

    /// Waits for the oldest write, then as [`Outbox::try_release`]; pending forever when there
    /// is none (for `select!`).
    pub(super) async fn next(&mut self) -> Result<Vec<Effect>, StoreError> {
        match self.0.front_mut() {
            Some(p) => {
                let r = (&mut p.commit).await.unwrap_or(Err(StoreError::Closed));
                let p = self.0.pop_front().expect("front exists");
                r.map(|_| p.then)
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Seq;

    type Committer = oneshot::Sender<Result<Seq, StoreError>>;

    fn write(outbox: &mut Outbox, then: Vec<Effect>) -> Committer {
        let (tx, rx) = oneshot::channel();
        outbox.push(rx, then);
        tx
    }

    fn send(n: u64) -> Effect {
        Effect::Send(n, Bytes::new())
    }

    /// The member ids of released `Send` effects, in release order.
    fn sent(released: Option<Result<Vec<Effect>, StoreError>>) -> Vec<u64> {
        let effects = released.expect("released").expect("committed");
        effects
            .iter()
            .map(|e| match e {
                Effect::Send(id, _) => *id,
                _ => panic!("not a Send"),
            })
            .collect()
    }

    #[test]
    fn with_sync_a_client_broadcast_waits_for_its_commit() {
        let relay = Kind::Relay { from_peer: false };
        assert_eq!(when(relay, Durability::Sync, true), When::AfterCommit);

        let mut outbox = Outbox::default();
        let commit = write(&mut outbox, vec![Effect::Broadcast(Bytes::from("u"))]);
        assert!(outbox.try_release().is_none(), "released before its commit");
        commit.send(Ok(1)).unwrap();
        let released = outbox.try_release().expect("released").expect("committed");
        assert!(matches!(released.as_slice(), [Effect::Broadcast(f)] if f == "u"));
        assert!(outbox.is_empty());
    }

    #[test]
    fn with_async_broadcasts_run_at_once() {
        for from_peer in [false, true] {
            let relay = Kind::Relay { from_peer };
            assert_eq!(when(relay, Durability::Async, true), When::Now);
        }
    }

    #[test]
    fn a_peer_update_is_relayed_at_once_and_acknowledged_after_its_commit() {
        for durability in [Durability::Sync, Durability::Async] {
            let relay = Kind::Relay { from_peer: true };
            assert_eq!(when(relay, durability, true), When::Now);
            assert_eq!(when(Kind::Ack, durability, true), When::AfterCommit);
        }
    }

    #[test]
    fn answers_and_acks_wait_only_while_something_is_in_flight() {
        for durability in [Durability::Sync, Durability::Async] {
            for kind in [Kind::Ack, Kind::Answer] {
                assert_eq!(when(kind, durability, true), When::AfterCommit);
                assert_eq!(when(kind, durability, false), When::Now);
            }
        }
        let mut outbox = Outbox::default();
        assert!(
            outbox.defer(send(1)).is_some(),
            "nothing in flight: runs now"
        );
        let commit = write(&mut outbox, Vec::new());
        assert!(outbox.defer(send(2)).is_none(), "waits behind the write");
        commit.send(Ok(1)).unwrap();
        assert_eq!(sent(outbox.try_release()), [2]);
    }

    #[test]
    fn effects_are_released_in_commit_order() {
        let mut outbox = Outbox::default();
        let first = write(&mut outbox, vec![send(1)]);
        let second = write(&mut outbox, vec![send(2)]);
        // Deferred effects go behind the newest write, after what it carries.
        assert!(outbox.defer(send(3)).is_none());
        // A later commit's effects never run before an earlier one's.
        second.send(Ok(2)).unwrap();
        assert!(
            outbox.try_release().is_none(),
            "second released before first"
        );
        first.send(Ok(1)).unwrap();
        assert_eq!(sent(outbox.try_release()), [1]);
        assert_eq!(sent(outbox.try_release()), [2, 3]);
        assert!(outbox.try_release().is_none());
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_failed_commit_releases_nothing() {
        let mut outbox = Outbox::default();
        let (done, acked) = oneshot::channel();
        let failed = write(&mut outbox, vec![send(1), Effect::Done(done)]);
        failed.send(Err(StoreError::Closed)).unwrap();
        assert!(matches!(
            outbox.try_release(),
            Some(Err(StoreError::Closed))
        ));
        let mut acked = acked;
        assert!(
            matches!(acked.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "a failed write acknowledged"
        );
        // A store that drops a commit without answering failed it too.
        let lost = write(&mut outbox, vec![send(2)]);
        drop(lost);
        assert!(matches!(
            outbox.try_release(),
            Some(Err(StoreError::Closed))
        ));
    }

    #[tokio::test]
    async fn next_waits_for_the_oldest_write() {
        let mut outbox = Outbox::default();
        let first = write(&mut outbox, vec![send(1)]);
        let second = write(&mut outbox, vec![send(2)]);
        second.send(Ok(2)).unwrap();
        {
            let waiting = outbox.next();
            tokio::pin!(waiting);
            assert!(
                futures_util::poll!(&mut waiting).is_pending(),
                "second released first"
            );
            first.send(Ok(1)).unwrap();
            assert_eq!(sent(Some(waiting.await)), [1]);
        }
        assert_eq!(sent(Some(outbox.next().await)), [2]);
    }
}
