//! Hooks the embedding program may set around imports, process-wide: the
//! first import to start calls `started`, the last one to end `finished`.
//!
//! The server uses them for its allocator: it returns freed pages to the
//! OS at once, which during an import means every batch's buffers and
//! values are faulted in afresh after the batch before freed theirs (about
//! a quarter of an import's CPU time went to those page faults). While an
//! import runs it lets freed pages wait a few milliseconds for reuse, and
//! returns what is left when the last import ends.

use std::sync::{Mutex, OnceLock};

/// What to call when imports start and end.
#[derive(Debug, Clone, Copy)]
pub struct ImportHooks {
    /// The first of the running imports started.
    pub started: fn(),
    /// The last running import ended.
    pub finished: fn(),
}

static HOOKS: OnceLock<ImportHooks> = OnceLock::new();

/// Imports running in this process.
static RUNNING: Running = Running(Mutex::new(0));

/// Sets the hooks once for the process; `false` if they were set already.
pub fn set_import_hooks(hooks: ImportHooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// A count of running imports; the hooks are called under its lock, so a
/// `finished` and a `started` never cross.
struct Running(Mutex<usize>);

impl Running {
    fn enter(&self, hooks: Option<&ImportHooks>) {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *running += 1;
        if *running == 1
            && let Some(hooks) = hooks
        {
            (hooks.started)();
        }
    }

    fn leave(&self, hooks: Option<&ImportHooks>) {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        if *running == 0
            && let Some(hooks) = hooks
        {
            (hooks.finished)();
        }
    }
}

/// One running import, counted while it lives.
pub(super) struct BulkLoad(());

impl BulkLoad {
    pub(super) fn start() -> BulkLoad {
        RUNNING.enter(HOOKS.get());
        BulkLoad(())
    }
}

impl Drop for BulkLoad {
    fn drop(&mut self) {
        RUNNING.leave(HOOKS.get());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static STARTED: AtomicU64 = AtomicU64::new(0);
    static FINISHED: AtomicU64 = AtomicU64::new(0);

    fn calls() -> (u64, u64) {
        (
            STARTED.load(Ordering::SeqCst),
            FINISHED.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn the_first_import_to_start_and_the_last_to_end_call_the_hooks() {
        let hooks = ImportHooks {
            started: || {
                STARTED.fetch_add(1, Ordering::SeqCst);
            },
            finished: || {
                FINISHED.fetch_add(1, Ordering::SeqCst);
            },
        };
        let running = Running(Mutex::new(0));
        running.enter(Some(&hooks));
        assert_eq!(calls(), (1, 0));
        running.enter(Some(&hooks));
        running.leave(Some(&hooks));
        assert_eq!(calls(), (1, 0), "one import still runs");
        running.leave(Some(&hooks));
        assert_eq!(calls(), (1, 1));
        running.enter(Some(&hooks));
        running.leave(Some(&hooks));
        assert_eq!(calls(), (2, 2));
        // Without hooks the count is kept all the same.
        running.enter(None);
        running.enter(Some(&hooks));
        running.leave(None);
        running.leave(Some(&hooks));
        assert_eq!(calls(), (2, 3));
    }
}
