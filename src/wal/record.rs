//! The WAL record codec: framing, checksums and the payload layout drawn in
//! `docs/durability.md`. Pure functions over byte slices; no I/O.

use std::sync::Arc;

use bytes::Bytes;

use crate::store::{Change, ChangeKind, LoggedPuts, copy_value};

/// Bytes before each payload: length, length checksum, payload checksum.
pub const HEADER_BYTES: usize = 12;

/// The largest payload a record may claim; anything larger is damage.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;

const KIND_UPDATE: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_EXPIRE: u8 = 3;
/// The same three kinds, logged with the value they replaced.
const KIND_UPDATE_OLD: u8 = 4;
const KIND_DELETE_OLD: u8 = 5;
const KIND_EXPIRE_OLD: u8 = 6;
const KIND_META: u8 = 16;
const KIND_TXN: u8 = 17;
const KIND_RAFT: u8 = 32;

/// One logged item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A change of one key.
    Change(Change),
    /// A control document of the database (subscriptions), as JSON.
    Meta(Bytes),
    /// A transaction's changes, applied all together or not at all.
    Txn(Vec<Change>),
    /// A batch of puts (an import's), applied all together or not at all.
    /// Written as the transaction of its changes, and read back as one:
    /// this form exists only on the way in.
    Puts(Arc<LoggedPuts>),
    /// An item of a cluster member's Raft log (an entry, the vote, the
    /// committed index, a truncation or a purge), encoded by `raft/`.
    Raft(Bytes),
}

impl Record {
    /// The key changes the record holds, in order, or `None` for one that
    /// holds none (a meta document, a Raft item). Records read back from
    /// disk never are `Puts` (it is written as a `Txn`), but one handed
    /// over in memory may be.
    pub fn into_changes(self) -> Option<Vec<Change>> {
        match self {
            Record::Change(change) => Some(vec![change]),
            Record::Txn(changes) => Some(changes),
            Record::Puts(batch) => Some(batch.changes()),
            Record::Meta(_) | Record::Raft(_) => None,
        }
    }
}

/// What is wrong with the bytes at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record runs past the end of the data: a torn append.
    Truncated,
    /// The length field fails its checksum.
    BadLength,
    /// The payload fails its checksum.
    BadChecksum,
    /// The checksums hold but the payload makes no sense.
    Malformed(&'static str),
}

/// Appends the framed record to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Change(change) => encode_change(change, out),
        Record::Meta(doc) => framed(out, |out| {
            out.push(KIND_META);
            put_bytes(out, doc);
        }),
        Record::Txn(changes) => framed(out, |out| {
            txn_head(changes.len(), out);
            for change in changes {
                txn_member(out, |out| change_payload(change, out));
            }
        }),
        Record::Puts(batch) => framed(out, |out| {
            // Each put takes 38 bytes besides its key and values.
            out.reserve(5 + batch.data_len() + 38 * batch.len());
            txn_head(batch.len(), out);
            batch.visit(|put| {
                txn_member(out, |out| {
                    change_fields(
                        out,
                        &Fields {
                            kind: ChangeKind::Update,
                            version: put.version,
                            timestamp_ms: put.timestamp_ms,
                            expires_at_ms: put.expires_at_ms,
                            key: put.key.as_bytes(),
                            value: Some(put.value),
                            old_value: put.old_value,
                        },
                    );
                });
            });
        }),
        Record::Raft(item) => framed(out, |out| {
            out.push(KIND_RAFT);
            put_bytes(out, item);
        }),
    }
}

/// Appends the framed record of one key's change to `out`.
fn encode_change(change: &Change, out: &mut Vec<u8>) {
    framed(out, |out| change_payload(change, out));
}

/// The start of a transaction's payload: its kind and its count.
fn txn_head(n: usize, out: &mut Vec<u8>) {
    out.push(KIND_TXN);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// Appends one change of a transaction: the payload of a change record
/// (which `payload` appends), length first.
fn txn_member(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    payload(out);
    let len = u32::try_from(out.len() - len_at - 4).unwrap_or(u32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The fields of one key's change, borrowed.
struct Fields<'a> {
    kind: ChangeKind,
    version: u64,
    timestamp_ms: u64,
    expires_at_ms: u64,
    key: &'a [u8],
    value: Option<&'a [u8]>,
    old_value: Option<&'a [u8]>,
}

/// Appends the payload of one key's change to `out`.
fn change_payload(change: &Change, out: &mut Vec<u8>) {
    change_fields(
        out,
        &Fields {
            kind: change.kind,
            version: change.version,
            timestamp_ms: change.timestamp_ms,
            expires_at_ms: change.expires_at_ms,
            key: change.key.as_bytes(),
            value: change.value.as_deref(),
            old_value: change.old_value.as_deref(),
        },
    );
}

/// Appends the payload of a change with these fields to `out`.
fn change_fields(out: &mut Vec<u8>, change: &Fields<'_>) {
    // Every change is logged with its old value (kinds 4-6), so that an
    // event re-read from the log is whole; kinds 1-3 are still read.
    let kind = match change.kind {
        ChangeKind::Update => KIND_UPDATE_OLD,
        ChangeKind::Delete => KIND_DELETE_OLD,
        ChangeKind::Expire => KIND_EXPIRE_OLD,
    };
    out.push(kind);
    out.extend_from_slice(&change.version.to_le_bytes());
    out.extend_from_slice(&change.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&change.expires_at_ms.to_le_bytes());
    put_bytes(out, change.key);
    if let Some(value) = change.value {
        put_bytes(out, value);
    }
    match change.old_value {
        Some(old) => {
            out.push(1);
            put_bytes(out, old);
        }
        None => out.push(0),
    }
}

/// Writes the header around the payload that `payload` appends.
fn framed(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    payload(out);
    let payload_len = u32::try_from(out.len() - start - HEADER_BYTES).unwrap_or(u32::MAX);
    let len_bytes = payload_len.to_le_bytes();
    let payload_crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc32c::crc32c(&len_bytes).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&payload_crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the header at the start of `data`: the payload length, checked.
///
/// # Errors
///
/// [`DecodeError::Truncated`] when fewer than [`HEADER_BYTES`] remain,
/// [`DecodeError::BadLength`] when the length fails its checksum.
pub fn decode_header(data: &[u8]) -> Result<(u32, u32), DecodeError> {
    if data.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let len_crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    // The size check first: it is cheaper, and the forward scan of replay
    // runs this at every byte of a damaged tail.
    if len > MAX_PAYLOAD_BYTES || crc32c::crc32c(&data[0..4]) != len_crc {
        return Err(DecodeError::BadLength);
    }
    let payload_crc = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    Ok((len, payload_crc))
}

/// Decodes one framed record at the start of `data`, returning it and the
/// number of bytes it took.
///
/// # Errors
///
/// [`DecodeError`] saying what is wrong.
pub fn decode(data: &[u8]) -> Result<(Record, usize), DecodeError> {
    let (len, payload_crc) = decode_header(data)?;
    let end = HEADER_BYTES + len as usize;
    if data.len() < end {
        return Err(DecodeError::Truncated);
    }
    let payload = &data[HEADER_BYTES..end];
    if crc32c::crc32c(payload) != payload_crc {
        return Err(DecodeError::BadChecksum);
    }
    Ok((decode_payload(payload)?, end))
}

fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader(payload);
    let kind = r.u8()?;
    if kind == KIND_META {
        let doc = Bytes::copy_from_slice(r.bytes()?);
        return r.finish(Record::Meta(doc));
    }
    if kind == KIND_TXN {
        let n = r.u32()?;
        // Each change takes at least 33 bytes (its length and fixed
        // fields): a count beyond that is damage, not a reason to allocate.
        if n as usize > payload.len() / 33 {
            return Err(DecodeError::Malformed(
                "transaction count exceeds its payload",
            ));
        }
        let mut changes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let inner = r.bytes()?;
            if inner.first() == Some(&KIND_TXN) {
                return Err(DecodeError::Malformed("a transaction inside a transaction"));
            }
            match decode_payload(inner)? {
                Record::Change(change) => changes.push(change),
                _ => return Err(DecodeError::Malformed("a transaction holds a non-change")),
            }
        }
        return r.finish(Record::Txn(changes));
    }
    if kind == KIND_RAFT {
        let item = Bytes::copy_from_slice(r.bytes()?);
        return r.finish(Record::Raft(item));
    }
    let (kind, with_old) = match kind {
        KIND_UPDATE => (ChangeKind::Update, false),
        KIND_DELETE => (ChangeKind::Delete, false),
        KIND_EXPIRE => (ChangeKind::Expire, false),
        KIND_UPDATE_OLD => (ChangeKind::Update, true),
        KIND_DELETE_OLD => (ChangeKind::Delete, true),
        KIND_EXPIRE_OLD => (ChangeKind::Expire, true),
        _ => return Err(DecodeError::Malformed("unknown record kind")),
    };
    let version = r.u64()?;
    let timestamp_ms = r.u64()?;
    let expires_at_ms = r.u64()?;
    let key =
        std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError::Malformed("key is not UTF-8"))?;
    let value = match kind {
        ChangeKind::Update => Some(copy_value(r.bytes()?)),
        ChangeKind::Delete | ChangeKind::Expire => None,
    };
    let old_value = match (with_old, with_old.then(|| r.u8()).transpose()?) {
        (true, Some(1)) => Some(copy_value(r.bytes()?)),
        (true, Some(0)) | (false, _) => None,
        _ => return Err(DecodeError::Malformed("bad old-value flag")),
    };
    r.finish(Record::Change(Change {
        key: Box::from(key),
        kind,
        value,
        version,
        expires_at_ms,
        timestamp_ms,
        old_value,
    }))
}

/// A cursor over a payload that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("payload shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn finish(self, record: Record) -> Result<Record, DecodeError> {
        if self.0.is_empty() {
            Ok(record)
        } else {
            Err(DecodeError::Malformed("trailing bytes in payload"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, key: &str, value: Option<&str>) -> Record {
        Record::Change(Change {
            key: Box::from(key),
            kind,
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            version: 42,
            expires_at_ms: if value.is_some() {
                1_700_000_000_000
            } else {
                0
            },
            timestamp_ms: 1_600_000_000_000,
            old_value: (kind != ChangeKind::Update || key == "k")
                .then(|| Bytes::from_static(b"{\"old\": true}")),
        })
    }

    fn check(record: Record) {
        let mut buf = Vec::new();
        encode(&record, &mut buf);
        assert_eq!(decode(&buf), Ok((record, buf.len())));
    }

    #[test]
    fn round_trips_every_kind() {
        check(change(ChangeKind::Update, "k", Some("{\"a\": 1}")));
        check(change(
            ChangeKind::Update,
            "unicode 🦤/key",
            Some(" [1, 2] "),
        ));
        check(change(ChangeKind::Update, "empty-ish", Some("\"\"")));
        check(change(ChangeKind::Delete, "gone", None));
        check(change(ChangeKind::Expire, "old", None));
        check(Record::Meta(Bytes::from_static(b"{\"subscribe\":{}}")));
        let Record::Change(put) = change(ChangeKind::Update, "a", Some("[1]")) else {
            unreachable!()
        };
        let Record::Change(del) = change(ChangeKind::Delete, "b", None) else {
            unreachable!()
        };
        check(Record::Txn(vec![put, del]));
        check(Record::Txn(Vec::new()));
        check(Record::Raft(Bytes::from_static(b"{\"vote\":{}}")));
    }

    #[test]
    fn a_batch_of_puts_is_written_as_the_transaction_of_its_changes() {
        use crate::store::{NoJournal, PutBatch, Store, Submitted};

        /// Keeps the batch it is given.
        struct Keep(std::sync::Mutex<Option<Arc<LoggedPuts>>>);
        impl crate::store::Journal for Keep {
            type Ticket = ();
            fn submit(
                &self,
                change: Change,
                _: &dyn Fn() -> u64,
            ) -> Result<Submitted<()>, crate::store::StoreError> {
                Ok(Submitted::ApplyNow(change))
            }
            fn submit_txn(
                &self,
                changes: Vec<Change>,
            ) -> Result<Submitted<(), Vec<Change>>, crate::store::StoreError> {
                Ok(Submitted::ApplyNow(changes))
            }
            fn submit_batch(
                &self,
                batch: Arc<LoggedPuts>,
            ) -> Result<Submitted<(), Arc<LoggedPuts>>, crate::store::StoreError> {
                *self.0.lock().expect("lock") = Some(batch);
                Ok(Submitted::Deferred(()))
            }
            fn barrier(&self) -> Option<()> {
                None
            }
        }

        let store = Store::new();
        let old = crate::store::Mutation::Put {
            value: b" {\"was\": 1} ",
            expires_at_ms: 0,
        };
        store
            .mutate(
                "b",
                old,
                crate::store::Precondition::None,
                5,
                &NoJournal,
                &mut |_| {},
            )
            .expect("put");
        let mut batch = PutBatch::default();
        batch.push("a", b"[1]", 0);
        batch.push("b 🦤", b"\"x\"", 1_700_000_000_000);
        batch.push("b", b"2", 0);
        batch.push("a", b"3", 0);
        let keep = Keep(std::sync::Mutex::new(None));
        store
            .put_batch(batch, 7, &keep, &mut |_| {})
            .expect("written");
        let logged = keep.0.lock().expect("lock").take().expect("kept");
        let changes = logged.changes();
        assert_eq!(
            changes[2].old_value.as_deref(),
            Some(&b" {\"was\": 1} "[..])
        );
        assert_eq!(changes[3].old_value.as_deref(), Some(&b"[1]"[..]));
        let (mut as_batch, mut as_txn) = (Vec::new(), Vec::new());
        encode(&Record::Puts(Arc::clone(&logged)), &mut as_batch);
        encode(&Record::Txn(changes.clone()), &mut as_txn);
        assert_eq!(as_batch, as_txn, "the same bytes on disk");
        assert_eq!(
            decode(&as_batch),
            Ok((Record::Txn(changes), as_batch.len()))
        );
    }

    #[test]
    fn records_without_old_values_are_still_read() {
        // A kind-1 record as earlier versions wrote it: no old-value flag.
        let mut payload = vec![KIND_UPDATE];
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.extend_from_slice(&5u64.to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        put_bytes(&mut payload, b"k");
        put_bytes(&mut payload, b"1");
        let mut buf = Vec::new();
        framed(&mut buf, |out| out.extend_from_slice(&payload));
        let Ok((Record::Change(change), _)) = decode(&buf) else {
            panic!("a legacy record decodes");
        };
        assert_eq!((change.version, change.old_value), (7, None));
    }

    #[test]
    fn every_prefix_is_truncated() {
        let mut buf = Vec::new();
        encode(
            &change(ChangeKind::Update, "key", Some("[1,2,3]")),
            &mut buf,
        );
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode(
            &change(ChangeKind::Update, "key", Some("{\"x\":true}")),
            &mut buf,
        );
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&damaged);
            assert!(
                matches!(
                    result,
                    Err(DecodeError::BadLength | DecodeError::BadChecksum | DecodeError::Truncated)
                ),
                "bit {bit}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_payload_with_good_checksum_is_rejected() {
        let payload = [99u8, 0, 0];
        let mut buf = Vec::new();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&(payload.len() as u32).to_le_bytes()).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        assert!(matches!(decode(&buf), Err(DecodeError::Malformed(_))));
    }
}
