//! Importing an export (`POST /system/import`, `dododb restore`): first every
//! line is checked while the entries are spooled to a file (so memory stays
//! bounded whatever the size), and only when the whole export is good are
//! they applied, as puts with new versions and events, through the group
//! commit in large batches, each one log record written the way a
//! transaction is (one revision and one event per entry).
//!
//! A crash in the middle of applying leaves the batches applied so far,
//! whole, in the export's order, and, with `replace`, the clear before
//! them; applying the same export again finishes the job. Spool files left
//! by a crash are removed at start-up.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::bulk_load::BulkLoad;
use super::{Db, DbError, Inner, WalJournal, now_ms};
use crate::snapshot::{ExportLine, parse_line, plain_import_entry};
use crate::store::{Applied, NoJournal, PutBatch};

/// What happens to the keys already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    /// Imported entries are written over the existing keys; others stay.
    #[default]
    Merge,
    /// Every key is deleted first (one delete event each).
    Replace,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportResult {
    /// Entries written.
    pub imported: u64,
    /// Entries left out because their expiry had passed.
    pub expired: u64,
    /// The revision after the last write.
    pub revision: u64,
}

/// Entries of one batch of an import's writes: one log record, like a
/// transaction (see [`Inner::write_batch`]). No more than a live feed
/// client may have queued (`CLIENT_BUFFER_EVENTS`): a batch's events are
/// emitted in one go, and a larger one would cut off every client.
const BATCH: usize = crate::events::feed::CLIENT_BUFFER_EVENTS;

/// ... or fewer, once their keys and values come to this many bytes.
const BATCH_BYTES: usize = 4 << 20;

/// Batches queued before the import waits for the oldest of them. The
/// log writer takes all of them at once when it falls behind, so the more
/// there are, the fewer fsyncs an import costs (each batch holds about
/// 2 MiB until it is applied).
const IN_FLIGHT: usize = 8;

const SPOOL_PREFIX: &str = "import-";
const SPOOL_SUFFIX: &str = ".spool";

/// Numbers spool files apart within one process.
static SPOOLS: AtomicU64 = AtomicU64::new(0);

/// Lines go to the checking threads in batches of about this many bytes.
const CHECK_BATCH_BYTES: usize = 1 << 20;

/// The most checking threads of one import.
const MAX_CHECKERS: usize = 4;

/// An export being read and checked, its entries going to a spool file.
///
/// Lines are checked on a few threads at once (parsing and validating
/// values is most of the work): the export is cut into batches of whole
/// lines, each checked by whichever thread is free, and the results are
/// taken back in order, so the spool keeps the export's order and an error
/// names the first bad line. Only a few batches are in flight at a time, so
/// memory stays bounded whatever the size of the export.
pub struct ImportSpool {
    file: BufWriter<File>,
    path: PathBuf,
    /// Data received and not yet sent to be checked.
    unsent: Vec<u8>,
    /// Bytes of `unsent` after its last newline.
    partial_len: usize,
    /// Batches for the checking threads; `None` once they are stopped.
    jobs: Option<Sender<Job>>,
    checkers: Vec<JoinHandle<()>>,
    /// Where the results of the batches sent will come, oldest first.
    in_flight: VecDeque<Receiver<Checked>>,
    /// Lines read so far.
    line: u64,
    /// CRC32C of every byte of the lines read so far.
    crc: u32,
    entries: u64,
    metas: u64,
    header: bool,
    trailer: bool,
    /// No valid line is longer than this.
    max_line_bytes: usize,
    started: Instant,
    /// Counts the import as running until its [`Spooled`] is dropped.
    bulk: Option<BulkLoad>,
}

/// A batch of whole lines for a checking thread, and where its result goes.
struct Job {
    lines: Vec<u8>,
    done: Sender<Checked>,
}

/// What one line of the export is, as a checking thread found it.
enum Kind {
    Blank,
    Entry,
    Header(u32),
    Meta,
    Trailer { entries: u64, crc32c: u32 },
}

/// A batch of lines, checked.
struct Checked {
    /// The lines themselves (their checksum is taken in order).
    lines: Vec<u8>,
    /// What each line is, up to the first bad one.
    kinds: Vec<Kind>,
    /// What is wrong with the line after the last of `kinds`, if one is bad.
    error: Option<String>,
    /// The entries of those lines, encoded for the spool.
    spool: Vec<u8>,
}

/// A checked export, ready to apply.
pub struct Spooled {
    path: PathBuf,
    entries: u64,
    /// Control documents (subscriptions) in the export, not imported.
    pub metas: u64,
    _bulk: Option<BulkLoad>,
}

impl Spooled {
    /// The checked entries, read back in the export's order.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the spool cannot be opened.
    pub fn entries(&self) -> Result<SpoolReader<'_>, DbError> {
        let file = File::open(&self.path).map_err(|e| spool_io(&self.path, e))?;
        Ok(SpoolReader {
            reader: BufReader::with_capacity(1 << 20, file),
            path: &self.path,
            left: self.entries,
            key: Vec::new(),
            value: Vec::new(),
        })
    }
}

/// Reads a [`Spooled`] export's entries back, one at a time.
pub struct SpoolReader<'a> {
    reader: BufReader<File>,
    path: &'a Path,
    left: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// One checked entry of an export: its key, its value's JSON text and its
/// expiry (Unix ms, 0 for none).
pub struct SpooledEntry<'a> {
    /// The key.
    pub key: &'a str,
    /// The value's JSON text.
    pub value: &'a [u8],
    /// Unix ms of expiry, 0 for none.
    pub expires_at_ms: u64,
}

impl SpoolReader<'_> {
    /// The next entry, `None` after the last.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the spool cannot be read.
    pub fn next_entry(&mut self) -> Result<Option<SpooledEntry<'_>>, DbError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let path = self.path;
        let io = |e| spool_io(path, e);
        read_field(&mut self.reader, &mut self.key).map_err(io)?;
        let mut expires = [0u8; 8];
        self.reader.read_exact(&mut expires).map_err(io)?;
        read_field(&mut self.reader, &mut self.value).map_err(io)?;
        let key = std::str::from_utf8(&self.key)
            .map_err(|_| DbError::Unavailable("import spool: a key is not UTF-8".into()))?;
        Ok(Some(SpooledEntry {
            key,
            value: &self.value,
            expires_at_ms: u64::from_le_bytes(expires),
        }))
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ImportSpool {
    fn drop(&mut self) {
        self.stop_checkers();
        // Taken over by `Spooled` when finished; otherwise unwanted.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bad_line(line: u64, why: impl std::fmt::Display) -> DbError {
    DbError::InvalidRequest(format!("line {line}: {why}; nothing was imported"))
}

fn spool_io(path: &Path, e: std::io::Error) -> DbError {
    DbError::Unavailable(format!("import spool {}: {e}", path.display()))
}

fn stopped() -> DbError {
    DbError::Unavailable("import: a checking thread stopped".into())
}

/// Checks a batch of lines (a checking thread's work): each line's syntax,
/// key and value, with its entry encoded for the spool. Stops at the first
/// bad line.
fn check_lines(db: &Db, lines: Vec<u8>) -> Checked {
    let mut kinds = Vec::with_capacity(lines.len() / 64);
    let mut spool = Vec::with_capacity(lines.len());
    let mut error = None;
    for raw in lines.split_inclusive(|&b| b == b'\n') {
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        if text.trim_ascii().is_empty() {
            kinds.push(Kind::Blank);
            continue;
        }
        match check_line(db, text, &mut spool) {
            Ok(kind) => kinds.push(kind),
            Err(why) => {
                error = Some(why);
                break;
            }
        }
    }
    Checked {
        lines,
        kinds,
        error,
        spool,
    }
}

/// What one non-blank line is; an entry is checked and appended to `spool`.
fn check_line(db: &Db, text: &[u8], spool: &mut Vec<u8>) -> Result<Kind, String> {
    // Most lines are plain entries: read without the general parser when
    // their value is a good document (else that parser says what is wrong).
    if let Some((key, value, expires_at_ms)) = plain_import_entry(text)
        && db.inner.check_value(value).is_ok()
    {
        db.inner.check_key(key).map_err(|e| e.to_string())?;
        spool_entry(spool, key, value, expires_at_ms);
        return Ok(Kind::Entry);
    }
    Ok(match parse_line(text)? {
        ExportLine::Header(version) => Kind::Header(version),
        ExportLine::Meta => Kind::Meta,
        ExportLine::Trailer { entries, crc32c } => Kind::Trailer { entries, crc32c },
        ExportLine::Entry {
            key,
            value,
            expires_at_ms,
        } => {
            db.inner.check_key(&key).map_err(|e| e.to_string())?;
            db.inner.check_value(&value).map_err(|e| e.to_string())?;
            spool_entry(spool, &key, &value, expires_at_ms);
            Kind::Entry
        }
    })
}

/// Appends a checked entry to `spool`, as [`SpoolReader`] reads it back.
fn spool_entry(spool: &mut Vec<u8>, key: &str, value: &[u8], expires_at_ms: u64) {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    spool.extend_from_slice(&len(key.len()));
    spool.extend_from_slice(key.as_bytes());
    spool.extend_from_slice(&expires_at_ms.to_le_bytes());
    spool.extend_from_slice(&len(value.len()));
    spool.extend_from_slice(value);
}

impl ImportSpool {
    /// Takes the next bytes of the export.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] naming the first bad line;
    /// [`DbError::Unavailable`] when the spool cannot be written.
    pub fn push(&mut self, data: &[u8]) -> Result<(), DbError> {
        self.unsent.extend_from_slice(data);
        match data.iter().rposition(|&b| b == b'\n') {
            Some(at) => self.partial_len = data.len() - at - 1,
            None => self.partial_len += data.len(),
        }
        let whole = self.unsent.len() - self.partial_len;
        if whole >= CHECK_BATCH_BYTES {
            let mut rest = Vec::with_capacity(CHECK_BATCH_BYTES + self.partial_len + (64 << 10));
            rest.extend_from_slice(&self.unsent[whole..]);
            let mut lines = std::mem::replace(&mut self.unsent, rest);
            lines.truncate(whole);
            self.send(lines)?;
        }
        if self.partial_len > self.max_line_bytes {
            // The lines before it come first: one of them may be bad.
            let whole = self.unsent.len() - self.partial_len;
            let lines = self.unsent.drain(..whole).collect();
            self.send(lines)?;
            self.drain()?;
            return Err(bad_line(
                self.line + 1,
                format!(
                    "longer than {} bytes, more than any entry within --max-key-bytes and --max-value-bytes",
                    self.max_line_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Ends the export: checks its last line and that an export with a
    /// header also has its trailer.
    ///
    /// # Errors
    ///
    /// As [`ImportSpool::push`].
    pub fn finish(mut self) -> Result<Spooled, DbError> {
        let last = std::mem::take(&mut self.unsent);
        self.send(last)?;
        self.drain()?;
        self.stop_checkers();
        if self.header && !self.trailer {
            return Err(bad_line(
                self.line,
                "the export ends without its trailer line (was it cut short?)",
            ));
        }
        self.file.flush().map_err(|e| spool_io(&self.path, e))?;
        tracing::info!(
            lines = self.line,
            entries = self.entries,
            millis = self.started.elapsed().as_millis(),
            "import: every line read and checked"
        );
        Ok(Spooled {
            path: std::mem::take(&mut self.path),
            entries: self.entries,
            metas: self.metas,
            _bulk: self.bulk.take(),
        })
    }

    /// Hands a batch of whole lines (the last may lack its newline) to the
    /// checking threads; takes results back while too many are in flight.
    fn send(&mut self, lines: Vec<u8>) -> Result<(), DbError> {
        if lines.is_empty() {
            return Ok(());
        }
        let (done, result) = crossbeam_channel::bounded(1);
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job { lines, done }).map_err(|_| stopped())?;
        self.in_flight.push_back(result);
        while self.in_flight.len() > 2 * self.checkers.len() {
            self.take_oldest()?;
        }
        Ok(())
    }

    /// Takes back every batch in flight.
    fn drain(&mut self) -> Result<(), DbError> {
        while !self.in_flight.is_empty() {
            self.take_oldest()?;
        }
        Ok(())
    }

    /// Takes back the oldest batch in flight: its lines in order (the
    /// checks that depend on the lines before, and the checksum), then its
    /// entries into the spool.
    fn take_oldest(&mut self) -> Result<(), DbError> {
        let Some(result) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let checked = result.recv().map_err(|_| stopped())?;
        let mut lines = checked.lines.split_inclusive(|&b| b == b'\n');
        for kind in &checked.kinds {
            let raw = lines.next().unwrap_or_default();
            self.take_line(raw, kind)?;
        }
        if let Some(why) = checked.error {
            self.line += 1;
            // Read in order, a line after the trailer is that first.
            return Err(if self.trailer {
                bad_line(self.line, "a line after the trailer")
            } else {
                bad_line(self.line, why)
            });
        }
        self.file
            .write_all(&checked.spool)
            .map_err(|e| spool_io(&self.path, e))
    }

    /// Takes one checked line (with its newline, if any), in order.
    fn take_line(&mut self, raw: &[u8], kind: &Kind) -> Result<(), DbError> {
        self.line += 1;
        let n = self.line;
        let crc_before = self.crc;
        self.crc = crc32c::crc32c_append(self.crc, raw);
        if matches!(kind, Kind::Blank) {
            return Ok(());
        }
        if self.trailer {
            return Err(bad_line(n, "a line after the trailer"));
        }
        match *kind {
            Kind::Blank => {}
            Kind::Header(version) => {
                if self.header || self.entries > 0 || self.metas > 0 {
                    return Err(bad_line(n, "a header that is not the first line"));
                }
                if version != crate::snapshot::FORMAT_VERSION {
                    return Err(bad_line(
                        n,
                        format!("export format version {version} is not one this server reads"),
                    ));
                }
                self.header = true;
            }
            Kind::Meta => self.metas += 1,
            Kind::Trailer { entries, crc32c } => {
                if entries != self.entries {
                    return Err(bad_line(
                        n,
                        format!(
                            "the trailer counts {entries} entries, but {} came before it",
                            self.entries
                        ),
                    ));
                }
                if crc32c != crc_before {
                    return Err(bad_line(
                        n,
                        "the checksum in the trailer does not match the lines before it (damaged?)",
                    ));
                }
                self.trailer = true;
            }
            Kind::Entry => self.entries += 1,
        }
        Ok(())
    }

    /// Stops the checking threads (each finishes the batch in hand).
    fn stop_checkers(&mut self) {
        self.jobs = None;
        for checker in self.checkers.drain(..) {
            let _ = checker.join();
        }
    }
}

/// Removes spool files an interrupted import left in `dir`; returns them.
pub(super) fn remove_leftovers(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(SPOOL_PREFIX) && n.ends_with(SPOOL_SUFFIX))
        {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

impl Db {
    /// Starts reading an export: feed it with [`ImportSpool::push`], then
    /// [`ImportSpool::finish`] and [`Db::apply_import`]. Entries are
    /// spooled to a file in the data directory (the system's temporary
    /// directory for an in-memory database).
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the spool file cannot be created.
    pub fn import_spool(&self) -> Result<ImportSpool, DbError> {
        let dir = self.inner.dir.clone().unwrap_or_else(std::env::temp_dir);
        let n = SPOOLS.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{SPOOL_PREFIX}{}-{n}{SPOOL_SUFFIX}",
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| spool_io(&path, e))?;
        let config = &self.inner.config;
        // A value written as `value_text` may grow sixfold (\u escapes).
        let max_line_bytes = 6 * (config.max_key_bytes + config.max_value_bytes) + 4096;
        let n = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(1, MAX_CHECKERS);
        let (jobs, taken) = crossbeam_channel::bounded::<Job>(n);
        let checkers = (0..n)
            .map(|_| {
                let (db, taken) = (self.clone(), taken.clone());
                std::thread::Builder::new()
                    .name("dododb-import".into())
                    .spawn(move || {
                        for job in taken {
                            let _ = job.done.send(check_lines(&db, job.lines));
                        }
                    })
                    .map_err(|e| DbError::Unavailable(format!("import: no checking thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImportSpool {
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            unsent: Vec::new(),
            partial_len: 0,
            jobs: Some(jobs),
            checkers,
            in_flight: VecDeque::new(),
            line: 0,
            crc: 0,
            entries: 0,
            metas: 0,
            header: false,
            trailer: false,
            max_line_bytes,
            started: Instant::now(),
            bulk: Some(BulkLoad::start()),
        })
    }

    /// Writes every checked entry as a put (new versions, expiry kept as
    /// an absolute time, entries already expired left out), after deleting
    /// every key first under [`ImportMode::Replace`]. Blocks until the last
    /// write is durable per the fsync policy.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the log refuses writes (what was
    /// applied before stays) or the spool cannot be read.
    pub fn apply_import(
        &self,
        spooled: Spooled,
        mode: ImportMode,
    ) -> Result<ImportResult, DbError> {
        let inner = &self.inner;
        let _importing = Importing::new(inner);
        let started = Instant::now();
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT + 1);
        if mode == ImportMode::Replace {
            in_flight.extend(inner.begin_clear(None)?.1);
        }
        // Room for every entry at once, not a table growing step by step
        // (never more than the store will hold: each entry is written).
        inner
            .store
            .reserve(usize::try_from(spooled.entries).unwrap_or(usize::MAX));
        let mut entries = spooled.entries()?;
        let (mut imported, mut expired) = (0u64, 0u64);
        let mut revision = None;
        // Each batch sized like the one before: a buffer of the largest
        // size is fresh memory the kernel must clear, most of it unused.
        let new_batch = |bytes: usize| PutBatch::with_capacity(BATCH, bytes + (64 << 10));
        let mut batch = new_batch(64 << 10);
        // Entries without an expiry get none, unless a retention applies.
        let retention = inner.config.retention.is_some();
        loop {
            let entry = entries.next_entry()?;
            if let Some(entry) = &entry {
                let mut expires_at_ms = entry.expires_at_ms;
                if expires_at_ms != 0 && expires_at_ms <= now_ms() {
                    expired += 1;
                    continue;
                }
                if expires_at_ms == 0 && retention {
                    expires_at_ms = inner.expiry(None, now_ms());
                }
                batch.push(entry.key, entry.value, expires_at_ms);
            }
            let last = entry.is_none();
            if batch.len() == BATCH
                || batch.data_len() >= BATCH_BYTES
                || (last && !batch.is_empty())
            {
                imported += batch.len() as u64;
                let batch_bytes = batch.data_len().min(BATCH_BYTES);
                let (last_revision, ticket) =
                    inner.write_batch(std::mem::replace(&mut batch, new_batch(batch_bytes)))?;
                revision = Some(last_revision);
                in_flight.extend(ticket);
                // Tickets are ordered: waiting for the oldest of too many
                // keeps the log busy with the rest while bounding the queue.
                while in_flight.len() > IN_FLIGHT {
                    inner.finish_blocking(in_flight.pop_front())?;
                }
            }
            if last {
                break;
            }
        }
        inner.finish_blocking(in_flight.pop_back())?;
        tracing::info!(
            imported,
            expired,
            millis = started.elapsed().as_millis(),
            "import: entries written"
        );
        Ok(ImportResult {
            imported,
            expired,
            revision: revision.unwrap_or_else(|| inner.store.revision()),
        })
    }
}

impl Inner {
    /// Writes a batch of an import's puts the way a transaction writes:
    /// one revision each, one log record for all, applied with the shards
    /// of its keys held (see `store/batch.rs`). Returns the last revision
    /// and the ticket to wait on.
    fn write_batch(&self, batch: PutBatch) -> Result<(u64, Option<u64>), DbError> {
        self.check_writable()?;
        let now = now_ms();
        let emit = &mut |change: &Applied<'_>| self.hub.emit(change);
        let written = match &self.wal {
            Some(wal) => self
                .store
                .put_batch(batch, now, &WalJournal(wal), emit)?
                .map(|w| (w.last_version, w.ticket)),
            None => self
                .store
                .put_batch(batch, now, &NoJournal, emit)?
                .map(|w| (w.last_version, None)),
        };
        Ok(written.unwrap_or_else(|| (self.store.revision(), None)))
    }
}

/// Counts an import as running while it lives (see [`Inner::imports`]).
struct Importing<'a>(&'a Inner);

impl<'a> Importing<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.imports.fetch_add(1, Ordering::AcqRel);
        Importing(inner)
    }
}

impl Drop for Importing<'_> {
    fn drop(&mut self) {
        self.0.imports.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads a length-prefixed field into `buf`.
fn read_field(reader: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    buf.clear();
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    reader.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::db::PutOptions;

    fn spool(db: &Db, export: &[u8]) -> Result<Spooled, DbError> {
        let mut spool = db.import_spool()?;
        // Pieces that cut lines anywhere, as a body arrives.
        for piece in export.chunks(77_777) {
            spool.push(piece)?;
        }
        spool.finish()
    }

    fn message(result: Result<Spooled, DbError>) -> String {
        match result {
            Err(DbError::InvalidRequest(why)) => why,
            Err(e) => panic!("{e}"),
            Ok(s) => panic!("accepted {} entries", s.entries),
        }
    }

    #[test]
    fn an_export_of_many_batches_is_checked_in_order() {
        let db = Db::open(Config::in_memory()).expect("open");
        // About 6 MiB: several batches for the checking threads.
        let line = |i: usize| format!("{{\"key\":\"k{i}\",\"value\":{{\"n\":{i}}}}}\n");
        let mut lines: Vec<String> = (0..200_000).map(line).collect();
        let spooled = spool(&db, lines.concat().as_bytes()).expect("a good export");
        assert_eq!(spooled.entries, 200_000);
        drop(spooled);

        // Two bad lines in different batches: the first is named.
        lines[190_000] = "{\"key\":\"k\",\"value\":{oops}\n".into();
        lines[150_000] = "{\"key\":\"\",\"value\":1}\n".into();
        let why = message(spool(&db, lines.concat().as_bytes()));
        assert!(why.starts_with("line 150001: "), "{why}");
        lines[150_000] = line(150_000);
        let why = message(spool(&db, lines.concat().as_bytes()));
        assert!(why.starts_with("line 190001: not JSON"), "{why}");
        lines[190_000] = line(190_000);
        // A line longer than any entry, after a bad one: the bad one first.
        lines[100] = "{\"surprise\":true}\n".into();
        let long = lines.concat() + &"x".repeat(8 << 20);
        let why = message(spool(&db, long.as_bytes()));
        assert!(why.starts_with("line 101: neither an entry"), "{why}");
        lines[100] = line(100);
        let long = lines.concat() + &"x".repeat(8 << 20);
        let why = message(spool(&db, long.as_bytes()));
        assert!(why.starts_with("line 200001: longer than"), "{why}");

        // A real export: the trailer's count and checksum cover every batch.
        for i in 0..100_000 {
            let value = format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "p".repeat(40));
            db.put(&format!("e{i}"), value.as_bytes(), PutOptions::default())
                .expect("put");
        }
        let mut export = Vec::new();
        db.export(&mut export).expect("export");
        let n_lines = export.split(|&b| b == b'\n').count() - 1;
        let spooled = spool(&db, &export).expect("a real export");
        assert_eq!(spooled.entries, 100_000);
        drop(spooled);
        let at = export.len() / 2
            + export[export.len() / 2..]
                .iter()
                .position(|&b| b == b'p')
                .expect("a pad byte");
        export[at] = b'q';
        let why = message(spool(&db, &export));
        assert!(
            why.starts_with(&format!("line {n_lines}: the checksum")),
            "{why}"
        );
        export[at] = b'p';
        let trailer = export[..export.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("trailer");
        export.extend_from_slice(b"{\"key\":\"late\",\"value\":1}\n");
        let why = message(spool(&db, &export));
        assert!(
            why.starts_with(&format!("line {}: a line after the trailer", n_lines + 1)),
            "{why}"
        );
        export.truncate(trailer + 1);
        let why = message(spool(&db, &export));
        assert!(why.contains("without its trailer"), "{why}");
        let leftovers = std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{SPOOL_PREFIX}{}-", std::process::id()))
            })
            .count();
        assert_eq!(leftovers, 0, "every spool file is removed");
    }
}
