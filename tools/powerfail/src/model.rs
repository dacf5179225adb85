//! The file tree as the page cache sees it and as the disk holds it.
//!
//! Every node has a current state (what reads return) and a durable state
//! (what survives a power cut). `fsync` of a file makes its data durable;
//! `fsync` of a directory makes its entries durable: creates, renames and
//! unlinks in it are forgotten until then. The backing directory always
//! holds exactly the durable tree, written through on every sync, so a cut
//! only has to stop answering: whatever the backing directory holds is what
//! the disk would hold.
//!
//! No FUSE here: [`Tree`] is plain data with file-system verbs, tested on
//! its own.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The inode number of the root directory (FUSE's fixed root id).
pub const ROOT: u64 = 1;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// One file or directory.
#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// File: the contents readers see.
    pub data: Vec<u8>,
    /// File: the contents the disk holds.
    durable: Vec<u8>,
    /// File: the first byte that changed since the last sync.
    dirty_from: Option<usize>,
    /// Directory: the entries readers see.
    pub entries: BTreeMap<OsString, u64>,
    /// Directory: the entries the disk holds.
    durable_entries: BTreeMap<OsString, u64>,
    /// Directory: the parent readers see (for `..`).
    pub parent: u64,
    /// Current directory entries naming this node.
    pub links: u32,
    /// Open handles.
    pub open: u32,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: u64) -> Node {
        Node {
            kind,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
            data: Vec::new(),
            durable: Vec::new(),
            dirty_from: None,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            parent,
            links: 1,
            open: 0,
        }
    }

    fn touch(&mut self, from: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(from, |d| d.min(from)));
        self.mtime = SystemTime::now();
    }

    fn dir_dirty(&self) -> bool {
        self.entries != self.durable_entries
    }
}

/// How a cut treats what was not synced.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Everything not synced is lost.
    Clean,
    /// Each unsynced file keeps a random prefix of its unsynced bytes
    /// (sometimes as zeroes: the size reached the disk, the data did not),
    /// and each changed directory reaches the disk or not, by coin toss.
    Torn(u64),
}

/// The tree, its backing directory, and whether the power is off.
pub struct Tree {
    backing: PathBuf,
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    /// Set by the cut: every operation fails from then on.
    pub frozen: bool,
}

/// An errno.
pub type Errno = i32;

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Tree {
    /// Loads the tree the backing directory holds; all of it is durable.
    ///
    /// # Errors
    ///
    /// The backing directory cannot be read.
    pub fn load(backing: &Path) -> io::Result<Tree> {
        let mut tree = Tree {
            backing: backing.to_path_buf(),
            nodes: BTreeMap::new(),
            next_ino: ROOT + 1,
            frozen: false,
        };
        let meta = fs::metadata(backing)?;
        let mut root = Node::new(Kind::Dir, 0o755, meta_uid(&meta), meta_gid(&meta), ROOT);
        root.links = 1;
        tree.nodes.insert(ROOT, root);
        tree.load_dir(ROOT, backing)?;
        Ok(tree)
    }

    fn load_dir(&mut self, dir: u64, path: &Path) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            let perm = (meta.permissions().mode() & 0o7777) as u16;
            let mut node = Node::new(kind, perm, meta_uid(&meta), meta_gid(&meta), dir);
            if kind == Kind::File {
                node.data = fs::read(entry.path())?;
                node.durable.clone_from(&node.data);
            }
            let ino = self.alloc(node);
            if kind == Kind::Dir {
                self.load_dir(ino, &entry.path())?;
            }
            if let Some(parent) = self.nodes.get_mut(&dir) {
                parent.entries.insert(entry.file_name(), ino);
                parent.durable_entries.insert(entry.file_name(), ino);
            }
        }
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// The node `ino`, or `ENOENT`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, or `EIO` once the power is cut.
    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        if self.frozen {
            return Err(libc::EIO);
        }
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        if self.frozen {
            return Err(libc::EIO);
        }
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(node)
    }

    /// The node `name` in directory `parent` names.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `ENOTDIR`, or `EIO` once the power is cut.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Creates an empty file or directory `name` in `parent`.
    ///
    /// # Errors
    ///
    /// `EEXIST`, `ENOENT`, `ENOTDIR`, or `EIO` once the power is cut.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<u64, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.alloc(Node::new(kind, perm, owner.0, owner.1, parent));
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_os_string(), ino);
        dir.mtime = SystemTime::now();
        Ok(ino)
    }

    /// Removes the entry `name` from `parent`; `want_dir` says whether it
    /// must be a directory (rmdir) or must not be (unlink).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `ENOTDIR`, `ENOTEMPTY`, or `EIO` once cut.
    pub fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (node.kind, want_dir) {
            (Kind::Dir, false) => return Err(libc::EISDIR),
            (Kind::File, true) => return Err(libc::ENOTDIR),
            (Kind::Dir, true) if !node.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let dir = self.node_mut(parent)?;
        dir.entries.remove(name);
        dir.mtime = SystemTime::now();
        self.unlinked(ino);
        Ok(())
    }

    fn unlinked(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.links = node.links.saturating_sub(1);
            if node.links == 0 && node.open == 0 {
                node.data = Vec::new();
            }
        }
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing a file or
    /// an empty directory there. `no_replace`: fail if the target exists.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EEXIST`, `EISDIR`, `ENOTDIR`, `ENOTEMPTY`, `EINVAL`, or
    /// `EIO` once the power is cut.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let kind = self.node(ino)?.kind;
        if kind == Kind::Dir && self.is_within(new_parent, ino) {
            return Err(libc::EINVAL);
        }
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            let t = self.node(target)?;
            match (kind, t.kind) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !t.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.unlinked(target);
        }
        let now = SystemTime::now();
        let from = self.node_mut(parent)?;
        from.entries.remove(name);
        from.mtime = now;
        let to = self.node_mut(new_parent)?;
        to.entries.insert(new_name.to_os_string(), ino);
        to.mtime = now;
        self.node_mut(ino)?.parent = new_parent;
        Ok(())
    }

    /// Whether `ino` is `ancestor` or lies under it (current tree).
    fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino) {
                Some(node) if ino != ROOT => ino = node.parent,
                _ => return false,
            }
        }
    }

    /// Writes `bytes` at `offset` of file `ino` (zero-filling a gap).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EINVAL`, or `EIO` once the power is cut.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<usize, Errno> {
        let node = self.file_mut(ino)?;
        let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        let end = start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
        let old_len = node.data.len();
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[start..end].copy_from_slice(bytes);
        node.touch(start.min(old_len));
        Ok(bytes.len())
    }

    /// Sets the length of file `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EFBIG`, or `EIO` once the power is cut.
    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let node = self.file_mut(ino)?;
        let len = usize::try_from(len).map_err(|_| libc::EFBIG)?;
        let old_len = node.data.len();
        node.data.resize(len, 0);
        node.touch(len.min(old_len));
        Ok(())
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let node = self.node_mut(ino)?;
        if node.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        Ok(node)
    }

    /// Reads up to `size` bytes at `offset` of file `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, or `EIO` once the power is cut.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<&[u8], Errno> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(node.data.len());
        let end = start.saturating_add(size).min(node.data.len());
        Ok(&node.data[start..end])
    }

    /// Sets mode bits and owner of `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, or `EIO` once the power is cut.
    pub fn set_meta(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if let Some(perm) = perm {
            node.perm = perm;
        }
        if let Some(uid) = uid {
            node.uid = uid;
        }
        if let Some(gid) = gid {
            node.gid = gid;
        }
        Ok(())
    }

    /// An open handle on `ino` was taken.
    ///
    /// # Errors
    ///
    /// `ENOENT`, or `EIO` once the power is cut.
    pub fn opened(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    /// An open handle on `ino` was closed. Works after a cut too.
    pub fn released(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
            if node.links == 0 && node.open == 0 {
                node.data = Vec::new();
            }
        }
    }

    /// `fsync`/`fdatasync` of `ino`: a file's data, or a directory's
    /// entries, reach the disk.
    ///
    /// # Errors
    ///
    /// `ENOENT`, a backing-directory error, or `EIO` once the power is cut.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.node(ino)?.kind {
            Kind::File => self.sync_file(ino, None),
            Kind::Dir => self.sync_dir(ino),
        }
    }

    /// Makes file `ino`'s data durable; `keep`: only that many of the
    /// unsynced bytes, and as zeroes when `zeroes` (a torn write).
    fn sync_file(&mut self, ino: u64, torn: Option<(usize, bool)>) -> Result<(), Errno> {
        let paths = self.durable_paths(ino);
        let node = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        let Some(from) = node.dirty_from.take() else {
            return Ok(());
        };
        let from = from.min(node.data.len()).min(node.durable.len());
        node.durable.truncate(from);
        match torn {
            None => node.durable.extend_from_slice(&node.data[from..]),
            Some((keep, false)) => {
                let end = (from + keep).min(node.data.len());
                node.durable.extend_from_slice(&node.data[from..end]);
            }
            Some((keep, true)) => {
                let end = (from + keep).min(node.data.len());
                node.durable.resize(end, 0);
            }
        }
        for path in paths {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.backing.join(&path))
                .map_err(|e| io_errno(&e))?;
            file.write_all_at(&node.durable[from..], from as u64)
                .and_then(|()| file.set_len(node.durable.len() as u64))
                .map_err(|e| io_errno(&e))?;
        }
        Ok(())
    }

    /// Makes directory `ino`'s entries durable and mirrors the change into
    /// the backing directory wherever the directory itself is durable.
    fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let paths = self.durable_paths(ino);
        let node = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        let old = std::mem::replace(&mut node.durable_entries, node.entries.clone());
        let new = node.durable_entries.clone();
        for dir in paths {
            let dir = self.backing.join(dir);
            for (name, &was) in &old {
                if new.get(name) != Some(&was) {
                    remove_path(&dir.join(name)).map_err(|e| io_errno(&e))?;
                }
            }
            for (name, &now) in &new {
                if old.get(name) != Some(&now) {
                    self.materialize(&dir.join(name), now)
                        .map_err(|e| io_errno(&e))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the durable state of `ino` at `path` in the backing dir.
    fn materialize(&self, path: &Path, ino: u64) -> io::Result<()> {
        let Some(node) = self.nodes.get(&ino) else {
            return Ok(());
        };
        remove_path(path)?;
        match node.kind {
            Kind::File => fs::write(path, &node.durable)?,
            Kind::Dir => {
                fs::create_dir(path)?;
                for (name, &child) in &node.durable_entries {
                    self.materialize(&path.join(name), child)?;
                }
            }
        }
        fs::set_permissions(path, fs::Permissions::from_mode(u32::from(node.perm)))
    }

    /// Every path (relative to the backing dir) at which the disk holds
    /// `ino`: its durable names reachable from the root through durable
    /// directories.
    fn durable_paths(&self, ino: u64) -> Vec<PathBuf> {
        let mut found = Vec::new();
        if ino == ROOT {
            found.push(PathBuf::new());
            return found;
        }
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((dir, path)) = stack.pop() {
            let Some(node) = self.nodes.get(&dir) else {
                continue;
            };
            for (name, &child) in &node.durable_entries {
                let child_path = path.join(name);
                if child == ino {
                    found.push(child_path.clone());
                }
                if self.nodes.get(&child).is_some_and(|c| c.kind == Kind::Dir) {
                    stack.push((child, child_path));
                }
            }
        }
        found
    }

    /// What a cut now would lose: the unsynced entry changes (`+name`,
    /// `-name`) and the files with unsynced bytes (`name:bytes`).
    pub fn unsynced(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in self.nodes.values().filter(|n| n.kind == Kind::Dir) {
            for (name, ino) in &node.entries {
                if node.durable_entries.get(name) != Some(ino) {
                    out.push(format!("+{}", name.to_string_lossy()));
                }
            }
            for (name, ino) in &node.durable_entries {
                if node.entries.get(name) != Some(ino) {
                    out.push(format!("-{}", name.to_string_lossy()));
                }
            }
            for (name, ino) in &node.entries {
                let Some(child) = self.nodes.get(ino) else {
                    continue;
                };
                if let Some(from) = child.dirty_from {
                    let bytes = child.data.len().saturating_sub(from);
                    out.push(format!("{}:{bytes}", name.to_string_lossy()));
                }
            }
        }
        out
    }

    /// Cuts the power: from now on every operation fails with `EIO`. With
    /// [`Cut::Torn`], some of what was not synced reaches the disk first.
    pub fn cut(&mut self, how: Cut) {
        if self.frozen {
            return;
        }
        if let Cut::Torn(seed) = how {
            let mut rng = fastrand::Rng::with_seed(seed);
            let dirty: Vec<(u64, usize)> = self
                .nodes
                .iter()
                .filter_map(|(&ino, n)| {
                    let from = n.dirty_from?;
                    Some((ino, n.data.len().saturating_sub(from)))
                })
                .collect();
            for (ino, unsynced) in dirty {
                let keep = rng.usize(0..=unsynced);
                let zeroes = rng.u8(0..4) == 0;
                if let Err(e) = self.sync_file(ino, Some((keep, zeroes))) {
                    eprintln!("powerfail: torn write of inode {ino} failed: errno {e}");
                }
            }
            let dirs: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.kind == Kind::Dir && n.dir_dirty())
                .map(|(&ino, _)| ino)
                .collect();
            for ino in dirs {
                if rng.bool()
                    && let Err(e) = self.sync_dir(ino)
                {
                    eprintln!("powerfail: torn directory {ino} failed: errno {e}");
                }
            }
        }
        self.frozen = true;
    }

    /// A clean shutdown: everything reaches the disk.
    ///
    /// # Errors
    ///
    /// A backing-directory error.
    pub fn sync_everything(&mut self) -> Result<(), Errno> {
        if self.frozen {
            return Ok(());
        }
        let files: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.dirty_from.is_some())
            .map(|(&ino, _)| ino)
            .collect();
        for ino in files {
            self.sync_file(ino, None)?;
        }
        // Parents before children, so a new directory appears before its
        // own entries are compared against it.
        let mut queue = std::collections::VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            self.sync_dir(dir)?;
            if let Some(node) = self.nodes.get(&dir) {
                queue.extend(
                    node.entries
                        .values()
                        .filter(|c| self.nodes.get(c).is_some_and(|n| n.kind == Kind::Dir)),
                );
            }
        }
        Ok(())
    }
}

fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn meta_uid(meta: &fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::uid(meta)
}

fn meta_gid(meta: &fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::gid(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile_dir::Dir, Tree) {
        let dir = tempfile_dir::Dir::new();
        let tree = Tree::load(dir.path()).expect("load");
        (dir, tree)
    }

    /// A scratch directory without a dev-dependency.
    mod tempfile_dir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "powerfail-test-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&path).expect("mkdir");
                Dir(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const ME: (u32, u32) = (0, 0);

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// The tree a fresh mount of the backing dir shows, as path → contents.
    fn disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let reloaded = Tree::load(dir).expect("reload");
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((ino, path)) = stack.pop() {
            for (n, &child) in &reloaded.nodes[&ino].entries {
                let p = format!("{path}/{}", n.to_string_lossy());
                match reloaded.nodes[&child].kind {
                    Kind::Dir => {
                        out.insert(format!("{p}/"), Vec::new());
                        stack.push((child, p));
                    }
                    Kind::File => {
                        out.insert(p, reloaded.nodes[&child].data.clone());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_synced_file_in_an_unsynced_directory_is_lost() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("a"), Kind::File, 0o644, ME)
            .expect("create");
        t.write(f, 0, b"hello").expect("write");
        t.sync(f).expect("fsync file");
        t.cut(Cut::Clean);
        assert!(disk(dir.path()).is_empty());
    }

    #[test]
    fn file_data_needs_its_own_fsync() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("a"), Kind::File, 0o644, ME)
            .expect("create");
        t.sync(ROOT).expect("fsync dir");
        t.write(f, 0, b"hello").expect("write");
        t.cut(Cut::Clean);
        assert_eq!(disk(dir.path()).get("/a"), Some(&Vec::new()));
    }

    #[test]
    fn synced_appends_survive_and_later_ones_do_not() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("log"), Kind::File, 0o644, ME)
            .expect("create");
        t.sync(ROOT).expect("fsync dir");
        t.write(f, 0, b"one").expect("write");
        t.sync(f).expect("fsync");
        t.write(f, 3, b"two").expect("write");
        t.sync(f).expect("fsync");
        t.write(f, 6, b"three").expect("write");
        assert_eq!(t.read(f, 0, 100).expect("read"), b"onetwothree");
        t.cut(Cut::Clean);
        assert_eq!(disk(dir.path()).get("/log"), Some(&b"onetwo".to_vec()));
        assert_eq!(t.read(f, 0, 1), Err(libc::EIO), "frozen after the cut");
    }

    #[test]
    fn a_rename_needs_a_directory_fsync() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("snap.tmp"), Kind::File, 0o644, ME)
            .expect("create");
        t.write(f, 0, b"data").expect("write");
        t.sync(f).expect("fsync");
        t.sync(ROOT).expect("fsync dir");
        t.rename(ROOT, name("snap.tmp"), ROOT, name("snap"), false)
            .expect("rename");
        let before = disk(dir.path());
        assert_eq!(before.get("/snap.tmp"), Some(&b"data".to_vec()));
        assert!(!before.contains_key("/snap"));
        t.sync(ROOT).expect("fsync dir");
        t.cut(Cut::Clean);
        let after = disk(dir.path());
        assert_eq!(after.get("/snap"), Some(&b"data".to_vec()));
        assert!(!after.contains_key("/snap.tmp"));
    }

    #[test]
    fn an_unlink_without_a_directory_fsync_comes_back() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("old"), Kind::File, 0o644, ME)
            .expect("create");
        t.write(f, 0, b"x").expect("write");
        t.sync(f).expect("fsync");
        t.sync(ROOT).expect("fsync dir");
        t.remove(ROOT, name("old"), false).expect("unlink");
        assert_eq!(t.lookup(ROOT, name("old")), Err(libc::ENOENT));
        t.cut(Cut::Clean);
        assert_eq!(disk(dir.path()).get("/old"), Some(&b"x".to_vec()));
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let (dir, mut t) = tree();
        let d = t
            .create(ROOT, name("data"), Kind::Dir, 0o755, ME)
            .expect("mkdir");
        let f = t
            .create(d, name("wal"), Kind::File, 0o644, ME)
            .expect("create");
        t.write(f, 0, b"rec").expect("write");
        t.sync(f).expect("fsync");
        t.sync(d).expect("fsync data dir");
        assert!(disk(dir.path()).is_empty(), "data/ itself is not durable");
        t.sync(ROOT).expect("fsync root");
        t.cut(Cut::Clean);
        assert_eq!(disk(dir.path()).get("/data/wal"), Some(&b"rec".to_vec()));
    }

    #[test]
    fn truncation_is_data_too() {
        let (dir, mut t) = tree();
        let f = t
            .create(ROOT, name("f"), Kind::File, 0o644, ME)
            .expect("create");
        t.sync(ROOT).expect("fsync dir");
        t.write(f, 0, b"abcdef").expect("write");
        t.sync(f).expect("fsync");
        t.set_len(f, 2).expect("truncate");
        t.write(f, 2, b"XY").expect("write");
        t.sync(f).expect("fsync");
        t.set_len(f, 1).expect("truncate");
        t.cut(Cut::Clean);
        assert_eq!(disk(dir.path()).get("/f"), Some(&b"abXY".to_vec()));
    }

    #[test]
    fn a_torn_cut_keeps_a_prefix_of_the_unsynced_bytes() {
        for seed in 0..40 {
            let (dir, mut t) = tree();
            let f = t
                .create(ROOT, name("f"), Kind::File, 0o644, ME)
                .expect("create");
            t.sync(ROOT).expect("fsync dir");
            t.write(f, 0, b"synced").expect("write");
            t.sync(f).expect("fsync");
            t.write(f, 6, b"-unsynced").expect("write");
            t.cut(Cut::Torn(seed));
            let got = disk(dir.path()).remove("/f").expect("file");
            assert!(got.starts_with(b"synced"), "seed {seed}: {got:?}");
            let tail = &got[6..];
            let full = b"-unsynced";
            assert!(
                tail == &full[..tail.len()] || tail.iter().all(|&b| b == 0),
                "seed {seed}: {got:?}"
            );
        }
    }

    #[test]
    fn a_clean_shutdown_keeps_everything() {
        let (dir, mut t) = tree();
        let d = t
            .create(ROOT, name("d"), Kind::Dir, 0o755, ME)
            .expect("mkdir");
        let f = t
            .create(d, name("f"), Kind::File, 0o644, ME)
            .expect("create");
        t.write(f, 0, b"all").expect("write");
        t.sync_everything().expect("sync");
        assert_eq!(disk(dir.path()).get("/d/f"), Some(&b"all".to_vec()));
    }
}
