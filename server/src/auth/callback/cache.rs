//! The auth callback's answer cache: pure bookkeeping, free of I/O and of the clock (callers pass
//! `now`), so its expiry and bound are tested without waiting.
//!
//! Entries are keyed by a SHA-256 of the credentials and the document ([`key`]), so the cache
//! never holds a token, cookie or `Authorization` header in clear. It holds at most `capacity`
//! entries: when full, expired entries are dropped first, then the oldest live one (the one
//! closest to expiry: every entry lives the same TTL). A flood of distinct credentials can thus
//! push other answers out, which costs backend calls but never changes an answer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Answer;

/// A cache key: the SHA-256 of the fields that identify a question.
pub type Key = [u8; 32];

/// The key of a question made of `fields` (document, token, cookie, authorization). Each field
/// is length-prefixed and marked present or absent, so no two different questions share a key
/// (`None` differs from `Some("")`, and bytes cannot move from one field to the next).
pub fn key<const N: usize>(fields: [Option<&str>; N]) -> Key {
    let mut hash = Sha256::new();
    hash.update(b"concord auth callback v1");
    for field in fields {
        match field {
            None => hash.update([0]),
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
        }
    }
    hash.finalize().into()
}

pub struct AnswerCache {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<Key, (Instant, Answer)>,
    /// Keys with their expiry, oldest first. An element whose expiry no longer matches its entry
    /// (removed, or stored again since) is stale and skipped.
    order: VecDeque<(Instant, Key)>,
}

impl AnswerCache {
    /// A cache keeping answers for `ttl` (zero: keeps nothing), at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        AnswerCache {
            ttl,
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The answer stored for `key`, if it has not expired at `now`.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Answer> {
        match self.entries.get(key) {
            Some((expires, answer)) if *expires > now => Some(answer.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `answer` for `key` until `now + ttl`.
    pub fn insert(&mut self, key: Key, answer: Answer, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        self.drop_expired(now);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict_oldest();
        }
        let expires = now + self.ttl;
        self.entries.insert(key, (expires, answer));
        self.order.push_back((expires, key));
        // Storing a key again leaves a stale element behind; keep `order` bounded too.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(at, key)| entries.get(key).is_some_and(|(e, _)| e == at));
        }
    }

    fn is_current(&self, at: Instant, key: &Key) -> bool {
        self.entries.get(key).is_some_and(|(e, _)| *e == at)
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            if self.is_current(at, &key) {
                self.entries.remove(&key);
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((at, key)) = self.order.pop_front() {
            if self.is_current(at, &key) {
                self.entries.remove(&key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Access;

    fn answer(access: Access) -> Answer {
        Answer {
            access,
            user: None,
            admin: false,
        }
    }

    fn k(n: u32) -> Key {
        key([Some("doc"), Some(&n.to_string()), None, None])
    }

    #[test]
    fn keys_separate_every_field_and_absence() {
        let questions = [
            [None, None, None, None],
            [Some(""), None, None, None],
            [None, Some(""), None, None],
            [None, None, Some(""), None],
            [None, None, None, Some("")],
            [Some("ab"), Some("c"), None, None],
            [Some("a"), Some("bc"), None, None],
            [
                Some("doc"),
                Some("token"),
                Some("c=1"),
                Some("Bearer token"),
            ],
            [
                Some("doc"),
                Some("token"),
                Some("c=2"),
                Some("Bearer token"),
            ],
            [
                Some("other"),
                Some("token"),
                Some("c=1"),
                Some("Bearer token"),
            ],
        ];
        let keys: std::collections::HashSet<Key> = questions.iter().map(|q| key(*q)).collect();
        assert_eq!(keys.len(), questions.len(), "two questions share a key");
        assert_eq!(key(questions[7]), key(questions[7]), "keys are stable");
    }

    #[test]
    fn answers_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut cache = AnswerCache::new(Duration::from_secs(30), 10);
        cache.insert(k(1), answer(Access::Read), t0);
        assert_eq!(
            cache.get(&k(1), t0 + Duration::from_secs(29)),
            Some(answer(Access::Read))
        );
        assert_eq!(cache.get(&k(2), t0), None);
        assert_eq!(cache.get(&k(1), t0 + Duration::from_secs(30)), None);
        assert_eq!(cache.len(), 0, "an expired entry is dropped when found");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let t0 = Instant::now();
        let mut cache = AnswerCache::new(Duration::ZERO, 10);
        cache.insert(k(1), answer(Access::Write), t0);
        assert_eq!(cache.get(&k(1), t0), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn when_full_expired_entries_go_first_then_the_oldest() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut cache = AnswerCache::new(s(10), 3);
        cache.insert(k(1), answer(Access::Write), t0);
        cache.insert(k(2), answer(Access::Write), t0 + s(5));
        cache.insert(k(3), answer(Access::Write), t0 + s(6));
        // At t0+10, k1 has expired: it makes room, and k2 and k3 stay.
        cache.insert(k(4), answer(Access::Write), t0 + s(10));
        assert_eq!(cache.len(), 3);
        for n in [2, 3, 4] {
            assert!(cache.get(&k(n), t0 + s(11)).is_some(), "k{n} was evicted");
        }
        // Full of live entries: the oldest (k2) goes.
        cache.insert(k(5), answer(Access::Read), t0 + s(11));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&k(2), t0 + s(11)), None);
        for n in [3, 4, 5] {
            assert!(cache.get(&k(n), t0 + s(11)).is_some(), "k{n} was evicted");
        }
    }

    #[test]
    fn storing_a_key_again_neither_grows_the_cache_nor_evicts_others() {
        let t0 = Instant::now();
        let mut cache = AnswerCache::new(Duration::from_secs(10), 2);
        cache.insert(k(1), answer(Access::Write), t0);
        cache.insert(k(2), answer(Access::Write), t0);
        for i in 0..100 {
            cache.insert(k(2), answer(Access::Read), t0 + Duration::from_millis(i));
        }
        assert_eq!(cache.len(), 2);
        assert!(
            cache.order.len() <= 4,
            "order grew to {}",
            cache.order.len()
        );
        assert_eq!(cache.get(&k(1), t0), Some(answer(Access::Write)));
        assert_eq!(cache.get(&k(2), t0), Some(answer(Access::Read)));
    }
}
