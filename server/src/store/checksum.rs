//! Checksums of stored rows, so that bytes damaged on disk are refused instead of served.
//!
//! SQLite checks the structure of its file (pages, b-trees), not the content of the values in it:
//! a flipped bit inside a stored update still decodes as a (different) update and would be served,
//! relayed and compacted into snapshots as if it were what the user typed. So every log entry and
//! every snapshot is stored with a CRC-32 of its content and of where it belongs (its sequence
//! number and document row), computed when it is written and checked whenever it is read back.
//!
//! CRC-32 (IEEE, through `crc32fast`, which uses the CPU's carry-less multiply and runs at several
//! GB/s) because what it guards against is accidental damage, not an adversary (anyone who can
//! write the file can recompute a checksum): it detects every error burst up to 32 bits and any
//! other damage with probability 1 - 2^-32. Pure functions, no I/O.

/// The checksum of log entry `seq` of document row `doc_id`, with its `path` (as stored) and its
/// `update` bytes.
pub fn log_entry(seq: u64, doc_id: i64, path: &str, update: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&doc_id.to_le_bytes());
    h.update(&(path.len() as u64).to_le_bytes());
    h.update(path.as_bytes());
    h.update(update);
    h.finalize()
}

/// The checksum of the snapshot stored in document row `doc_id`.
pub fn snapshot(doc_id: i64, snapshot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&doc_id.to_le_bytes());
    h.update(snapshot);
    h.finalize()
}

/// Checks a stored checksum: `None` (a row written before checksums existed) is accepted, like
/// every row was before.
pub fn matches(stored: Option<i64>, computed: u32) -> bool {
    stored.is_none_or(|s| s == i64::from(computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_flipped_bit_of_an_entry_changes_its_checksum() {
        let update = b"\x01\x01\x8a\x02\x00\x04\x01\x01thello".to_vec();
        let good = log_entry(7, 3, "eu,us", &update);
        for byte in 0..update.len() {
            for bit in 0..8 {
                let mut bad = update.clone();
                bad[byte] ^= 1 << bit;
                assert_ne!(
                    log_entry(7, 3, "eu,us", &bad),
                    good,
                    "byte {byte} bit {bit}"
                );
            }
        }
        assert_ne!(log_entry(8, 3, "eu,us", &update), good, "another sequence");
        assert_ne!(log_entry(7, 4, "eu,us", &update), good, "another document");
        assert_ne!(log_entry(7, 3, "eu,uk", &update), good, "another path");
        // The path's length is hashed, so bytes cannot move between path and update unnoticed.
        assert_ne!(
            log_entry(7, 3, "eu,u", b"s\x01"),
            log_entry(7, 3, "eu,us", b"\x01")
        );
    }

    #[test]
    fn a_snapshot_checksum_binds_it_to_its_document() {
        let s = snapshot(1, b"state");
        assert_eq!(s, snapshot(1, b"state"));
        assert_ne!(s, snapshot(2, b"state"));
        assert_ne!(s, snapshot(1, b"statf"));
    }

    #[test]
    fn rows_without_a_checksum_are_accepted_and_others_must_match() {
        assert!(matches(None, 42));
        assert!(matches(Some(42), 42));
        assert!(!matches(Some(43), 42));
        assert!(matches(Some(u32::MAX as i64), u32::MAX));
    }
}
