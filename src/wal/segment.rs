//! Names and listing of WAL segment files, and directory fsync.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = "wal-";
const SUFFIX: &str = ".log";

/// The path of segment `n` in `dir`.
pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:020}{SUFFIX}"))
}

/// The segment number a file name stands for, if it is a segment.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// All segment numbers in `dir`, ascending.
///
/// # Errors
///
/// The directory cannot be read.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(n) = entry?.file_name().to_str().and_then(parse_name) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Makes a rename or a new file in `dir` durable.
///
/// # Errors
///
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows has no directory handles to sync; NTFS journals renames.
        let _ = dir;
        Ok(())
    }
}

/// Creates segment `n` (it must not exist) and makes its name durable.
///
/// # Errors
///
/// The file cannot be created, or the directory cannot be synced.
pub fn create(dir: &Path, n: u64) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path(dir, n))?;
    sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let p = path(Path::new("/d"), 7);
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name, "wal-00000000000000000007.log");
        assert_eq!(parse_name(name), Some(7));
        assert_eq!(parse_name("wal-x.log"), None);
        assert_eq!(parse_name("snapshot-1.json"), None);
    }
}
