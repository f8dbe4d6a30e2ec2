//! Random typing whose every keystroke costs the same in a document of any size: an editor's
//! caret is held by ids, never by index, and edits are written by id.
//!
//! yrs finds a position by walking the text from its start, item by item: in a 500 KB document
//! typed as words (about 99,000 items) that is several milliseconds per walk. The load
//! generator's editors share a few worker threads, so a walk delays every editor on its thread,
//! and with them the receipt (the measured latency) of updates: a walk per keystroke measured the
//! generator, not the server. So nothing here walks:
//! - The caret is kept as the ids of the characters either side of it, and a keystroke at the
//!   caret is written the way a Yjs client encodes it: one item whose origin is the character
//!   before and whose right origin is the character after, applied to the editor's own copy
//!   (integrated by id) and sent as is.
//! - A jump to a random place takes one from [`Places`], a sample of the characters the editor
//!   has received, kept with their neighbours.
//! - A deletion deletes the visible characters just left of the caret by id: those of the run of
//!   characters known to lie there in a row (typed in one item, by this editor or another).
//!
//! If others typed at the same place in the meantime, the item's neighbours are no longer
//! adjacent; Yjs orders such concurrent inserts the same way on every replica, as it does for
//! any two clients typing at one spot at once.

use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{
    Assoc, ID, IndexedSequence, ReadTxn, Text, TextRef, TransactionMut, Update,
};
use rand::Rng;

use crate::places::Places;

/// Where an editor types next: the characters either side of the caret (`None`: the text's
/// start or end), and the characters known to lie in a row before it (which a backspace deletes
/// by id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caret {
    pub left: Option<ID>,
    pub right: Option<ID>,
    /// Characters in a row ending at `left`, ids consecutive (`left.clock - run + 1 ..=
    /// left.clock`), typed one after another by one client: adjacent when typed.
    pub(crate) run: u32,
    /// What was left of that run when it was typed (the origin of its first character).
    pub(crate) run_origin: Option<ID>,
}

impl Caret {
    /// The caret after `left`, the last of `run` characters typed in a row after `run_origin`,
    /// with `right` after it.
    pub fn typed(left: ID, run: u32, run_origin: Option<ID>, right: Option<ID>) -> Caret {
        Caret {
            left: Some(left),
            right,
            run,
            run_origin,
        }
    }

    /// The caret at the text's start: no walk (the first item is where the walk begins).
    fn start(text: &TextRef, txn: &TransactionMut) -> Caret {
        Caret {
            left: None,
            right: text
                .sticky_index(txn, 0, Assoc::After)
                .and_then(|s| s.id().copied()),
            ..Caret::default()
        }
    }
}

/// One random keystroke, like a person: a few characters at the caret, which moves on as they
/// type; now and then a backspace of two characters, or a jump to a random place in the whole
/// text (one of `places`, which learns this editor's own deletions). Returns the caret after it.
pub fn keystroke(
    text: &TextRef,
    txn: &mut TransactionMut,
    caret: Option<Caret>,
    places: &mut Places,
    rng: &mut impl Rng,
) -> Caret {
    let chars: String = (0..rng.random_range(1..4))
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let jump = rng.random_bool(0.05);
    let delete = rng.random_bool(0.1);
    let known = caret.filter(|c| c.left.is_some() || c.right.is_some());
    let caret = match known {
        Some(c) if !jump => c,
        // A jump, or no caret yet: a sampled place; else stay, or start at the start.
        _ => places
            .pick(&txn.state_vector(), rng)
            .or(known)
            .unwrap_or_else(|| Caret::start(text, txn)),
    };
    if delete && let Some(after) = backspace(txn, places, caret) {
        return after;
    }
    if caret.left.is_none() && caret.right.is_none() {
        // The empty text: the first characters have no neighbour to name.
        let client = txn.doc().client_id();
        let clock = txn.state_vector().get(&client);
        text.insert(txn, 0, &chars);
        return Caret {
            left: Some(ID::new(client, clock + chars.len() as u32 - 1)),
            right: None,
            run: chars.len() as u32,
            run_origin: None,
        };
    }
    type_at(txn, caret, &chars)
}

/// Types `chars` (ASCII) between the caret's neighbours as one item, by id.
fn type_at(txn: &mut TransactionMut, caret: Caret, chars: &str) -> Caret {
    let client = txn.doc().client_id();
    let clock = txn.state_vector().get(&client);
    apply(
        txn,
        &encode_insert(client.get(), clock, caret.left, caret.right, chars),
    );
    // A run goes on only where its ids do (a backspace leaves a gap in them).
    let contiguous = caret.run > 0 && clock > 0 && caret.left == Some(ID::new(client, clock - 1));
    let (run, run_origin) = if contiguous {
        (caret.run, caret.run_origin)
    } else {
        (0, caret.left)
    };
    Caret {
        left: Some(ID::new(client, clock + chars.len() as u32 - 1)),
        right: caret.right,
        run: run + chars.len() as u32,
        run_origin,
    }
}

/// Deletes by id the (up to) two visible characters nearest left of the caret among those known
/// to be there: the caret's run, or with no run the character left of it. `None` when all of
/// them are deleted already (nothing is written).
fn backspace(txn: &mut TransactionMut, places: &mut Places, caret: Caret) -> Option<Caret> {
    let left = caret.left?;
    let span = caret.run.max(1);
    let gone: Vec<u32> = (0..span)
        .map(|k| left.clock - k)
        .filter(|&clock| !places.is_deleted(&ID::new(left.client, clock)))
        .take(2)
        .collect();
    let lowest = *gone.last()?;
    // Ascending, a range per run of consecutive clocks, as yrs writes a delete set.
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &clock in gone.iter().rev() {
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == clock => *len += 1,
            _ => ranges.push((clock, 1)),
        }
    }
    apply(txn, &encode_delete(left.client.get(), &ranges));
    for &(clock, len) in &ranges {
        places.deleted(ID::new(left.client, clock), len);
    }
    let first = left.clock + 1 - span;
    let (left, run) = if caret.run == 0 {
        // What was left of the one character deleted is not known: type after its tombstone
        // (a Yjs client would name the visible character before it; the text is the same).
        (Some(left), 0)
    } else if lowest > first {
        (Some(ID::new(left.client, lowest - 1)), lowest - first)
    } else {
        (caret.run_origin, 0)
    };
    Some(Caret {
        left,
        right: caret.right,
        run,
        run_origin: caret.run_origin,
    })
}

fn apply(txn: &mut TransactionMut, update: &[u8]) {
    let decoded = Update::decode_v1(update).expect("a well-formed update");
    txn.apply_update(decoded)
        .expect("applies to the document it was made for");
}

fn var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A v1 update holding one string item of `client` at `clock` between `origin` and
/// `right_origin` (at least one of them set), as a Yjs client writes an insert.
pub(crate) fn encode_insert(
    client: u64,
    clock: u32,
    origin: Option<ID>,
    right_origin: Option<ID>,
    chars: &str,
) -> Vec<u8> {
    debug_assert!(origin.is_some() || right_origin.is_some());
    const STRING: u8 = 4;
    let mut out = Vec::with_capacity(32 + chars.len());
    var(&mut out, 1); // clients
    var(&mut out, 1); // structs of this client
    var(&mut out, client);
    var(&mut out, clock.into());
    let info = STRING
        | if origin.is_some() { 0x80 } else { 0 }
        | if right_origin.is_some() { 0x40 } else { 0 };
    out.push(info);
    for id in [origin, right_origin].into_iter().flatten() {
        var(&mut out, id.client.get());
        var(&mut out, id.clock.into());
    }
    var(&mut out, chars.len() as u64);
    out.extend_from_slice(chars.as_bytes());
    var(&mut out, 0); // delete set: none
    out
}

/// A v1 update deleting `ranges` (clock, length; ascending, apart) of `client`'s characters, as
/// a Yjs client writes it.
fn encode_delete(client: u64, ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 8 * ranges.len());
    var(&mut out, 0); // no structs
    var(&mut out, 1); // delete set: one client
    var(&mut out, client);
    var(&mut out, ranges.len() as u64);
    for &(clock, len) in ranges {
        var(&mut out, clock.into());
        var(&mut out, len.into());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use concord_crdt::yrs::{
        ClientID, Doc, GetString, StateVector, StickyIndex, Transact, WriteTxn,
    };
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::{Duration, Instant};

    pub(crate) fn copy_of(doc: &Doc, client: u64) -> Doc {
        let copy = Doc::with_client_id(client);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        copy
    }

    pub(crate) fn text(doc: &Doc) -> String {
        let txn = doc.transact();
        txn.get_text("t").unwrap().get_string(&txn)
    }

    /// The caret's offset in the text (walks: tests only), or `None` when neither neighbour is
    /// known.
    pub(crate) fn offset<T: ReadTxn>(caret: &Caret, txn: &T) -> Option<u32> {
        let (id, assoc) = match (caret.left, caret.right) {
            (Some(l), _) => (l, Assoc::Before),
            (None, Some(r)) => (r, Assoc::After),
            (None, None) => return None,
        };
        StickyIndex::from_id(id, assoc)
            .get_offset(txn)
            .map(|o| o.index)
    }

    fn id(client: u64, clock: u32) -> ID {
        ID::new(ClientID::new(client), clock)
    }

    /// What yrs writes for `edit` made by index in a copy of `doc` by client 300.
    fn by_index(doc: &Doc, edit: impl FnOnce(&TextRef, &mut TransactionMut)) -> Vec<u8> {
        let copy = copy_of(doc, 300);
        let mut txn = copy.transact_mut();
        let t = txn.get_or_insert_text("t");
        edit(&t, &mut txn);
        txn.encode_update_v1()
    }

    fn hello_world() -> Doc {
        let doc = Doc::with_client_id(1);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "hello world");
        doc
    }

    #[test]
    fn an_insert_by_id_is_the_update_yrs_writes_for_it() {
        let base = hello_world();
        for (at, left, right) in [
            (5, Some(id(1, 4)), Some(id(1, 5))),
            (0, None, Some(id(1, 0))),
            (11, Some(id(1, 10)), None),
        ] {
            let expected = by_index(&base, |t, txn| t.insert(txn, at, "xyz"));
            let by_id = copy_of(&base, 300);
            let caret = Caret {
                left,
                right,
                ..Caret::default()
            };
            assert_eq!(offset(&caret, &by_id.transact()), Some(at));
            assert_eq!(
                encode_insert(300, 0, left, right, "xyz"),
                expected,
                "at {at}"
            );
            let after = type_at(&mut by_id.transact_mut(), caret, "xyz");
            let mut want = text(&base);
            want.insert_str(at as usize, "xyz");
            assert_eq!(text(&by_id), want);
            // Typing on extends the same run.
            type_at(&mut by_id.transact_mut(), after, "q");
            want.insert(at as usize + 3, 'q');
            assert_eq!(text(&by_id), want);
        }
    }

    #[test]
    fn a_backspace_by_id_is_the_update_yrs_writes_for_it() {
        // Types "abc" then "de" after "hello", then backspaces twice: "hello" + "a" + " world".
        let by_id = copy_of(&hello_world(), 300);
        let mut places = Places::default();
        let caret = Caret {
            left: Some(id(1, 4)),
            right: Some(id(1, 5)),
            ..Caret::default()
        };
        let caret = type_at(&mut by_id.transact_mut(), caret, "abc");
        let caret = type_at(&mut by_id.transact_mut(), caret, "de");
        assert_eq!(text(&by_id), "helloabcde world");
        let expected = {
            let copy = copy_of(&by_id, 301);
            let mut txn = copy.transact_mut();
            txn.get_or_insert_text("t").remove_range(&mut txn, 8, 2);
            txn.encode_update_v1()
        };
        assert_eq!(encode_delete(300, &[(3, 2)]), expected);
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(text(&by_id), "helloabc world");
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(text(&by_id), "helloa world");
        assert_eq!(caret.run, 1);
        // Typing on goes where the caret is.
        type_at(&mut by_id.transact_mut(), caret, "z");
        assert_eq!(text(&by_id), "helloaz world");
        // A run typed all away leaves the caret where it began.
        let caret = type_at(
            &mut by_id.transact_mut(),
            Caret {
                left: Some(id(1, 10)),
                right: None,
                ..Caret::default()
            },
            "xy",
        );
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(caret.left, Some(id(1, 10)));
        assert_eq!(offset(&caret, &by_id.transact()), Some(13));
    }

    #[test]
    fn a_backspace_skips_what_others_deleted_and_writes_what_yrs_writes() {
        // Another editor deleted the "o" of "world" (1, 7); backspacing after "wor" deletes
        // "r" and "w" by id: two ranges, as yrs writes them.
        let doc = hello_world();
        let mut places = Places::default();
        let caret = Caret::typed(id(1, 8), 9, None, Some(id(1, 9)));
        doc.get_or_insert_text("t")
            .remove_range(&mut doc.transact_mut(), 7, 1);
        places.deleted(id(1, 7), 1);
        assert_eq!(text(&doc), "hello wrld");
        let expected = by_index(&doc, |t, txn| {
            t.remove_range(txn, 7, 1);
            t.remove_range(txn, 6, 1);
        });
        let by_id = copy_of(&doc, 300);
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(encode_delete(1, &[(6, 1), (8, 1)]), expected);
        assert_eq!(text(&by_id), "hello ld");
        // The caret is after the space, which the run still holds.
        assert_eq!(caret.left, Some(id(1, 5)));
        assert_eq!(caret.run, 6);
        assert_eq!(offset(&caret, &by_id.transact()), Some(6));
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(text(&by_id), "hellld");
        type_at(&mut by_id.transact_mut(), caret, "X");
        assert_eq!(text(&by_id), "hellXld");
        // With every character of its run deleted, a caret has nothing to backspace.
        let mut places = Places::default();
        places.deleted(id(1, 0), 11);
        let caret = Caret::typed(id(1, 10), 11, None, None);
        assert_eq!(
            backspace(&mut copy_of(&doc, 300).transact_mut(), &mut places, caret),
            None
        );
    }

    #[test]
    fn a_backspace_with_no_run_deletes_the_character_left_of_the_caret() {
        let doc = hello_world();
        let mut places = Places::default();
        let caret = Caret {
            left: Some(id(1, 4)),
            right: Some(id(1, 5)),
            ..Caret::default()
        };
        let expected = by_index(&doc, |t, txn| t.remove_range(txn, 4, 1));
        assert_eq!(encode_delete(1, &[(4, 1)]), expected);
        let by_id = copy_of(&doc, 300);
        let caret = backspace(&mut by_id.transact_mut(), &mut places, caret).unwrap();
        assert_eq!(text(&by_id), "hell world");
        assert!(places.is_deleted(&id(1, 4)));
        // Typing on goes after its tombstone, where the "o" was.
        type_at(&mut by_id.transact_mut(), caret, "p");
        assert_eq!(text(&by_id), "hellp world");
    }

    /// Editors of one document (starting from `start`, a full state), each keystroke's own update
    /// (what an editor sends) delivered to all of them (the server echoes it to its sender too)
    /// in batches, so that they often type concurrently. Returns the replicas.
    pub(crate) fn type_concurrently(start: &[u8], editors: u64, keystrokes: usize) -> Vec<Doc> {
        let docs: Vec<Doc> = (1..=editors)
            .map(|c| Doc::with_client_id(1000 + c))
            .collect();
        let n = docs.len();
        let mut rng = StdRng::seed_from_u64(7);
        let mut places: Vec<Places> = (0..n).map(|_| Places::default()).collect();
        for (d, p) in docs.iter().zip(&mut places) {
            d.transact_mut()
                .apply_update(Update::decode_v1(start).unwrap())
                .unwrap();
            p.learn(start, &mut rng).unwrap();
        }
        let mut carets = vec![None; n];
        let mut inbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
        let deliver = |d: &Doc, p: &mut Places, q: &mut Vec<Vec<u8>>, rng: &mut StdRng| {
            let mut txn = d.transact_mut();
            for u in q.drain(..) {
                p.learn(&u, rng).unwrap();
                txn.apply_update(Update::decode_v1(&u).unwrap()).unwrap();
            }
        };
        for round in 0..keystrokes {
            let i = round % n;
            let update = {
                let mut txn = docs[i].transact_mut();
                let t = txn.get_or_insert_text("t");
                carets[i] = Some(keystroke(&t, &mut txn, carets[i], &mut places[i], &mut rng));
                txn.encode_update_v1()
            };
            for q in inbox.iter_mut() {
                q.push(update.clone());
            }
            if rng.random_bool(0.2) {
                let j = rng.random_range(0..n);
                deliver(&docs[j], &mut places[j], &mut inbox[j], &mut rng);
            }
        }
        for j in 0..n {
            deliver(&docs[j], &mut places[j], &mut inbox[j], &mut rng);
        }
        docs
    }

    #[test]
    fn random_keystrokes_keep_replicas_converging() {
        let small = {
            let doc = Doc::with_client_id(1);
            doc.get_or_insert_text("t")
                .insert(&mut doc.transact_mut(), 0, "the quick brown fox");
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        };
        let typed = concord_crdt::sample::typed_document("t", 5_000, 3);
        for (start, before) in [(vec![0, 0], 0), (small, 19), (typed, 5_000)] {
            let docs = type_concurrently(&start, 3, 1000);
            let snapshot = |d: &Doc| d.transact().snapshot();
            for d in &docs[1..] {
                assert_eq!(text(&docs[0]), text(d));
                assert_eq!(snapshot(&docs[0]), snapshot(d));
            }
            let len = text(&docs[0]).len();
            assert!(len > before + 500, "{len} from {before}");
        }
    }

    /// The fastest of a few batches of keystrokes into a copy of `start` (a full state), per
    /// keystroke (the machine's noise only ever adds time): typing it, and receiving it in
    /// another copy (learning its places, and applying it as the editor's backlog does, a few
    /// updates per transaction).
    fn keystroke_time(start: &[u8]) -> (Duration, Duration) {
        let copy = |client| {
            let doc = Doc::with_client_id(client);
            doc.transact_mut()
                .apply_update(Update::decode_v1(start).unwrap())
                .unwrap();
            doc
        };
        let (typist, receiver) = (copy(1000), copy(1001));
        let mut rng = StdRng::seed_from_u64(11);
        let mut places = Places::default();
        places.learn(start, &mut rng).unwrap();
        let mut theirs = Places::default();
        theirs.learn(start, &mut rng).unwrap();
        let mut caret = None;
        const BATCH: u32 = 400;
        let times: Vec<(Duration, Duration)> = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                let updates: Vec<Vec<u8>> = (0..BATCH)
                    .map(|_| {
                        let mut txn = typist.transact_mut();
                        let t = txn.get_or_insert_text("t");
                        caret = Some(keystroke(&t, &mut txn, caret, &mut places, &mut rng));
                        txn.encode_update_v1()
                    })
                    .collect();
                let typed = t0.elapsed();
                let t0 = Instant::now();
                for batch in updates.chunks(10) {
                    let mut txn = receiver.transact_mut();
                    for u in batch {
                        theirs.learn(u, &mut rng).unwrap();
                        txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
                    }
                }
                (typed / BATCH, t0.elapsed() / BATCH)
            })
            .collect();
        (
            times.iter().map(|t| t.0).min().unwrap(),
            times.iter().map(|t| t.1).min().unwrap(),
        )
    }

    #[test]
    fn a_keystroke_costs_no_more_in_a_large_document() {
        // 200 KB, about 40,000 items: a walk of it takes about a millisecond here, against ten
        // microseconds for a keystroke by id. A walk on jumps and deletions alone (about one
        // keystroke in seven) made the large document's keystrokes 10 times dearer.
        let small = concord_crdt::sample::typed_document("t", 2_000, 1);
        let large = concord_crdt::sample::typed_document("t", 200_000, 1);
        let ((typed_small, applied_small), (typed_large, applied_large)) =
            (keystroke_time(&small), keystroke_time(&large));
        eprintln!(
            "per keystroke, 2 KB then 200 KB: typing {typed_small:?}, {typed_large:?}; \
             receiving {applied_small:?}, {applied_large:?}"
        );
        let bound = |small: Duration| small * 2 + Duration::from_micros(20);
        assert!(typed_large < bound(typed_small), "typing");
        assert!(applied_large < bound(applied_small), "receiving");
    }
}
