//! Random typing that stays cheap in a large document: an editor's keystroke at its caret costs
//! a lookup by id, not a walk of the text.
//!
//! yrs finds a position by walking the text from its start, item by item: in a 500 KB document
//! typed as words (about 96,000 items) that is several milliseconds per walk, and a keystroke
//! through the index API took three walks (the caret's offset, the insert, the new caret), so
//! 100 editors typing once a second needed more than two cores of the load generator. Instead the
//! caret is kept as the ids of the characters either side of it, and a keystroke at the caret is
//! written the way a Yjs client encodes it: one item whose origin is the character before and
//! whose right origin is the character after, applied to the editor's own copy (integrated by
//! id) and sent as is. Only jumps to a random place and deletions (about one keystroke in seven)
//! go through the index API and walk.
//!
//! If others typed at the same place in the meantime, the item's neighbours are no longer
//! adjacent; Yjs orders such concurrent inserts the same way on every replica, as it does for
//! any two clients typing at one spot at once.

use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{
    Assoc, ID, IndexedSequence, ReadTxn, StickyIndex, Text, TextRef, TransactionMut, Update,
};
use rand::Rng;

/// Where an editor types next: the characters either side of the caret (`None`: the text's
/// start or end), and how many characters this editor has just typed in a row before it (which a
/// backspace removes by id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caret {
    pub left: Option<ID>,
    pub right: Option<ID>,
    /// Characters typed in a row ending at `left` (all this editor's, ids consecutive), which a
    /// backspace deletes by id.
    run: u32,
    /// What was left of the caret when that run began.
    run_origin: Option<ID>,
}

impl Caret {
    /// The caret before the character at `index` (the walks this module avoids on the fast path).
    fn at<T: ReadTxn>(text: &TextRef, txn: &T, index: u32) -> Caret {
        Caret {
            left: text
                .sticky_index(txn, index, Assoc::Before)
                .and_then(|s| s.id().copied()),
            right: text
                .sticky_index(txn, index, Assoc::After)
                .and_then(|s| s.id().copied()),
            ..Caret::default()
        }
    }

    /// A caret at a random place of the whole text.
    pub fn random<T: ReadTxn>(text: &TextRef, txn: &T, rng: &mut impl Rng) -> Caret {
        Caret::at(text, txn, rng.random_range(0..=text.len(txn)))
    }

    /// The caret's offset in the text, or `None` when neither neighbour is known.
    fn offset<T: ReadTxn>(&self, txn: &T) -> Option<u32> {
        let (id, assoc) = match (self.left, self.right) {
            (Some(l), _) => (l, Assoc::Before),
            (None, Some(r)) => (r, Assoc::After),
            (None, None) => return None,
        };
        StickyIndex::from_id(id, assoc)
            .get_offset(txn)
            .map(|o| o.index)
    }
}

/// One random keystroke, like a person: a few characters at the caret, which moves on as they
/// type; now and then a backspace of two characters, or a jump to a random place in the whole
/// text. Returns the caret after it.
pub fn keystroke(
    text: &TextRef,
    txn: &mut TransactionMut,
    caret: Option<Caret>,
    rng: &mut impl Rng,
) -> Caret {
    let chars: String = (0..rng.random_range(1..4))
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let jump = rng.random_bool(0.05);
    let delete = rng.random_bool(0.1);
    let caret = match caret {
        Some(c) if !jump && (c.left.is_some() || c.right.is_some()) => c,
        // A jump, or an empty text before: by index (walks).
        _ => Caret::random(text, txn, rng),
    };
    if delete {
        if caret.run >= 2 {
            return backspace(txn, caret);
        }
        if let Some(at) = caret.offset(txn).filter(|at| *at >= 2) {
            text.remove_range(txn, at - 2, 2);
            return Caret::at(text, txn, at - 2);
        }
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

/// Deletes the two characters this editor typed last before the caret, by id.
fn backspace(txn: &mut TransactionMut, caret: Caret) -> Caret {
    let left = caret.left.expect("a run ends at the caret's left");
    apply(txn, &encode_delete(left.client.get(), left.clock - 1, 2));
    let run = caret.run - 2;
    Caret {
        left: if run > 0 {
            Some(ID::new(left.client, left.clock - 2))
        } else {
            caret.run_origin
        },
        right: caret.right,
        run,
        run_origin: caret.run_origin,
    }
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
fn encode_insert(
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

/// A v1 update deleting `len` characters of `client` from `clock`, as a Yjs client writes it.
fn encode_delete(client: u64, clock: u32, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    var(&mut out, 0); // no structs
    var(&mut out, 1); // delete set: one client
    var(&mut out, client);
    var(&mut out, 1); // one range
    var(&mut out, clock.into());
    var(&mut out, len.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_crdt::yrs::{ClientID, Doc, GetString, StateVector, Transact, WriteTxn};

    fn copy_of(doc: &Doc, client: u64) -> Doc {
        let copy = Doc::with_client_id(client);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        copy
    }

    fn text(doc: &Doc) -> String {
        let txn = doc.transact();
        txn.get_text("t").unwrap().get_string(&txn)
    }

    #[test]
    fn an_insert_by_id_is_the_update_yrs_writes_for_it() {
        let base = Doc::with_client_id(1);
        let t = base.get_or_insert_text("t");
        t.insert(&mut base.transact_mut(), 0, "hello world");
        for (at, left, right) in [
            (
                5,
                Some(ID::new(ClientID::new(1), 4)),
                Some(ID::new(ClientID::new(1), 5)),
            ),
            (0, None, Some(ID::new(ClientID::new(1), 0))),
            (11, Some(ID::new(ClientID::new(1), 10)), None),
        ] {
            // yrs, by index.
            let by_index = copy_of(&base, 300);
            let expected = {
                let mut txn = by_index.transact_mut();
                txn.get_or_insert_text("t").insert(&mut txn, at, "xyz");
                txn.encode_update_v1()
            };
            // This module, by id.
            let by_id = copy_of(&base, 300);
            let caret = Caret {
                left,
                right,
                ..Caret::default()
            };
            assert_eq!(caret.offset(&by_id.transact()), Some(at));
            let update = encode_insert(300, 0, left, right, "xyz");
            assert_eq!(update, expected, "at {at}");
            let after = type_at(&mut by_id.transact_mut(), caret, "xyz");
            assert_eq!(text(&by_id), text(&by_index));
            // Typing on extends the same run.
            type_at(&mut by_id.transact_mut(), after, "q");
            let mut want = text(&by_index);
            want.insert(at as usize + 3, 'q');
            assert_eq!(text(&by_id), want);
        }
    }

    #[test]
    fn a_backspace_by_id_is_the_update_yrs_writes_for_it() {
        let doc = Doc::with_client_id(1);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "hello world");
        // Types "abc" then "de" after "hello", then backspaces twice: "hello" + "a" + " world".
        let by_id = copy_of(&doc, 300);
        let caret = Caret {
            left: Some(ID::new(ClientID::new(1), 4)),
            right: Some(ID::new(ClientID::new(1), 5)),
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
        assert_eq!(encode_delete(300, 3, 2), expected);
        let caret = backspace(&mut by_id.transact_mut(), caret);
        assert_eq!(text(&by_id), "helloabc world");
        let caret = backspace(&mut by_id.transact_mut(), caret);
        assert_eq!(text(&by_id), "helloa world");
        assert_eq!(caret.run, 1);
        // Typing on goes where the caret is.
        type_at(&mut by_id.transact_mut(), caret, "z");
        assert_eq!(text(&by_id), "helloaz world");
        // A run typed all away leaves the caret where it began.
        let caret = type_at(
            &mut by_id.transact_mut(),
            Caret {
                left: Some(ID::new(ClientID::new(1), 10)),
                right: None,
                ..Caret::default()
            },
            "xy",
        );
        let caret = backspace(&mut by_id.transact_mut(), caret);
        assert_eq!(caret.left, Some(ID::new(ClientID::new(1), 10)));
        assert_eq!(caret.offset(&by_id.transact()), Some(13));
    }

    #[test]
    fn random_keystrokes_keep_replicas_converging() {
        // Three editors of one document (empty, or not), each keystroke's own update (what an
        // editor sends) delivered to the others in batches, so that they often type concurrently.
        for start in ["", "the quick brown fox"] {
            let docs: Vec<Doc> = (1..=3).map(Doc::with_client_id).collect();
            if !start.is_empty() {
                docs[0]
                    .get_or_insert_text("t")
                    .insert(&mut docs[0].transact_mut(), 0, start);
            }
            let base = docs[0]
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            for d in &docs[1..] {
                d.transact_mut()
                    .apply_update(Update::decode_v1(&base).unwrap())
                    .unwrap();
            }
            let mut rng = rand::rng();
            let mut carets = [None; 3];
            let mut inbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
            for round in 0..1000 {
                let i = round % 3;
                let update = {
                    let mut txn = docs[i].transact_mut();
                    let t = txn.get_or_insert_text("t");
                    carets[i] = Some(keystroke(&t, &mut txn, carets[i], &mut rng));
                    txn.encode_update_v1()
                };
                for (j, q) in inbox.iter_mut().enumerate() {
                    if j != i {
                        q.push(update.clone());
                    }
                }
                if rng.random_bool(0.2) {
                    let j = rng.random_range(0..3);
                    let mut txn = docs[j].transact_mut();
                    for u in inbox[j].drain(..) {
                        txn.apply_update(Update::decode_v1(&u).unwrap()).unwrap();
                    }
                }
            }
            for (j, d) in docs.iter().enumerate() {
                let mut txn = d.transact_mut();
                for u in inbox[j].drain(..) {
                    txn.apply_update(Update::decode_v1(&u).unwrap()).unwrap();
                }
            }
            let snapshot = |d: &Doc| d.transact().snapshot();
            assert_eq!(text(&docs[0]), text(&docs[1]));
            assert_eq!(text(&docs[0]), text(&docs[2]));
            assert_eq!(snapshot(&docs[0]), snapshot(&docs[1]));
            assert_eq!(snapshot(&docs[0]), snapshot(&docs[2]));
            assert!(text(&docs[0]).len() > 500, "{}", text(&docs[0]));
        }
    }
}
