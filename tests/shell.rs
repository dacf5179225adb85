//! `dododb cli` driven through stdin (not a terminal, so no prompt and no
//! line editing): the same commands as the command line, `set` as `put`,
//! words that are not JSON stored as JSON strings, errors that do not end
//! the session.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{TestServer, dododb_client, get};

fn shell(url: &str, script: &str) -> (Option<i32>, String, String) {
    let mut child = dododb_client(url)
        .arg("cli")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dododb cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_session_through_stdin() {
    let server = TestServer::start(&["--in-memory"]);
    let script = r#"
set user:1 "Alice Johnson"
set user:2 Alice
put user:3 '{"name": "Ada", "age": 36}'
set n 42
get user:1
get user:3
# a comment, then blank lines

ls --prefix user:
count
del user:2
get user:2
count --prefix user:
exit
get user:1
"#;
    let (code, stdout, stderr) = shell(&server.url, script);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"key":"user:1","version":1,"created":true}"#,
            r#"{"key":"user:2","version":2,"created":true}"#,
            r#"{"key":"user:3","version":3,"created":true}"#,
            r#"{"key":"n","version":4,"created":true}"#,
            r#""Alice Johnson""#,
            r#"{"name":"Ada","age":36}"#,
            "user:1",
            "user:2",
            "user:3",
            "4",
            r#"{"key":"user:2","deleted":true,"version":5}"#,
            "2",
        ],
        "stderr: {stderr}"
    );
    // `get user:2` after the delete is an error on stderr, and the session
    // went on; nothing ran after `exit`.
    assert_eq!(stderr.matches("not_found").count(), 1, "{stderr}");
    assert_eq!(
        get(&server, "user:1").await.as_deref(),
        Some(r#""Alice Johnson""#)
    );
    assert_eq!(get(&server, "user:2").await, None, "not stored");
    assert_eq!(get(&server, "n").await.as_deref(), Some("42"));
}

#[test]
fn mistakes_are_reported_and_the_session_goes_on() {
    let server = TestServer::start(&["--in-memory"]);
    let script = "bogus\nset k 'unclosed\nput k\nget\nset k ok\nget k\n";
    let (code, stdout, stderr) = shell(&server.url, script);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("bogus"), "{stderr}");
    assert!(stderr.contains("quote"), "{stderr}");
    assert!(stderr.contains("needs a value"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [r#"{"key":"k","version":1,"created":true}"#, r#""ok""#],
        "stderr: {stderr}"
    );
}

#[test]
fn help_lists_the_commands() {
    let server = TestServer::start(&["--in-memory"]);
    let (code, stdout, stderr) = shell(&server.url, "help\nhelp put\n");
    assert_eq!(code, Some(0), "{stderr}");
    for command in [
        "get",
        "put",
        "set",
        "del",
        "ls",
        "count",
        "watch",
        "subscribe",
        "exit",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(command)
                || l.contains(&format!("aliases: {command}"))
                || l.contains(&format!("alias: {command}"))),
            "{command} missing from help: {stdout}"
        );
    }
    assert!(
        stdout.contains("--if-version"),
        "`help put` shows put's flags: {stdout}"
    );
}

#[tokio::test]
async fn json_with_double_quotes_needs_no_extra_quoting() {
    let server = TestServer::start(&["--in-memory"]);
    let script = "put doc {\"a\": [1, 2], \"b\": \"x y\"}\nset s \"42\"\nset n 42\nget doc\n";
    let (code, stdout, stderr) = shell(&server.url, script);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some(r#"{"a":[1,2],"b":"x y"}"#),
        "{stdout}"
    );
    assert_eq!(
        get(&server, "doc").await.as_deref(),
        Some(r#"{"a": [1, 2], "b": "x y"}"#)
    );
    assert_eq!(get(&server, "s").await.as_deref(), Some(r#""42""#));
    assert_eq!(get(&server, "n").await.as_deref(), Some("42"));
}

#[tokio::test]
async fn mset_and_mget_go_through_one_transaction() {
    let server = TestServer::start(&["--in-memory"]);
    let script = r#"
mset user:1 Alice user:2 '{"name": "Bob"}' n 42
mget user:1 user:2 nobody n
mset odd
"#;
    let (code, stdout, stderr) = shell(&server.url, script);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(get(&server, "user:1").await.as_deref(), Some("\"Alice\""));
    assert_eq!(
        get(&server, "user:2").await.as_deref(),
        Some("{\"name\": \"Bob\"}")
    );
    assert_eq!(get(&server, "n").await.as_deref(), Some("42"));
    assert!(
        stdout.contains(r#"{"user:1":"Alice","user:2":{"name":"Bob"},"n":42}"#),
        "{stdout}"
    );
    assert!(
        stderr.contains("mset") || stderr.contains("error"),
        "{stderr}"
    );
}
