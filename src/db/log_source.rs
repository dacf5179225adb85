//! The database's side of log-driven events: the feed's disk backfill (the
//! retained WAL read back as events) and the control log the delivery pool
//! records subscription state in (the WAL, through the normal group commit).

use std::sync::{Arc, OnceLock, Weak};

use super::Inner;
use crate::events::ChangeEvent;
use crate::events::feed::Backfill;
use crate::events::subscriptions::SubscriptionOp;
use crate::events::webhook::ControlLog;
use crate::store::Change;
use crate::wal::{LogReader, ReadEnd, Record};

/// The event a logged change was when it was applied: the log carries the
/// old value with the change for this.
pub(super) fn event_of(change: Change) -> ChangeEvent {
    ChangeEvent {
        key: change.key,
        kind: change.kind,
        old_value: change.old_value,
        new_value: change.value,
        version: change.version,
        timestamp_ms: change.timestamp_ms,
    }
}

/// Reads the retained WAL for the feed and webhook delivery.
pub(super) struct LogBackfill(pub Arc<LogReader>);

impl Backfill for LogBackfill {
    fn floor(&self) -> u64 {
        self.0.floor()
    }

    fn read(
        &self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<(Vec<Arc<ChangeEvent>>, u64), u64> {
        let mut events = Vec::new();
        match self.0.read(after, through, max, &mut |c| {
            events.push(Arc::new(event_of(c)))
        }) {
            Ok(ReadEnd::Through(reached)) => Ok((events, reached)),
            Ok(ReadEnd::Gone { floor }) => Err(floor),
            Err(e) => {
                // Nothing is skipped: the reader asks again later.
                tracing::error!("cannot read the WAL back for events: {e}");
                Ok((Vec::new(), after))
            }
        }
    }
}

/// Lets the delivery pool, created before the database, reach it.
#[derive(Default, Clone)]
pub(super) struct InnerSlot(Arc<OnceLock<Weak<Inner>>>);

impl InnerSlot {
    pub(super) fn set(&self, inner: &Arc<Inner>) {
        let _ = self.0.set(Arc::downgrade(inner));
    }

    pub(super) fn get(&self) -> Option<Arc<Inner>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// Subscription state logged like keys: a WAL control record submitted
/// without waiting (the next group commit carries it), on a cluster member
/// a Raft entry proposed without waiting (so every member has the cursor
/// a new leader resumes from), or applied at once without a log.
pub(super) struct DbControlLog(pub InnerSlot);

impl ControlLog for DbControlLog {
    fn append(&self, op: SubscriptionOp) {
        let Some(inner) = self.0.get() else {
            return;
        };
        if inner.replica {
            if let Some(log) = inner.meta_log.get() {
                log.submit_meta(op.to_doc());
            }
            return;
        }
        match &inner.wal {
            Some(wal) => {
                if let Err(e) = wal.submit(Record::Meta(op.to_doc())) {
                    tracing::warn!("cannot log webhook delivery state: {e}");
                }
            }
            None => inner.registry.apply(op),
        }
    }
}
