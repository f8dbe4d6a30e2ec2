//! What the servers' memory is spent on: resident memory (RSS) of every server process at four
//! points of a run, and the two figures derived from them that size a deployment:
//!
//! - before the pre-fill (a), after it with no client connected (b: the documents are live),
//!   with every editor and reader connected and synced but idle (c), and at the end (d);
//! - RSS per live document = (b − a) / (documents × servers measured), and
//!   RSS per connection = (c − b) / connections.
//!
//! A server this tool did not start has no pid unless `--target-pid` gives it; without every
//! pid the figures are left out, with a note saying why.

use std::time::Duration;

use serde::Serialize;

use crate::procstat;

/// RSS of one server at the four points, in KiB.
#[derive(Serialize, Clone, Default, Debug, PartialEq)]
pub struct RegionMemory {
    pub name: String,
    pub before_prefill_kib: Option<u64>,
    pub after_prefill_kib: Option<u64>,
    pub connected_kib: Option<u64>,
    pub end_kib: Option<u64>,
}

/// The servers' memory over the run (`memory` in report.json).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Memory {
    /// `--doc-size`: text bytes pre-filled into every document (0: none).
    pub doc_size_bytes: usize,
    /// That document's encoded size (v1 update bytes, what a fresh client's Step2 carries).
    pub doc_update_bytes: usize,
    pub prefill_secs: f64,
    pub documents: usize,
    /// Client connections open at (c): every editor and reader.
    pub connections: usize,
    pub regions: Vec<RegionMemory>,
    /// (b − a) / (documents × servers), in KiB: what one server spends on one live document.
    pub rss_per_live_doc_kib: Option<f64>,
    /// (c − b) / connections, in KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Why a figure is missing or what it includes.
    pub note: Option<String>,
}

impl Memory {
    /// Derives the figures from the samples.
    pub fn new(
        doc_size_bytes: usize,
        doc_update_bytes: usize,
        prefill_secs: f64,
        documents: usize,
        connections: usize,
        regions: Vec<RegionMemory>,
    ) -> Memory {
        let sum = |f: fn(&RegionMemory) -> Option<u64>| -> Option<u64> {
            regions.iter().map(f).sum::<Option<u64>>()
        };
        let a = sum(|r| r.before_prefill_kib);
        let b = sum(|r| r.after_prefill_kib);
        let c = sum(|r| r.connected_kib);
        let diff = |from: u64, to: u64| to as f64 - from as f64;
        let measured = !regions.is_empty() && a.is_some();
        let mut note = None;
        let per_doc = match (a, b) {
            _ if !measured => None,
            _ if doc_size_bytes == 0 => {
                note = Some(
                    "no pre-fill (--doc-size 0): documents become live as editors connect, so \
                     RSS per connection includes them"
                        .to_string(),
                );
                None
            }
            (Some(a), Some(b)) if documents > 0 => {
                Some(diff(a, b) / (documents * regions.len()) as f64)
            }
            _ => None,
        };
        let per_connection = match (b, c) {
            (Some(b), Some(c)) if connections > 0 => Some(diff(b, c) / connections as f64),
            _ => None,
        };
        if !measured {
            note = Some(if regions.is_empty() {
                "no server to measure".to_string()
            } else {
                "server RSS unavailable: the servers' pids are not known (pass --target-pid \
                 for --target servers)"
                    .to_string()
            });
        }
        Memory {
            doc_size_bytes,
            doc_update_bytes,
            prefill_secs,
            documents,
            connections,
            regions,
            rss_per_live_doc_kib: per_doc,
            rss_per_connection_kib: per_connection,
            note,
        }
    }
}

/// RSS of each pid (`None` where there is none or it cannot be read) once it has stopped
/// moving: read every [`SETTLE_STEP`] until two readings in a row differ by at most
/// [`SETTLED_KIB`] in total, for at most [`SETTLE_MAX`]. Freed connections and buffers take a
/// moment to leave a server's RSS, and a reading in the middle would be noise.
pub async fn settled_rss(pids: &[Option<u32>]) -> Vec<Option<u64>> {
    let read =
        || -> Vec<Option<u64>> { pids.iter().map(|p| p.and_then(procstat::rss_kib)).collect() };
    let total = |v: &[Option<u64>]| v.iter().flatten().sum::<u64>();
    let mut last = read();
    let mut waited = Duration::ZERO;
    while waited < SETTLE_MAX && pids.iter().any(Option::is_some) {
        tokio::time::sleep(SETTLE_STEP).await;
        waited += SETTLE_STEP;
        let now = read();
        let settled = total(&now).abs_diff(total(&last)) <= SETTLED_KIB;
        last = now;
        if settled {
            break;
        }
    }
    last
}

const SETTLE_STEP: Duration = Duration::from_millis(250);
const SETTLE_MAX: Duration = Duration::from_secs(5);
const SETTLED_KIB: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn region(a: u64, b: u64, c: u64) -> RegionMemory {
        RegionMemory {
            name: "r".into(),
            before_prefill_kib: Some(a),
            after_prefill_kib: Some(b),
            connected_kib: Some(c),
            end_kib: Some(c),
        }
    }

    #[test]
    fn per_document_and_per_connection() {
        // Two servers, 4 documents each live on both, 10 connections in all.
        let m = Memory::new(
            500_000,
            1_800_000,
            1.0,
            4,
            10,
            vec![
                region(10_000, 30_000, 31_000),
                region(10_000, 26_000, 26_500),
            ],
        );
        assert_eq!(m.rss_per_live_doc_kib, Some(36_000.0 / 8.0));
        assert_eq!(m.rss_per_connection_kib, Some(1_500.0 / 10.0));
        assert_eq!(m.note, None);
    }

    #[test]
    fn memory_given_back_is_a_negative_figure_not_a_wrap() {
        let m = Memory::new(1, 1, 0.0, 1, 1, vec![region(10_000, 9_000, 8_000)]);
        assert_eq!(m.rss_per_live_doc_kib, Some(-1_000.0));
        assert_eq!(m.rss_per_connection_kib, Some(-1_000.0));
    }

    #[test]
    fn no_prefill_has_no_per_document_figure() {
        let m = Memory::new(0, 0, 0.0, 4, 10, vec![region(10_000, 10_000, 12_000)]);
        assert_eq!(m.rss_per_live_doc_kib, None);
        assert_eq!(m.rss_per_connection_kib, Some(200.0));
        assert!(m.note.unwrap().contains("--doc-size 0"));
    }

    #[test]
    fn unknown_pids_leave_the_figures_out_and_say_why() {
        let mut r = region(1, 2, 3);
        r.before_prefill_kib = None;
        r.after_prefill_kib = None;
        r.connected_kib = None;
        let m = Memory::new(500_000, 1, 0.0, 4, 10, vec![r.clone(), region(1, 2, 3)]);
        assert_eq!(m.rss_per_live_doc_kib, None);
        assert_eq!(m.rss_per_connection_kib, None);
        assert!(m.note.unwrap().contains("--target-pid"));
    }
}
