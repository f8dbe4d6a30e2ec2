//! Admission of client WebSocket connections against `--max-connections` and
//! `--max-connections-per-ip`, and of new live documents against `--max-live-docs`, so that one
//! client (or a flood of them) cannot take every socket and every byte of memory the server has.
//!
//! [`Admission::try_admit`] is called before the upgrade and returns a [`Permit`] that holds one
//! place until it is dropped; the connection task owns it, so a place is held exactly as long as
//! its connection lives. Counting and checking are one atomic step (a compare-and-swap on the
//! total, the map shard's lock for an address), so concurrent upgrades can never overshoot a
//! limit. The per-address map only holds addresses with a live connection: an entry is removed
//! when its count returns to zero, so it is bounded by the number of open connections.
//!
//! [`LiveDocs`] counts live documents the same way: a [`DocSlot`] is reserved before a room is
//! started (one compare-and-swap, so clients opening documents concurrently never overshoot the
//! limit) and is held by the room's task until it ends. Documents started for a peer's
//! replicated update, or to take over a just-evicted room's queued messages, take a slot without
//! the check ([`LiveDocs::reserve`]): refusing them would lose data, so they may go over the
//! limit, and then new documents are refused until enough rooms have gone.
//!
//! Refusals are logged at debug one by one and at warn at most once per [`WARN_EVERY`], with how
//! many there were since the previous warning: a flood of upgrades must not flood the log.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tracing::{debug, warn};

/// The shortest time between two warnings about refused connections.
pub const WARN_EVERY: Duration = Duration::from_secs(1);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `--max-connections` connections are open.
    #[error("server is at its connection limit ({0}); retry later")]
    Full(usize),
    /// `--max-connections-per-ip` connections are open from this address.
    #[error("too many connections from this address (limit {0})")]
    PerIp(usize),
    /// `--max-live-docs` documents are live and this one is not.
    #[error("too many live documents on this node (limit {0}); retry later")]
    LiveDocs(usize),
}

impl Refusal {
    /// The HTTP status to answer the request with: 503 when the server is full (it is not the
    /// client's fault), 429 when this address holds too many connections.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Full(_) | Refusal::LiveDocs(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::PerIp(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The refusal's kind, as the metrics count it (a fixed set of labels).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Full(_) => "connection_limit",
            Refusal::PerIp(_) => "per_ip_limit",
            Refusal::LiveDocs(_) => "live_doc_limit",
        }
    }
}

/// Counts open client connections, in total and per address, against their limits (0: none).
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    /// Only filled when `max_per_ip` is set; holds addresses with at least one connection.
    per_ip: DashMap<IpAddr, usize>,
    warnings: RateLimit,
}

/// One admitted connection's place; dropping it frees the place.
#[must_use = "the place is freed as soon as the permit is dropped"]
pub struct Permit {
    admission: Arc<Admission>,
    /// The address counted in `per_ip`, when per-address limits are on.
    ip: Option<IpAddr>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            warnings: RateLimit::new(WARN_EVERY),
        })
    }

    /// Takes a place for a new connection from `ip`, or says why there is none. Refusals are
    /// logged (see the module doc).
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        // An IPv4 client of a dual-stack listener appears as ::ffff:a.b.c.d; count it as a.b.c.d.
        let ip = ip.to_canonical();
        let admitted = self.admit(ip);
        if let Err(refusal) = &admitted {
            debug!(%ip, reason = %refusal, "connection refused before the upgrade");
            if let Some(refused) = self.warnings.due() {
                warn!(%ip, reason = %refusal, refused, "connections refused before the upgrade (count since the last warning)");
            }
        }
        admitted
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let max = self.max_total;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::Full(max))?;
        // From here the place is counted: the permit frees it, also on refusal below.
        let mut permit = Permit {
            admission: self.clone(),
            ip: None,
        };
        if self.max_per_ip != 0 {
            match self.per_ip.entry(ip) {
                Entry::Occupied(mut e) => {
                    if *e.get() >= self.max_per_ip {
                        return Err(Refusal::PerIp(self.max_per_ip));
                    }
                    *e.get_mut() += 1;
                }
                Entry::Vacant(e) => {
                    e.insert(1);
                }
            }
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    /// Open connections holding a permit.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses with at least one open connection (when per-address limits are on).
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip
            && let Entry::Occupied(mut e) = self.admission.per_ip.entry(ip)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts live documents (running room tasks) against `--max-live-docs` (0: no limit).
pub struct LiveDocs {
    max: usize,
    live: AtomicUsize,
    warnings: RateLimit,
}

/// One live document's place, held by its room's task; dropping it frees the place.
#[must_use = "the place is freed as soon as the slot is dropped"]
pub struct DocSlot {
    docs: Arc<LiveDocs>,
}

impl LiveDocs {
    pub fn new(max: usize) -> Arc<LiveDocs> {
        Arc::new(LiveDocs {
            max,
            live: AtomicUsize::new(0),
            warnings: RateLimit::new(WARN_EVERY),
        })
    }

    /// A place for one more live document, or [`Refusal::LiveDocs`] when the limit is reached.
    /// Not logged: the caller knows the document, see [`LiveDocs::refused`].
    pub fn try_reserve(self: &Arc<Self>) -> Result<DocSlot, Refusal> {
        let max = self.max;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::LiveDocs(max))?;
        Ok(DocSlot { docs: self.clone() })
    }

    /// A place whatever the limit, for a document that must not be refused (see the module doc).
    pub fn reserve(self: &Arc<Self>) -> DocSlot {
        self.live.fetch_add(1, Ordering::AcqRel);
        DocSlot { docs: self.clone() }
    }

    /// Whether a new document would be admitted now, without reserving its place.
    pub fn check(&self) -> Result<(), Refusal> {
        let n = self.live.load(Ordering::Acquire);
        match self.max == 0 || n < self.max {
            true => Ok(()),
            false => Err(Refusal::LiveDocs(self.max)),
        }
    }

    /// Logs the refusal of `doc` (see the module doc for how often).
    pub fn refused(&self, doc: &str, refusal: &Refusal) {
        debug!(%doc, reason = %refusal, "new document refused");
        if let Some(refused) = self.warnings.due() {
            warn!(%doc, reason = %refusal, refused, "new documents refused at the live document limit (count since the last warning)");
        }
    }

    /// Places held: rooms started and not yet ended.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for DocSlot {
    fn drop(&mut self) {
        self.docs.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lets an event through at most once per period, counting the events in between.
struct RateLimit {
    every_ms: u64,
    start: Instant,
    /// Milliseconds since `start` of the last event let through; `u64::MAX` before the first.
    last_ms: AtomicU64,
    /// Events since the last one let through, that one included.
    count: AtomicU64,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit {
            every_ms: every.as_millis() as u64,
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
        }
    }

    /// Records an event; `Some(events since the last report)` when this one is to be reported.
    fn due(&self) -> Option<u64> {
        self.due_at(self.start.elapsed().as_millis() as u64)
    }

    fn due_at(&self, now: u64) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now >= last.saturating_add(self.every_ms);
        // One caller wins the period; the others are counted for the next report.
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.count.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_limit_refuses_over_it_and_frees_on_drop() {
        let a = Admission::new(2, 0);
        let p1 = a.try_admit(ip("10.0.0.1")).unwrap();
        let _p2 = a.try_admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.try_admit(ip("10.0.0.3")).err(), Some(Refusal::Full(2)));
        assert_eq!(a.open(), 2);
        drop(p1);
        assert_eq!(a.open(), 1);
        let _p3 = a.try_admit(ip("10.0.0.3")).unwrap();
        assert_eq!(a.addresses(), 0, "per-address counting is off");
    }

    #[test]
    fn zero_means_no_limit() {
        let a = Admission::new(0, 0);
        let permits: Vec<_> = (0..1000).map(|_| a.try_admit(ip("::1")).unwrap()).collect();
        assert_eq!(a.open(), 1000);
        drop(permits);
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn per_ip_limit_is_per_address_and_entries_go_at_zero() {
        let a = Admission::new(0, 2);
        let x1 = a.try_admit(ip("10.0.0.1")).unwrap();
        let x2 = a.try_admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.try_admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp(2)));
        // The same address seen through a dual-stack socket counts as the same.
        assert_eq!(
            a.try_admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refusal::PerIp(2))
        );
        let _y = a.try_admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.open(), 3, "refusals hold no place");
        drop((x1, x2));
        assert_eq!(
            a.addresses(),
            1,
            "an address without connections is forgotten"
        );
        let _x = a.try_admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn per_ip_refusal_frees_its_total_place() {
        let a = Admission::new(2, 1);
        let _x = a.try_admit(ip("10.0.0.1")).unwrap();
        assert!(a.try_admit(ip("10.0.0.1")).is_err());
        let _y = a.try_admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.try_admit(ip("10.0.0.3")).err(), Some(Refusal::Full(2)));
        assert_eq!(a.addresses(), 2);
    }

    #[test]
    fn concurrent_admissions_never_overshoot() {
        let a = Admission::new(50, 0);
        let admitted = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let a = a.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter_map(|i| a.try_admit(IpAddr::from([10, 0, t, i])).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(admitted.iter().map(Vec::len).sum::<usize>(), 50);
        drop(admitted);
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn live_docs_refuse_over_the_limit_and_free_on_drop() {
        let d = LiveDocs::new(2);
        let s1 = d.try_reserve().unwrap();
        let _s2 = d.try_reserve().unwrap();
        assert_eq!(d.try_reserve().err(), Some(Refusal::LiveDocs(2)));
        assert_eq!(d.check(), Err(Refusal::LiveDocs(2)));
        assert_eq!(
            Refusal::LiveDocs(2).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(d.live(), 2, "a refusal holds no place");
        drop(s1);
        assert_eq!(d.check(), Ok(()));
        let _s3 = d.try_reserve().unwrap();
    }

    #[test]
    fn live_docs_reserved_without_the_check_go_over_and_block_new_ones() {
        let d = LiveDocs::new(1);
        let s1 = d.try_reserve().unwrap();
        let forced = d.reserve();
        assert_eq!(d.live(), 2, "a forced place goes over the limit");
        drop(s1);
        assert!(
            d.try_reserve().is_err(),
            "still at the limit: the forced place counts"
        );
        drop(forced);
        let _s = d.try_reserve().unwrap();
    }

    #[test]
    fn live_docs_zero_means_no_limit_and_concurrent_reservations_never_overshoot() {
        let unlimited = LiveDocs::new(0);
        let slots: Vec<_> = (0..1000)
            .map(|_| unlimited.try_reserve().unwrap())
            .collect();
        assert_eq!(unlimited.live(), 1000);
        drop(slots);
        assert_eq!(unlimited.live(), 0);

        let d = LiveDocs::new(50);
        let reserved = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let d = d.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter_map(|_| d.try_reserve().ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(reserved.iter().map(Vec::len).sum::<usize>(), 50);
        drop(reserved);
        assert_eq!(d.live(), 0);
    }

    #[test]
    fn warnings_are_rate_limited_with_a_count() {
        let r = RateLimit::new(Duration::from_secs(1));
        assert_eq!(r.due_at(5_000), Some(1), "the first event is reported");
        for ms in 5_001..6_000 {
            assert_eq!(r.due_at(ms), None, "within the second of the last report");
        }
        assert_eq!(
            r.due_at(6_000),
            Some(1000),
            "the next report counts the silent ones"
        );
        assert_eq!(r.due_at(6_500), None);
    }
}
