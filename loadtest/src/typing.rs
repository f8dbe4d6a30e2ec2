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
/// start or end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caret {
    pub left: Option<ID>,
    pub right: Option<ID>,
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
        }
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
    if let Some(c) = caret
        && !jump
        && !delete
        && (c.left.is_some() || c.right.is_some())
    {
        return type_at(txn, c, &chars);
    }
    // The slow path: by index.
    let len = text.len(txn);
    let mut at = caret
        .and_then(|c| c.offset(txn))
        .map_or(len, |o| o.min(len));
    if jump {
        at = rng.random_range(0..=len);
    }
    if delete && at >= 2 {
        text.remove_range(txn, at - 2, 2);
        at -= 2;
    } else {
        text.insert(txn, at, &chars);
        at += chars.len() as u32;
    }
    Caret::at(text, txn, at)
}

/// Types `chars` (ASCII) between the caret's neighbours as one item, by id.
fn type_at(txn: &mut TransactionMut, caret: Caret, chars: &str) -> Caret {
    let client = txn.doc().client_id();
    let clock = txn.state_vector().get(&client);
    let update = encode_insert(client.get(), clock, caret.left, caret.right, chars);
    let decoded = Update::decode_v1(&update).expect("a well-formed update");
    txn.apply_update(decoded)
        .expect("applies to the document it was made for");
    Caret {
        left: Some(ID::new(client, clock + chars.len() as u32 - 1)),
        right: caret.right,
    }
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
    let var = |out: &mut Vec<u8>, mut n: u64| {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    };
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
            let caret = Caret { left, right };
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
    fn random_keystrokes_keep_replicas_converging() {
        let a = Doc::with_client_id(1);
        a.get_or_insert_text("t")
            .insert(&mut a.transact_mut(), 0, "the quick brown fox");
        let b = copy_of(&a, 2);
        let mut rng = rand::rng();
        let (mut ca, mut cb) = (None, None);
        for round in 0..300 {
            for (doc, caret) in [(&a, &mut ca), (&b, &mut cb)] {
                let mut txn = doc.transact_mut();
                let t = txn.get_or_insert_text("t");
                *caret = Some(keystroke(&t, &mut txn, *caret, &mut rng));
            }
            // Exchange now and then, so that both type concurrently at times.
            if round % 7 == 0 {
                let ua = a
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                let ub = b
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                a.transact_mut()
                    .apply_update(Update::decode_v1(&ub).unwrap())
                    .unwrap();
                b.transact_mut()
                    .apply_update(Update::decode_v1(&ua).unwrap())
                    .unwrap();
                assert_eq!(text(&a), text(&b));
            }
        }
        assert!(text(&a).len() > 300, "{}", text(&a));
    }
}
