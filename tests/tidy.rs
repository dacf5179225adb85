//! House rules that a reviewer would otherwise check by hand: every source
//! file opens with a `//!` comment, and every module is on the code map in
//! `ARCHITECTURE.md`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "examples", "tests", "benches"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    files
}

#[test]
fn every_file_opens_with_a_module_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let missing: Vec<String> = sources()
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("read");
            !text.starts_with("//!")
        })
        .map(|path| {
            path.strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` comment: {missing:?}"
    );
}

#[test]
fn every_module_is_on_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src");
        let name = relative.to_string_lossy().replace('\\', "/");
        // A directory's mod.rs is listed as `dir/`; unit-test files go with
        // their module.
        let entry = match name.strip_suffix("mod.rs") {
            Some(dir) => dir.to_string(),
            None if name.ends_with("/tests.rs") => continue,
            None => name,
        };
        if !map.contains(&format!("- `{entry}` — ")) {
            missing.push(entry);
        }
    }
    assert!(
        missing.is_empty(),
        "not on the code map in ARCHITECTURE.md: {missing:?}"
    );
}
