//! Reading the log back: replay at start-up (truncating a torn tail) and
//! offline repair of damage before the end.
//!
//! The rule that tells a torn tail from damage: a bad record in the last
//! segment with no valid record anywhere after it is what a crash
//! mid-append leaves (cut it, with a warning); a bad record followed by a
//! valid one is damage (refuse to start, naming the file and offset). A
//! crash can leave garbage, not only a short file, because a file system
//! may extend a file with stale blocks. "Valid" means the length and the
//! payload checksums both hold, found by scanning forward byte by byte.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::record::{DecodeError, HEADER_BYTES, Record, decode_header};
use super::{WalError, segment};

/// The forward scan reads this much of the file at a time.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records handed to the visitor.
    pub records: u64,
    /// Segments read.
    pub segments: Vec<u64>,
    /// Bytes cut off a torn tail, if any.
    pub truncated_bytes: u64,
}

/// Where reading one segment stopped.
enum SegmentEnd {
    /// Every byte was a good record.
    Clean,
    /// The record at `offset` cannot be read. `next_from` is the first
    /// offset where a record after it could start, when it may be an
    /// interrupted append; `None` when its checksums hold but its payload
    /// does not parse, which no interrupted append leaves.
    Bad {
        offset: u64,
        next_from: Option<u64>,
        reason: String,
    },
}

/// Replays every segment numbered `from` or later, in order, into `visit`.
/// A torn tail of the last segment that holds records (a bad record with
/// no valid record after it) is cut off with a warning; any other bad
/// record stops with [`WalError::Corrupt`]. (Segments after it may exist
/// but be empty: the writer creates the next segment before it finishes
/// syncing the current one, and writes nothing into it until then.)
///
/// # Errors
///
/// [`WalError::Corrupt`], [`WalError::Gap`] or [`WalError::Io`].
pub fn replay(
    dir: &Path,
    from: u64,
    mut visit: impl FnMut(Record),
) -> Result<ReplayReport, WalError> {
    let segments: Vec<u64> = segment::list(dir)
        .map_err(|e| WalError::io(dir, e))?
        .into_iter()
        .filter(|&n| n >= from)
        .collect();
    check_contiguous(dir, &segments)?;
    let mut report = ReplayReport::default();
    for (i, &n) in segments.iter().enumerate() {
        let path = segment::path(dir, n);
        let is_last = later_are_empty(dir, &segments[i + 1..])?;
        let end = read_segment(&path, &mut |record| {
            report.records += 1;
            visit(record);
        })?;
        if let SegmentEnd::Bad {
            offset,
            next_from,
            mut reason,
        } = end
        {
            let len = std::fs::metadata(&path)
                .map_err(|e| WalError::io(&path, e))?
                .len();
            // Only the last segment can end in an interrupted append, and
            // only a record that fails its checksums or is cut short can be
            // one; it is torn when no valid record follows it.
            let torn = match next_from {
                Some(next_from) if is_last => match first_valid_record(&path, next_from, len)? {
                    None => true,
                    Some(at) => {
                        reason = format!("{reason}; a valid record follows at offset {at}");
                        false
                    }
                },
                _ => false,
            };
            if !torn {
                return Err(WalError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    reason,
                });
            }
            tracing::warn!(
                file = %path.display(),
                offset,
                dropped_bytes = len - offset,
                %reason,
                "truncating a torn record at the end of the WAL (a crash mid-append)"
            );
            truncate(&path, offset)?;
            report.truncated_bytes = len - offset;
        }
        report.segments.push(n);
    }
    Ok(report)
}

/// Whether every one of `segments` is an empty file.
fn later_are_empty(dir: &Path, segments: &[u64]) -> Result<bool, WalError> {
    for &n in segments {
        let path = segment::path(dir, n);
        if std::fs::metadata(&path)
            .map_err(|e| WalError::io(&path, e))?
            .len()
            > 0
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_contiguous(dir: &Path, segments: &[u64]) -> Result<(), WalError> {
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            let previous = segment::path(dir, pair[0]);
            let offset = std::fs::metadata(&previous)
                .map_err(|e| WalError::io(&previous, e))?
                .len();
            return Err(WalError::Gap {
                file: segment::path(dir, pair[0] + 1).display().to_string(),
                previous: previous.display().to_string(),
                offset,
            });
        }
    }
    Ok(())
}

/// Streams one segment's records into `visit`, stopping at the first bad
/// record.
fn read_segment(path: &Path, visit: &mut dyn FnMut(Record)) -> Result<SegmentEnd, WalError> {
    let file = File::open(path).map_err(|e| WalError::io(path, e))?;
    let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut frame = Vec::new();
    let io = |e| WalError::io(path, e);
    while offset < len {
        let remaining = len - offset;
        let bad = |reason: &str, next_from: Option<u64>| SegmentEnd::Bad {
            offset,
            next_from,
            reason: reason.to_string(),
        };
        if remaining < HEADER_BYTES as u64 {
            return Ok(bad("record header cut short", Some(len)));
        }
        frame.resize(HEADER_BYTES, 0);
        reader.read_exact(&mut frame).map_err(io)?;
        let payload_len = match decode_header(&frame) {
            Ok((payload_len, _)) => payload_len as u64,
            // The length is garbage, so a next record could start at any
            // byte after this one.
            Err(_) => return Ok(bad("record length fails its checksum", Some(offset + 1))),
        };
        // From here on the length holds its checksum: the record ends
        // where it says, and so a next record could start only there.
        let record_end = offset + HEADER_BYTES as u64 + payload_len;
        if record_end > len {
            return Ok(bad("record runs past the end of the file", Some(len)));
        }
        frame.resize(HEADER_BYTES + payload_len as usize, 0);
        reader.read_exact(&mut frame[HEADER_BYTES..]).map_err(io)?;
        match super::record::decode(&frame) {
            Ok((record, used)) => {
                visit(record);
                offset += used as u64;
            }
            Err(DecodeError::BadChecksum) => {
                return Ok(bad("record fails its checksum", Some(record_end)));
            }
            Err(DecodeError::Malformed(why)) => return Ok(bad(why, None)),
            Err(DecodeError::Truncated | DecodeError::BadLength) => {
                return Ok(bad("record cut short", Some(record_end)));
            }
        }
    }
    Ok(SegmentEnd::Clean)
}

/// The offset of the first valid record (its length and payload checksums
/// both hold, and it ends within `len`) starting at `from` or later, if
/// any.
///
/// Cost: one pass over the bytes from `from` to the end of the file, in
/// [`SCAN_CHUNK_BYTES`] chunks, with a check of the length's checksum at
/// every byte (most positions fail the cheaper size check first). A
/// payload is read only for a length that checks out, which garbage
/// passes about once in 2^32 positions. It runs at most once per start-up,
/// on the tail of the last segment after its first bad record.
fn first_valid_record(path: &Path, from: u64, len: u64) -> Result<Option<u64>, WalError> {
    let io = |e| WalError::io(path, e);
    if from >= len {
        return Ok(None);
    }
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut tail = file.take(len - from);
    // A second handle reads candidate payloads without moving the scan.
    let mut payloads = File::open(path).map_err(io)?;
    // `window[0]` is at file offset `window_start`; the last
    // HEADER_BYTES - 1 bytes of a chunk are kept for the next one, so a
    // header across a chunk boundary is seen.
    let mut window: Vec<u8> = Vec::with_capacity(SCAN_CHUNK_BYTES + HEADER_BYTES);
    let mut window_start = from;
    loop {
        let kept = window.len();
        window.resize(kept + SCAN_CHUNK_BYTES, 0);
        let read = fill(&mut tail, &mut window[kept..]).map_err(io)?;
        window.truncate(kept + read);
        if window.len() >= HEADER_BYTES {
            let positions = window.len() - HEADER_BYTES + 1;
            for i in 0..positions {
                let Ok((payload_len, payload_crc)) = decode_header(&window[i..i + HEADER_BYTES])
                else {
                    continue;
                };
                let at = window_start + i as u64;
                if payload_holds(&mut payloads, at, payload_len, payload_crc, len).map_err(io)? {
                    return Ok(Some(at));
                }
            }
            window.drain(..positions);
            window_start += positions as u64;
        }
        if read < SCAN_CHUNK_BYTES {
            return Ok(None);
        }
    }
}

/// Whether the `payload_len` bytes after the header at `at` are within
/// `len` and match `payload_crc`.
fn payload_holds(
    file: &mut File,
    at: u64,
    payload_len: u32,
    payload_crc: u32,
    len: u64,
) -> std::io::Result<bool> {
    let start = at + HEADER_BYTES as u64;
    if start + u64::from(payload_len) > len {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(start))?;
    let mut payload = file.by_ref().take(u64::from(payload_len));
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES.min(payload_len as usize)];
    let mut crc = 0u32;
    loop {
        let n = payload.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &chunk[..n]);
    }
    Ok(crc == payload_crc)
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes
/// read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.set_len(len).map_err(|e| WalError::io(path, e))?;
    file.sync_all().map_err(|e| WalError::io(path, e))
}

/// Finds the first damaged record in the segments numbered `from` or later,
/// prints what will be lost to `out`, then truncates that segment there and
/// removes the segments after it. Returns whether anything was cut.
///
/// # Errors
///
/// [`WalError::Io`] when a file cannot be read, cut or removed.
pub fn repair(dir: &Path, from: u64, out: &mut dyn std::io::Write) -> Result<bool, WalError> {
    let segments: Vec<u64> = segment::list(dir)
        .map_err(|e| WalError::io(dir, e))?
        .into_iter()
        .filter(|&n| n >= from)
        .collect();
    let print = |out: &mut dyn std::io::Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    for (i, &n) in segments.iter().enumerate() {
        let path = segment::path(dir, n);
        let mut kept = 0u64;
        let SegmentEnd::Bad { offset, reason, .. } = read_segment(&path, &mut |_| kept += 1)?
        else {
            continue;
        };
        let len = std::fs::metadata(&path)
            .map_err(|e| WalError::io(&path, e))?
            .len();
        print(
            out,
            format!(
                "{}: damaged at offset {offset} ({reason}); keeping {kept} records before it, dropping the last {} bytes",
                path.display(),
                len - offset
            ),
        );
        let later = &segments[i + 1..];
        for &m in later {
            let later_path = segment::path(dir, m);
            let bytes = std::fs::metadata(&later_path).map(|m| m.len()).unwrap_or(0);
            print(
                out,
                format!(
                    "{}: removing the whole later segment ({bytes} bytes)",
                    later_path.display()
                ),
            );
        }
        truncate(&path, offset)?;
        for &m in later {
            let later_path = segment::path(dir, m);
            std::fs::remove_file(&later_path).map_err(|e| WalError::io(&later_path, e))?;
        }
        segment::sync_dir(dir).map_err(|e| WalError::io(dir, e))?;
        return Ok(true);
    }
    print(
        out,
        format!("{}: no damaged WAL record found", dir.display()),
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::record::encode;
    use super::*;

    /// One framed record whose payload is a small control document.
    fn record(i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Record::Meta(Bytes::from(format!("{{\"i\":{i}}}"))),
            &mut out,
        );
        out
    }

    /// Non-zero bytes that hold no record (a fixed xorshift sequence).
    fn garbage(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8 | 1
            })
            .collect()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[derive(Debug)]
    enum Expect {
        /// Replayed `records` and cut `cut` bytes off the last segment.
        Torn { records: u64, cut: u64 },
        /// Refused: segment number, offset, and words the reason contains.
        Corrupt {
            segment: u64,
            offset: u64,
            says: String,
        },
    }

    /// Writes `segments` as segments 1, 2, … and replays them.
    fn check(segments: &[Vec<u8>], expect: Expect) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, bytes) in segments.iter().enumerate() {
            std::fs::write(segment::path(dir.path(), i as u64 + 1), bytes).expect("write");
        }
        let result = replay(dir.path(), 1, |_| {});
        match expect {
            Expect::Torn { records, cut } => {
                let report = result.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(report.records, records);
                assert_eq!(report.truncated_bytes, cut);
                let bytes: u64 = (1..=segments.len() as u64)
                    .map(|n| {
                        std::fs::metadata(segment::path(dir.path(), n))
                            .expect("meta")
                            .len()
                    })
                    .sum();
                let original: u64 = segments.iter().map(|s| s.len() as u64).sum();
                assert_eq!(bytes, original - cut, "the torn tail is cut off");
            }
            Expect::Corrupt {
                segment: n,
                offset: at,
                says,
            } => match result {
                Err(WalError::Corrupt {
                    file,
                    offset,
                    reason,
                }) => {
                    assert_eq!(file, segment::path(dir.path(), n).display().to_string());
                    assert_eq!(offset, at);
                    assert!(reason.contains(&says), "{reason:?} lacks {says:?}");
                    for (i, bytes) in segments.iter().enumerate() {
                        let path = segment::path(dir.path(), i as u64 + 1);
                        assert_eq!(&std::fs::read(path).expect("read"), bytes, "left alone");
                    }
                }
                other => panic!("expected damage at {n}:{at}, got {other:?}"),
            },
        }
    }

    fn len(bytes: &[u8]) -> u64 {
        bytes.len() as u64
    }

    #[test]
    fn a_clean_log_is_replayed_whole() {
        let (a, b) = (record(0), record(1));
        check(&[cat(&[&a, &b])], Expect::Torn { records: 2, cut: 0 });
    }

    #[test]
    fn garbage_after_the_last_record_is_a_torn_tail() {
        let (a, b) = (record(0), record(1));
        for n in [1, 11, 12, 13, 14, 100, 4096] {
            let cut = n as u64;
            check(
                &[cat(&[&a, &b, &garbage(n)])],
                Expect::Torn { records: 2, cut },
            );
            check(
                &[cat(&[&a, &b, &vec![0; n]])],
                Expect::Torn { records: 2, cut },
            );
        }
    }

    #[test]
    fn a_last_record_that_fails_its_checksum_or_is_cut_is_torn() {
        let (a, b) = (record(0), record(1));
        let mut flipped = b.clone();
        flipped[HEADER_BYTES + 2] ^= 0x10;
        check(
            &[cat(&[&a, &flipped])],
            Expect::Torn {
                records: 1,
                cut: len(&b),
            },
        );
        // Followed by garbage only: still nothing valid after it.
        check(
            &[cat(&[&a, &flipped, &garbage(14)])],
            Expect::Torn {
                records: 1,
                cut: len(&b) + 14,
            },
        );
        for keep in 1..b.len() {
            check(
                &[cat(&[&a, &b[..keep]])],
                Expect::Torn {
                    records: 1,
                    cut: keep as u64,
                },
            );
        }
    }

    #[test]
    fn garbage_followed_by_a_valid_record_is_damage() {
        let (a, b) = (record(0), record(1));
        check(
            &[cat(&[&a, &garbage(14), &b])],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: format!(
                    "record length fails its checksum; a valid record follows at offset {}",
                    len(&a) + 14
                ),
            },
        );
        // A header overwritten in place, the record after it intact.
        let c = record(2);
        let mut overwritten = b.clone();
        overwritten[..HEADER_BYTES].copy_from_slice(&garbage(HEADER_BYTES));
        check(
            &[cat(&[&a, &overwritten, &c])],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: format!("follows at offset {}", len(&a) + len(&b)),
            },
        );
    }

    #[test]
    fn a_bad_payload_followed_by_a_valid_record_is_damage() {
        let (a, b, c) = (record(0), record(1), record(2));
        let mut flipped = b.clone();
        flipped[HEADER_BYTES + 2] ^= 0x10;
        check(
            &[cat(&[&a, &flipped, &c])],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: format!(
                    "record fails its checksum; a valid record follows at offset {}",
                    len(&a) + len(&b)
                ),
            },
        );
    }

    #[test]
    fn the_scan_finds_a_record_across_its_chunk_boundary() {
        let (a, b) = (record(0), record(1));
        // The scan starts one byte after the bad header at len(a); put the
        // next record's header across the end of its first chunk.
        let junk = garbage(SCAN_CHUNK_BYTES - 4);
        let at = len(&a) + len(&junk);
        check(
            &[cat(&[&a, &junk, &b])],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: format!("follows at offset {at}"),
            },
        );
        // The same garbage with nothing after it: a (long) torn tail.
        check(
            &[cat(&[&a, &junk])],
            Expect::Torn {
                records: 1,
                cut: len(&junk),
            },
        );
    }

    #[test]
    fn a_bad_record_before_the_last_segment_is_damage() {
        let (a, b) = (record(0), record(1));
        check(
            &[cat(&[&a, &garbage(14)]), b.clone()],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: "record length fails its checksum".into(),
            },
        );
    }

    #[test]
    fn garbage_before_only_empty_segments_is_a_torn_tail() {
        let (a, b) = (record(0), record(1));
        check(
            &[cat(&[&a, &garbage(14)]), Vec::new(), Vec::new()],
            Expect::Torn {
                records: 1,
                cut: 14,
            },
        );
        check(
            &[cat(&[&a, &garbage(14), &b]), Vec::new()],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: format!("follows at offset {}", len(&a) + 14),
            },
        );
    }

    #[test]
    fn a_record_whose_checksums_hold_but_makes_no_sense_is_damage() {
        let a = record(0);
        let payload = [99u8, 1, 2, 3];
        let len_bytes = (payload.len() as u32).to_le_bytes();
        let mut bad = len_bytes.to_vec();
        bad.extend_from_slice(&crc32c::crc32c(&len_bytes).to_le_bytes());
        bad.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bad.extend_from_slice(&payload);
        assert!(matches!(
            super::super::record::decode(&bad),
            Err(DecodeError::Malformed(_))
        ));
        check(
            &[cat(&[&a, &bad])],
            Expect::Corrupt {
                segment: 1,
                offset: len(&a),
                says: String::new(),
            },
        );
    }
}

#[cfg(test)]
/// Whole segments: order, cuts, damage, gaps, repair.
pub(super) mod segment_tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{Change, ChangeKind};
    use crate::wal::record::encode;

    /// A put of `k<version>` (also used by the writer's tests).
    pub(in crate::wal) fn put(version: u64) -> Record {
        Record::Change(Change {
            key: format!("k{version}").into_boxed_str(),
            kind: ChangeKind::Update,
            value: Some(Bytes::from(format!("{{\"v\":{version}}}"))),
            version,
            expires_at_ms: 0,
            timestamp_ms: 1_700_000_000_000,
            old_value: None,
        })
    }

    /// Writes segment `n` holding records `versions`; returns each record's
    /// end offset.
    fn write_segment(dir: &Path, n: u64, versions: std::ops::Range<u64>) -> Vec<u64> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for v in versions {
            encode(&put(v), &mut bytes);
            ends.push(bytes.len() as u64);
        }
        std::fs::write(segment::path(dir, n), &bytes).expect("write segment");
        ends
    }

    fn append(dir: &Path, n: u64, extra: &[u8]) {
        use std::io::Write;
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment::path(dir, n))
            .expect("open");
        file.write_all(extra).expect("append");
    }

    /// The versions replay finds in `dir`, and its report.
    pub(in crate::wal) fn versions(dir: &Path) -> Result<(Vec<u64>, ReplayReport), WalError> {
        let mut seen = Vec::new();
        let report = replay(dir, 1, |r| {
            if let Record::Change(c) = r {
                seen.push(c.version);
            }
        })?;
        Ok((seen, report))
    }

    fn len(dir: &Path, n: u64) -> u64 {
        std::fs::metadata(segment::path(dir, n))
            .expect("meta")
            .len()
    }

    #[test]
    fn replays_every_segment_in_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_segment(tmp.path(), 1, 1..4);
        write_segment(tmp.path(), 2, 4..6);
        write_segment(tmp.path(), 3, 6..6);
        let (seen, report) = versions(tmp.path()).expect("replay");
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(report.records, 5);
        assert_eq!(report.segments, vec![1, 2, 3]);
        assert_eq!(report.truncated_bytes, 0);
        // Replay from a later segment skips the earlier ones.
        let mut later = Vec::new();
        replay(tmp.path(), 2, |r| later.push(r)).expect("replay from 2");
        assert_eq!(later.len(), 2);
    }

    #[test]
    fn a_torn_record_at_the_end_is_cut_and_the_cut_is_durable() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..4);
        let mut torn = Vec::new();
        encode(&put(4), &mut torn);
        for keep in [1, 11, 12, torn.len() - 1] {
            std::fs::write(
                segment::path(tmp.path(), 1),
                [
                    &std::fs::read(segment::path(tmp.path(), 1)).expect("read")[..],
                    &torn[..keep],
                ]
                .concat(),
            )
            .expect("write");
            let (seen, report) = versions(tmp.path()).expect("replay");
            assert_eq!(seen, vec![1, 2, 3], "kept {keep} bytes");
            assert_eq!(report.truncated_bytes, keep as u64);
            assert_eq!(len(tmp.path(), 1), ends[2], "cut back to the last record");
        }
    }

    #[test]
    fn a_zero_filled_tail_is_cut() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..3);
        append(tmp.path(), 1, &[0; 4096]);
        let (seen, report) = versions(tmp.path()).expect("replay");
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(report.truncated_bytes, 4096);
        assert_eq!(len(tmp.path(), 1), ends[1]);
        // Replaying again finds a clean log.
        let (_, again) = versions(tmp.path()).expect("replay again");
        assert_eq!(again.truncated_bytes, 0);
    }

    #[test]
    fn a_torn_tail_followed_only_by_empty_segments_is_cut() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..3);
        append(tmp.path(), 1, &[0; 100]);
        write_segment(tmp.path(), 2, 3..3);
        let (seen, report) = versions(tmp.path()).expect("replay");
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(report.truncated_bytes, 100);
        assert_eq!(len(tmp.path(), 1), ends[1]);
    }

    #[test]
    fn a_torn_tail_before_a_segment_with_records_is_damage() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..3);
        append(tmp.path(), 1, &[0; 100]);
        write_segment(tmp.path(), 2, 3..4);
        let err = versions(tmp.path()).expect_err("refused");
        let WalError::Corrupt { file, offset, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(file.ends_with("wal-00000000000000000001.log"), "{file}");
        assert_eq!(*offset, ends[1]);
        assert!(err.to_string().contains("dododb repair"), "{err}");
        assert_eq!(len(tmp.path(), 1), ends[1] + 100, "nothing was cut");
    }

    #[test]
    fn a_flipped_bit_before_the_end_is_damage_at_its_record() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..5);
        let path = segment::path(tmp.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[ends[1] as usize + 20] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        match versions(tmp.path()) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, ends[1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_segment_names_the_file_and_where_the_log_stops() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..3);
        write_segment(tmp.path(), 3, 3..4);
        let err = versions(tmp.path()).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("wal-00000000000000000002.log"), "{text}");
        assert!(text.contains(&format!("offset {}", ends[1])), "{text}");
        assert!(text.contains("wal-00000000000000000001.log"), "{text}");
    }

    #[test]
    fn repair_cuts_at_the_damage_and_removes_later_segments() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ends = write_segment(tmp.path(), 1, 1..4);
        write_segment(tmp.path(), 2, 4..6);
        let path = segment::path(tmp.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[ends[0] as usize + 14] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        let mut said = Vec::new();
        assert!(repair(tmp.path(), 1, &mut said).expect("repair"));
        let said = String::from_utf8(said).expect("utf-8");
        assert!(said.contains("keeping 1 records"), "{said}");
        assert!(said.contains("removing the whole later segment"), "{said}");
        assert_eq!(segment::list(tmp.path()).expect("list"), vec![1]);
        let (seen, _) = versions(tmp.path()).expect("replay after repair");
        assert_eq!(seen, vec![1]);
        let mut again = Vec::new();
        assert!(!repair(tmp.path(), 1, &mut again).expect("repair again"));
    }
}
