//! What a token's `docs` claim grants on one document: pure pattern matching, free of I/O, so
//! property tests can throw thousands of claims and names at it.
//!
//! A pattern is an exact document name, or a prefix ending in `*` (`"*"` alone is every
//! document). The most specific match wins: an exact name beats every prefix, and a longer prefix
//! beats a shorter one. So `{"team/*": "write", "team/board": "read"}` lets its holder write every
//! team document except the board, which it may only read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a client may do with a document, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Neither read nor write: the connection is refused (403).
    None,
    /// Sync, updates and presence; its own updates are dropped.
    Read,
    /// Everything.
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// How specific a pattern's match on a name is, or `None` when it does not match. Exact names
/// rank above every prefix; prefixes rank by length.
fn specificity(pattern: &str, doc: &str) -> Option<(bool, usize)> {
    match pattern.strip_suffix('*') {
        Some(prefix) => doc.starts_with(prefix).then_some((false, prefix.len())),
        None => (pattern == doc).then_some((true, pattern.len())),
    }
}

/// The access `docs` grants on `doc`: that of the most specific matching pattern, or
/// [`Access::None`] when none matches.
pub fn access_for(docs: &BTreeMap<String, Access>, doc: &str) -> Access {
    docs.iter()
        .filter_map(|(pattern, access)| specificity(pattern, doc).map(|rank| (rank, *access)))
        .max_by_key(|(rank, _)| *rank)
        .map_or(Access::None, |(_, access)| access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn docs(pairs: &[(&str, Access)]) -> BTreeMap<String, Access> {
        pairs.iter().map(|(p, a)| (p.to_string(), *a)).collect()
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let d = docs(&[
            ("*", Access::Read),
            ("team/*", Access::Write),
            ("team/board", Access::Read),
            ("team/board*", Access::Write),
        ]);
        assert_eq!(access_for(&d, "team/notes"), Access::Write);
        assert_eq!(
            access_for(&d, "team/board"),
            Access::Read,
            "exact beats prefix"
        );
        assert_eq!(access_for(&d, "team/board2"), Access::Write);
        assert_eq!(access_for(&d, "wiki/x"), Access::Read);
        assert_eq!(access_for(&d, ""), Access::Read);
        let team = docs(&[("team/*", Access::Write)]);
        assert_eq!(access_for(&team, "other/x"), Access::None);
        assert_eq!(
            access_for(&team, "team"),
            Access::None,
            "a prefix is not the name itself"
        );
        assert_eq!(access_for(&BTreeMap::new(), "x"), Access::None);
    }

    fn access() -> impl Strategy<Value = Access> {
        prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)]
    }

    /// Names and patterns over a tiny alphabet, so that prefixes and exact names collide often.
    fn name() -> impl Strategy<Value = String> {
        "[ab/]{0,5}"
    }

    fn pattern() -> impl Strategy<Value = String> {
        (name(), any::<bool>()).prop_map(|(n, star)| if star { format!("{n}*") } else { n })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4096,
            rng_seed: proptest::test_runner::RngSeed::Fixed(13),
            ..ProptestConfig::default()
        })]

        /// Never more than the claims say: the access granted is exactly that of a pattern that
        /// matches, no pattern that matches is more specific, and with no match there is none.
        #[test]
        fn claims_never_grant_more_than_they_say(
            claims in proptest::collection::btree_map(pattern(), access(), 0..6),
            doc in name(),
        ) {
            let got = access_for(&claims, &doc);
            let matching: Vec<(&String, &Access)> = claims
                .iter()
                .filter(|(p, _)| match p.strip_suffix('*') {
                    Some(prefix) => doc.starts_with(prefix),
                    None => **p == doc,
                })
                .collect();
            if matching.is_empty() {
                prop_assert_eq!(got, Access::None);
            } else {
                // An exact match decides alone; otherwise the longest prefix does.
                let decider = matching
                    .iter()
                    .find(|(p, _)| !p.ends_with('*'))
                    .or_else(|| matching.iter().max_by_key(|(p, _)| p.len()))
                    .unwrap();
                prop_assert_eq!(got, *decider.1);
                prop_assert!(matching.iter().any(|(_, a)| **a >= got));
            }
        }
    }
}
