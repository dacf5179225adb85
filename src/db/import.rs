//! Importing an export (`POST /system/import`, `dododb restore`): first every
//! line is checked while the entries are spooled to a file (so memory stays
//! bounded whatever the size), and only when the whole export is good are
//! they applied, as puts with new versions and events, through the group
//! commit in large batches.
//!
//! A crash in the middle of applying leaves the entries applied so far (in
//! the export's order) and, with `replace`, the clear before them; applying
//! the same export again finishes the job. Spool files left by a crash are
//! removed at start-up.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Db, DbError, now_ms};
use crate::snapshot::{ExportLine, parse_line};
use crate::store::{Mutation, Precondition, copy_value};

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

/// Entries written before the import waits for the batch before last: two
/// batches in flight keep the log busy while bounding what is queued.
const BATCH: u64 = 16_384;

const SPOOL_PREFIX: &str = "import-";
const SPOOL_SUFFIX: &str = ".spool";

/// Numbers spool files apart within one process.
static SPOOLS: AtomicU64 = AtomicU64::new(0);

/// An export being read and checked, its entries going to a spool file.
pub struct ImportSpool {
    db: Db,
    file: BufWriter<File>,
    path: PathBuf,
    /// The end of the data received so far, after its last newline.
    partial: Vec<u8>,
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
}

/// A checked export, ready to apply.
pub struct Spooled {
    path: PathBuf,
    entries: u64,
    /// Control documents (subscriptions) in the export, not imported.
    pub metas: u64,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ImportSpool {
    fn drop(&mut self) {
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

impl ImportSpool {
    /// Takes the next bytes of the export.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] naming the first bad line;
    /// [`DbError::Unavailable`] when the spool cannot be written.
    pub fn push(&mut self, data: &[u8]) -> Result<(), DbError> {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(end + 1);
            rest = tail;
            if self.partial.is_empty() {
                self.take_line(head)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.take_line(&line)?;
                line.clear();
                self.partial = line;
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > self.max_line_bytes {
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
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.take_line(&last)?;
        }
        if self.header && !self.trailer {
            return Err(bad_line(
                self.line,
                "the export ends without its trailer line (was it cut short?)",
            ));
        }
        self.file.flush().map_err(|e| spool_io(&self.path, e))?;
        Ok(Spooled {
            path: std::mem::take(&mut self.path),
            entries: self.entries,
            metas: self.metas,
        })
    }

    /// Checks one line (with its newline, if any) and spools its entry.
    fn take_line(&mut self, raw: &[u8]) -> Result<(), DbError> {
        self.line += 1;
        let n = self.line;
        let crc_before = self.crc;
        self.crc = crc32c::crc32c_append(self.crc, raw);
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        if text.trim_ascii().is_empty() {
            return Ok(());
        }
        if self.trailer {
            return Err(bad_line(n, "a line after the trailer"));
        }
        match parse_line(text).map_err(|why| bad_line(n, why))? {
            ExportLine::Header(version) => {
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
            ExportLine::Meta => self.metas += 1,
            ExportLine::Trailer { entries, crc32c } => {
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
            ExportLine::Entry {
                key,
                value,
                expires_at_ms,
            } => {
                let within = |e: DbError| bad_line(n, e);
                self.db.inner.check_key(&key).map_err(within)?;
                self.db.inner.check_value(&value).map_err(within)?;
                let path = &self.path;
                let io = |e| spool_io(path, e);
                let file = &mut self.file;
                file.write_all(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes())
                    .map_err(io)?;
                file.write_all(key.as_bytes()).map_err(io)?;
                file.write_all(&expires_at_ms.to_le_bytes()).map_err(io)?;
                file.write_all(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes())
                    .map_err(io)?;
                file.write_all(&value).map_err(io)?;
                self.entries += 1;
            }
        }
        Ok(())
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
        Ok(ImportSpool {
            db: self.clone(),
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            partial: Vec::new(),
            line: 0,
            crc: 0,
            entries: 0,
            metas: 0,
            header: false,
            trailer: false,
            max_line_bytes,
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
        let mut in_flight = None;
        if mode == ImportMode::Replace {
            in_flight = inner.begin_clear(None)?.1;
        }
        let file = File::open(&spooled.path).map_err(|e| spool_io(&spooled.path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let io = |e| spool_io(&spooled.path, e);
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let (mut imported, mut expired) = (0u64, 0u64);
        let mut last_ticket = None;
        let mut revision = 0;
        for i in 0..spooled.entries {
            read_field(&mut reader, &mut key).map_err(io)?;
            let mut expires = [0u8; 8];
            reader.read_exact(&mut expires).map_err(io)?;
            read_field(&mut reader, &mut value).map_err(io)?;
            let now = now_ms();
            let mut expires_at_ms = u64::from_le_bytes(expires);
            if expires_at_ms != 0 && expires_at_ms <= now {
                expired += 1;
                continue;
            }
            if expires_at_ms == 0 {
                expires_at_ms = inner.expiry(None, now);
            }
            let key = std::str::from_utf8(&key)
                .map_err(|_| DbError::Unavailable("import spool: a key is not UTF-8".into()))?;
            let put = Mutation::Put {
                value: copy_value(&value),
                expires_at_ms,
            };
            let outcome = inner.mutate(key, put, Precondition::None)?;
            revision = outcome.version;
            last_ticket = outcome.ticket.or(last_ticket);
            imported += 1;
            if (i + 1) % BATCH == 0 {
                // Wait for the batch before this one; this one is on its way.
                inner.finish_blocking(in_flight)?;
                in_flight = last_ticket;
            }
        }
        inner.finish_blocking(in_flight)?;
        inner.finish_blocking(last_ticket)?;
        Ok(ImportResult {
            imported,
            expired,
            revision: if imported > 0 {
                revision
            } else {
                inner.store.revision()
            },
        })
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
