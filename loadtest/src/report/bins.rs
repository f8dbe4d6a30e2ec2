//! Latency histograms cut into bins of one width, so that a distribution's shape shows.
//!
//! Fixed log-scale buckets put a cross-region run (every delivery within a few ms of the injected
//! latency) into a single bar. Here the bins follow the data instead: about √n of them (n samples,
//! between [`MIN_BINS`] and [`MAX_BINS`]), of a round width (1, 2 or 5 × 10ᵏ µs, never finer than
//! the histogram's own resolution), from the fastest sample to the slowest that is not a far
//! outlier (Tukey's fence: the third quartile plus three interquartile ranges). Far outliers are
//! counted in the last bin, which is then open-ended ([`Binned::open_tail`]): one 90 ms hiccup
//! cannot squeeze twenty bins' worth of 20 ms deliveries into one, and the counts still add up to
//! every sample.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Fewest and most bins a histogram aims for.
pub const MIN_BINS: u64 = 5;
pub const MAX_BINS: u64 = 40;

/// One bin: the samples in `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

/// A latency histogram in bins of one width, as drawn in report.html and written to report.json.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Binned {
    pub bins: Vec<Bin>,
    /// The last bin also holds the samples slower than its `to_ms`, up to `max_ms`.
    pub open_tail: bool,
    /// The slowest sample (0 when there is none).
    pub max_ms: f64,
}

impl Binned {
    /// Every sample is in exactly one bin, so this is the histogram's sample count.
    pub fn total(&self) -> u64 {
        self.bins.iter().map(|b| b.count).sum()
    }
}

/// Cuts `h` (values in µs) into bins; see the module comment for how the width is chosen.
pub fn bin(h: &Histogram<u64>) -> Binned {
    let samples: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let (Some(&(lo, _)), Some(&(max, _))) = (samples.first(), samples.last()) else {
        return Binned::default();
    };
    let (q1, q3) = (h.value_at_quantile(0.25), h.value_at_quantile(0.75));
    let hi = (q3 + 3 * (q3 - q1)).clamp(lo, max);
    let target = ((h.len() as f64).sqrt().ceil() as u64).clamp(MIN_BINS, MAX_BINS);
    // Finer bins than the histogram's resolution would alternate full and empty.
    let width = round_width(((hi - lo) / target).max(h.equivalent_range(hi)).max(1));
    let start = lo / width * width;
    let n = (hi - start) / width + 1;
    let mut counts = vec![0u64; n as usize];
    for (value, count) in samples {
        let i = ((value - start) / width).min(n - 1);
        counts[i as usize] += count;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Binned {
        bins: counts
            .into_iter()
            .enumerate()
            .map(|(i, count)| {
                let from = start + i as u64 * width;
                Bin {
                    from_ms: ms(from),
                    to_ms: ms(from + width),
                    count,
                }
            })
            .collect(),
        open_tail: max >= start + n * width,
        max_ms: ms(max),
    }
}

/// The smallest of 1, 2, 5, 10, 20, 50, … that is at least `w`.
fn round_width(w: u64) -> u64 {
    let mut decade = 1u64;
    loop {
        for m in [1, 2, 5] {
            if m * decade >= w {
                return m * decade;
            }
        }
        decade *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn hist(samples_us: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(v, n) in samples_us {
            h.record_n(v, n).unwrap();
        }
        h
    }

    #[test]
    fn round_widths() {
        let got: Vec<u64> = [1, 2, 3, 7, 10, 11, 333, 501].map(round_width).to_vec();
        assert_eq!(got, [1, 2, 5, 10, 10, 20, 500, 1000]);
    }

    #[test]
    fn a_cross_region_run_gets_many_bins_not_one() {
        // 20 ms of injected latency plus 0–3 ms of jitter: what used to be one bar labelled "56".
        let samples: Vec<(u64, u64)> = (0..=30).map(|i| (20_000 + i * 100, 1 + i % 7)).collect();
        let b = bin(&hist(&samples));
        // 118 samples: about 11 bins over 20–23 ms, rounded to 0.5 ms.
        assert_eq!(b.bins.len(), 7, "{b:?}");
        assert!(b.bins.iter().all(|x| x.count > 0));
        assert!(!b.open_tail);
        assert_eq!((b.bins[0].from_ms, b.bins[0].to_ms), (20.0, 20.5));
        let counts: Vec<u64> = b.bins.iter().map(|x| x.count).collect();
        assert_eq!(counts, [15, 19, 23, 20, 17, 21, 3]); // 5 values of 1 + i % 7 each, then 1
        assert_eq!(b.total(), samples.iter().map(|s| s.1).sum::<u64>());
        assert!((b.max_ms - 23.0).abs() < 0.02, "{}", b.max_ms);
    }

    #[test]
    fn known_sample_gives_known_counts() {
        // 1.00, 1.01, … 1.99 ms once each, and 1.50 ms 20 more times: 120 samples, 11 bins wanted,
        // 0.99 ms / 11 → 0.1 ms wide.
        let mut samples: Vec<(u64, u64)> = (0..100).map(|k| (1_000 + 10 * k, 1)).collect();
        samples.push((1_500, 20));
        let b = bin(&hist(&samples));
        let counts: Vec<u64> = b.bins.iter().map(|x| x.count).collect();
        assert_eq!(counts, [10, 10, 10, 10, 10, 30, 10, 10, 10, 10]);
        assert_eq!((b.bins[5].from_ms, b.bins[5].to_ms), (1.5, 1.6));
        // Consecutive bins of one width.
        for w in b.bins.windows(2) {
            assert_eq!(w[0].to_ms, w[1].from_ms);
        }
    }

    #[test]
    fn far_outliers_go_to_an_open_last_bin() {
        // Quartiles 10 and 12 ms: the fence is at 18 ms; the five 900 ms samples are beyond it.
        let b = bin(&hist(&[(10_000, 5_000), (12_000, 4_995), (900_000, 5)]));
        assert!(b.open_tail);
        let last = b.bins.last().unwrap();
        assert_eq!(last.count, 5);
        assert!(last.from_ms <= 18.0 && last.to_ms > 18.0, "{last:?}");
        assert_eq!(
            b.bins.iter().find(|x| x.from_ms == 12.0).unwrap().count,
            4_995
        );
        assert!(
            (20..=MAX_BINS as usize + 1).contains(&b.bins.len()),
            "{}",
            b.bins.len()
        );
        assert_eq!(b.total(), 10_000);
        assert!((b.max_ms - 900.0).abs() < 1.0);
    }

    #[test]
    fn one_value_is_one_bin_and_none_is_empty() {
        let b = bin(&hist(&[(500, 9)]));
        assert_eq!(b.bins.len(), 1);
        assert_eq!(b.total(), 9);
        assert!(!b.open_tail);
        assert_eq!(bin(&new_histogram()), Binned::default());
    }
}
