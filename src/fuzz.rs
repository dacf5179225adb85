//! Fuzzing entry points, one per target of `fuzz/` (cargo fuzz): each takes
//! arbitrary bytes, must never panic, and asserts an invariant of its
//! decoder. The seed corpora in `fuzz/seeds/` run through them in the unit
//! tests below, so the suite replays every committed seed and crash input.

use crate::wal::record::{self, Record};

pub use crate::http::fuzz::{key_and_value, subscription_body};

/// The WAL record decoder, run over `data` the way replay walks a segment.
///
/// # Panics
///
/// When a decoded record does not encode back to the same record (the
/// checksums would then hide a codec bug). Records of the kinds written
/// before old values were logged come back in the newer kind, so the check
/// is on the record, not its bytes.
pub fn wal_records(data: &[u8]) {
    let mut rest = data;
    while let Ok((decoded, used)) = record::decode(rest) {
        let mut again = Vec::new();
        record::encode(&decoded, &mut again);
        assert_eq!(
            record::decode(&again),
            Ok((decoded.clone(), again.len())),
            "re-encoding {decoded:?}"
        );
        if let Record::Change(change) = &decoded {
            assert!(std::str::from_utf8(change.key.as_bytes()).is_ok());
        }
        rest = &rest[used..];
    }
}

/// The snapshot loader over `data` as a whole file.
///
/// # Panics
///
/// When a snapshot that loads does not hold as many entries as it applied.
pub fn snapshot(data: &[u8]) {
    let mut applied = 0u64;
    if let Ok(loaded) = crate::snapshot::load_bytes(data, "fuzz", |_| applied += 1) {
        assert_eq!(loaded.keys, applied);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seed dir") {
            let path = entry.expect("entry").path();
            run(&std::fs::read(&path).expect("seed"));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn wal_record_seeds() {
        replay("wal_record", super::wal_records);
    }

    #[test]
    fn snapshot_seeds() {
        replay("snapshot", super::snapshot);
    }

    #[test]
    fn key_and_value_seeds() {
        replay("key_and_value", super::key_and_value);
    }

    #[test]
    fn subscription_body_seeds() {
        replay("subscription_body", super::subscription_body);
    }
}
