//! Loading a snapshot file: the checksum is verified over the whole file
//! before a single entry is applied, so a damaged snapshot changes nothing
//! and recovery can fall back to an older one.

use std::borrow::Cow;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::SnapshotError;
use crate::store::{Change, ChangeKind};

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
/// # Errors
///
/// [`SnapshotError::Damaged`] when the file is incomplete or fails its
/// checksum (nothing was applied then), [`SnapshotError::Io`] when it
/// cannot be read.
pub fn load(path: &Path, apply: impl FnMut(Change)) -> Result<Loaded, SnapshotError> {
    let data = std::fs::read(path).map_err(|e| SnapshotError::io(path, e))?;
    load_bytes(&data, &path.display().to_string(), apply)
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
    mut apply: impl FnMut(Change),
) -> Result<Loaded, SnapshotError> {
    let damaged = |why: &str| SnapshotError::Damaged {
        file: file.to_string(),
        reason: why.to_string(),
    };
    let body_end = verify(data).map_err(damaged)?;
    let mut loaded = Loaded::default();
    let mut lines = serde_json::Deserializer::from_slice(&data[..body_end]).into_iter::<Line<'_>>();
    let header = lines
        .next()
        .ok_or_else(|| damaged("no header"))?
        .map_err(|e| damaged(&e.to_string()))?;
    if header.dododb_snapshot != Some(super::encode::FORMAT_VERSION) {
        return Err(damaged("not a DodoDB snapshot of a known format version"));
    }
    loaded.wal_segment = header
        .wal_segment
        .ok_or_else(|| damaged("header lacks wal_segment"))?;
    for line in lines {
        let line = line.map_err(|e| damaged(&e.to_string()))?;
        if let Some(meta) = line.meta {
            loaded
                .metas
                .push(Bytes::copy_from_slice(meta.get().as_bytes()));
            continue;
        }
        let (Some(key), Some(version)) = (line.key, line.version) else {
            return Err(damaged("a line is neither an entry nor a control document"));
        };
        let value = match (line.value, line.value_text) {
            (Some(raw), None) => Bytes::copy_from_slice(raw.get().as_bytes()),
            (None, Some(text)) => Bytes::copy_from_slice(text.as_bytes()),
            _ => {
                return Err(damaged(
                    "an entry needs exactly one of value and value_text",
                ));
            }
        };
        apply(Change {
            key: Box::from(&*key),
            kind: ChangeKind::Update,
            value: Some(value),
            version,
            expires_at_ms: line.expires_at_ms.unwrap_or(0),
            timestamp_ms: 0,
        });
        loaded.keys += 1;
    }
    let trailer: Line<'_> =
        serde_json::from_slice(&data[body_end..]).map_err(|e| damaged(&e.to_string()))?;
    loaded.revision = trailer.revision.unwrap_or(0);
    if trailer.entries != Some(loaded.keys) {
        return Err(damaged("entry count does not match the trailer"));
    }
    Ok(loaded)
}

/// Checks the trailer's checksum and returns where the trailer starts.
fn verify(data: &[u8]) -> Result<usize, &'static str> {
    let without_newline = data
        .strip_suffix(b"\n")
        .ok_or("file does not end with a newline (cut short?)")?;
    let trailer_start = without_newline
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let trailer: Line<'_> = serde_json::from_slice(&without_newline[trailer_start..])
        .map_err(|_| "the last line is not a trailer (cut short?)")?;
    if trailer.end != Some(true) {
        return Err("the last line is not a trailer (cut short?)");
    }
    let expected = trailer.crc32c.ok_or("the trailer lacks crc32c")?;
    if crc32c::crc32c(&data[..trailer_start]) != expected {
        return Err("checksum mismatch");
    }
    Ok(trailer_start)
}
