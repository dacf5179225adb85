//! `powerfail`: a FUSE file system for tests that models a power cut.
//!
//! ```text
//! powerfail BACKING MOUNTPOINT [--torn SEED]
//! ```
//!
//! Mounts BACKING at MOUNTPOINT. Reads and writes go through a page cache
//! held in memory; only what was made durable reaches BACKING: file data
//! at its file's `fsync`/`fdatasync`, creates, renames and unlinks at their
//! directory's `fsync`. It prints `mounted MOUNTPOINT` once ready.
//!
//! - `kill -USR1 <pid>` cuts the power: every request fails from that
//!   instant, the mount is detached and the process exits. BACKING then
//!   holds exactly what a disk would. With `--torn SEED`, each unsynced
//!   file first keeps a random prefix of its unsynced bytes (sometimes as
//!   zeroes) and each changed directory its changes, by coin toss.
//! - `kill -TERM <pid>`, Ctrl-C or `umount MOUNTPOINT`: a clean shutdown,
//!   everything reaches BACKING.
//!
//! At a cut it prints to stderr what was not synced: `+name`/`-name` for
//! entries created or removed, `name:N` for a file with N unsynced bytes.

mod fuse;
mod model;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use fuser::MountOption;

use crate::fuse::{PowerFail, lock};
use crate::model::{Cut, Tree};

struct Args {
    backing: PathBuf,
    mountpoint: PathBuf,
    torn: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut torn = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--torn" {
            let seed = args.next().ok_or("--torn needs a seed")?;
            let seed = seed
                .to_str()
                .and_then(|s| s.parse().ok())
                .ok_or("--torn SEED must be a number")?;
            torn = Some(seed);
        } else {
            positional.push(PathBuf::from(arg));
        }
    }
    let [backing, mountpoint] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| "usage: powerfail BACKING MOUNTPOINT [--torn SEED]".to_string())?;
    // The kernel's mount table wants absolute paths.
    let absolute = |p: PathBuf| {
        std::fs::canonicalize(&p).map_err(|e| format!("powerfail: {}: {e}", p.display()))
    };
    Ok(Args {
        backing: absolute(backing)?,
        mountpoint: absolute(mountpoint)?,
        torn,
    })
}

/// Blocks the signals this process handles in every thread (spawned
/// threads inherit the mask), so that only `sigwait` receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is initialised and its signals are blocked.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

/// Detaches the mount (root may; others go through fusermount3).
fn unmount(mountpoint: &Path) {
    let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("powerfail: could not unmount {}", mountpoint.display());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let tree = match Tree::load(&args.backing) {
        Ok(tree) => Arc::new(Mutex::new(tree)),
        Err(e) => {
            eprintln!("powerfail: cannot read {}: {e}", args.backing.display());
            return ExitCode::FAILURE;
        }
    };
    let signals = block_signals();
    let fs = PowerFail {
        tree: Arc::clone(&tree),
    };
    let options = [
        MountOption::FSName("powerfail".into()),
        MountOption::RW,
        MountOption::DefaultPermissions,
    ];
    let session = match fuser::spawn_mount2(fs, &args.mountpoint, &options) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("powerfail: cannot mount {}: {e}", args.mountpoint.display());
            return ExitCode::FAILURE;
        }
    };
    println!("mounted {}", args.mountpoint.display());
    let mountpoint = args.mountpoint.clone();
    std::thread::spawn(move || {
        let sig = wait_signal(&signals);
        let mut tree = lock(&tree);
        if sig == libc::SIGUSR1 {
            eprintln!("powerfail: cut; unsynced: {}", tree.unsynced().join(" "));
            tree.cut(args.torn.map_or(Cut::Clean, Cut::Torn));
        } else {
            if let Err(e) = tree.sync_everything() {
                eprintln!("powerfail: final sync failed: errno {e}");
            }
            tree.cut(Cut::Clean);
        }
        drop(tree);
        unmount(&mountpoint);
        // Exiting closes the FUSE device: whatever still has files open on
        // the mount gets errors from now on, as from a disk that is gone.
        std::process::exit(0);
    });
    // Returns when the file system is unmounted from outside.
    match session.guard.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("powerfail: the FUSE session failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("powerfail: the FUSE session panicked");
            ExitCode::FAILURE
        }
    }
}
