//! The binary's global allocator (mimalloc) and how promptly it hands
//! freed memory back to the operating system.
//!
//! mimalloc keeps a freed page committed for `purge_delay` milliseconds
//! (1,000 by default; arenas wait ten times that) before it returns it,
//! and only does so on a later allocation: a server that goes idle after
//! a burst of writes keeps the pages its tables and buffers grew out of.
//! The server returns them at once instead (`purge_delay` 0). A
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
}

/// Makes freed pages go back to the OS as soon as they are free, unless
/// the environment sets the delay. Call once, before the server starts.
pub fn purge_freed_pages_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: a plain option setter, callable at any time from any thread.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}
