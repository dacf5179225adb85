//! Loading a snapshot file: the checksum is verified over the whole file
//! before a single entry is applied, so a damaged snapshot changes nothing
//! and recovery can fall back to an older one.
//!
//! A large snapshot is parsed on several threads: one reads the file in
//! chunks of whole lines and hands them through a bounded channel to a pool
//! of parsers, which give each entry to the caller from their own thread.
//! Entries therefore arrive in no particular order; a snapshot holds each
//! key once (it is one walk of the map), so the order does not matter.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::SnapshotError;
use crate::store::{Change, ChangeKind, copy_value};

/// What a snapshot held besides its entries.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The revision counter when the snapshot ended.
    pub revision: u64,
    /// The first WAL segment the snapshot does not cover.
    pub wal_segment: u64,
    /// Entries applied.
    pub keys: u64,
    /// Control documents (subscriptions).
    pub metas: Vec<Bytes>,
}

/// One entry of a snapshot, borrowed from the chunk being parsed where it
/// needs no unescaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry<'a> {
    /// The key.
    pub key: Cow<'a, str>,
    /// The stored document, byte for byte.
    pub value: Cow<'a, [u8]>,
    /// The revision of the key's last change.
    pub version: u64,
    /// Unix milliseconds of expiry, 0 for never.
    pub expires_at_ms: u64,
}

impl SnapshotEntry<'_> {
    /// The entry as an update change (what recovery replays).
    pub fn to_change(&self) -> Change {
        Change {
            key: Box::from(&*self.key),
            kind: ChangeKind::Update,
            value: Some(copy_value(&self.value)),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
            timestamp_ms: 0,
            old_value: None,
        }
    }
}

/// Every field any line may have; which ones are set says what the line is.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    dododb_snapshot: Option<u32>,
    #[serde(default)]
    wal_segment: Option<u64>,
    #[serde(default, borrow)]
    meta: Option<&'a RawValue>,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default, borrow)]
    value_text: Option<Cow<'a, str>>,
    #[serde(default)]
    end: Option<bool>,
    #[serde(default)]
    revision: Option<u64>,
    #[serde(default)]
    entries: Option<u64>,
    #[serde(default)]
    crc32c: Option<u32>,
}

/// Reads and verifies `path`, then hands each entry to `apply` as an
/// update change, one call at a time (from the parsing threads, in no
/// particular order).
///
/// # Errors
///
/// As [`load_parallel`].
pub fn load(path: &Path, apply: impl FnMut(Change) + Send) -> Result<Loaded, SnapshotError> {
    let apply = Mutex::new(apply);
    load_parallel(
        path,
        |_| {},
        |entry| (apply.lock().unwrap_or_else(|e| e.into_inner()))(entry.to_change()),
    )
}

/// Reads and verifies `path`, tells `expect` how many entries the trailer
/// announces, then hands each entry to `insert`, called from several
/// threads at once for a large file, in no particular order.
///
/// The file is read twice, a chunk at a time: once for the checksum, once
/// to parse. Loading holds a few chunks, never the whole file, so a restart
/// does not leave the allocator holding a file-sized buffer on top of the
/// data.
///
/// # Errors
///
/// [`SnapshotError::Damaged`] when the file is incomplete or fails its
/// checksum (nothing was applied then) or a line is not what the format
/// says (entries before it may have been applied), [`SnapshotError::Io`]
/// when it cannot be read.
pub fn load_parallel(
    path: &Path,
    expect: impl FnOnce(u64),
    insert: impl Fn(SnapshotEntry<'_>) + Sync,
) -> Result<Loaded, SnapshotError> {
    let io = |e| SnapshotError::io(path, e);
    let file_name = path.display().to_string();
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // The trailer is one short line; this much of the tail always holds it.
    let tail_len = len.min(64 << 10);
    let tail_start = len - tail_len;
    let mut tail = vec![0; usize::try_from(tail_len).expect("64 KiB fits")];
    file.seek(SeekFrom::Start(tail_start)).map_err(io)?;
    file.read_exact(&mut tail).map_err(io)?;
    let (trailer_at, trailer) =
        find_trailer(&tail, tail_start == 0).map_err(|why| damaged(&file_name, why))?;
    let body = Body::File {
        file: &file,
        len: tail_start + trailer_at as u64,
        path,
    };
    load_body(&body, &trailer, &file_name, expect, &insert)
}

/// [`load`] over the bytes of a snapshot file named `file` (for messages).
///
/// # Errors
///
/// [`SnapshotError::Damaged`] when the data is incomplete or fails its
/// checksum; nothing was applied then.
pub fn load_bytes(
    data: &[u8],
    file: &str,
    apply: impl FnMut(Change) + Send,
) -> Result<Loaded, SnapshotError> {
    let (body_end, trailer) = find_trailer(data, true).map_err(|why| damaged(file, why))?;
    let apply = Mutex::new(apply);
    let insert = |entry: SnapshotEntry<'_>| {
        (apply.lock().unwrap_or_else(|e| e.into_inner()))(entry.to_change());
    };
    load_body(
        &Body::Bytes(&data[..body_end]),
        &trailer,
        file,
        |_| {},
        &insert,
    )
}

fn damaged(file: &str, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Damaged {
        file: file.to_string(),
        reason: why.to_string(),
    }
}

/// Snapshots at least this large are parsed on several threads.
const PARALLEL_LOAD_BYTES: u64 = 1 << 20;

/// A file is read this much at a time (a line cut at the end of a chunk is
/// carried over to the next).
const READ_CHUNK: usize = 2 << 20;

/// The most threads that parse one snapshot.
const MAX_PARSERS: usize = 8;

/// A snapshot's lines before the trailer.
enum Body<'a> {
    /// All in memory.
    Bytes(&'a [u8]),
    /// The first `len` bytes of `file`, read a chunk at a time on each pass
    /// (through the same open handle; snapshots are never changed once
    /// renamed into place).
    File {
        file: &'a File,
        len: u64,
        path: &'a Path,
    },
}

impl<'a> Body<'a> {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(data) => data.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Hands the body to `each` in chunks of whole lines, each chunk in a
    /// buffer of its own (taken from `spare` when it has one) or, for a
    /// body in memory, borrowed.
    fn for_each_chunk(
        &self,
        spare: &mut dyn FnMut() -> Option<Vec<u8>>,
        each: &mut dyn FnMut(Chunk<'a>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        match *self {
            Body::Bytes(data) => {
                let mut rest = data;
                while !rest.is_empty() {
                    let cut = line_cut(rest, READ_CHUNK);
                    each(Chunk::Borrowed(&rest[..cut]))?;
                    rest = &rest[cut..];
                }
                Ok(())
            }
            Body::File { file, len, path } => {
                let mut file = file;
                file.rewind().map_err(|e| SnapshotError::io(path, e))?;
                for_each_chunk(&mut file.take(len), READ_CHUNK, path, spare, each)
            }
        }
    }
}

/// Where to cut `data` after about `size` bytes: after the first newline
/// at or past `size`, or at its end.
fn line_cut(data: &[u8], size: usize) -> usize {
    if data.len() <= size {
        return data.len();
    }
    data[size - 1..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |at| size + at)
}

/// Lines of a snapshot, borrowed or in a buffer of their own.
enum Chunk<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Chunk<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(data) => data,
            Chunk::Owned(buf) => buf,
        }
    }
}

/// Verifies the body's checksum against the trailer, then reads it: a
/// damaged snapshot is refused before a single entry is applied.
fn load_body(
    body: &Body<'_>,
    trailer: &Trailer,
    file: &str,
    expect: impl FnOnce(u64),
    insert: &(dyn Fn(SnapshotEntry<'_>) + Sync),
) -> Result<Loaded, SnapshotError> {
    let mut crc = 0;
    let spare = std::cell::Cell::new(None);
    body.for_each_chunk(&mut || spare.take(), &mut |chunk| {
        crc = crc32c::crc32c_append(crc, &chunk);
        if let Chunk::Owned(buf) = chunk {
            spare.set(Some(buf));
        }
        Ok(())
    })?;
    if crc != trailer.crc32c {
        return Err(damaged(file, "checksum mismatch"));
    }
    // A line is longer than 32 bytes: a trailer counting more entries than
    // that allows is found out later, without reserving room for them.
    expect(trailer.entries.min(body.len() / 32));
    read_body(body, trailer, file, insert)
}

/// Reads `reader` to its end in chunks of about `chunk_size` bytes, each
/// ending after a newline (the last one: wherever the data ends), each in
/// a buffer of its own.
fn for_each_chunk<'a>(
    reader: &mut impl Read,
    chunk_size: usize,
    path: &Path,
    spare: &mut dyn FnMut() -> Option<Vec<u8>>,
    each: &mut dyn FnMut(Chunk<'a>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut next = || {
        let mut buf = spare().unwrap_or_else(|| Vec::with_capacity(chunk_size + (64 << 10)));
        buf.clear();
        buf
    };
    let mut buf = next();
    loop {
        let read = reader
            .take(chunk_size as u64)
            .read_to_end(&mut buf)
            .map_err(|e| SnapshotError::io(path, e))?;
        if read == 0 {
            return if buf.is_empty() {
                Ok(())
            } else {
                each(Chunk::Owned(buf))
            };
        }
        // A line longer than a chunk: read on until it ends.
        if let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') {
            let mut carried = next();
            carried.extend_from_slice(&buf[last_newline + 1..]);
            buf.truncate(last_newline + 1);
            each(Chunk::Owned(buf))?;
            buf = carried;
        }
    }
}

/// What the parsers found in the chunks they took.
#[derive(Default)]
struct Parsed {
    entries: u64,
    /// Control documents by chunk number, to put back in file order.
    metas: Vec<(usize, Vec<Bytes>)>,
    /// The first bad line (by chunk number) and what is wrong with it.
    error: Option<(usize, String)>,
}

impl Parsed {
    fn merge(&mut self, other: Parsed) {
        self.entries += other.entries;
        self.metas.extend(other.metas);
        if let Some((at, why)) = other.error
            && self.error.as_ref().is_none_or(|(first, _)| at < *first)
        {
            self.error = Some((at, why));
        }
    }

    /// Parses chunk number `n`.
    fn take(&mut self, n: usize, chunk: &[u8], insert: &(dyn Fn(SnapshotEntry<'_>) + Sync)) {
        let mut metas = Vec::new();
        match read_entries(chunk, &mut metas, insert) {
            Ok(entries) => self.entries += entries,
            Err(why) => self.merge(Parsed {
                error: Some((n, why)),
                ..Parsed::default()
            }),
        }
        if !metas.is_empty() {
            self.metas.push((n, metas));
        }
    }
}

/// Parses the header and every entry of `body`, handing entries to
/// `insert` (from a pool of threads for a large body), and checks them
/// against the trailer.
fn read_body(
    body: &Body<'_>,
    trailer: &Trailer,
    file: &str,
    insert: &(dyn Fn(SnapshotEntry<'_>) + Sync),
) -> Result<Loaded, SnapshotError> {
    let mut loaded = Loaded::default();
    let mut header_seen = false;
    let mut parsed = Parsed::default();
    if body.len() >= PARALLEL_LOAD_BYTES {
        let parsers = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(2, MAX_PARSERS);
        let failed = AtomicBool::new(false);
        let (chunks, received) = crossbeam_channel::bounded::<(usize, Chunk<'_>)>(parsers);
        let (done, spares) = crossbeam_channel::bounded::<Vec<u8>>(parsers + 2);
        let read = std::thread::scope(|scope| {
            let pool: Vec<_> = (0..parsers)
                .map(|_| {
                    let (received, done, failed) = (received.clone(), done.clone(), &failed);
                    scope.spawn(move || {
                        let mut parsed = Parsed::default();
                        for (n, chunk) in received {
                            if !failed.load(Ordering::Relaxed) {
                                parsed.take(n, &chunk, insert);
                                if parsed.error.is_some() {
                                    failed.store(true, Ordering::Relaxed);
                                }
                            }
                            if let Chunk::Owned(buf) = chunk {
                                let _ = done.try_send(buf);
                            }
                        }
                        parsed
                    })
                })
                .collect();
            drop(received);
            let mut n = 0;
            let read = body.for_each_chunk(&mut || spares.try_recv().ok(), &mut |chunk| {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let chunk = if header_seen {
                    chunk
                } else {
                    let skip = split_header(&chunk, &mut loaded, file)?;
                    header_seen = true;
                    match chunk {
                        Chunk::Borrowed(data) => Chunk::Borrowed(&data[skip..]),
                        Chunk::Owned(mut buf) => {
                            buf.drain(..skip);
                            Chunk::Owned(buf)
                        }
                    }
                };
                // The parsers only stop once this side is done.
                let _ = chunks.send((n, chunk));
                n += 1;
                Ok(())
            });
            drop(chunks);
            for parser in pool {
                match parser.join() {
                    Ok(p) => parsed.merge(p),
                    Err(_) => {
                        return Err(damaged(file, "a thread parsing the snapshot panicked"));
                    }
                }
            }
            read
        });
        read?;
    } else {
        let mut n = 0;
        body.for_each_chunk(&mut || None, &mut |chunk| {
            let mut skip = 0;
            if !header_seen {
                skip = split_header(&chunk, &mut loaded, file)?;
                header_seen = true;
            }
            parsed.take(n, &chunk[skip..], insert);
            n += 1;
            Ok(())
        })?;
    }
    if let Some((_, why)) = parsed.error {
        return Err(damaged(file, why));
    }
    if !header_seen {
        return Err(damaged(file, "no header"));
    }
    parsed.metas.sort_unstable_by_key(|(n, _)| *n);
    loaded.metas = parsed.metas.into_iter().flat_map(|(_, m)| m).collect();
    loaded.keys = parsed.entries;
    if trailer.entries != loaded.keys {
        return Err(damaged(file, "entry count does not match the trailer"));
    }
    loaded.revision = trailer.revision;
    Ok(loaded)
}

/// Reads the header, the first line of the first chunk, and returns where
/// the rest of the chunk starts.
fn split_header(chunk: &[u8], loaded: &mut Loaded, file: &str) -> Result<usize, SnapshotError> {
    let start = chunk.len() - chunk.trim_ascii_start().len();
    let end = chunk[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(chunk.len(), |at| start + at + 1);
    read_header(&chunk[start..end], loaded).map_err(|why| damaged(file, why))?;
    Ok(end)
}

/// Checks the header line and takes the WAL segment from it.
fn read_header(line: &[u8], loaded: &mut Loaded) -> Result<(), String> {
    if line.trim_ascii().is_empty() {
        return Err("no header".into());
    }
    let header: Line<'_> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if header.dododb_snapshot != Some(super::encode::FORMAT_VERSION) {
        return Err("not a DodoDB snapshot of a known format version".into());
    }
    loaded.wal_segment = header.wal_segment.ok_or("header lacks wal_segment")?;
    Ok(())
}

/// Hands every entry of `chunk` to `insert` and collects the control
/// documents; returns the entries, or says what is wrong with the first bad
/// line.
///
/// Lines the encoder writes today are one document each, mostly in the
/// plain form [`plain_entry`] reads. Anything else goes to the general
/// parser one document at a time, wherever it ends: files written before
/// every entry was kept to one line may hold a document across lines.
fn read_entries(
    chunk: &[u8],
    metas: &mut Vec<Bytes>,
    insert: &(dyn Fn(SnapshotEntry<'_>) + Sync),
) -> Result<u64, String> {
    let mut entries = 0;
    let mut at = 0;
    while at < chunk.len() {
        let rest = &chunk[at..];
        let line_len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        if let Some(entry) = plain_entry(&rest[..line_len]) {
            insert(entry);
            entries += 1;
            at += line_len + 1;
            continue;
        }
        let mut docs = serde_json::Deserializer::from_slice(rest).into_iter::<Line<'_>>();
        let Some(doc) = docs.next() else {
            // Only whitespace is left.
            break;
        };
        let doc = doc.map_err(|e| e.to_string())?;
        at += docs.byte_offset();
        at += chunk[at..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .count();
        if let Some(meta) = doc.meta {
            metas.push(Bytes::copy_from_slice(meta.get().as_bytes()));
            continue;
        }
        let (Some(key), Some(version)) = (doc.key, doc.version) else {
            return Err("a line is neither an entry nor a control document".into());
        };
        let value = match (doc.value, doc.value_text) {
            (Some(raw), None) => Cow::Borrowed(raw.get().as_bytes()),
            (None, Some(Cow::Borrowed(text))) => Cow::Borrowed(text.as_bytes()),
            (None, Some(Cow::Owned(text))) => Cow::Owned(text.into_bytes()),
            _ => return Err("an entry needs exactly one of value and value_text".into()),
        };
        insert(SnapshotEntry {
            key,
            value,
            version,
            expires_at_ms: doc.expires_at_ms.unwrap_or(0),
        });
        entries += 1;
    }
    Ok(entries)
}

/// The key at the start of a line `{"key":"…"` when it needs no
/// unescaping (no quote, backslash or control character in it), and what
/// follows its closing quote.
fn plain_key(line: &[u8]) -> Option<(&str, &[u8])> {
    let rest = line.strip_prefix(b"{\"key\":\"")?;
    let key_len = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let (key, rest) = rest.split_at(key_len);
    Some((std::str::from_utf8(key).ok()?, rest.strip_prefix(b"\"")?))
}

/// An entry line exactly as the encoder writes most of them
/// (`{"key":"…","version":N,"expires_at_ms":N,"value":…}` with a key that
/// needs no unescaping), read without the general parser; `None` for any
/// other line, which the general parser then reads (and judges). The value
/// is still checked to be one JSON document, as the general parser would.
fn plain_entry(line: &[u8]) -> Option<SnapshotEntry<'_>> {
    let (key, rest) = plain_key(line)?;
    let rest = rest.strip_prefix(b",\"version\":")?;
    let (version, rest) = whole_number(rest)?;
    let rest = rest.strip_prefix(b",\"expires_at_ms\":")?;
    let (expires_at_ms, rest) = whole_number(rest)?;
    let value = rest.strip_prefix(b",\"value\":")?.strip_suffix(b"}")?;
    let raw: &RawValue = serde_json::from_slice(value).ok()?;
    (raw.get().len() == value.len()).then_some(SnapshotEntry {
        key: Cow::Borrowed(key),
        value: Cow::Borrowed(value),
        version,
        expires_at_ms,
    })
}

/// An entry line of an export in one of the two forms most are written in
/// (`{"key":"…","value":…}`, or as the encoder writes it,
/// `{"key":"…","version":N,"expires_at_ms":N,"value":…}`, with a key that
/// needs no unescaping), read without the general parser: its key, its
/// value's bytes and its expiry (0 for none). `None` for any other line.
///
/// The value is NOT checked here: it is what lies between `"value":` and
/// the line's last `}`, starting and ending with no whitespace, and the
/// caller must check it is one JSON document (as it checks every value it
/// stores) before taking the line as read: if it is, the general parser
/// reads the same key, value and expiry from the line; if not, the general
/// parser is the one to say what is wrong with the line.
pub fn plain_import_entry(line: &[u8]) -> Option<(&str, &[u8], u64)> {
    let (key, rest) = plain_key(line)?;
    let (expires_at_ms, rest) = match rest.strip_prefix(b",\"version\":") {
        Some(rest) => {
            let (_, rest) = whole_number(rest)?;
            let rest = rest.strip_prefix(b",\"expires_at_ms\":")?;
            let (expires_at_ms, rest) = whole_number(rest)?;
            (expires_at_ms, rest.strip_prefix(b",")?)
        }
        None => (0, rest.strip_prefix(b",")?),
    };
    let value = rest.strip_prefix(b"\"value\":")?.strip_suffix(b"}")?;
    let (first, last) = (value.first()?, value.last()?);
    (!first.is_ascii_whitespace() && !last.is_ascii_whitespace()).then_some((
        key,
        value,
        expires_at_ms,
    ))
}

/// A JSON whole number that fits in a `u64` at the start of `text`, and
/// what follows it.
fn whole_number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && text[0] == b'0') {
        return None;
    }
    let mut n = 0u64;
    for &d in &text[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &text[digits..]))
}

/// One line of a snapshot or export, as an import reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLine<'a> {
    /// The header; the format version it names.
    Header(u32),
    /// A control document (a subscription).
    Meta,
    /// One entry: its key, its document byte for byte, its expiry (Unix
    /// ms, 0 for never).
    Entry {
        /// The key.
        key: Cow<'a, str>,
        /// The stored document.
        value: Cow<'a, [u8]>,
        /// Unix milliseconds of expiry, 0 for never.
        expires_at_ms: u64,
    },
    /// The trailer: how many entries came before it, and the CRC32C of
    /// every byte before it.
    Trailer {
        /// Entries before the trailer.
        entries: u64,
        /// CRC32C of every byte before the trailer line.
        crc32c: u32,
    },
}

/// Reads one line of the snapshot format (without its newline).
///
/// # Errors
///
/// A sentence saying what is wrong with the line.
pub fn parse_line(line: &[u8]) -> Result<ExportLine<'_>, String> {
    let line: Line<'_> = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(version) = line.dododb_snapshot {
        return Ok(ExportLine::Header(version));
    }
    if line.meta.is_some() {
        return Ok(ExportLine::Meta);
    }
    if line.end == Some(true) {
        return match (line.entries, line.crc32c) {
            (Some(entries), Some(crc32c)) => Ok(ExportLine::Trailer { entries, crc32c }),
            _ => Err("the trailer lacks entries or crc32c".into()),
        };
    }
    let key = line.key.ok_or(
        "neither an entry ({\"key\", \"value\"}) nor a header, control document or trailer",
    )?;
    let value = match (line.value, line.value_text) {
        (Some(raw), None) => Cow::Borrowed(raw.get().as_bytes()),
        (None, Some(Cow::Borrowed(text))) => Cow::Borrowed(text.as_bytes()),
        (None, Some(Cow::Owned(text))) => Cow::Owned(text.into_bytes()),
        _ => return Err("an entry needs exactly one of value and value_text".into()),
    };
    Ok(ExportLine::Entry {
        key,
        value,
        expires_at_ms: line.expires_at_ms.unwrap_or(0),
    })
}

/// What the last line of a snapshot says about the rest.
struct Trailer {
    revision: u64,
    entries: u64,
    crc32c: u32,
}

/// Finds the trailer at the end of `tail` (the end of a snapshot file) and
/// returns where in `tail` it starts. `whole_file` says `tail` is the
/// entire file, so a trailer with no newline before it is the first line.
fn find_trailer(tail: &[u8], whole_file: bool) -> Result<(usize, Trailer), &'static str> {
    let not_a_trailer = "the last line is not a trailer (cut short?)";
    let without_newline = tail
        .strip_suffix(b"\n")
        .ok_or("file does not end with a newline (cut short?)")?;
    let trailer_start = match without_newline.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if whole_file => 0,
        None => return Err(not_a_trailer),
    };
    let line: Line<'_> =
        serde_json::from_slice(&without_newline[trailer_start..]).map_err(|_| not_a_trailer)?;
    if line.end != Some(true) {
        return Err(not_a_trailer);
    }
    let trailer = Trailer {
        revision: line.revision.unwrap_or(0),
        entries: line.entries.ok_or("the trailer lacks entries")?,
        crc32c: line.crc32c.ok_or("the trailer lacks crc32c")?,
    };
    Ok((trailer_start, trailer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Mutation, NoJournal, Precondition, Store};

    /// A store with `n` keys, each a ~100-byte document, some with
    /// whitespace (stored as `value_text`) and some with an expiry.
    fn store_with(n: usize) -> Store {
        let store = Store::new();
        for i in 0..n {
            let value = if i % 7 == 0 {
                format!(" {{\"n\": {i},\n \"pad\": \"{}\"}} ", "x".repeat(70))
            } else {
                format!("{{\"n\":{i},\"pad\":\"{}\"}}", "y".repeat(80))
            };
            let put = Mutation::Put {
                value: value.as_bytes(),
                expires_at_ms: if i % 5 == 0 { u64::MAX } else { 0 },
            };
            let key = format!("key:{i}");
            let result = store.mutate(&key, put, Precondition::None, 1, &NoJournal, &mut |_| {});
            assert!(result.is_ok(), "{key}");
        }
        store
    }

    fn encoded(store: &Store, metas: &[Bytes]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::snapshot::encode(store, metas, 3, 1, &mut out).expect("encode");
        out
    }

    #[test]
    fn small_and_large_snapshots_load_every_entry() {
        // Below and above the size at which loading uses several threads.
        for n in [100, 30_000] {
            let original = store_with(n);
            let metas = [
                Bytes::from_static(b"{\"sub\":1}"),
                Bytes::from_static(b"{\"sub\":2}"),
            ];
            let data = encoded(&original, &metas);
            assert_eq!(data.len() as u64 >= PARALLEL_LOAD_BYTES, n == 30_000);
            let copy = Store::new();
            let loaded = load_bytes(&data, "test", |change| copy.replay(change)).expect("load");
            assert_eq!(loaded.keys, n as u64);
            assert_eq!(loaded.wal_segment, 3);
            assert_eq!(loaded.metas, metas.to_vec());
            let mut seen = 0;
            original.for_each(1, |key, entry| {
                let got = copy.get(key, || 1).expect("loaded");
                assert_eq!(
                    (&got.value[..], got.version, got.expires_at_ms),
                    (entry.value, entry.version, entry.expires_at_ms),
                    "{key}"
                );
                seen += 1;
            });
            assert_eq!(seen, n);
        }
    }

    #[test]
    fn the_plain_reading_of_an_entry_agrees_with_the_general_parser() {
        let lines: [&[u8]; 12] = [
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":{"x":[1,2]}}"#,
            br#"{"key":"k","version":18446744073709551615,"expires_at_ms":7,"value":"s"}"#,
            // Declined, and judged by the general parser instead:
            br#"{"key":"a\"b","version":1,"expires_at_ms":0,"value":1}"#,
            br#"{"key":"a","version":01,"expires_at_ms":0,"value":1}"#,
            br#"{"key":"a","version":18446744073709551616,"expires_at_ms":0,"value":1}"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":1,"value_text":"1"}"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":{"x":}"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value": 1 }"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":1} "#,
            br#"{"key":"a","version":1.0,"expires_at_ms":0,"value":1}"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":1}{"key":"b","version":2,"expires_at_ms":0,"value":2}"#,
            b"{\"key\":\"\x01\",\"version\":1,\"expires_at_ms\":0,\"value\":1}",
        ];
        for (i, line) in lines.iter().enumerate() {
            let general = |line: &[u8]| {
                let mut got = Vec::new();
                let entries = Mutex::new(Vec::new());
                let result = read_entries(line, &mut got, &|e| {
                    entries.lock().expect("lock").push(e.to_change());
                });
                (result, entries.into_inner().expect("lock"))
            };
            match plain_entry(line) {
                Some(plain) => {
                    assert!(i < 2, "line {i} should have been declined");
                    let (result, entries) = general(line);
                    assert_eq!(result, Ok(1), "line {i}");
                    assert_eq!(entries, vec![plain.to_change()], "line {i}");
                }
                None => assert!(i >= 2, "line {i} should have been read plainly"),
            }
        }
    }

    #[test]
    fn the_plain_reading_of_an_import_line_agrees_with_the_general_parser() {
        let read: [&[u8]; 6] = [
            br#"{"key":"a","value":{"x":[1,2]}}"#,
            "{\"key\":\"k/é\",\"value\":\"s\"}".as_bytes(),
            br#"{"key":"a","version":3,"expires_at_ms":7,"value":[1, {"b": null}]}"#,
            br#"{"key":"a","version":18446744073709551615,"expires_at_ms":0,"value":1e400}"#,
            br#"{"key":"","value":123456789012345678901234567890}"#,
            br#"{"key":"a","value":"}"}"#,
        ];
        for line in read {
            let (key, value, expires_at_ms) = plain_import_entry(line).expect("read plainly");
            crate::value::validate(value).expect("a good value");
            let general = parse_line(line).expect("the general parser reads it");
            let plain = ExportLine::Entry {
                key: Cow::Borrowed(key),
                value: Cow::Borrowed(value),
                expires_at_ms,
            };
            assert_eq!(general, plain, "{}", String::from_utf8_lossy(line));
        }
        // Read plainly, but the value is not one document: the general
        // parser refuses the line too, and says why.
        let bad_value: [&[u8]; 5] = [
            br#"{"key":"a","value":1,"value":2}"#,
            br#"{"key":"a","value":1,"end":true}"#,
            br#"{"key":"a","value":{"x":}}"#,
            br#"{"key":"a","value":1}}"#,
            br#"{"key":"a","version":1,"expires_at_ms":0,"value":"\x"}"#,
        ];
        for line in bad_value {
            let (_, value, _) = plain_import_entry(line).expect("read plainly");
            assert!(crate::value::validate(value).is_err());
            assert!(
                parse_line(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // Left to the general parser.
        let declined: [&[u8]; 9] = [
            br#"{"key":"a\"b","value":1}"#,
            br#"{"key":"a","value": 1}"#,
            br#"{"key":"a","value":1 }"#,
            br#"{"key":"a","value_text":"1"}"#,
            br#"{"key":"a","version":01,"expires_at_ms":0,"value":1}"#,
            br#"{"key":"a","version":1,"expires_at_ms":1.5,"value":1}"#,
            br#"{"value":1,"key":"a"}"#,
            b"{\"key\":\"a\",\"value\":1}\r",
            b"{\"key\":\"\x01\",\"value\":1}",
        ];
        for line in declined {
            assert_eq!(
                plain_import_entry(line),
                None,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn chunks_end_at_line_ends_and_cover_everything() {
        let data = b"{\"a\":1}\n{\"long\":\"0123456789abcdef\"}\n\n{}\nno newline at the end";
        for chunk_size in [1, 3, 7, 16, 1000] {
            let mut chunks = Vec::new();
            for_each_chunk(
                &mut &data[..],
                chunk_size,
                Path::new("t"),
                &mut || None,
                &mut |chunk| {
                    chunks.push(chunk.to_vec());
                    Ok(())
                },
            )
            .expect("read");
            let (last, whole_lines) = chunks.split_last().expect("chunks");
            assert!(
                whole_lines.iter().all(|c| c.ends_with(b"\n")),
                "{chunk_size}"
            );
            assert!(last.ends_with(b"at the end"), "{chunk_size}");
            assert_eq!(chunks.concat(), data.to_vec(), "{chunk_size}");
        }
    }

    #[test]
    fn a_file_loads_like_its_bytes_and_a_flipped_byte_applies_nothing() {
        let dir = std::env::temp_dir().join(format!("dododb-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("snapshot.json");
        for n in [10, 30_000] {
            let data = encoded(&store_with(n), &[Bytes::from_static(b"{\"sub\":1}")]);
            std::fs::write(&path, &data).expect("write");
            let (mut from_file, mut from_bytes) = (Vec::new(), Vec::new());
            let a = load(&path, |c| from_file.push(c)).expect("file");
            let b = load_bytes(&data, "t", |c| from_bytes.push(c)).expect("bytes");
            assert_eq!(
                (a.keys, a.revision, a.wal_segment),
                (b.keys, b.revision, b.wal_segment)
            );
            assert_eq!(a.metas, b.metas);
            // Parsed on several threads: in no particular order.
            from_file.sort_unstable_by(|x, y| x.key.cmp(&y.key));
            from_bytes.sort_unstable_by(|x, y| x.key.cmp(&y.key));
            assert_eq!(from_file, from_bytes);

            let mut flipped = data.clone();
            flipped[data.len() / 2] ^= 0x01;
            std::fs::write(&path, &flipped).expect("write");
            let mut applied = 0;
            let result = load(&path, |_| applied += 1);
            assert!(
                matches!(&result, Err(SnapshotError::Damaged { reason, .. }) if reason == "checksum mismatch"),
                "{result:?}"
            );
            assert_eq!(applied, 0);
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_bad_line_in_a_large_snapshot_is_reported() {
        let data = encoded(&store_with(30_000), &[]);
        // Valid JSON with the checksum fixed up, but not an entry: only the
        // line checks can refuse it.
        let text = String::from_utf8(data).expect("utf-8");
        let middle = text.len() / 2;
        let line_start = text[..middle].rfind('\n').expect("a line") + 1;
        let line_end = line_start + text[line_start..].find('\n').expect("its end");
        let mut bad = text[..line_start].to_string();
        bad.push_str("{\"surprise\":true}");
        bad.push_str(&text[line_end..]);
        let body_end = bad[..bad.len() - 1].rfind('\n').expect("trailer") + 1;
        let crc = crc32c::crc32c(&bad.as_bytes()[..body_end]);
        let trailer_at = bad[body_end..].find("\"crc32c\":").expect("crc field") + body_end;
        let mut fixed = bad[..trailer_at].to_string();
        fixed.push_str(&format!("\"crc32c\":{crc}}}\n"));
        let result = load_bytes(fixed.as_bytes(), "test", |_| {});
        assert!(
            matches!(&result, Err(SnapshotError::Damaged { reason, .. }) if reason.contains("neither an entry")),
            "{result:?}"
        );
    }
}
