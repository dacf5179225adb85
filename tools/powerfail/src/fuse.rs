//! The FUSE side: turns kernel requests into [`Tree`] verbs and replies.
//! One mutex guards the tree, so a cut taken under it is atomic: a request
//! either finished before it or fails with `EIO` after it.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::model::{Errno, Kind, Node, Tree};

/// How long the kernel may cache names and attributes: every change goes
/// through this process, so the kernel's copy never goes stale.
const TTL: Duration = Duration::from_secs(1);

/// `RENAME_NOREPLACE` and `RENAME_EXCHANGE` from `renameat2(2)`.
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// The mounted file system: a shared handle on the tree.
pub struct PowerFail {
    pub tree: Arc<Mutex<Tree>>,
}

/// Locks the tree, also after a panic elsewhere (the tree stays usable).
pub fn lock(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    tree.lock().unwrap_or_else(|e| e.into_inner())
}

fn attr(ino: u64, node: &Node) -> FileAttr {
    let size = node.data.len() as u64;
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: UNIX_EPOCH,
        kind: match node.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: node.perm,
        nlink: match node.kind {
            Kind::File => node.links,
            Kind::Dir => 2,
        },
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl PowerFail {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }

    fn entry(&self, result: Result<u64, Errno>, reply: ReplyEntry) {
        let tree = self.tree();
        match result.and_then(|ino| Ok((ino, tree.node(ino)?))) {
            Ok((ino, node)) => reply.entry(&TTL, &attr(ino, node), 0),
            Err(e) => reply.error(e),
        }
    }

    fn empty(result: Result<(), Errno>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowerFail {
    fn destroy(&mut self) {
        // Unmounted from outside (not a cut): a clean shutdown.
        if let Err(e) = self.tree().sync_everything() {
            eprintln!("powerfail: final sync failed: errno {e}");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = self.tree().lookup(parent, name);
        self.entry(found, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.tree().node(ino) {
            Ok(node) => reply.attr(&TTL, &attr(ino, node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree();
        let perm = mode.map(|m| (m & 0o7777) as u16);
        let result = tree
            .set_meta(ino, perm, uid, gid)
            .and_then(|()| size.map_or(Ok(()), |len| tree.set_len(ino, len)))
            .and_then(|()| tree.node(ino));
        match result {
            Ok(node) => reply.attr(&TTL, &attr(ino, node)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let made = self
            .tree()
            .create(parent, name, Kind::Dir, perm, (req.uid(), req.gid()));
        self.entry(made, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.tree().remove(parent, name, false), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.tree().remove(parent, name, true), reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & RENAME_EXCHANGE != 0 {
            reply.error(libc::EINVAL);
            return;
        }
        let no_replace = flags & RENAME_NOREPLACE != 0;
        let result = self
            .tree()
            .rename(parent, name, newparent, newname, no_replace);
        Self::empty(result, reply);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.tree().opened(ino) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let tree = self.tree();
        match tree.read(ino, offset.max(0) as u64, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.tree().write(ino, offset.max(0) as u64, data) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) makes nothing durable.
        Self::empty(self.tree().node(ino).map(|_| ()), reply);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree().released(ino);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        Self::empty(self.tree().sync(ino), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.tree().node(ino) {
            Ok(node) if node.kind == Kind::Dir => reply.opened(0, 0),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.tree();
        let node = match tree.node(ino) {
            Ok(node) if node.kind == Kind::Dir => node,
            Ok(_) => return reply.error(libc::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (node.parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = node.entries.iter().map(|(name, &child)| {
            let kind = match tree.node(child).map(|n| n.kind) {
                Ok(Kind::Dir) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (child, kind, name.as_os_str())
        });
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(skip) {
            if reply.add(child, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        Self::empty(self.tree().sync(ino), reply);
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        Self::empty(self.tree().node(ino).map(|_| ()), reply);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = self.tree();
        let perm = (mode & !umask & 0o7777) as u16;
        let found = tree.lookup(parent, name);
        let result = match found {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(libc::EEXIST),
            Ok(ino) => {
                let truncated = if flags & libc::O_TRUNC != 0 {
                    tree.set_len(ino, 0)
                } else {
                    Ok(())
                };
                truncated.map(|()| ino)
            }
            Err(libc::ENOENT) => {
                tree.create(parent, name, Kind::File, perm, (req.uid(), req.gid()))
            }
            Err(e) => Err(e),
        };
        let result = result.and_then(|ino| {
            tree.opened(ino)?;
            Ok((ino, tree.node(ino)?))
        });
        match result {
            Ok((ino, node)) => reply.created(&TTL, &attr(ino, node), 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }
}
