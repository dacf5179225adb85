//! Loading a snapshot file: the checksum is verified over the whole file
//! before a single entry is applied, so a damaged snapshot changes nothing
//! and recovery can fall back to an older one.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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
/// update change.
///
/// The file is read twice, a chunk at a time: once for the checksum, once
/// to parse. Loading holds one chunk, never the whole file, so a restart
/// does not leave the allocator holding a file-sized buffer on top of the
/// data.
///
/// # Errors
///
/// [`SnapshotError::Damaged`] when the file is incomplete or fails its
/// checksum (nothing was applied then), [`SnapshotError::Io`] when it
/// cannot be read.
pub fn load(path: &Path, apply: impl FnMut(Change) + Send) -> Result<Loaded, SnapshotError> {
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
    load_body(&body, &trailer, &file_name, apply)
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
    load_body(&Body::Bytes(&data[..body_end]), &trailer, file, apply)
}

fn damaged(file: &str, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Damaged {
        file: file.to_string(),
        reason: why.to_string(),
    }
}

/// Snapshots at least this large are parsed and applied on two threads.
const PARALLEL_LOAD_BYTES: u64 = 1 << 20;

/// Entries handed from the parsing to the applying thread at a time.
const LOAD_BATCH: usize = 4096;

/// A file is read this much at a time (a line cut at the end of a chunk is
/// carried over to the next).
const READ_CHUNK: usize = 4 << 20;

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

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(data) => data.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Hands the body to `each` in chunks of whole lines.
    fn for_each_chunk(
        &self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        match *self {
            Body::Bytes(data) => each(data),
            Body::File { file, len, path } => {
                let mut file = file;
                file.rewind().map_err(|e| SnapshotError::io(path, e))?;
                for_each_chunk(&mut file.take(len), READ_CHUNK, path, each)
            }
        }
    }
}

/// Verifies the body's checksum against the trailer, then reads it: a
/// damaged snapshot is refused before a single entry is applied.
fn load_body(
    body: &Body<'_>,
    trailer: &Trailer,
    file: &str,
    apply: impl FnMut(Change) + Send,
) -> Result<Loaded, SnapshotError> {
    let mut crc = 0;
    body.for_each_chunk(&mut |chunk| {
        crc = crc32c::crc32c_append(crc, chunk);
        Ok(())
    })?;
    if crc != trailer.crc32c {
        return Err(damaged(file, "checksum mismatch"));
    }
    read_body(body, trailer, file, apply)
}

/// Reads `reader` to its end in chunks of about `chunk_size` bytes, each
/// ending after a newline (the last one: wherever the data ends).
fn for_each_chunk(
    reader: &mut impl Read,
    chunk_size: usize,
    path: &Path,
    each: &mut dyn FnMut(&[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut buf = Vec::with_capacity(chunk_size);
    loop {
        let read = reader
            .take(chunk_size as u64)
            .read_to_end(&mut buf)
            .map_err(|e| SnapshotError::io(path, e))?;
        if read == 0 {
            return if buf.is_empty() { Ok(()) } else { each(&buf) };
        }
        // A line longer than a chunk: read on until it ends.
        if let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') {
            each(&buf[..=last_newline])?;
            buf.drain(..=last_newline);
        }
    }
}

/// Parses the header and every entry of `body`, handing entries to `apply`
/// (on a second thread for a large body), and checks them against the
/// trailer.
fn read_body(
    body: &Body<'_>,
    trailer: &Trailer,
    file: &str,
    mut apply: impl FnMut(Change) + Send,
) -> Result<Loaded, SnapshotError> {
    let mut loaded = Loaded::default();
    let mut header_seen = false;
    let mut parse = |chunk: &[u8], sink: &mut dyn FnMut(Change)| {
        let mut lines = serde_json::Deserializer::from_slice(chunk).into_iter::<Line<'_>>();
        if !header_seen {
            read_header(lines.next(), &mut loaded).map_err(|why| damaged(file, why))?;
            header_seen = true;
        }
        read_entries(lines, &mut loaded, sink).map_err(|why| damaged(file, why))
    };
    if body.len() >= PARALLEL_LOAD_BYTES {
        // Parsing lines and inserting entries cost about the same, so a
        // large snapshot is parsed here while a second thread applies it,
        // in file order, in batches.
        std::thread::scope(|scope| {
            let (batches, received) = crossbeam_channel::bounded::<Vec<Change>>(16);
            let applier = scope.spawn(move || {
                for batch in received {
                    batch.into_iter().for_each(&mut apply);
                }
            });
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            let mut send = |change| {
                batch.push(change);
                if batch.len() == LOAD_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                    // The applier only stops once this side is done.
                    let _ = batches.send(full);
                }
            };
            let parsed = body.for_each_chunk(&mut |chunk| parse(chunk, &mut send));
            let _ = batches.send(batch);
            drop(batches);
            if applier.join().is_err() {
                return Err(damaged(file, "the thread applying the snapshot panicked"));
            }
            parsed
        })?;
    } else {
        body.for_each_chunk(&mut |chunk| parse(chunk, &mut apply))?;
    }
    if !header_seen {
        return Err(damaged(file, "no header"));
    }
    if trailer.entries != loaded.keys {
        return Err(damaged(file, "entry count does not match the trailer"));
    }
    loaded.revision = trailer.revision;
    Ok(loaded)
}

/// Checks the header line and takes the WAL segment from it.
fn read_header(
    line: Option<serde_json::Result<Line<'_>>>,
    loaded: &mut Loaded,
) -> Result<(), String> {
    let header = line.ok_or("no header")?.map_err(|e| e.to_string())?;
    if header.dododb_snapshot != Some(super::encode::FORMAT_VERSION) {
        return Err("not a DodoDB snapshot of a known format version".into());
    }
    loaded.wal_segment = header.wal_segment.ok_or("header lacks wal_segment")?;
    Ok(())
}

/// Hands every entry line after the header to `apply` and collects the
/// control documents; says what is wrong with the first bad line.
fn read_entries<'a>(
    lines: impl Iterator<Item = serde_json::Result<Line<'a>>>,
    loaded: &mut Loaded,
    apply: &mut dyn FnMut(Change),
) -> Result<(), String> {
    for line in lines {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(meta) = line.meta {
            loaded
                .metas
                .push(Bytes::copy_from_slice(meta.get().as_bytes()));
            continue;
        }
        let (Some(key), Some(version)) = (line.key, line.version) else {
            return Err("a line is neither an entry nor a control document".into());
        };
        let value = match (line.value, line.value_text) {
            (Some(raw), None) => copy_value(raw.get().as_bytes()),
            (None, Some(text)) => copy_value(text.as_bytes()),
            _ => return Err("an entry needs exactly one of value and value_text".into()),
        };
        apply(Change {
            key: Box::from(&*key),
            kind: ChangeKind::Update,
            value: Some(value),
            version,
            expires_at_ms: line.expires_at_ms.unwrap_or(0),
            timestamp_ms: 0,
            old_value: None,
        });
        loaded.keys += 1;
    }
    Ok(())
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
                value: Bytes::from(value),
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
        // Below and above the size at which loading uses two threads.
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
    fn chunks_end_at_line_ends_and_cover_everything() {
        let data = b"{\"a\":1}\n{\"long\":\"0123456789abcdef\"}\n\n{}\nno newline at the end";
        for chunk_size in [1, 3, 7, 16, 1000] {
            let mut chunks = Vec::new();
            for_each_chunk(&mut &data[..], chunk_size, Path::new("t"), &mut |chunk| {
                chunks.push(chunk.to_vec());
                Ok(())
            })
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
