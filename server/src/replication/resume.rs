//! Where a peer's log stream starts, decided from what the peer says it holds.
//!
//! A sequence number alone cannot say that: a peer wiped, or restored from an older backup,
//! comes back under the same node id holding less than it acknowledged, and a node restored from
//! a backup numbers new entries with sequences it already used before. So every store numbers
//! its log in incarnations (one more each time it opens), and on link-up each side sends a
//! `Resume`: "of your log I hold everything through sequence `s` as numbered in your incarnation
//! `J`, or nothing". The receiver of that claim (the sender of the log) decides here, without
//! I/O, where its stream starts and whether the peer first needs every stored snapshot.
//!
//! The claim is recorded by its owner before the acknowledgement that moves the sender's cursor,
//! so the sender's `peer_cursors` row never runs ahead of it; that row still decides what
//! compaction keeps, and is reset to the start chosen here.

use crate::store::{Incarnation, LogIncarnation, Seq};

/// Where a log stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The claim holds: send the entries after this sequence.
    After(Seq),
    /// No claim, or one about an incarnation this log does not have (the peer's record comes
    /// from a future this store lost, or from another store altogether): every stored snapshot,
    /// then the whole log.
    Everything,
}

impl Start {
    /// The last sequence the peer is taken to hold (0 for [`Start::Everything`]).
    pub fn after(self) -> Seq {
        match self {
            Start::After(seq) => seq,
            Start::Everything => 0,
        }
    }

    /// Whether the snapshots go first: for [`Start::Everything`], and whenever compaction
    /// deleted some entry after the start (`log_complete` is false), since the snapshots are all
    /// that is left of it.
    pub fn needs_snapshots(self, log_complete: bool) -> bool {
        matches!(self, Start::Everything) || !log_complete
    }
}

/// Where to resume a peer that holds everything through `claim` of this log, given this log's
/// `history` (oldest incarnation first; the last is current) and its last committed sequence.
///
/// A claim about incarnation `J` holds up to where `J` ended here: this store descends from the
/// one that numbered `J`, so both agree on every entry `J` numbered before the next incarnation
/// began; past that point the peer's entries (if any) come from a future this store does not
/// share, and the stream starts where `J` ended. A claim past the end of the log (which an honest
/// peer never makes) is clamped to it.
pub fn start(
    history: &[LogIncarnation],
    committed: Seq,
    claim: Option<(Incarnation, Seq)>,
) -> Start {
    let Some((of, seq)) = claim else {
        return Start::Everything;
    };
    let Some(i) = history.iter().position(|inc| inc.id == of) else {
        return Start::Everything;
    };
    let end = history
        .get(i + 1)
        .map_or(committed, |next| next.first_seq.saturating_sub(1));
    Start::After(seq.min(end).min(committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(n: u8) -> Incarnation {
        Incarnation([n; 16])
    }

    fn history(of: &[(u8, Seq)]) -> Vec<LogIncarnation> {
        of.iter()
            .map(|&(n, first_seq)| LogIncarnation {
                id: inc(n),
                first_seq,
            })
            .collect()
    }

    /// (what the case is, history as (incarnation, first seq), committed, claim, log complete
    /// after the start) -> (start, snapshots first).
    #[test]
    fn start_positions() {
        type Case = (
            &'static str,
            &'static [(u8, Seq)],
            Seq,
            Option<(u8, Seq)>,
            bool,
            Start,
            bool,
        );
        let cases: &[Case] = &[
            (
                "a new or wiped peer holds nothing",
                &[(1, 1)],
                50,
                None,
                true,
                Start::Everything,
                true,
            ),
            (
                "a peer with a record of an incarnation unknown here (this node was restored \
                 from a backup older than that incarnation)",
                &[(1, 1), (3, 41)],
                60,
                Some((2, 55)),
                true,
                Start::Everything,
                true,
            ),
            (
                "a normal reconnect: current incarnation",
                &[(1, 1), (2, 31)],
                50,
                Some((2, 42)),
                true,
                Start::After(42),
                false,
            ),
            (
                "a restart of this node: the claim names an older incarnation, still this log",
                &[(1, 1), (2, 31), (3, 51)],
                60,
                Some((2, 45)),
                true,
                Start::After(45),
                false,
            ),
            (
                "claims are read in the incarnation's lineage: an old incarnation covers \
                 everything before it too",
                &[(1, 1), (2, 31)],
                50,
                Some((2, 10)),
                true,
                Start::After(10),
                false,
            ),
            (
                "this node was restored from a backup taken at 40 in incarnation 1: the peer \
                 holds 1's entries up to 55 that this node lost; new entries from 41 on are new",
                &[(1, 1), (3, 41)],
                45,
                Some((1, 55)),
                true,
                Start::After(40),
                false,
            ),
            (
                "the peer was restored from a backup: its claim is older than what it had \
                 acknowledged, and compaction deleted entries after it",
                &[(1, 1)],
                50,
                Some((1, 10)),
                false,
                Start::After(10),
                true,
            ),
            (
                "a peer that was sent everything and acknowledged nothing since claims 0, and is \
                 not sent the snapshots again while the log after 0 is complete",
                &[(1, 1)],
                30,
                Some((1, 0)),
                true,
                Start::After(0),
                false,
            ),
            (
                "an empty incarnation (opened, nothing written) ends where it began",
                &[(1, 1), (2, 11), (3, 11)],
                20,
                Some((2, 15)),
                true,
                Start::After(10),
                false,
            ),
            (
                "a claim past the end of the log is clamped",
                &[(1, 1)],
                5,
                Some((1, 9)),
                true,
                Start::After(5),
                false,
            ),
        ];
        for (what, hist, committed, claim, complete, want_start, want_snapshots) in cases {
            let got = start(&history(hist), *committed, claim.map(|(n, s)| (inc(n), s)));
            assert_eq!(got, *want_start, "{what}");
            assert_eq!(got.needs_snapshots(*complete), *want_snapshots, "{what}");
        }
    }
}
