//! Streaming encoder of the snapshot format (also used by `/system/export`).
//!
//! Layout (one JSON document per line, see `docs/durability.md`):
//! a header, control documents, one line per entry, and a trailer holding
//! the CRC32C of every byte before it.

use std::io::{self, Write};

use bytes::Bytes;
use serde::Serialize;

use crate::store::{EntryRef, Store};

/// The format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Entries written.
    pub keys: u64,
    /// Bytes written, trailer included.
    pub bytes: u64,
    /// The revision recorded in the trailer.
    pub revision: u64,
}

/// A writer that checksums and counts what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: u32,
    bytes: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    dododb_snapshot: u32,
    wal_segment: u64,
    revision: u64,
    created_at: &'a str,
}

#[derive(Serialize)]
struct Trailer {
    end: bool,
    revision: u64,
    entries: u64,
    crc32c: u32,
}

/// Writes `store` in the snapshot format to `out`, shard by shard: entries
/// are encoded into a buffer under one shard's read lock and the buffer is
/// written out when it fills, so no more than one shard is locked at a time.
/// `metas` are control documents (subscriptions), each one JSON object.
///
/// # Errors
///
/// Any error of `out`.
pub fn encode(
    store: &Store,
    metas: &[Bytes],
    wal_segment: u64,
    now_ms: u64,
    out: impl Write,
) -> io::Result<Written> {
    let mut out = Checksummed {
        inner: out,
        crc: 0,
        bytes: 0,
    };
    let created_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let header = Header {
        dododb_snapshot: FORMAT_VERSION,
        wal_segment,
        revision: store.revision(),
        created_at: &created_at,
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    for meta in metas {
        out.write_all(b"{\"meta\":")?;
        out.write_all(meta)?;
        out.write_all(b"}\n")?;
    }
    let mut keys = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut failed: Option<io::Error> = None;
    store.for_each(now_ms, |key, entry| {
        if failed.is_some() {
            return;
        }
        encode_entry(key, entry, &mut buf);
        keys += 1;
        if buf.len() >= 1 << 20 {
            if let Err(e) = out.write_all(&buf) {
                failed = Some(e);
            }
            buf.clear();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    out.write_all(&buf)?;
    // Read the counter after the walk, so it covers every entry written.
    let revision = store.revision();
    let trailer = Trailer {
        end: true,
        revision,
        entries: keys,
        crc32c: out.crc,
    };
    let mut line = serde_json::to_vec(&trailer)?;
    line.push(b'\n');
    out.inner.write_all(&line)?;
    out.inner.flush()?;
    Ok(Written {
        keys,
        bytes: out.bytes + line.len() as u64,
        revision,
    })
}

/// One entry line. A value with whitespace around it is stored as a string
/// (`value_text`), because a JSON parser reading it back as a value would
/// lose that whitespace and GET must return the bytes exactly. So is a value
/// with a newline inside it, so that every entry is one line: an import
/// names the line of a bad entry, and a reader can split on newlines.
fn encode_entry(key: &str, entry: EntryRef<'_>, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"key\":");
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, key);
    buf.extend_from_slice(b",\"version\":");
    buf.extend_from_slice(itoa::Buffer::new().format(entry.version).as_bytes());
    buf.extend_from_slice(b",\"expires_at_ms\":");
    buf.extend_from_slice(itoa::Buffer::new().format(entry.expires_at_ms).as_bytes());
    let value = entry.value;
    if value.trim_ascii() == value && !value.contains(&b'\n') {
        buf.extend_from_slice(b",\"value\":");
        buf.extend_from_slice(value);
    } else {
        buf.extend_from_slice(b",\"value_text\":");
        // Stored values are valid JSON, hence valid UTF-8.
        let text = String::from_utf8_lossy(value);
        let _ = serde_json::to_writer(&mut *buf, &*text);
    }
    buf.extend_from_slice(b"}\n");
}
