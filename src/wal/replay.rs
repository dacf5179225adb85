//! Reading the log back: replay at start-up (truncating a torn tail) and
//! offline repair of damage before the end.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::Path;

use super::record::{DecodeError, HEADER_BYTES, Record, decode_header};
use super::{WalError, segment};

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
    /// Damage at `offset`; `torn` when it can only be an interrupted append
    /// (it reaches the end of the file).
    Damaged {
        offset: u64,
        torn: bool,
        reason: String,
    },
}

/// Replays every segment numbered `from` or later, in order, into `visit`.
/// A torn record at the very end of the last segment that holds records is
/// cut off with a warning; damage anywhere else stops with
/// [`WalError::Corrupt`]. (Segments after it may exist but be empty: the
/// writer creates the next segment before it finishes syncing the current
/// one, and writes nothing into it until then.)
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
        match read_segment(&path, &mut |record| {
            report.records += 1;
            visit(record);
        })? {
            SegmentEnd::Clean => {}
            SegmentEnd::Damaged { offset, torn, .. } if torn && is_last => {
                let len = std::fs::metadata(&path)
                    .map_err(|e| WalError::io(&path, e))?
                    .len();
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    dropped_bytes = len - offset,
                    "truncating a torn record at the end of the WAL (a crash mid-append)"
                );
                truncate(&path, offset)?;
                report.truncated_bytes = len - offset;
            }
            SegmentEnd::Damaged { offset, reason, .. } => {
                return Err(WalError::Corrupt {
                    file: path.display().to_string(),
                    offset,
                    reason,
                });
            }
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
            return Err(WalError::Gap {
                dir: dir.display().to_string(),
                missing: pair[0] + 1,
            });
        }
    }
    Ok(())
}

/// Streams one segment's records into `visit`, stopping at the first damage.
fn read_segment(path: &Path, visit: &mut dyn FnMut(Record)) -> Result<SegmentEnd, WalError> {
    let file = File::open(path).map_err(|e| WalError::io(path, e))?;
    let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut frame = Vec::new();
    let io = |e| WalError::io(path, e);
    while offset < len {
        let remaining = len - offset;
        let damaged = |reason: &str, torn: bool| SegmentEnd::Damaged {
            offset,
            torn,
            reason: reason.to_string(),
        };
        if remaining < HEADER_BYTES as u64 {
            return Ok(damaged("record header cut short", true));
        }
        frame.resize(HEADER_BYTES, 0);
        reader.read_exact(&mut frame).map_err(io)?;
        let payload_len = match decode_header(&frame) {
            Ok((payload_len, _)) => payload_len as u64,
            Err(_) => {
                // A garbage header is a torn append only if nothing but
                // zeroes (never-written space) follows it.
                let torn = frame.iter().all(|&b| b == 0) && rest_is_zero(&mut reader)?;
                return Ok(damaged("record length fails its checksum", torn));
            }
        };
        if remaining < HEADER_BYTES as u64 + payload_len {
            return Ok(damaged("record runs past the end of the file", true));
        }
        frame.resize(HEADER_BYTES + payload_len as usize, 0);
        reader.read_exact(&mut frame[HEADER_BYTES..]).map_err(io)?;
        let ends_file = offset + frame.len() as u64 == len;
        match super::record::decode(&frame) {
            Ok((record, used)) => {
                visit(record);
                offset += used as u64;
            }
            Err(DecodeError::BadChecksum) => {
                return Ok(damaged("record fails its checksum", ends_file));
            }
            Err(DecodeError::Malformed(why)) => return Ok(damaged(why, false)),
            Err(DecodeError::Truncated | DecodeError::BadLength) => {
                return Ok(damaged("record cut short", ends_file));
            }
        }
    }
    Ok(SegmentEnd::Clean)
}

fn rest_is_zero(reader: &mut impl Read) -> Result<bool, WalError> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| WalError::Io(e.to_string()))?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
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
        let SegmentEnd::Damaged { offset, reason, .. } = read_segment(&path, &mut |_| kept += 1)?
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
