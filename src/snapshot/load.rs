//! Loading a snapshot file: the checksum is verified over the whole file
//! before a single entry is applied, so a damaged snapshot changes nothing
//! and recovery can fall back to an older one.

use std::borrow::Cow;
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
/// # Errors
///
/// [`SnapshotError::Damaged`] when the file is incomplete or fails its
/// checksum (nothing was applied then), [`SnapshotError::Io`] when it
/// cannot be read.
pub fn load(path: &Path, apply: impl FnMut(Change) + Send) -> Result<Loaded, SnapshotError> {
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
    mut apply: impl FnMut(Change) + Send,
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
    if data.len() < PARALLEL_LOAD_BYTES {
        read_entries(lines, &mut loaded, &mut apply).map_err(|why| damaged(&why))?;
    } else {
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
            let parsed = read_entries(lines, &mut loaded, &mut |change| {
                batch.push(change);
                if batch.len() == LOAD_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                    // The applier only stops once this side is done.
                    let _ = batches.send(full);
                }
            });
            let _ = batches.send(batch);
            drop(batches);
            if applier.join().is_err() {
                return Err(damaged("the thread applying the snapshot panicked"));
            }
            parsed.map_err(|why| damaged(&why))
        })?;
    }
    let trailer: Line<'_> =
        serde_json::from_slice(&data[body_end..]).map_err(|e| damaged(&e.to_string()))?;
    loaded.revision = trailer.revision.unwrap_or(0);
    if trailer.entries != Some(loaded.keys) {
        return Err(damaged("entry count does not match the trailer"));
    }
    Ok(loaded)
}

/// Snapshots at least this large are parsed and applied on two threads.
const PARALLEL_LOAD_BYTES: usize = 1 << 20;

/// Entries handed from the parsing to the applying thread at a time.
const LOAD_BATCH: usize = 4096;

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
        });
        loaded.keys += 1;
    }
    Ok(())
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
            assert_eq!(data.len() >= PARALLEL_LOAD_BYTES, n == 30_000);
            let copy = Store::new();
            let loaded = load_bytes(&data, "test", |change| copy.replay(change)).expect("load");
            assert_eq!(loaded.keys, n as u64);
            assert_eq!(loaded.wal_segment, 3);
            assert_eq!(loaded.metas, metas.to_vec());
            let mut seen = 0;
            original.for_each(1, |key, entry| {
                assert_eq!(copy.get(key, || 1).as_ref(), Some(entry), "{key}");
                seen += 1;
            });
            assert_eq!(seen, n);
        }
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
