//! Where a typist can jump to without walking the text: a uniform sample of the characters it has
//! seen arrive, each kept with the characters that surrounded it when it was typed.
//!
//! A person clicks somewhere in the visible text and types there. Finding a random place by
//! index walks the text from its start (several milliseconds in a 500 KB document), and so does
//! turning an id into an index; the one yrs call that finds an item by id without a walk (its
//! block store's lookup) is private in yrs 0.28.1. So each typist reads the structs of every
//! update it receives (the server's Step2, and each live update, its own echoes included) and
//! keeps a reservoir sample ([`SLOTS`] of them, algorithm L) of the string characters in them:
//! uniform over every character ever typed in the document, whatever its size. A character's
//! place is a [`Caret`] after it: its right neighbour is the next character of the same item or,
//! for an item's last character, the item's right origin (or the next struct of its client, when
//! that one was typed right after it), and the characters before it in its item (with the item's
//! origin before those) are what a backspace deletes by id.
//!
//! The typist also keeps the delete sets it has seen: a sampled character deleted since is
//! skipped by stepping left within its item to one still visible, or by drawing another. Others
//! may have typed between a character and its right neighbour since; typing there is then a
//! concurrent insert at that spot, which Yjs orders the same way on every replica (as it does for
//! a caret that others typed next to).

use concord_crdt::yrs::encoding::read::{self, Cursor, Read};
use concord_crdt::yrs::updates::decoder::{Decode, Decoder, DecoderV1};
use concord_crdt::yrs::{ID, IdSet, StateVector};
use rand::Rng;

use crate::typing::Caret;

/// Characters sampled per typist: enough that jumps land all over a document, small enough for
/// thousands of typists (80 KB each).
pub const SLOTS: usize = 1024;

/// Draws before a jump gives up (every one deleted, or not integrated yet).
const TRIES: usize = 16;

// v1 struct kinds and info bits (yrs::block, Yjs's encoding).
const GC: u8 = 0;
const DELETED: u8 = 1;
const STRING: u8 = 4;
const SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;

/// Why an update's places could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlacesError {
    #[error("malformed update: {0}")]
    Malformed(#[from] read::Error),
    #[error("an item of content kind {0}, which the load test's text never holds")]
    Content(u8),
    #[error("clocks beyond 2^32")]
    Clock,
}

/// The sample of characters, and the characters known to be deleted.
#[derive(Default)]
pub struct Places {
    slots: Vec<Caret>,
    /// Characters offered so far (the stream's length).
    seen: u64,
    /// Index in the stream of the next character to take, once the reservoir is full.
    next: u64,
    /// Algorithm L's running weight.
    w: f64,
    deleted: IdSet,
}

impl Places {
    /// Learns the characters an update inserts and the ones it deletes. Reads the whole update
    /// or nothing useful: an update with content a typed text never holds is refused (its
    /// characters until then stay learnt, which is harmless).
    pub fn learn(&mut self, update: &[u8], rng: &mut impl Rng) -> Result<(), PlacesError> {
        let mut d = DecoderV1::new(Cursor::new(update));
        let clients: u32 = d.read_var()?;
        for _ in 0..clients {
            let structs: u32 = d.read_var()?;
            let client = d.read_client()?;
            let mut clock: u32 = d.read_var()?;
            // A string item is offered once the next struct is read: if that one was typed (or
            // split off) right after it, its first character is what follows the item's last,
            // more recently than the item's right origin says.
            let mut last: Option<Item> = None;
            for _ in 0..structs {
                let id = ID::new(client, clock);
                let info = d.read_info()?;
                let (len, item) = match info {
                    SKIP => (d.read_var()?, None),
                    GC => (d.read_len()?, None),
                    _ => {
                        let origin = match info & HAS_ORIGIN {
                            0 => None,
                            _ => Some(d.read_left_id()?),
                        };
                        let right = match info & HAS_RIGHT_ORIGIN {
                            0 => None,
                            _ => Some(d.read_right_id()?),
                        };
                        if origin.is_none() && right.is_none() {
                            // Its parent: a root's name, or a nested type's id.
                            if d.read_parent_info()? {
                                d.read_string()?;
                            } else {
                                d.read_left_id()?;
                            }
                            if info & HAS_PARENT_SUB != 0 {
                                d.read_string()?;
                            }
                        }
                        match info & 0x1f {
                            DELETED => (d.read_len()?, Some((origin, None))),
                            STRING => {
                                // Clocks count UTF-16 code units.
                                let len = d.read_string()?.encode_utf16().count() as u32;
                                (len, Some((origin, Some(right))))
                            }
                            other => return Err(PlacesError::Content(other)),
                        }
                    }
                };
                if let Some(prev) = last.take() {
                    let follows = item.is_some_and(|(origin, _)| origin == Some(prev.last()));
                    self.offer(prev, follows.then_some(id), rng);
                }
                if let Some((origin, Some(right))) = item
                    && len > 0
                {
                    last = Some(Item {
                        first: id,
                        len,
                        origin,
                        right,
                    });
                }
                clock = clock.checked_add(len).ok_or(PlacesError::Clock)?;
            }
            if let Some(prev) = last {
                self.offer(prev, None, rng);
            }
        }
        self.deleted.merge_with(IdSet::decode(&mut d)?);
        Ok(())
    }

    /// Notes characters deleted here (before their update comes back).
    pub fn deleted(&mut self, id: ID, len: u32) {
        self.deleted.insert(id, len);
    }

    pub fn is_deleted(&self, id: &ID) -> bool {
        self.deleted.contains(id)
    }

    /// A random place after a visible character, among those integrated in a document whose state
    /// vector is `sv`; `None` when none was found in a few draws (none learnt yet, say).
    pub fn pick(&self, sv: &StateVector, rng: &mut impl Rng) -> Option<Caret> {
        if self.slots.is_empty() {
            return None;
        }
        (0..TRIES).find_map(|_| {
            let place = self.slots[rng.random_range(0..self.slots.len())];
            self.visible(place).filter(|c| integrated(c, sv))
        })
    }

    /// `place`, or if its character was deleted the nearest one before it in its item that was
    /// not; `None` if there is none.
    fn visible(&self, place: Caret) -> Option<Caret> {
        let left = place.left?;
        (0..place.run).find_map(|k| {
            let id = ID::new(left.client, left.clock - k);
            (!self.is_deleted(&id)).then(|| {
                let right = match k {
                    0 => place.right,
                    _ => Some(ID::new(left.client, id.clock + 1)),
                };
                Caret::typed(id, place.run - k, place.run_origin, right)
            })
        })
    }

    /// Offers the characters of a string item to the sample; `then`: what was typed right after
    /// its last character, if known better than by its right origin.
    fn offer(&mut self, item: Item, then: Option<ID>, rng: &mut impl Rng) {
        let Item {
            first,
            len,
            origin,
            right,
        } = item;
        let place = |i: u32| {
            let next = if i + 1 < len {
                Some(ID::new(first.client, first.clock + i + 1))
            } else {
                then.or(right)
            };
            Caret::typed(ID::new(first.client, first.clock + i), i + 1, origin, next)
        };
        let base = self.seen;
        self.seen += u64::from(len);
        let mut i = 0;
        while i < len && self.slots.len() < SLOTS {
            self.slots.push(place(i));
            i += 1;
            if self.slots.len() == SLOTS {
                self.w = weight(rng);
                self.next = base + u64::from(i) + self.skip(rng);
            }
        }
        while self.slots.len() == SLOTS && self.next < self.seen {
            let slot = rng.random_range(0..SLOTS);
            self.slots[slot] = place((self.next - base) as u32);
            self.w *= weight(rng);
            self.next = self.next.saturating_add(1 + self.skip(rng));
        }
    }

    /// How many characters algorithm L passes over before taking the next.
    fn skip(&self, rng: &mut impl Rng) -> u64 {
        // `as` saturates: a vanishing weight skips (practically) forever.
        (unit(rng).ln() / (1.0 - self.w).ln()).floor() as u64
    }
}

/// A string item as read from an update.
#[derive(Clone, Copy)]
struct Item {
    first: ID,
    len: u32,
    origin: Option<ID>,
    right: Option<ID>,
}

impl Item {
    fn last(&self) -> ID {
        ID::new(self.first.client, self.first.clock + self.len - 1)
    }
}

/// A uniform draw in (0, 1].
fn unit(rng: &mut impl Rng) -> f64 {
    1.0 - rng.random::<f64>()
}

fn weight(rng: &mut impl Rng) -> f64 {
    (unit(rng).ln() / SLOTS as f64).exp()
}

/// Whether every id the caret names is in the document (not in an update still waiting for
/// what it depends on): typing next to a missing one would leave the typist's own edit pending.
fn integrated(caret: &Caret, sv: &StateVector) -> bool {
    [caret.left, caret.right, caret.run_origin]
        .into_iter()
        .flatten()
        .all(|id| sv.get(&id.client) > id.clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typing::tests::{copy_of, offset, text};
    use concord_crdt::yrs::updates::decoder::Decode;
    use concord_crdt::yrs::{
        Assoc, ClientID, Doc, IndexedSequence, Map, ReadTxn, Text, Transact, Update, WriteTxn,
    };
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::BTreeSet;

    fn id(client: u64, clock: u32) -> ID {
        ID::new(ClientID::new(client), clock)
    }

    fn full_state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn learnt(update: &[u8]) -> Places {
        let mut places = Places::default();
        places.learn(update, &mut StdRng::seed_from_u64(1)).unwrap();
        places
    }

    /// Ids of the visible characters of `doc`'s text, in text order (walks: tests only).
    fn visible_ids(doc: &Doc) -> Vec<ID> {
        let txn = doc.transact();
        let t = txn.get_text("t").unwrap();
        (0..t.len(&txn))
            .map(|i| *t.sticky_index(&txn, i, Assoc::After).unwrap().id().unwrap())
            .collect()
    }

    #[test]
    fn typing_at_every_place_is_the_update_yrs_writes_after_its_character() {
        // Two authors and a deletion: "big " typed before "hello world", whose "o" is deleted,
        // splitting its item.
        let doc = Doc::with_client_id(1);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "hello world");
        let other = copy_of(&doc, 2);
        other
            .get_or_insert_text("t")
            .insert(&mut other.transact_mut(), 0, "big ");
        let update = full_state(&other);
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        t.remove_range(&mut doc.transact_mut(), 8, 1);
        assert_eq!(text(&doc), "big hell world");

        let places = learnt(&full_state(&doc));
        let mut seen = BTreeSet::new();
        let mut tombstones = 0;
        for &place in &places.slots {
            let caret = places.visible(place).unwrap();
            assert_eq!(caret, place, "no character sampled is deleted");
            seen.insert(caret.left.unwrap());
            let at = offset(&caret, &doc.transact()).unwrap();
            let copy = copy_of(&doc, 300);
            let expected = {
                let mut txn = copy.transact_mut();
                txn.get_or_insert_text("t").insert(&mut txn, at, "xyz");
                txn.encode_update_v1()
            };
            let ours = crate::typing::encode_insert(300, 0, caret.left, caret.right, "xyz");
            if caret.right.is_some_and(|r| places.is_deleted(&r)) {
                // Before a tombstone, yrs names it as the origin, Yjs (and this module) as the
                // right origin: the same text either way.
                let mine = copy_of(&doc, 300);
                mine.transact_mut()
                    .apply_update(Update::decode_v1(&ours).unwrap())
                    .unwrap();
                assert_eq!(text(&mine), text(&copy), "after {caret:?}");
                tombstones += 1;
            } else {
                assert_eq!(ours, expected, "after {caret:?} (offset {at})");
            }
        }
        assert_eq!(tombstones, 1);
        let all: BTreeSet<ID> = visible_ids(&doc).into_iter().collect();
        assert_eq!(seen, all, "every visible character is a place");
        // A character deleted after it was sampled is stepped over to the one before it.
        let mut places = places;
        places.deleted(id(1, 3), 1);
        let after_l = places
            .slots
            .iter()
            .find(|c| c.left == Some(id(1, 3)))
            .unwrap();
        let stepped = places.visible(*after_l).unwrap();
        assert_eq!(stepped.left, Some(id(1, 2)));
        assert_eq!(stepped.right, Some(id(1, 3)));
        assert_eq!(stepped.run, 3);
    }

    #[test]
    fn jumps_land_on_visible_characters_all_over_the_document() {
        let doc = Doc::with_client_id(1);
        let sample = concord_crdt::sample::typed_document("t", 20_000, 5);
        doc.transact_mut()
            .apply_update(Update::decode_v1(&sample).unwrap())
            .unwrap();
        // Delete a third of the text, in many places.
        let mut rng = StdRng::seed_from_u64(9);
        let t = doc.get_or_insert_text("t");
        for _ in 0..2_000 {
            let mut txn = doc.transact_mut();
            let len = t.len(&txn);
            let at = rng.random_range(0..len - 4);
            t.remove_range(&mut txn, at, 3);
        }
        let places = learnt(&full_state(&doc));
        assert_eq!(places.slots.len(), SLOTS);
        let txn = doc.transact();
        let deleted = txn.snapshot().delete_set;
        let sv = txn.state_vector();
        let len = t.len(&txn);
        let mut offsets = Vec::new();
        for _ in 0..2_000 {
            let caret = places.pick(&sv, &mut rng).expect("a place");
            let left = caret.left.unwrap();
            assert!(!deleted.contains(&left), "{caret:?} is deleted");
            offsets.push(offset(&caret, &txn).unwrap());
        }
        // Spread over the whole text: every tenth of it is jumped to.
        let mut tenths = [0; 10];
        for o in offsets {
            tenths[(o as usize * 10 / (len as usize + 1)).min(9)] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 100), "{tenths:?}");
    }

    #[test]
    fn the_sample_is_uniform_over_every_character_seen() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut places = Places::default();
        let item = |client, clock, len| Item {
            first: id(client, clock),
            len,
            origin: None,
            right: None,
        };
        places.offer(item(1, 0, 100_000), None, &mut rng);
        // Then as much again, in small updates.
        for k in 0..1_000 {
            places.offer(item(2, k * 100, 100), None, &mut rng);
        }
        assert_eq!(places.seen, 200_000);
        let first: Vec<u32> = places
            .slots
            .iter()
            .filter_map(|c| c.left.filter(|l| l.client == ClientID::new(1)))
            .map(|l| l.clock)
            .collect();
        let share = first.len() as f64 / SLOTS as f64;
        assert!((0.43..0.57).contains(&share), "{share}");
        let mean = first.iter().map(|&c| f64::from(c)).sum::<f64>() / first.len() as f64;
        assert!((45_000.0..55_000.0).contains(&mean), "{mean}");
        // Each sampled character's place: the characters before it in its item, and the next.
        for c in &places.slots {
            let left = c.left.unwrap();
            let (start, end) = if left.client == ClientID::new(1) {
                (0, 100_000)
            } else {
                (
                    left.clock - left.clock % 100,
                    left.clock - left.clock % 100 + 100,
                )
            };
            assert_eq!(c.run, left.clock - start + 1);
            let next = (left.clock + 1 < end).then(|| id(left.client.get(), left.clock + 1));
            assert_eq!(c.right, next);
        }
    }

    #[test]
    fn the_servers_step2_in_encoded_form_is_read_whole() {
        // A pre-filled document typed into with deletions, held by a server in encoded form:
        // its full state (a fresh editor's Step2) and a diff (a reconnecting one's) are merges
        // and diffs of updates, not a Doc's encoding.
        let base = concord_crdt::sample::typed_document("t", 20_000, 2);
        let typed = crate::typing::tests::type_concurrently(&base, 3, 600);
        let later = full_state(&typed[0]);
        let mut server =
            concord_crdt::EncodedDoc::load([base.as_slice(), later.as_slice()]).unwrap();
        let step2 = server.full_state();
        let before = Update::decode_v1(&base).unwrap().state_vector();
        let diff = server.diff(&before);
        let mut rng = StdRng::seed_from_u64(4);
        let mut places = learnt(&step2);
        places.learn(&diff, &mut rng).unwrap();
        let fresh = Doc::with_client_id(9);
        fresh
            .transact_mut()
            .apply_update(Update::decode_v1(&step2).unwrap())
            .unwrap();
        assert_eq!(text(&fresh), text(&typed[0]));
        let txn = fresh.transact();
        let deleted = txn.snapshot().delete_set;
        for _ in 0..200 {
            let caret = places.pick(&txn.state_vector(), &mut rng).unwrap();
            assert!(!deleted.contains(&caret.left.unwrap()));
        }
    }

    #[test]
    fn places_in_updates_not_integrated_yet_are_not_jumped_to() {
        // Client 2's word depends on client 1's, which this replica has not received.
        let doc = Doc::with_client_id(1);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "hello");
        let other = copy_of(&doc, 2);
        let word = {
            let mut txn = other.transact_mut();
            txn.get_or_insert_text("t").insert(&mut txn, 5, " you");
            txn.encode_update_v1()
        };
        let replica = Doc::with_client_id(3);
        replica
            .transact_mut()
            .apply_update(Update::decode_v1(&word).unwrap())
            .unwrap();
        let places = learnt(&word);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            places.pick(&replica.transact().state_vector(), &mut rng),
            None
        );
        assert!(
            places
                .pick(&other.transact().state_vector(), &mut rng)
                .is_some()
        );
    }

    #[test]
    fn an_update_the_typed_text_never_holds_teaches_nothing() {
        let doc = Doc::with_client_id(1);
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), "k", "v");
        let mut places = Places::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            places.learn(&full_state(&doc), &mut rng),
            Err(PlacesError::Content(_))
        ));
        assert!(matches!(
            places.learn(&[3, 200, 1], &mut rng),
            Err(PlacesError::Malformed(_))
        ));
        let beyond = crate::typing::encode_insert(5, u32::MAX - 1, Some(id(1, 0)), None, "abc");
        assert!(matches!(
            places.learn(&beyond, &mut rng),
            Err(PlacesError::Clock)
        ));
        assert!(places.slots.is_empty());
    }
}
