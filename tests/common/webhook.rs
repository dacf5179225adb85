//! Webhooks from the receiving end: a real receiver on 127.0.0.1 that
//! records every request and answers from a script (a status, a status
//! with `Retry-After`, or no answer at all), and the subscription
//! requests the tests make.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

use super::{TestServer, get_json, poll_until};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    /// The payload (`null` if it was not JSON).
    pub body: Value,
    pub raw: Bytes,
    pub at: Instant,
}

impl Received {
    /// A header's value, or "" without it.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `webhook-id` header.
    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }

    /// The payload's `key`.
    pub fn key(&self) -> &str {
        self.body["key"].as_str().expect("a key in the payload")
    }

    /// The payload's `version`.
    pub fn version(&self) -> u64 {
        self.body["version"]
            .as_u64()
            .expect("a version in the payload")
    }
}

/// How a receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This status, no body.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Never answers (a hanging subscriber).
    Hang,
}

/// A receiver: records requests, answers from its script and, once that
/// has run out, with its standing answer.
#[derive(Clone)]
pub struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    otherwise: Arc<Mutex<Answer>>,
    url: String,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, raw: Bytes) -> Response {
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    r.got.lock().expect("lock").push(Received {
        headers,
        body,
        raw,
        at: Instant::now(),
    });
    let next = r.script.lock().expect("lock").pop_front();
    let answer = next.unwrap_or_else(|| *r.otherwise.lock().expect("lock"));
    let status = |code: u16| StatusCode::from_u16(code).expect("status");
    match answer {
        Answer::Status(code) => status(code).into_response(),
        Answer::RetryAfter(code, secs) => {
            (status(code), [("retry-after", secs.to_string())]).into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    /// A receiver on a free port answering `script`, then 200.
    pub async fn start(script: &[Answer]) -> Receiver {
        Receiver::start_on(0, script, Answer::Status(200)).await
    }

    /// A receiver on `port` (0: any) answering `script`, then `otherwise`.
    pub async fn start_on(port: u16, script: &[Answer], otherwise: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let receiver = Receiver {
            got: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            otherwise: Arc::new(Mutex::new(otherwise)),
            url: format!("http://{}/hook", listener.local_addr().expect("addr")),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// Its callback URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers `answer` from now on, once the script has run out.
    pub fn answer_from_now(&self, answer: Answer) {
        *self.otherwise.lock().expect("lock") = answer;
    }

    /// Every request so far.
    pub fn got(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Runs `look` over every request so far, without copying them.
    pub fn inspect<T>(&self, look: impl FnOnce(&[Received]) -> T) -> T {
        look(&self.got.lock().expect("lock"))
    }

    /// Waits until `n` requests arrived; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        poll_until(&format!("{n} deliveries"), async || {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Watches for `window` that no request beyond the first `n` arrives:
    /// how a test shows that an attempt does not come, with a window longer
    /// than the longest delay that attempt could be due after.
    pub async fn assert_quiet(&self, n: usize, window: Duration, why: &str) {
        let until = Instant::now() + window;
        while Instant::now() < until {
            let got = self.got();
            assert_eq!(
                got.len(),
                n,
                "{why}: a request arrived within {window:?}: {:?}",
                got.last().map(|r| (&r.body, r.at))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `POST /pubsub/subscribe` with `body`, which must create a subscription
/// (201); returns its id.
pub async fn subscribe(server: &TestServer, body: &Value) -> String {
    let response = server
        .http()
        .post(server.at("/pubsub/subscribe"))
        .json(body)
        .send()
        .await
        .expect("subscribe");
    let status = response.status();
    let answer: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "subscribe {body}: {answer}");
    let id = answer["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("sub_"), "{answer}");
    id
}

/// `GET /pubsub/subscriptions/{id}`, which must answer 200.
pub async fn subscription(server: &TestServer, id: &str) -> Value {
    get_json(server, &format!("/pubsub/subscriptions/{id}")).await
}

/// `POST /pubsub/subscriptions/{id}/recover` with `body` as sent; the
/// answer's JSON (`{"queued": n}`).
pub async fn recover(server: &TestServer, id: &str, body: String) -> Value {
    server
        .http()
        .post(server.at(&format!("/pubsub/subscriptions/{id}/recover")))
        .body(body)
        .send()
        .await
        .expect("recover")
        .json()
        .await
        .expect("json")
}

/// `GET /pubsub/subscriptions`: the listed subscriptions.
pub async fn subscriptions(server: &TestServer) -> Vec<Value> {
    get_json(server, "/pubsub/subscriptions").await["subscriptions"]
        .as_array()
        .expect("array")
        .clone()
}

/// The ids of the listed subscriptions, in the order listed.
pub async fn subscription_ids(server: &TestServer) -> Vec<String> {
    subscriptions(server)
        .await
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_string())
        .collect()
}
