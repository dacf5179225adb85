//! `watch`: follows `GET /events`, prints each event's `data` as JSON, and
//! after a dropped connection reconnects with `since=<last id>`, so no
//! change is missed or printed twice across the gap (as far as the
//! server's replay ring reaches; beyond it the server sends `reset`).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use super::api::Api;
use super::args::WatchArgs;
use super::error::ClientError;
use super::output::Printer;

/// First wait before a reconnect; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field: the change's version (resets have none).
    pub id: Option<u64>,
    /// The `event:` field (`update`, `delete`, `expire`, `reset`).
    pub event: String,
    /// The `data:` lines joined with line breaks.
    pub data: String,
}

/// Assembles events from the lines of an SSE stream (the fields this
/// server sends; comments like `: keepalive` are skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    id: Option<u64>,
    event: String,
    data: Option<String>,
}

impl SseParser {
    /// Feeds one line (without its line break); returns the event a blank
    /// line completes.
    pub fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let id = self.id.take();
            let event = std::mem::take(&mut self.event);
            return self.data.take().map(|data| SseEvent { id, event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = value.parse().ok(),
            "event" => self.event = value.to_string(),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

/// Runs `watch` until the output closes or the server refuses the feed
/// for good (a bad token, a bad prefix). Connection losses are retried
/// forever, with backoff.
///
/// # Errors
///
/// The server cannot be reached at the start, or answers with an error
/// other than `503`; or the output fails (a closed pipe ends it quietly).
pub fn watch(api: &Api, args: &WatchArgs, printer: &Printer) -> Result<(), ClientError> {
    // Start from a known revision, so even the first reconnect resumes
    // exactly where this watch began.
    let mut since = match args.since {
        Some(since) => since,
        None => api.revision()?,
    };
    eprintln!("dododb: watching changes after revision {since}");
    let mut backoff = FIRST_BACKOFF;
    let mut connected = false;
    loop {
        match api.events(&args.prefix, Some(since)) {
            Ok(response) => {
                connected = true;
                backoff = FIRST_BACKOFF;
                follow(response, &mut since, printer)?;
                eprintln!("dododb: the feed closed; reconnecting with since={since}");
            }
            // Said once above; stay quiet while the server is away.
            Err(e) if connected && retriable(&e) => {}
            Err(e) => return Err(e),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Failures worth reconnecting after: the server is away or restarting.
fn retriable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Server { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Prints the events of one connection until it ends or breaks, moving
/// `since` to each printed event's id.
fn follow(
    response: reqwest::blocking::Response,
    since: &mut u64,
    printer: &Printer,
) -> Result<(), ClientError> {
    let mut reader = BufReader::new(response);
    let mut parser = SseParser::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            // The server closed the stream (a shutdown) or the connection
            // broke: either way the caller reconnects.
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(event) = parser.line(text) {
            printer.json(event.data.as_bytes())?;
            if let Some(id) = event.id {
                *since = id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stream: &str, expected: &[SseEvent]) {
        let mut parser = SseParser::default();
        let got: Vec<SseEvent> = stream.split('\n').filter_map(|l| parser.line(l)).collect();
        assert_eq!(got, expected, "{stream:?}");
    }

    fn event(id: Option<u64>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id,
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn frames() {
        check(
            "id: 7\nevent: update\ndata: {\"a\":1}\n\n",
            &[event(Some(7), "update", "{\"a\":1}")],
        );
        check(": keepalive\n\n", &[]);
        check(
            "event: reset\ndata: {}\n\nid: 9\nevent: delete\ndata: [1,\ndata: 2]\n\n",
            &[
                event(None, "reset", "{}"),
                event(Some(9), "delete", "[1,\n2]"),
            ],
        );
        check("id: 3\ndata:x", &[]);
        check("id: 3\ndata:x\n\n", &[event(Some(3), "", "x")]);
    }
}
