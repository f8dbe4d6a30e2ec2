//! The per-second view of a run: one point per region for each whole second of writing, and the
//! series the "over time" charts draw from them.
//!
//! Only whole seconds of writing are points. The seconds of connecting (nothing sent yet) and the
//! partial seconds at either end of the writing would show as false dips to zero, the first of
//! them at t=0. A second in which a region received nothing of a kind has no latency to show, so
//! the latency series skip it rather than plot a made-up 0.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;

use crate::stats::{Bucket, Kind, Summary};

/// One region's second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Whole seconds since the load generator started.
    pub second: u64,
    pub region: usize,
    pub sent: u64,
    pub delivered: u64,
    /// Local deliveries (echo and same region) received in this second, and their percentiles.
    pub local_samples: u64,
    pub local_p50_ms: f64,
    pub local_p99_ms: f64,
    pub cross_samples: u64,
    pub cross_p50_ms: f64,
    pub cross_p99_ms: f64,
}

impl Point {
    fn of(second: u64, region: usize, b: &Bucket) -> Point {
        let l = Summary::of(&super::local_of(b));
        let c = Summary::of(&b.hist[Kind::Cross as usize]);
        Point {
            second,
            region,
            sent: b.sent,
            delivered: b.delivered,
            local_samples: l.count,
            local_p50_ms: l.p50_ms,
            local_p99_ms: l.p99_ms,
            cross_samples: c.count,
            cross_p50_ms: c.p50_ms,
            cross_p99_ms: c.p99_ms,
        }
    }
}

/// A point for every second of `seconds` and every one of `regions` regions, in that order (a
/// region that flushed nothing in a second sent and received nothing in it).
pub fn points(
    buckets: &BTreeMap<(u64, usize), Bucket>,
    seconds: Range<u64>,
    regions: usize,
) -> Vec<Point> {
    let empty = Bucket::default();
    seconds
        .flat_map(|s| (0..regions).map(move |r| (s, r)))
        .map(|(s, r)| Point::of(s, r, buckets.get(&(s, r)).unwrap_or(&empty)))
        .collect()
}

/// One line of a chart: a region's (second, value) pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// A series per region of `names`, with the value `value` gives (`None`: no point that second).
pub fn series(
    timeline: &[Point],
    names: &[String],
    value: impl Fn(&Point) -> Option<f64>,
) -> Vec<Series> {
    names
        .iter()
        .enumerate()
        .map(|(r, name)| Series {
            name: name.clone(),
            points: timeline
                .iter()
                .filter(|p| p.region == r)
                .filter_map(|p| value(p).map(|v| (p.second, v)))
                .collect(),
        })
        .collect()
}

/// The p99 of local deliveries, in seconds that had any.
pub fn local_p99(p: &Point) -> Option<f64> {
    (p.local_samples > 0).then_some(p.local_p99_ms)
}

/// The p99 of cross-region deliveries, in seconds that had any.
pub fn cross_p99(p: &Point) -> Option<f64> {
    (p.cross_samples > 0).then_some(p.cross_p99_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(sent: u64, cross_us: &[u64]) -> Bucket {
        let mut b = Bucket {
            sent,
            delivered: cross_us.len() as u64,
            ..Bucket::default()
        };
        for v in cross_us {
            b.hist[Kind::Cross as usize].record(*v).unwrap();
        }
        b
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn points_cover_the_measured_seconds_only() {
        // Second 0 (connecting: empty) and 5 (partial) exist but are outside the measured 2..5.
        let mut buckets = BTreeMap::new();
        buckets.insert((0, 0), Bucket::default());
        for s in 2..6 {
            buckets.insert((s, 0), bucket(10 + s, &[20_000]));
            buckets.insert((s, 1), bucket(20 + s, &[30_000]));
        }
        buckets.remove(&(3, 1)); // region b flushed nothing in second 3
        let t = points(&buckets, 2..5, 2);
        let seconds: Vec<(u64, usize)> = t.iter().map(|p| (p.second, p.region)).collect();
        assert_eq!(seconds, [(2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (4, 1)]);
        assert_eq!(t[3].sent, 0);
        assert_eq!(t[3].cross_samples, 0);
        assert_eq!(t[4].sent, 14);
        assert_eq!(t[4].cross_samples, 1);

        let sent = series(&t, &names(), |p| Some(p.sent as f64));
        assert_eq!(sent[0].points, [(2, 12.0), (3, 13.0), (4, 14.0)]);
        assert_eq!(sent[1].points, [(2, 22.0), (3, 0.0), (4, 24.0)]);
        assert!(sent.iter().all(|s| s.points.iter().all(|p| p.0 != 0)));

        // No latency is drawn for b's empty second, rather than a false 0.
        let cross = series(&t, &names(), cross_p99);
        assert_eq!(cross[0].points.len(), 3);
        assert_eq!(
            cross[1].points.iter().map(|p| p.0).collect::<Vec<_>>(),
            [2, 4]
        );
        assert!(cross[1].points.iter().all(|p| (p.1 - 30.0).abs() < 0.1));
        assert!(
            series(&t, &names(), local_p99)
                .iter()
                .all(|s| s.points.is_empty())
        );
    }

    #[test]
    fn no_whole_second_no_points() {
        let mut buckets = BTreeMap::new();
        buckets.insert((4, 0), bucket(3, &[]));
        assert!(points(&buckets, 5..5, 2).is_empty());
    }
}
