//! A blocking HTTP client of the REST API (SPEC §4–§7): one method per
//! route the commands use. It builds URLs, sends the bearer token and turns
//! error answers into [`ClientError`]; it prints nothing.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header;
use serde::Deserialize;

use super::args::Connect;
use super::error::ClientError;

/// Everything but the URL-safe characters is escaped in a key, so any key
/// travels as one path segment.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A timeout for ordinary requests; the feed has none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A condition on a write (`If-Match` / `If-None-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The key must be at this version.
    Version(u64),
    /// The key must not exist.
    Absent,
}

/// One page of `GET /kv`.
#[derive(Debug, Deserialize)]
pub struct KeyPage {
    /// The keys, ascending.
    pub keys: Vec<String>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<String>,
}

/// A connection to one server.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    stream: reqwest::blocking::Client,
}

impl Api {
    /// A client of the server `connect` names.
    ///
    /// # Errors
    ///
    /// [`ClientError::Usage`] when the URL is not an http(s) URL.
    pub fn new(connect: &Connect) -> Result<Api, ClientError> {
        let base = connect.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ClientError::Usage(format!("--url {base:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Usage(format!(
                "--url must be an http or https URL; got {base:?}"
            )));
        }
        let build = |timeout: Option<Duration>| {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| ClientError::Usage(format!("cannot set up HTTP: {e}")))
        };
        Ok(Api {
            base,
            token: connect.token.clone(),
            http: build(Some(REQUEST_TIMEOUT))?,
            stream: build(None)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn key_url(&self, key: &str) -> String {
        self.url(&format!("/kv/{}", utf8_percent_encode(key, KEY_SEGMENT)))
    }

    /// Sends a request with the token; a non-2xx answer becomes
    /// [`ClientError::Server`].
    fn send(&self, request: RequestBuilder, url: &str) -> Result<Response, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().map_err(|e| ClientError::connect(url, &e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(server_error(response))
        }
    }

    fn body(response: Response, url: &str) -> Result<Vec<u8>, ClientError> {
        response
            .bytes()
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::connect(url, &e))
    }

    fn json<T: serde::de::DeserializeOwned>(
        response: Response,
        url: &str,
    ) -> Result<T, ClientError> {
        let bytes = Api::body(response, url)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{url}: {e}")))
    }

    /// `GET /kv/{key}`: the stored JSON bytes.
    ///
    /// # Errors
    ///
    /// `404` when absent, as every method: see [`ClientError`].
    pub fn get(&self, key: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.key_url(key);
        let response = self.send(self.http.get(&url), &url)?;
        Api::body(response, &url)
    }

    /// `PUT /kv/{key}`: the server's answer (`{"key","version","created"}`).
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_secs: Option<u64>,
        condition: Option<Condition>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.key_url(key);
        let mut request = self
            .http
            .put(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(value);
        if let Some(ttl) = ttl_secs {
            request = request.query(&[("ttl", ttl)]);
        }
        request = match condition {
            Some(Condition::Version(v)) => request.header(header::IF_MATCH, format!("\"{v}\"")),
            Some(Condition::Absent) => request.header(header::IF_NONE_MATCH, "*"),
            None => request,
        };
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// `DELETE /kv/{key}`: the server's answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn delete(&self, key: &str, if_version: Option<u64>) -> Result<Vec<u8>, ClientError> {
        let url = self.key_url(key);
        let mut request = self.http.delete(&url);
        if let Some(v) = if_version {
            request = request.header(header::IF_MATCH, format!("\"{v}\""));
        }
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// One page of `GET /kv?prefix=&cursor=`.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn list(&self, prefix: &str, cursor: Option<&str>) -> Result<KeyPage, ClientError> {
        let url = self.url("/kv");
        let mut query = vec![("prefix", prefix)];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let response = self.send(self.http.get(&url).query(&query), &url)?;
        Api::json(response, &url)
    }

    /// `GET /kv/count[?prefix=]`.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn count(&self, prefix: Option<&str>) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let url = self.url("/kv/count");
        let mut request = self.http.get(&url);
        if let Some(prefix) = prefix {
            request = request.query(&[("prefix", prefix)]);
        }
        let response = self.send(request, &url)?;
        Api::json::<Count>(response, &url).map(|c| c.count)
    }

    /// The server's current revision, from `GET /system/stats`.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn revision(&self) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Stats {
            revision: u64,
        }
        let url = self.url("/system/stats");
        let response = self.send(self.http.get(&url), &url)?;
        Api::json::<Stats>(response, &url).map(|s| s.revision)
    }

    /// Opens `GET /events?prefix=&since=`; the answer's body is the SSE
    /// stream, with no timeout.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn events(&self, prefix: &str, since: Option<u64>) -> Result<Response, ClientError> {
        let url = self.url("/events");
        let mut request = self
            .stream
            .get(&url)
            .header(header::ACCEPT, "text/event-stream")
            .query(&[("prefix", prefix)]);
        if let Some(since) = since {
            request = request.query(&[("since", since)]);
        }
        self.send(request, &url)
    }

    /// `GET path`: the answer's body.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn get_path(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let response = self.send(self.http.get(&url), &url)?;
        Api::body(response, &url)
    }

    /// `POST path` (a `/cluster` route) with the JSON `body`: the answer's
    /// body. Membership changes wait for the group, so they get a longer
    /// timeout.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn post_membership(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let request = self
            .stream
            .post(&url)
            .timeout(Duration::from_secs(120))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// `POST /txn` with the document `body`: the server's answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn txn(&self, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let url = self.url("/txn");
        let request = self
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// `POST /system/import[?mode=replace]`, streaming `body` (no timeout:
    /// an import may take long): the server's answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn import(
        &self,
        body: reqwest::blocking::Body,
        replace: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url("/system/import");
        let mut request = self
            .stream
            .post(&url)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        if replace {
            request = request.query(&[("mode", "replace")]);
        }
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// Opens `GET /system/export`; the answer's body is the export, with no
    /// timeout.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn export(&self) -> Result<Response, ClientError> {
        let url = self.url("/system/export");
        self.send(self.stream.get(&url), &url)
    }

    /// `GET /pubsub/subscriptions`: every subscription with its status.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn subscriptions(&self) -> Result<Vec<u8>, ClientError> {
        self.get_path("/pubsub/subscriptions")
    }

    /// `POST /pubsub/subscriptions/{id}/{action}` with `body`.
    ///
    /// # Errors
    ///
    /// `404` for an unknown subscription; see [`ClientError`].
    pub fn subscription_action(
        &self,
        id: &str,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, ClientError> {
        let path = format!(
            "/pubsub/subscriptions/{}/{action}",
            utf8_percent_encode(id, KEY_SEGMENT)
        );
        self.post_json(&path, body)
    }

    /// POSTs `body` as JSON to `path`: the server's answer.
    fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let request = self
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let response = self.send(request, &url)?;
        Api::body(response, &url)
    }

    /// `POST /pubsub/subscribe` with `body`: the server's answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub fn subscribe(&self, body: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        self.post_json("/pubsub/subscribe", body)
    }
}

/// The error envelope of a failed answer, or its bare status when the body
/// is not an envelope (a proxy's page, say).
fn server_error(response: Response) -> ClientError {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let status = response.status();
    let body = response.bytes().unwrap_or_default();
    match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) => ClientError::Server {
            status: status.as_u16(),
            code: envelope.error.code,
            message: envelope.error.message,
        },
        Err(_) => ClientError::Server {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string(),
        },
    }
}
