//! The binary's global allocator (mimalloc) and how promptly it hands
//! freed memory back to the operating system.
//!
//! mimalloc keeps a freed page committed for `purge_delay` milliseconds
//! (1,000 by default; arenas wait ten times that) before it returns it,
//! and only does so on a later allocation: a server that goes idle after
//! a burst of writes keeps the pages its tables and buffers grew out of.
//! The server returns them at once instead (`purge_delay` 0), except while
//! an import runs (see `db/bulk_load.rs`): its batches free and allocate
//! as much again every few milliseconds, so freed pages wait 10 ms for
//! reuse then, and what is left goes back when the last import ends. A
//! `MIMALLOC_PURGE_DELAY` in the environment still wins, as mimalloc
//! documents it.

use std::ffi::{c_int, c_long};

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h;
/// libmimalloc-sys builds v3 and names no constant for it).
const MI_OPTION_PURGE_DELAY: c_int = 15;

// The symbols come from the mimalloc library that libmimalloc-sys builds
// and links for the global allocator above.
unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// How long freed pages wait for reuse while an import runs, in ms: a
/// batch's buffers and values are freed as the next batch allocates its
/// own, and at 0 each batch faults its memory in afresh.
const IMPORT_PURGE_DELAY_MS: c_long = 10;

/// Makes freed pages go back to the OS as soon as they are free (after
/// 10 ms while an import runs), unless the environment sets the delay.
/// Call once, before the server starts.
pub fn purge_freed_pages_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: a plain option setter, callable at any time from any thread.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    dododb::db::set_import_hooks(dododb::db::ImportHooks {
        started: || {
            // SAFETY: as above.
            unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, IMPORT_PURGE_DELAY_MS) };
        },
        finished: || {
            // SAFETY: as above; `mi_collect` may be called from any thread
            // and returns the pages that were waiting.
            unsafe {
                mi_option_set(MI_OPTION_PURGE_DELAY, 0);
                mi_collect(true);
            }
        },
    });
}
