//! `POST /system/import` on a cluster member: the leader writes a checked
//! export (every line already checked and spooled by `db::import`, so a
//! bad line changes nothing) through the Raft log, in batches of about
//! [`BATCH_BYTES`] each carried by one log entry, waiting for each to
//! commit and apply before reading the next from the spool. Memory stays
//! at one batch on the leader, whatever the export's size (the log keeps
//! its entries since the last snapshot in memory, as for any write).
//!
//! `?mode=replace` is one `clear` entry before the first batch. A leader
//! change in the middle stops the import with `503`: the batches committed
//! before it stay on every member (each is one entry, so none is half
//! written), the rest was never proposed. Importing the same export again
//! on the new leader finishes the job, as after a crash of a single server.

use super::types::{Command, ImportEntry, Reply};
use super::{Cluster, ClusterError};
use crate::db::{DbError, ImportMode, ImportResult, Spooled, now_ms};

/// A batch is cut once its keys and values pass this many bytes. The
/// leader sends up to openraft's 300 entries in one append RPC to a
/// member that lags, which must stay under the Raft body limit (256 MiB).
const BATCH_BYTES: usize = 64 << 10;

/// And once it holds this many entries.
const BATCH_ENTRIES: usize = 512;

impl Cluster {
    /// Fails with [`ClusterError::NotLeader`] / [`ClusterError::NoLeader`]
    /// unless this member leads (checked before an import reads its body).
    ///
    /// # Errors
    ///
    /// As above.
    pub fn check_leader(&self) -> Result<(), ClusterError> {
        match self.leader() {
            Some((id, _)) if id == self.node_id => Ok(()),
            _ => Err(self.not_leader()),
        }
    }

    /// Writes a checked export through the log (see the module comment).
    /// Blocks: call it from a blocking thread, with the runtime's handle.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when leadership or the log failed
    /// part-way (naming how many entries were imported before);
    /// [`ClusterError::NotLeader`] when this member did not lead at the
    /// start; [`ClusterError::Db`] when the spool cannot be read.
    pub fn import_blocking(
        &self,
        spooled: &Spooled,
        mode: ImportMode,
        runtime: &tokio::runtime::Handle,
    ) -> Result<ImportResult, ClusterError> {
        self.check_leader()?;
        let mut done = ImportResult {
            imported: 0,
            expired: 0,
            revision: self.db.revision(),
        };
        let cut_short = |done: &ImportResult, e: ClusterError| {
            ClusterError::Unavailable(format!(
                "the import stopped after {} entries were written (they stay on every member): {e}; import the same export again on the leader to finish",
                done.imported
            ))
        };
        if mode == ImportMode::Replace {
            let clear = Command::Clear {
                prefix: String::new(),
                at_ms: now_ms(),
            };
            runtime.block_on(self.write(clear))?;
        }
        let mut entries = spooled.entries()?;
        let mut batch: Vec<ImportEntry> = Vec::new();
        let mut bytes = 0;
        loop {
            let next = entries.next_entry()?;
            if let Some(entry) = &next {
                let value = std::str::from_utf8(entry.value).map_err(|_| {
                    ClusterError::Db(DbError::Unavailable(
                        "import spool: a value is not UTF-8".into(),
                    ))
                })?;
                bytes += entry.key.len() + value.len();
                batch.push(ImportEntry {
                    key: entry.key.to_string(),
                    value: value.to_string(),
                    expires_at_ms: self.db.import_expiry(entry.expires_at_ms, now_ms()),
                });
            }
            let full = bytes >= BATCH_BYTES || batch.len() >= BATCH_ENTRIES;
            if !batch.is_empty() && (full || next.is_none()) {
                let command = Command::Import {
                    entries: std::mem::take(&mut batch),
                    at_ms: now_ms(),
                };
                bytes = 0;
                match runtime.block_on(self.write(command)) {
                    Ok(Reply::Imported {
                        imported,
                        expired,
                        revision,
                    }) => {
                        done.imported += imported;
                        done.expired += expired;
                        done.revision = revision;
                    }
                    Ok(other) => {
                        return Err(ClusterError::Unavailable(format!(
                            "an import batch was applied with an unexpected reply: {other:?}"
                        )));
                    }
                    Err(e) => return Err(cut_short(&done, e)),
                }
            }
            if next.is_none() {
                return Ok(done);
            }
        }
    }
}
