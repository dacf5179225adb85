//! Talking to a running DodoDB server over HTTP with reqwest: write, read
//! with the version from `ETag`, a conditional write that loses a race,
//! listing with cursors, and a replay of the live feed with `since=`.
//!
//! It starts nothing. Run a server first, then the example:
//!
//! ```sh
//! cargo run -- --in-memory                 # serves http://127.0.0.1:8888
//! cargo run --example client               # in another shell
//! DODODB_URL=http://127.0.0.1:9000 cargo run --example client   # another server
//! ```
//!
//! Set `DODODB_AUTH_TOKEN` when the server runs with `--auth-token`.

use std::io::{BufRead, BufReader};

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{ETAG, IF_MATCH};
use serde_json::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("DODODB_URL").unwrap_or_else(|_| "http://127.0.0.1:8888".into());
    let token = std::env::var("DODODB_AUTH_TOKEN").ok();
    let http = Client::new();
    let auth = |request: RequestBuilder| match &token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };

    let stats: Value = auth(http.get(format!("{base}/system/stats")))
        .send()?
        .json()?;
    let start = stats["revision"].as_u64().unwrap_or(0);

    // Keys are one path segment: "user:1" needs no escaping, "a/b" would.
    let written: Value = auth(http.put(format!("{base}/kv/user:1")))
        .body(r#"{"name": "Ada"}"#)
        .send()?
        .error_for_status()?
        .json()?;
    println!("put: {written}");

    let response = auth(http.get(format!("{base}/kv/user:1"))).send()?;
    let etag = response.headers().get(ETAG).cloned();
    println!("get: {} (ETag {etag:?})", response.text()?);

    // Replace only at the version we read: the first wins, the second
    // (still holding the old ETag) gets 412.
    for attempt in 1..=2 {
        let mut request = auth(http.put(format!("{base}/kv/user:1"))).body(r#"{"name": "Ada L."}"#);
        if let Some(etag) = &etag {
            request = request.header(IF_MATCH, etag);
        }
        let response = request.send()?;
        match response.status() {
            StatusCode::PRECONDITION_FAILED => {
                let error: Value = response.json()?;
                println!(
                    "attempt {attempt}: lost the race: {}",
                    error["error"]["message"]
                );
            }
            status => println!("attempt {attempt}: {status} {}", response.text()?),
        }
    }

    // Every key, page by page.
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "100".to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page: Value = auth(http.get(format!("{base}/kv")).query(&query))
            .send()?
            .json()?;
        for key in page["keys"].as_array().into_iter().flatten() {
            println!("key: {key}");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }

    // The changes this example made, replayed from the feed.
    let feed = auth(
        http.get(format!("{base}/events"))
            .query(&[("since", start)]),
    )
    .send()?;
    let mut seen = 0;
    for line in BufReader::new(feed).lines() {
        if let Some(data) = line?.strip_prefix("data: ") {
            println!("event: {data}");
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    Ok(())
}
