//! A document kept in its encoded form: the bytes of its updates, plus the ids they insert and
//! delete, instead of a live `yrs::Doc`.
//!
//! A server never edits a document: it judges each incoming update (new, or already known), gives
//! its state vector, answers a peer's or client's state vector with what it lacks, and hands out
//! the full state. All of that can be done on the encoded updates and two id sets, without the
//! integrated block store a `yrs::Doc` builds (a 500 KB text of ~96k items costs a Doc ~32 MB;
//! its encoded state is 1.8 MB). [`EncodedDoc`] holds one merged update (`base`), the updates
//! accepted since (`tail`), and the union of their insertions (`ins`) and deletions (`del`).
//! The CPU-heavy merging of the tail into the base, and a pass that lets a Doc garbage-collect
//! deleted content, run off the owner's thread as [`MergeJob`]s.
//!
//! Where it differs from a live Doc (all sync-safe; `crdt/tests/encoded_equivalence.rs`):
//! - its state vector counts, per client, the insertions contiguous from clock 0. A Doc leaves out
//!   blocks waiting for a missing dependency of *another* client; the encoded form cannot see
//!   cross-client origins, so its state vector can be ahead while something is pending, and
//!   [`EncodedDoc::has_pending`] only sees gaps within one client and deletions of unknown ids.
//!   Whatever is missing lies on a client whose contiguous range stops short, so a peer answering
//!   our state vector sends it.
//! - a Doc deletes some items without any update listing them (concurrent map sets on one key,
//!   inserts into a deleted type); a later update deleting them explicitly is Unchanged for a Doc
//!   and Changed (stored and relayed once more, harmlessly) here.
//! - yrs refuses, at integration, a block whose parent id names an item that is not a type
//!   (`InvalidParent`); decoding accepts it, and so does this form, which cannot see parents
//!   through yrs's API. Yjs clients accept it too: `Item.getMissing` takes the parent item's
//!   `content.type`, undefined for non-type content, and `Item.integrate` then stores the block
//!   as a GC'd range. Such a document cannot be materialised as a yrs Doc: [`EncodedDoc::text`]
//!   gives `None` and the GC job fails, leaving the document as it is (as `DocState::load` in
//!   live mode fails on it).
//!
//! Where a live yrs 0.28.1 Doc is the less exact one (same tests): it integrates a block past a
//! gap in its own client's clocks when the block has no other missing dependency, then reports
//! nothing pending and leaves the block out of its diffs until the gap fills (here: pending, and
//! sent); while it has pending data, a repeat of a known update can be judged Changed (a spurious
//! relay; here: Unchanged); and in some delivery orders it loses a block of its pending update
//! and never completes (`yrs_can_lose_a_pending_block_the_encoded_form_cannot`).

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::Bytes;
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{ClientID, Doc, GetString, IdSet, Options, ReadTxn, StateVector, Transact, Update};

use crate::doc::{Applied, ApplyError};
use crate::message::IncomingUpdate;

/// Tail entries past which [`EncodedDoc::merge_job`] offers a merge. A merge decodes the whole
/// base: for the 500 KB text of `examples/encoded_doc.rs` (1.7 MB state) it takes ~35-40 ms
/// whatever the tail's length up to ~1000 (and a transient ~30 MB), i.e. ~135 us per update at
/// 256 entries, ~36 us at 1024. The tail is also what a diff for a peer at the base merges (fast
/// path 3): 0.4 ms at 256 entries, 3.6 ms at 1024, 53 ms at 4096 (merging many updates is
/// superlinear in yrs). 1024 keeps both small; the server's compaction (every 1000 log entries by
/// default) folds the tail at about that rate anyway.
pub const MERGE_AFTER_ENTRIES: usize = 1024;
/// Tail bytes past which a merge is offered whatever the count: bounds the tail's memory and the
/// cost of fast path 3 when updates are large (pastes, Step2s of offline clients).
pub const MERGE_AFTER_BYTES: usize = 64 * 1024;

/// One update accepted since the base.
#[derive(Clone)]
struct TailEntry {
    bytes: Bytes,
    /// Per client, the end of its last insertion in this update (for `base_upper` once merged).
    upper: Vec<(ClientID, u32)>,
}

/// A document in encoded form. See the module docs.
pub struct EncodedDoc {
    /// One merged v1 update: everything before sequence number `tail_start`.
    base: Bytes,
    /// Per client, the end of the last insertion in `base` (not only the contiguous part).
    base_upper: StateVector,
    /// Updates accepted since `base`, each `Changed`; entry `i` has sequence number
    /// `tail_start + i`.
    tail: Vec<TailEntry>,
    tail_start: u64,
    tail_bytes: usize,
    /// `base` merged with the whole tail, when that could not replace `base` (a job was in
    /// flight): valid while `.0 == self.version()`.
    full: Option<(u64, Bytes)>,
    /// Every id inserted by base and tail (GC'd and deleted ones included), canonical ranges.
    ins: IdSet,
    /// Every id deleted by base and tail, canonical ranges.
    del: IdSet,
    /// The part of `del` not in `ins`: deletions waiting for their items.
    del_unknown: IdSet,
    /// Clients whose insertions are not one range from clock 0.
    gappy: std::collections::BTreeSet<ClientID>,
    /// Held by every job not finished yet: while another holder exists, `full_state` keeps the
    /// tail (a job's `finish` drops exactly what it covered, by sequence number).
    jobs: Arc<()>,
}

impl Default for EncodedDoc {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`MergeJob`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Merge base and tail into one update (deleted content stays).
    Merge,
    /// Materialise a Doc and re-encode it: the Doc garbage-collects deleted content, which merged
    /// updates keep. Costs about what loading the document as a Doc costs (and that memory,
    /// transiently): run it with compaction, not per update.
    Gc,
}

/// CPU-heavy work on a copy of the parts (cheap `Bytes` clones), `Send + 'static`: run it on a
/// blocking thread, then hand the result to [`EncodedDoc::finish`].
pub struct MergeJob {
    kind: JobKind,
    parts: Vec<Bytes>,
    /// Sequence number after the last tail entry covered.
    upto: u64,
    base_upper: StateVector,
    /// For a GC pass: every id the parts insert and delete, which its result must still hold.
    must_hold: Option<(IdSet, IdSet)>,
    token: Arc<()>,
}

/// What a [`MergeJob`] produced.
pub struct Merged {
    kind: JobKind,
    state: Result<Bytes, ApplyError>,
    upto: u64,
    base_upper: StateVector,
    _token: Arc<()>,
}

impl MergeJob {
    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// Does the work. Errors (never expected: every part was decoded when accepted) leave the
    /// document as it is when finished.
    pub fn run(self) -> Merged {
        let state = match self.kind {
            JobKind::Merge => merge(&self.parts),
            JobKind::Gc => materialise(&self.parts)
                .map(|doc| {
                    Bytes::from(
                        doc.transact()
                            .encode_state_as_update_v1(&StateVector::default()),
                    )
                })
                .and_then(|state| match &self.must_hold {
                    Some((ins, del)) => holds(&state, ins, del).map(|()| state),
                    None => Ok(state),
                }),
        };
        Merged {
            kind: self.kind,
            state,
            upto: self.upto,
            base_upper: self.base_upper,
            _token: self.token,
        }
    }
}

impl Merged {
    pub fn kind(&self) -> JobKind {
        self.kind
    }
}

/// Whether the v1 update `state` still inserts every id of `ins` and deletes every id of `del`.
/// A Doc rebuilt from updates can leave some out (a block past a gap in its client's clocks, or
/// one yrs drops from its pending update: module docs); a GC pass must then not replace the base.
fn holds(state: &[u8], ins: &IdSet, del: &IdSet) -> Result<(), ApplyError> {
    let update = Update::decode_v1(state).map_err(|e| ApplyError::Decode(e.to_string()))?;
    let kept = catch_unwind(AssertUnwindSafe(|| update.insertions(true)))
        .map_err(|_| ApplyError::Integrate("clock overflow in a rebuilt state".into()))?;
    if is_subset(ins, &kept) && is_subset(del, update.delete_set()) {
        Ok(())
    } else {
        Err(ApplyError::Integrate(
            "a rebuilt Doc left some ids out; keeping the merged state".into(),
        ))
    }
}

/// Merges v1 updates into one (`parts` were each decoded before: errors mean a yrs fault).
fn merge(parts: &[Bytes]) -> Result<Bytes, ApplyError> {
    if let [one] = parts {
        return Ok(one.clone());
    }
    catch_unwind(AssertUnwindSafe(|| yrs::merge_updates_v1(parts)))
        .map_err(|_| ApplyError::Integrate("yrs panicked while merging".into()))?
        .map(Bytes::from)
        .map_err(|e| ApplyError::Decode(e.to_string()))
}

/// A Doc holding `parts`, applied in one transaction. Fails if yrs refuses any of them (see the
/// module docs): what follows the refused block would be missing, and a GC pass must not replace
/// the base with that.
fn materialise(parts: &[Bytes]) -> Result<Doc, ApplyError> {
    let doc = Doc::with_options(Options {
        skip_gc: false,
        ..Options::default()
    });
    catch_unwind(AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        for part in parts {
            let update = Update::decode_v1(part).map_err(|e| ApplyError::Decode(e.to_string()))?;
            txn.apply_update(update)
                .map_err(|e| ApplyError::Integrate(e.to_string()))?;
        }
        Ok::<(), ApplyError>(())
    }))
    .map_err(|_| ApplyError::Integrate("yrs panicked while integrating".into()))??;
    Ok(doc)
}

/// Whether every id of `sub` is in `set`. `set` must be canonical (sorted, disjoint, adjacent
/// ranges joined, as `IdRanges::insert` keeps them), so each range of `sub` is covered by one
/// range of `set`, found by binary search: O(r log n) for r ranges in `sub`, n in `set`.
pub fn is_subset(sub: &IdSet, set: &IdSet) -> bool {
    sub.iter().all(|(client, ranges)| {
        let mut ranges = ranges.iter().filter(|r| !r.is_empty()).peekable();
        if ranges.peek().is_none() {
            return true;
        }
        let Some(have) = set.get(client) else {
            return false;
        };
        let have = have.as_slice();
        ranges.all(|r| covered(r, have))
    })
}

fn covered(r: &Range<u32>, have: &[(Range<u32>, ())]) -> bool {
    let i = have.partition_point(|(h, _)| h.start <= r.start);
    i > 0 && have[i - 1].0.end >= r.end
}

/// Adds `other` to `set` range by range (keeping `set` canonical whatever `other`'s shape: decoded
/// delete sets are kept as they came).
///
/// A decoded delete set keeps its ranges in wire order, and inserting them one by one into a
/// sorted list costs a shift of the list each: a crafted update listing many ranges in descending
/// order would cost the square of their number. Past [`FEW_RANGES`] they are sorted and merged in
/// one linear pass instead.
fn union_into(set: &mut IdSet, other: &IdSet) {
    for (client, ranges) in other.iter() {
        let mut ranges: Vec<Range<u32>> =
            ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        if ranges.is_empty() {
            continue;
        }
        let target = set.range_mut(*client);
        if ranges.len() <= FEW_RANGES {
            for r in ranges {
                target.insert(r);
            }
        } else {
            ranges.sort_unstable_by_key(|r| r.start);
            // Sorted: each insertion lands at the end (or coalesces with it).
            let mut sorted = IdSet::new();
            let canonical = sorted.range_mut(*client);
            for r in ranges {
                canonical.insert(r);
            }
            target.merge(canonical);
        }
    }
}

/// Ranges of one client in one update that [`union_into`] inserts one by one.
const FEW_RANGES: usize = 16;

/// A v1 update with no blocks and `ds` as its delete set, encoded by yrs as it encodes an
/// `Update` without blocks (`Update::encode_diff`): a zero client count, then the delete set.
fn delete_set_update(ds: &IdSet) -> Vec<u8> {
    let mut encoder = EncoderV1::new();
    encoder.write_var(0u32);
    ds.encode(&mut encoder);
    encoder.to_vec()
}

/// Per client, the end of the last range.
fn upper_of(set: &IdSet) -> impl Iterator<Item = (ClientID, u32)> + '_ {
    set.iter()
        .filter_map(|(c, r)| r.iter().map(|r| r.end).max().map(|end| (*c, end)))
}

/// Whether `sv` has, for every client of `upper`, at least its clock.
fn covers(sv: &StateVector, upper: impl IntoIterator<Item = (ClientID, u32)>) -> bool {
    upper.into_iter().all(|(c, end)| sv.get(&c) >= end)
}

/// `diff_updates_v1` of a merged update by `sv`.
fn diff(update: &[u8], sv: &StateVector) -> Result<Bytes, ApplyError> {
    let sv = sv.encode_v1();
    catch_unwind(AssertUnwindSafe(|| yrs::diff_updates_v1(update, &sv)))
        .map_err(|_| ApplyError::Integrate("yrs panicked while diffing".into()))?
        .map(Bytes::from)
        .map_err(|e| ApplyError::Decode(e.to_string()))
}

impl EncodedDoc {
    /// An empty document.
    pub fn new() -> Self {
        EncodedDoc {
            base: Bytes::from_static(Update::EMPTY_V1),
            base_upper: StateVector::default(),
            tail: Vec::new(),
            tail_start: 0,
            tail_bytes: 0,
            full: None,
            ins: IdSet::new(),
            del: IdSet::new(),
            del_unknown: IdSet::new(),
            gappy: std::collections::BTreeSet::new(),
            jobs: Arc::new(()),
        }
    }

    /// Rebuilds a document from stored updates (a snapshot followed by log entries), in order,
    /// with the checks bytes from the network get (stored rows can be damaged too). The first
    /// part becomes the base; the rest that bring something new, the tail.
    pub fn load<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, ApplyError> {
        let mut doc = EncodedDoc::new();
        for (i, bytes) in parts.into_iter().enumerate() {
            let update =
                IncomingUpdate::decode(bytes).map_err(|e| ApplyError::Decode(e.to_string()))?;
            if i == 0 {
                let ins = catch_unwind(AssertUnwindSafe(|| update.decoded.insertions(true)))
                    .map_err(|_| ApplyError::Decode("clock overflow in the update's ids".into()))?;
                doc.base = Bytes::from(update.bytes);
                doc.base_upper = upper_of(&ins).collect();
                doc.accept(&ins, update.decoded.delete_set());
            } else {
                doc.apply(&update.decoded, Bytes::from(update.bytes))?;
            }
        }
        Ok(doc)
    }

    /// Judges `update` (decoded from `bytes`): [`Applied::Changed`] when it inserts or deletes an
    /// id not known yet, and then keeps it. Costs O(r log n) for the update's r ranges, whatever
    /// the document's size. Fails (keeping nothing) on an update whose ids overflow their clocks.
    pub fn apply(&mut self, update: &Update, bytes: Bytes) -> Result<Applied, ApplyError> {
        // yrs builds with overflow checks: crafted clocks near u32::MAX panic in `insertions`.
        let ins = catch_unwind(AssertUnwindSafe(|| update.insertions(true)))
            .map_err(|_| ApplyError::Integrate("clock overflow in the update's ids".into()))?;
        let ds = update.delete_set();
        if is_subset(&ins, &self.ins) && is_subset(ds, &self.del) {
            return Ok(Applied::Unchanged);
        }
        self.accept(&ins, ds);
        self.tail_bytes += bytes.len();
        self.tail.push(TailEntry {
            bytes,
            upper: upper_of(&ins).collect(),
        });
        Ok(Applied::Changed)
    }

    fn accept(&mut self, ins: &IdSet, ds: &IdSet) {
        union_into(&mut self.ins, ins);
        union_into(&mut self.del, ds);
        for (client, _) in ins.iter() {
            let whole = self.ins.get(client).is_some_and(|r| {
                let r = r.as_slice();
                r.len() == 1 && r[0].0.start == 0
            });
            if whole {
                self.gappy.remove(client);
            } else {
                self.gappy.insert(*client);
            }
        }
        if !is_subset(ds, &self.ins) {
            union_into(&mut self.del_unknown, ds);
        }
        if !self.del_unknown.is_empty() {
            // Drops what is known now, for the clients this update names (the others' are
            // unchanged): the cost stays with the update's size.
            let mut now_known = IdSet::new();
            for client in ins.iter().chain(ds.iter()).map(|(c, _)| c) {
                if self.del_unknown.get(client).is_some()
                    && let Some(r) = self.ins.get(client)
                {
                    *now_known.range_mut(*client) = r.clone();
                }
            }
            if !now_known.is_empty() {
                self.del_unknown.diff_with(&now_known);
            }
        }
    }

    /// Sequence number after the last accepted update: identifies this version of the document.
    fn version(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// Per client, the insertions contiguous from clock 0 (what `Update::state_vector` means).
    pub fn state_vector(&self) -> StateVector {
        self.ins
            .iter()
            .filter_map(|(c, r)| {
                let first = r.iter().next()?;
                (first.start == 0 && first.end > 0).then_some((*c, first.end))
            })
            .collect()
    }

    /// Whether some client's insertions have a gap (or do not start at 0), or some deletion
    /// names an id not inserted yet. Does not see blocks waiting for another client's missing
    /// ids (module docs).
    pub fn has_pending(&self) -> bool {
        !self.gappy.is_empty() || !self.del_unknown.is_empty()
    }

    /// The whole document as one v1 update. Merges base and tail once per version and keeps the
    /// result as the new base (unless a job is in flight: then it is cached for this version).
    pub fn full_state(&mut self) -> Bytes {
        if self.tail.is_empty() {
            return self.base.clone();
        }
        let version = self.version();
        if let Some((v, full)) = &self.full
            && *v == version
        {
            return full.clone();
        }
        let parts = self.parts();
        let full = match merge(&parts) {
            Ok(full) => full,
            // Never expected (each part decoded when accepted): a Doc gives the same state.
            Err(_) => match materialise(&parts) {
                Ok(doc) => Bytes::from(
                    doc.transact()
                        .encode_state_as_update_v1(&StateVector::default()),
                ),
                Err(_) => return self.base.clone(),
            },
        };
        if Arc::strong_count(&self.jobs) == 1 {
            self.base = full.clone();
            self.base_upper = upper_of(&self.ins).collect();
            self.tail.clear();
            self.tail_bytes = 0;
            self.tail_start = version;
            self.full = None;
        } else {
            self.full = Some((version, full.clone()));
        }
        full
    }

    /// What a peer with state vector `sv` lacks, pending data included, as a v1 update.
    pub fn diff(&mut self, sv: &StateVector) -> Bytes {
        // 1. A fresh peer: everything.
        if sv.is_empty() {
            return self.full_state();
        }
        // 2. It has every insertion (not only the contiguous ones, so that pending blocks are
        // sent too): only the delete set.
        if covers(sv, upper_of(&self.ins)) {
            return Bytes::from(delete_set_update(&self.del));
        }
        // 3. It has everything the base inserts: the tail and the delete set, without the base.
        let cached = self
            .full
            .as_ref()
            .is_some_and(|(v, _)| *v == self.version());
        if !cached && covers(sv, self.base_upper.iter().map(|(c, k)| (*c, *k))) {
            let parts: Vec<Bytes> = self
                .tail
                .iter()
                .map(|e| e.bytes.clone())
                .chain(std::iter::once(Bytes::from(delete_set_update(&self.del))))
                .collect();
            if let Ok(d) = merge(&parts).and_then(|tail| diff(&tail, sv)) {
                return d;
            }
        }
        // 4. The general case.
        let full = self.full_state();
        diff(&full, sv).unwrap_or(full)
    }

    /// The plain text of the `Y.Text` root `name`, read from a Doc materialised for the purpose
    /// (`None` too when yrs refuses to materialise the document, see the module docs).
    pub fn text(&self, name: &str) -> Option<String> {
        let doc = self.materialise().ok()?;
        let txn = doc.transact();
        txn.get_text(name).map(|t| t.get_string(&txn))
    }

    /// A Doc holding this document (an error when yrs refuses part of it, see the module docs).
    pub fn materialise(&self) -> Result<Doc, ApplyError> {
        materialise(&self.parts())
    }

    fn parts(&self) -> Vec<Bytes> {
        std::iter::once(self.base.clone())
            .chain(self.tail.iter().map(|e| e.bytes.clone()))
            .collect()
    }

    /// A merge of base and tail, when the tail is past [`MERGE_AFTER_ENTRIES`] or
    /// [`MERGE_AFTER_BYTES`].
    pub fn merge_job(&self) -> Option<MergeJob> {
        (self.tail.len() >= MERGE_AFTER_ENTRIES || self.tail_bytes >= MERGE_AFTER_BYTES)
            .then(|| self.job(JobKind::Merge))
    }

    /// A merge of base and tail whatever the tail's length: for a caller that wants the whole
    /// document in one update off its thread (compaction, before storing a snapshot).
    pub fn merge_job_now(&self) -> MergeJob {
        self.job(JobKind::Merge)
    }

    /// A garbage-collecting pass over the whole document (see [`JobKind::Gc`]).
    pub fn gc_job(&self) -> MergeJob {
        self.job(JobKind::Gc)
    }

    fn job(&self, kind: JobKind) -> MergeJob {
        let mut base_upper = self.base_upper.clone();
        for e in &self.tail {
            for (c, end) in &e.upper {
                base_upper.set_max(*c, *end);
            }
        }
        MergeJob {
            kind,
            parts: self.parts(),
            upto: self.version(),
            base_upper,
            must_hold: (kind == JobKind::Gc).then(|| (self.ins.clone(), self.del.clone())),
            token: self.jobs.clone(),
        }
    }

    /// Swaps in a job's result as the base and drops exactly the tail entries it covered (more
    /// may have arrived since). Returns false, changing nothing, when the job failed or the base
    /// already covers more than the job did (another job finished first).
    pub fn finish(&mut self, merged: Merged) -> bool {
        let Ok(state) = merged.state else {
            return false;
        };
        if merged.upto < self.tail_start || merged.upto > self.version() {
            return false;
        }
        let covered = (merged.upto - self.tail_start) as usize;
        self.tail_bytes -= self.tail[..covered]
            .iter()
            .map(|e| e.bytes.len())
            .sum::<usize>();
        self.tail.drain(..covered);
        self.tail_start = merged.upto;
        self.base = state;
        self.base_upper = merged.base_upper;
        self.full = None;
        true
    }

    /// The merged update everything before the tail is in (cheap: shared bytes).
    pub fn base(&self) -> Bytes {
        self.base.clone()
    }

    /// Bytes of the updates in the tail.
    pub fn tail_bytes(&self) -> usize {
        self.tail_bytes
    }

    /// Number of updates in the tail.
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Approximate resident bytes: the encoded updates, the id sets and the bookkeeping.
    pub fn heap_size(&self) -> usize {
        let ranges = |s: &IdSet| -> usize {
            s.iter()
                .map(|(_, r)| 64 + r.len() * std::mem::size_of::<(Range<u32>, ())>())
                .sum()
        };
        let entries: usize = self
            .tail
            .iter()
            .map(|e| {
                std::mem::size_of::<TailEntry>()
                    + e.upper.len() * std::mem::size_of::<(ClientID, u32)>()
            })
            .sum();
        self.base.len()
            + self.tail_bytes
            + entries
            + self.full.as_ref().map_or(0, |(_, f)| f.len())
            + ranges(&self.ins)
            + ranges(&self.del)
            + ranges(&self.del_unknown)
            + self.base_upper.len() * 16
    }
}
