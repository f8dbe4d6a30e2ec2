//! Sample documents for load tests and measurements: a `Y.Text` holding about `size` bytes of
//! words typed at random places, as a long document edited over time looks (an item per word,
//! not one block of text), encoded as one Yjs v1 update.
//!
//! yrs walks a text from its start on every insert, so one client typing 100,000 words at random
//! places into one 500 KB text would take minutes. The document is written in [`SECTIONS`]
//! instead: each section has its own author (a seeded client id) typing into its own `Doc` until
//! the section holds its share of the bytes, and the sections' states are then merged. All
//! sections begin with an insert at position 0 of the same empty root, which Yjs orders by client
//! id, so the merged text is the sections one after another. 500 KB takes a few seconds (release).
//!
//! Pure and deterministic: the same `(root, size, seed)` gives the same bytes.

use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

/// Authors (and sections) a document is written in.
pub const SECTIONS: usize = 20;

/// A few hundred common English words the text is typed from.
pub const VOCABULARY: &[&str] = &[
    "a",
    "about",
    "above",
    "across",
    "act",
    "add",
    "after",
    "again",
    "against",
    "age",
    "ago",
    "air",
    "all",
    "almost",
    "along",
    "already",
    "also",
    "always",
    "am",
    "among",
    "an",
    "and",
    "another",
    "answer",
    "any",
    "are",
    "area",
    "around",
    "as",
    "ask",
    "at",
    "away",
    "back",
    "base",
    "be",
    "became",
    "because",
    "become",
    "been",
    "before",
    "began",
    "begin",
    "behind",
    "being",
    "below",
    "best",
    "better",
    "between",
    "big",
    "body",
    "book",
    "both",
    "bring",
    "build",
    "but",
    "by",
    "call",
    "came",
    "can",
    "car",
    "care",
    "carry",
    "case",
    "cause",
    "change",
    "check",
    "city",
    "class",
    "clear",
    "close",
    "cold",
    "come",
    "common",
    "could",
    "country",
    "course",
    "cut",
    "day",
    "deep",
    "did",
    "different",
    "do",
    "does",
    "done",
    "door",
    "down",
    "draw",
    "during",
    "each",
    "early",
    "earth",
    "east",
    "easy",
    "end",
    "enough",
    "even",
    "ever",
    "every",
    "example",
    "eye",
    "face",
    "fact",
    "fall",
    "family",
    "far",
    "fast",
    "feel",
    "few",
    "field",
    "find",
    "fire",
    "first",
    "follow",
    "food",
    "for",
    "form",
    "found",
    "four",
    "free",
    "friend",
    "from",
    "front",
    "full",
    "game",
    "gave",
    "get",
    "give",
    "go",
    "good",
    "got",
    "great",
    "green",
    "ground",
    "group",
    "grow",
    "had",
    "half",
    "hand",
    "hard",
    "has",
    "have",
    "he",
    "head",
    "hear",
    "heard",
    "help",
    "her",
    "here",
    "high",
    "him",
    "his",
    "hold",
    "home",
    "hour",
    "house",
    "how",
    "idea",
    "if",
    "important",
    "in",
    "into",
    "is",
    "it",
    "its",
    "just",
    "keep",
    "kind",
    "knew",
    "know",
    "land",
    "large",
    "last",
    "later",
    "learn",
    "leave",
    "left",
    "less",
    "let",
    "letter",
    "life",
    "light",
    "like",
    "line",
    "list",
    "little",
    "live",
    "long",
    "look",
    "made",
    "make",
    "man",
    "many",
    "map",
    "mark",
    "may",
    "me",
    "mean",
    "men",
    "might",
    "mind",
    "more",
    "most",
    "mother",
    "move",
    "much",
    "must",
    "my",
    "name",
    "near",
    "need",
    "never",
    "new",
    "next",
    "night",
    "no",
    "north",
    "not",
    "note",
    "now",
    "number",
    "of",
    "off",
    "often",
    "old",
    "on",
    "once",
    "one",
    "only",
    "open",
    "or",
    "order",
    "other",
    "our",
    "out",
    "over",
    "own",
    "page",
    "paper",
    "part",
    "people",
    "place",
    "plan",
    "play",
    "point",
    "power",
    "put",
    "question",
    "quick",
    "read",
    "real",
    "really",
    "reason",
    "record",
    "red",
    "right",
    "river",
    "road",
    "room",
    "round",
    "rule",
    "run",
    "said",
    "same",
    "saw",
    "say",
    "school",
    "sea",
    "second",
    "see",
    "seem",
    "sentence",
    "set",
    "she",
    "should",
    "show",
    "side",
    "since",
    "small",
    "so",
    "some",
    "something",
    "sound",
    "south",
    "space",
    "stand",
    "start",
    "state",
    "still",
    "stop",
    "story",
    "study",
    "such",
    "sun",
    "sure",
    "system",
    "table",
    "take",
    "talk",
    "tell",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "think",
    "this",
    "those",
    "though",
    "thought",
    "three",
    "through",
    "time",
    "to",
    "together",
    "too",
    "took",
    "toward",
    "tree",
    "true",
    "try",
    "turn",
    "two",
    "under",
    "until",
    "up",
    "upon",
    "us",
    "use",
    "very",
    "voice",
    "walk",
    "want",
    "was",
    "watch",
    "water",
    "way",
    "we",
    "week",
    "well",
    "went",
    "were",
    "west",
    "what",
    "when",
    "where",
    "which",
    "while",
    "white",
    "who",
    "whole",
    "why",
    "will",
    "with",
    "within",
    "without",
    "word",
    "work",
    "world",
    "would",
    "write",
    "year",
    "yes",
    "yet",
    "you",
    "young",
    "your",
];

/// A v1 update of a document whose root text `root` holds about `size` bytes (within a word per
/// section) of words from [`VOCABULARY`], each followed by a space, each typed at a random word
/// boundary. Empty `size` gives an empty update. Deterministic in `seed`.
pub fn typed_document(root: &str, size: usize, seed: u64) -> Vec<u8> {
    let sections = typed_sections(root, size, seed);
    yrs::merge_updates_v1(&sections).expect("updates this module encoded merge")
}

/// The [`SECTIONS`] parts of [`typed_document`], each a self-contained v1 update (one author,
/// no dependencies on the others): they can be applied or sent in any order and any grouping,
/// e.g. to stay under a message size limit.
pub fn typed_sections(root: &str, size: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..SECTIONS)
        .map(|s| {
            // This section's share, the remainder spread over the first ones.
            let share = size / SECTIONS + usize::from(s < size % SECTIONS);
            // Client ids as yrs picks them (below 2^32), distinct per section.
            let client = (rng.u64(1..1 << 32) & !0xff) | s as u64;
            type_section(root, share, client, &mut rng)
        })
        .collect()
}

/// One author typing words at random word boundaries until the text holds `share` bytes.
fn type_section(root: &str, share: usize, client: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text(root);
    // Length of each word-and-space token in text order: where word boundaries are, without
    // reading the text back.
    let mut tokens: Vec<u8> = Vec::new();
    let mut len = 0;
    {
        let mut txn = doc.transact_mut();
        while len < share {
            let word = VOCABULARY[rng.usize(..VOCABULARY.len())];
            let at = rng.usize(..=tokens.len());
            let offset: u32 = tokens[..at].iter().map(|&t| u32::from(t)).sum();
            let token = format!("{word} ");
            text.insert(&mut txn, offset, &token);
            tokens.insert(at, token.len() as u8);
            len += token.len();
        }
    }
    debug_assert_eq!(text.get_string(&doc.transact()).len(), len);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::Update;
    use yrs::updates::decoder::Decode;

    fn text_of(update: &[u8], root: &str) -> String {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        let txn = doc.transact();
        txn.get_text(root)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }

    #[test]
    fn holds_about_the_size_asked_for() {
        for size in [1_000, 20_000, 60_000] {
            let text = text_of(&typed_document("t", size, 7), "t");
            // Each section overshoots its share by less than one word.
            assert!(text.len() >= size, "{size}: {}", text.len());
            assert!(
                text.len() <= size + size / 50 + SECTIONS * 12,
                "{size}: {}",
                text.len()
            );
        }
    }

    #[test]
    fn is_deterministic_per_seed() {
        let a = typed_document("t", 10_000, 1);
        assert_eq!(a, typed_document("t", 10_000, 1));
        let b = typed_document("t", 10_000, 2);
        assert_ne!(a, b);
        assert_ne!(text_of(&a, "t"), text_of(&b, "t"));
    }

    #[test]
    fn the_text_is_words_of_the_vocabulary() {
        let text = text_of(&typed_document("body", 20_000, 3), "body");
        let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        assert!(words.len() > 20_000 / 12, "{} words", words.len());
        assert!(words.iter().all(|w| VOCABULARY.contains(w)), "{text}");
        // A word followed by a space, never two spaces: inserts landed on word boundaries.
        assert!(!text.contains("  ") && text.ends_with(' '));
        // Many different words, not a handful repeated.
        let distinct: std::collections::HashSet<&&str> = words.iter().collect();
        assert!(distinct.len() > VOCABULARY.len() / 2, "{}", distinct.len());
    }

    #[test]
    fn has_an_item_per_word_not_a_block_per_section() {
        let update = typed_document("t", 30_000, 4);
        let text = text_of(&update, "t");
        // An item costs its ids and origins (about 15 bytes) besides its word: typed as one
        // block per section, the update would be barely larger than the text.
        assert!(
            update.len() > 2 * text.len(),
            "{} bytes for {} of text",
            update.len(),
            text.len()
        );
    }

    #[test]
    fn sections_are_self_contained_and_make_the_document() {
        let sections = typed_sections("t", 10_000, 5);
        assert_eq!(sections.len(), SECTIONS);
        // Applied one by one in reverse order (no section waits for another), they give the text
        // of the merged document.
        let doc = Doc::new();
        for s in sections.iter().rev() {
            doc.transact_mut()
                .apply_update(Update::decode_v1(s).unwrap())
                .unwrap();
            assert!(!doc.transact().has_missing_updates());
        }
        let txn = doc.transact();
        let text = txn.get_text("t").unwrap().get_string(&txn);
        assert_eq!(text, text_of(&typed_document("t", 10_000, 5), "t"));
    }

    #[test]
    fn empty_size_is_an_empty_document() {
        assert_eq!(text_of(&typed_document("t", 0, 1), "t"), "");
    }
}
