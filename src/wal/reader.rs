//! Reading the retained log by revision while the server runs: what
//! webhook delivery and feed resumes re-read when a change is no longer in
//! memory. Single changes reach the log in revision order (the store numbers
//! them under the log's queue lock); a transaction may land after later
//! revisions (see [`LogReader::read`]), so "the changes after revision R"
//! is a position in one segment and a forward scan that goes on until every
//! revision asked for was seen, or the log ends.
//!
//! It only reads: segments are created by the writer and deleted by log
//! retention (`db`), which raises [`LogReader::floor`] before it deletes.
//! A read never waits for the writer; it stops at the first record that is
//! not complete yet, and callers ask only for revisions already applied.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{HEADER_BYTES, Record, decode, decode_header};
use super::{WalError, segment};
use crate::store::Change;

/// Positions remembered, so that a reader continuing where it stopped does
/// not scan its segment from the start again.
const MAX_POSITIONS: usize = 65_536;

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Everything up to `through` that was asked for was read (or `max`
    /// changes were, the last of them at revision `through`).
    Through(u64),
    /// Changes after the asked revision are no longer on disk: the oldest
    /// retained revision is `floor + 1`.
    Gone {
        /// The newest revision that is gone.
        floor: u64,
    },
}

/// Where a change starts: segment and byte offset.
#[derive(Debug, Clone, Copy)]
struct Position {
    segment: u64,
    offset: u64,
}

/// Reads changes of the retained segments of one data directory.
pub struct LogReader {
    dir: PathBuf,
    /// Revisions up to this one are not on disk any more.
    floor: AtomicU64,
    /// The first change's revision per segment (closed segments only).
    first: Mutex<BTreeMap<u64, Option<u64>>>,
    /// `revision → position of the first change after it`, learned by
    /// earlier reads. Guarded by a std mutex held only for a lookup or an
    /// insert, never across file I/O.
    positions: Mutex<BTreeMap<u64, Position>>,
}

impl LogReader {
    /// A reader of `dir` where revisions up to `floor` are gone.
    pub fn new(dir: PathBuf, floor: u64) -> LogReader {
        LogReader {
            dir,
            floor: AtomicU64::new(floor),
            first: Mutex::new(BTreeMap::new()),
            positions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Revisions up to this one are no longer on disk.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Records that revisions up to `floor` are about to be deleted.
    pub fn raise_floor(&self, floor: u64) {
        self.floor.fetch_max(floor, Ordering::AcqRel);
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.retain(|&v, _| v >= floor);
    }

    /// The revision of the first change in segment `n`, if it has one.
    ///
    /// # Errors
    ///
    /// The segment cannot be read.
    pub fn first_revision(&self, n: u64, closed: bool) -> Result<Option<u64>, WalError> {
        if let Some(known) = self.first.lock().unwrap_or_else(|e| e.into_inner()).get(&n) {
            return Ok(*known);
        }
        let mut found = None;
        scan(&self.dir, n, 0, &mut |record| match record {
            Record::Change(change) => {
                found = Some(change.version);
                false
            }
            Record::Txn(changes) => {
                found = changes.iter().map(|c| c.version).min();
                found.is_none()
            }
            Record::Puts(batch) => {
                found = batch.first_version();
                found.is_none()
            }
            Record::Meta(_) | Record::Raft(_) => true,
        })?;
        if closed || found.is_some() {
            self.first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, found);
        }
        Ok(found)
    }

    /// Hands `visit` the changes after revision `after`, up to `through`,
    /// in revision order: those up to `after + max` (a read covers at most
    /// `max` revisions).
    ///
    /// Single writes are logged in revision order, but a transaction takes
    /// its revisions before it reaches the log, so its record may come after
    /// records with later revisions, however long after. The read therefore
    /// knows it is complete from what it saw: it ends once every revision
    /// from `after + 1` to the bound was found, or where the log ends (a
    /// revision that was never logged, such as a write the log refused,
    /// costs one scan to the end). It sorts what it found and remembers
    /// where the first later record was, so that nothing is skipped.
    ///
    /// # Errors
    ///
    /// A segment cannot be read or is damaged.
    pub fn read(
        &self,
        after: u64,
        through: u64,
        max: usize,
        visit: &mut dyn FnMut(Change),
    ) -> Result<ReadEnd, WalError> {
        if after < self.floor() {
            return Ok(ReadEnd::Gone {
                floor: self.floor(),
            });
        }
        if after >= through || max == 0 {
            return Ok(ReadEnd::Through(after));
        }
        let bound = through.min(after.saturating_add(max as u64));
        let segments = segment::list(&self.dir).map_err(|e| WalError::io(&self.dir, e))?;
        let Some(start) = self.start(after, &segments)? else {
            return Ok(ReadEnd::Through(through));
        };
        let mut found: Vec<Change> = Vec::new();
        // Which revisions of `after + 1 ..= bound` were seen.
        let wanted = usize::try_from(bound - after).unwrap_or(usize::MAX);
        let mut seen = vec![false; wanted];
        let mut missing = wanted;
        let mut resume: Option<Position> = None;
        let mut end = start;
        for &n in segments.iter().filter(|&&n| n >= start.segment) {
            let from = if n == start.segment { start.offset } else { 0 };
            let mut stop = false;
            let scanned = scan_at(&self.dir, n, from, &mut |offset, record| {
                let Some(changes) = record.into_changes() else {
                    return true;
                };
                for change in changes {
                    if change.version <= after {
                        continue;
                    }
                    if change.version <= bound {
                        let i = usize::try_from(change.version - after - 1).unwrap_or(usize::MAX);
                        if let Some(slot) = seen.get_mut(i)
                            && !*slot
                        {
                            *slot = true;
                            missing -= 1;
                            found.push(change);
                        }
                    } else {
                        resume.get_or_insert(Position { segment: n, offset });
                    }
                }
                if missing == 0 {
                    // This record is read again by the next read.
                    stop = true;
                    return false;
                }
                true
            });
            match scanned {
                Ok(next_offset) => {
                    end = Position {
                        segment: n,
                        offset: next_offset,
                    };
                }
                // A segment deleted under the reader: what it held is gone.
                Err(_) if !segment::path(&self.dir, n).exists() => {
                    return Ok(ReadEnd::Gone {
                        floor: self.floor(),
                    });
                }
                Err(e) => return Err(e),
            }
            if stop {
                break;
            }
        }
        // Revisions not found may have been in a segment deleted after the
        // floor was checked above (retention raises the floor first): then
        // they are gone, not "never logged".
        if missing > 0 && after < self.floor() {
            return Ok(ReadEnd::Gone {
                floor: self.floor(),
            });
        }
        found.sort_unstable_by_key(|c| c.version);
        for change in found {
            visit(change);
        }
        self.remember(bound, resume.unwrap_or(end));
        Ok(ReadEnd::Through(bound))
    }

    /// Where to start reading for the changes after `after`: a remembered
    /// position, else the start of the newest segment that begins at or
    /// before `after + 1`.
    fn start(&self, after: u64, segments: &[u64]) -> Result<Option<Position>, WalError> {
        let remembered = self
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .range(..=after)
            .next_back()
            .map(|(_, p)| *p);
        if let Some(p) = remembered
            && segments.contains(&p.segment)
        {
            return Ok(Some(p));
        }
        let mut start = None;
        let last = segments.last().copied();
        for &n in segments {
            match self.first_revision(n, Some(n) != last)? {
                Some(first) if first > after => break,
                Some(_) => start = Some(n),
                None => {}
            }
        }
        let start = start.or_else(|| segments.first().copied());
        Ok(start.map(|segment| Position { segment, offset: 0 }))
    }

    fn remember(&self, version: u64, position: Position) {
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        if positions.len() >= MAX_POSITIONS {
            positions.pop_first();
        }
        positions.insert(version, position);
    }
}

/// Reads segment `n` from `offset`, handing each record to `visit` until it
/// returns false or the data ends (a record not complete yet ends it too).
/// Returns the offset to continue from: after the last record, or at the
/// record `visit` stopped on.
pub(crate) fn scan(
    dir: &Path,
    n: u64,
    offset: u64,
    visit: &mut dyn FnMut(Record) -> bool,
) -> Result<u64, WalError> {
    scan_at(dir, n, offset, &mut |_, record| visit(record))
}

/// [`scan`] that also tells `visit` each record's offset.
fn scan_at(
    dir: &Path,
    n: u64,
    offset: u64,
    visit: &mut dyn FnMut(u64, Record) -> bool,
) -> Result<u64, WalError> {
    let path = segment::path(dir, n);
    let io = |e| WalError::io(&path, e);
    let mut file = File::open(&path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut at = offset;
    let mut frame = vec![0; HEADER_BYTES];
    loop {
        frame.truncate(HEADER_BYTES);
        if read_full(&mut reader, &mut frame).map_err(io)? < HEADER_BYTES {
            return Ok(at);
        }
        let Ok((len, _)) = decode_header(&frame) else {
            return Ok(at);
        };
        frame.resize(HEADER_BYTES + len as usize, 0);
        if read_full(&mut reader, &mut frame[HEADER_BYTES..]).map_err(io)? < len as usize {
            return Ok(at);
        }
        let Ok((record, used)) = decode(&frame) else {
            return Ok(at);
        };
        if !visit(at, record) {
            return Ok(at);
        }
        at += used as u64;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::record::encode;
    use super::*;
    use crate::store::ChangeKind;

    fn change(version: u64) -> Change {
        Change {
            key: format!("k{version}").into(),
            kind: ChangeKind::Update,
            value: Some(bytes::Bytes::from_static(b"1")),
            version,
            expires_at_ms: 0,
            timestamp_ms: 0,
            old_value: None,
        }
    }

    fn write_segment(dir: &Path, n: u64, records: &[Record]) {
        let mut bytes = Vec::new();
        for record in records {
            encode(record, &mut bytes);
        }
        let mut file = segment::create(dir, n).expect("segment");
        file.write_all(&bytes).expect("write");
    }

    fn read_all(reader: &LogReader, after: u64, through: u64, max: usize) -> (Vec<u64>, ReadEnd) {
        let mut got = Vec::new();
        let end = reader
            .read(after, through, max, &mut |c| got.push(c.version))
            .expect("read");
        (got, end)
    }

    /// A transaction that took revisions 5–7 reaches the log after 10,000
    /// later single writes (far beyond any fixed look-ahead), across a
    /// segment boundary: reads by revision still return every revision,
    /// in order, and the reads after it skip nothing either.
    #[test]
    fn a_transaction_logged_long_after_later_revisions_is_not_skipped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let late = 10_000u64;
        let mut first: Vec<Record> = (1..=4).map(|v| Record::Change(change(v))).collect();
        first.extend((8..8 + late / 2).map(|v| Record::Change(change(v))));
        write_segment(tmp.path(), 1, &first);
        let mut second: Vec<Record> = (8 + late / 2..8 + late)
            .map(|v| Record::Change(change(v)))
            .collect();
        second.push(Record::Txn(vec![change(5), change(6), change(7)]));
        second.push(Record::Change(change(8 + late)));
        write_segment(tmp.path(), 2, &second);
        let head = 8 + late;

        let reader = LogReader::new(tmp.path().to_path_buf(), 0);
        let (got, end) = read_all(&reader, 0, head, 10);
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        assert_eq!(end, ReadEnd::Through(10));

        // Reading on in batches, from the positions the reader remembered.
        let mut after = 10;
        let mut all = got;
        while after < head {
            let (got, end) = read_all(&reader, after, head, 1024);
            let ReadEnd::Through(through) = end else {
                panic!("gone: {end:?}");
            };
            assert!(through > after, "no progress after {after}");
            all.extend(got);
            after = through;
        }
        assert_eq!(all, (1..=head).collect::<Vec<_>>());

        // A fresh reader asked for the late revisions alone finds them too.
        let fresh = LogReader::new(tmp.path().to_path_buf(), 0);
        assert_eq!(read_all(&fresh, 4, head, 3).0, vec![5, 6, 7]);
    }

    /// A revision that was never logged (a write the log refused) does not
    /// stop a read: it ends at the end of the log with what is there.
    #[test]
    fn a_revision_missing_from_the_log_ends_the_read_at_the_log_end() {
        let tmp = tempfile::tempdir().expect("tmp");
        let records: Vec<Record> = [1, 2, 4, 5]
            .into_iter()
            .map(|v| Record::Change(change(v)))
            .collect();
        write_segment(tmp.path(), 1, &records);
        let reader = LogReader::new(tmp.path().to_path_buf(), 0);
        let (got, end) = read_all(&reader, 0, 5, 100);
        assert_eq!(got, vec![1, 2, 4, 5]);
        assert_eq!(end, ReadEnd::Through(5));
    }
}
