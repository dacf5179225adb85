//! The project's documentation against the code and against itself:
//! `docs/api.md` names every route of `dododb::http::ROUTES` (the table the
//! router is built from) and no route that is not in it; every relative
//! link in the project's Markdown files reaches a file (and heading) inside
//! the project; and no file points at the specification folder that sits
//! outside this repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of a Markdown document with its fenced code blocks blanked
/// out (lines kept, so line numbers stay right).
fn prose(markdown: &str) -> Vec<String> {
    let mut in_fence = false;
    markdown
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                return String::new();
            }
            if in_fence {
                String::new()
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// Every `METHOD /path` written as an inline code span, with its line
/// number; the path ends at a `?`, a space or the span's end.
fn route_mentions(markdown: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    for (n, line) in prose(markdown).iter().enumerate() {
        for span in line.split('`').skip(1).step_by(2) {
            let Some((method, rest)) = span.split_once(' ') else {
                continue;
            };
            if !METHODS.contains(&method) || !rest.starts_with('/') {
                continue;
            }
            let path = rest.split(['?', ' ']).next().unwrap_or(rest);
            found.push((n + 1, method.to_string(), path.to_string()));
        }
    }
    found
}

/// Whether the concrete or template `path` is an instance of `template`
/// (`{...}` segments match any one non-empty segment).
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
}

fn routes() -> BTreeSet<(String, String)> {
    dododb::http::ROUTES
        .iter()
        .map(|r| (r.method().as_str().to_string(), r.path().to_string()))
        .collect()
}

/// The check behind the test: (routes not named, mentions that are no route).
fn compare_with_routes(
    markdown: &str,
    routes: &BTreeSet<(String, String)>,
) -> (Vec<String>, Vec<String>) {
    let mentions = route_mentions(markdown);
    let named: BTreeSet<(String, String)> = mentions
        .iter()
        .map(|(_, m, p)| (m.clone(), p.clone()))
        .collect();
    let missing = routes
        .difference(&named)
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    let unknown = mentions
        .iter()
        .filter(|(_, m, p)| {
            !routes
                .iter()
                .any(|(rm, rp)| rm == m && matches_template(rp, p))
        })
        .map(|(line, m, p)| format!("line {line}: {m} {p}"))
        .collect();
    (missing, unknown)
}

#[test]
fn api_md_names_every_route_and_nothing_else() {
    let api = read(&root().join("docs/api.md"));
    let routes = routes();
    assert!(routes.len() > 15, "{routes:?}");
    let (missing, unknown) = compare_with_routes(&api, &routes);
    assert!(
        missing.is_empty(),
        "routes missing from docs/api.md (write each as `METHOD /path`): {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/api.md names routes the server does not have: {unknown:?}"
    );
}

#[test]
fn the_route_check_catches_a_missing_and_an_invented_route() {
    let routes: BTreeSet<(String, String)> = [("GET", "/kv/{key}"), ("POST", "/kv/clear")]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let doc = "| `GET /kv/{key}` | one |\n\
               `GET /kv/a%2Fb` is a key.\n\
               ```\n`POST /kv/clear` in a fence does not count\n```\n\
               `DELETE /kv/{key}` is not routed; `GET /pubsub/x?y=1` neither.\n";
    let (missing, unknown) = compare_with_routes(doc, &routes);
    assert_eq!(missing, vec!["POST /kv/clear".to_string()]);
    assert_eq!(
        unknown,
        vec![
            "line 6: DELETE /kv/{key}".to_string(),
            "line 6: GET /pubsub/x".to_string()
        ]
    );
}

/// Every file of the project worth reading: not build output, not git's,
/// not fuzzing corpora or local load-test results.
fn project_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "corpus" | "artifacts") {
                project_files(&path, out);
            }
        } else if !(path
            .parent()
            .is_some_and(|p| p.ends_with("loadtest/results"))
            && name != "README.md")
        {
            out.push(path);
        }
    }
}

#[test]
fn nothing_points_outside_the_project() {
    // Spelled in pieces so that this file does not match itself.
    let outside = [concat!("..", "/shared"), concat!("/work", "/shared")];
    let mut files = Vec::new();
    project_files(root(), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut offenders = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o)) {
                let relative = path.strip_prefix(root()).unwrap_or(&path);
                offenders.push(format!("{}:{}: {line}", relative.display(), n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "files that point outside the project: {offenders:#?}"
    );
}

/// GitHub's anchor of a heading: lower case, letters, digits, `-` and `_`
/// kept, spaces to `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown document's headings (a repeated heading gets
/// `-1`, `-2`, … as on GitHub).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose(markdown) {
        let Some(text) = line.strip_prefix('#') else {
            continue;
        };
        let base = slug(text.trim_start_matches('#'));
        let count = seen.entry(base.clone()).or_insert(0);
        out.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// `path` with `.` and `..` resolved lexically (the target may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every `](target)` link outside code fences: (line, target).
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(markdown).iter().enumerate() {
        for piece in line.split("](").skip(1) {
            if let Some(end) = piece.find(')') {
                out.push((n + 1, piece[..end].to_string()));
            }
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_markdown_resolves() {
    let mut files = Vec::new();
    project_files(root(), &mut files);
    let markdown: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    assert!(
        markdown.iter().any(|p| p.ends_with("docs/api.md")),
        "{markdown:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &markdown {
        let text = read(file);
        let dir = file.parent().expect("a file has a folder");
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&dir.join(path))
            };
            let here = format!(
                "{}:{line}: ({target})",
                file.strip_prefix(root()).unwrap_or(file).display()
            );
            if !resolved.starts_with(root()) {
                broken.push(format!("{here} leaves the project"));
            } else if !resolved.exists() {
                broken.push(format!("{here} does not exist"));
            } else if let Some(anchor) = anchor
                && resolved.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&resolved)).contains(anchor)
            {
                broken.push(format!("{here} has no heading #{anchor}"));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains("](docs/api.md)"),
        "the README links the API reference"
    );
}

#[test]
fn anchors_follow_github() {
    let doc = "# Top\n## Live feed: SSE and WebSocket\n### Embedded `Db`\n## Top\n```\n# not a heading\n```\n";
    let got: Vec<String> = anchors(doc).into_iter().collect();
    assert_eq!(
        got,
        ["embedded-db", "live-feed-sse-and-websocket", "top", "top-1"]
    );
}
