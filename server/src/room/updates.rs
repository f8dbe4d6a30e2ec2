//! A run of document updates (consecutive in the inbox, from clients and peers) applied in one
//! transaction, judged one by one, stored as one write and relayed in order.
//!
//! Applying a wake-up's updates together costs one yrs transaction and one store write instead
//! of one each, while every update still gets its own verdict: a client's unusable update closes
//! that client (and whatever it queued after is skipped), a peer's is skipped with a warning, an
//! update that brings nothing new is neither stored nor relayed. What the run makes visible is
//! placed by the rule "effects wait for their commit" (`outbox`).

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::{Applied, ApplyError, IncomingUpdate, encode};
use tracing::warn;

use super::outbox::{Effect, Kind, Outbox};
use super::{Room, Source};
use crate::handles::ConnId;
use crate::metrics::{Source as Sources, Verdict};
use crate::store::{Append, StoreError};

/// An update's verdict, its bytes, and whether it was empty.
type Judged = (Result<Applied, ApplyError>, Bytes, bool);

/// A run of updates this large (a pasted chapter, an offline client's Step2) is followed by a
/// memory collection ([`crate::memory::freed_a_lot`]).
const LARGE_WRITE: usize = 256 * 1024;

impl Room {
    /// Applies `run` in one transaction, then stores the updates that changed the document in
    /// one write and relays them in order. Like `Room::handle`, it skips updates from a
    /// connection that was refused, in this run or before; updates from a member that has just
    /// been dropped (its socket ended while they were queued) are kept.
    pub(super) async fn accept_updates(
        &mut self,
        run: &mut Vec<(Source, IncomingUpdate)>,
        outbox: &mut Outbox,
    ) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let mut refused: Vec<ConnId> = Vec::new();
        // Per source and verdict, counted once per run. An empty update (the empty Step2 every
        // client answers the server's Step1 with) is no update: not counted.
        let mut counts = [[0u64; 3]; 2];
        let verdicts: Vec<Option<Judged>> = {
            let earlier = &self.refused;
            let mut batch = self.state.batch();
            run.iter_mut()
                .map(|(source, update)| {
                    if let Source::Client(id) = source
                        && (earlier.contains(id) || refused.contains(id))
                    {
                        return None;
                    }
                    let bytes = Bytes::from(std::mem::take(&mut update.bytes));
                    let empty = update.decoded.is_empty();
                    let verdict = batch.apply(std::mem::take(&mut update.decoded), bytes.clone());
                    if let (Err(_), Source::Client(id)) = (&verdict, &*source) {
                        refused.push(*id);
                    }
                    Some((verdict, bytes, empty))
                })
                .collect()
        };
        // What changed the document is appended as one write; its broadcasts (sync durability)
        // and the peers' acknowledgements wait for that write, in order.
        let mut appends = Vec::new();
        let mut then = Vec::new();
        let mut own = 0;
        let failed = verdicts.iter().any(|v| matches!(v, Some((Err(_), _, _))));
        for ((source, _), verdict) in run.drain(..).zip(verdicts) {
            let Some((verdict, bytes, empty)) = verdict else {
                continue;
            };
            let from_peer = matches!(source, Source::Peer { .. });
            let judged = match &verdict {
                Ok(Applied::Changed) => Verdict::New,
                Ok(Applied::Unchanged) => Verdict::Known,
                Err(_) => Verdict::Refused,
            };
            if !(empty && judged == Verdict::Known) {
                counts[usize::from(from_peer)][judged as usize] += 1;
            }
            let (origin, done) = match (source, verdict) {
                (Source::Client(_), Ok(Applied::Changed)) => {
                    own += 1;
                    (None, None)
                }
                (Source::Client(_), Ok(Applied::Unchanged)) => continue,
                (Source::Client(id), Err(e)) => {
                    self.reject(id, close_code::INVALID, e.to_string());
                    continue;
                }
                (Source::Peer { origin, done }, Ok(Applied::Changed)) => (origin, done),
                // Nothing new (or unusable), but it may be new only to writes still in flight,
                // this run's included: acknowledge it once those are durable.
                (Source::Peer { origin, done }, verdict) => {
                    if let Err(e) = verdict {
                        warn!(doc = %self.name, ?origin, error = %e, "a peer's update does not apply; skipping it");
                    }
                    if let Some(done) = done {
                        let this_run = (!appends.is_empty()).then_some(&mut then);
                        self.place(outbox, this_run, Kind::Ack, Effect::Done(done));
                    }
                    continue;
                }
            };
            let frame = Bytes::from(encode::update(&bytes));
            self.tail.entries += 1;
            self.tail.bytes += bytes.len() as u64;
            appends.push(Append {
                doc: self.name.clone(),
                update: bytes,
                origin,
            });
            let relay = Kind::Relay { from_peer };
            self.place(outbox, Some(&mut then), relay, Effect::Broadcast(frame));
            if let Some(done) = done {
                self.place(outbox, Some(&mut then), Kind::Ack, Effect::Done(done));
            }
        }
        let metrics = &self.env.metrics;
        for (source, counts) in [(Sources::Client, counts[0]), (Sources::Peer, counts[1])] {
            for (verdict, n) in [Verdict::New, Verdict::Known, Verdict::Refused]
                .into_iter()
                .zip(counts)
            {
                metrics.updates(source, verdict, n);
            }
        }
        if appends.is_empty() {
            if failed {
                // A live Doc may keep part of an update that failed half-way.
                self.changed();
            }
            return Ok(());
        }
        self.changed();
        if appends.iter().map(|a| a.update.len()).sum::<usize>() >= LARGE_WRITE {
            // Decoding and judging it allocated several times its size: give that back.
            crate::memory::freed_a_lot();
        }
        let commit = self.env.store.append_all(appends).await?;
        if let Some(hub) = self.env.peers.as_ref().filter(|_| own > 0) {
            hub.originated(own);
        }
        self.exists = true;
        outbox.push(commit, then);
        if self.repair_due.is_none() {
            self.repair_gaps();
        }
        Ok(())
    }
}
