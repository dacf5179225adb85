//! Waiting for what a server does in the background (a delivery, an
//! expiry, a count that settles): poll a check until it holds, failing
//! after a deadline. Never a sleep as a sync point, never a timing assert.

use std::time::{Duration, Instant};

/// How long a condition may take before the test fails: only a hang
/// guard, generous for a loaded two-core machine (thousands of webhook
/// deliveries after a receiver comes back take the longest).
pub const POLL_DEADLINE: Duration = Duration::from_secs(120);

/// Calls `check` every 20 ms until it returns `Some`, and returns that;
/// panics naming `what` if [`POLL_DEADLINE`] passes first.
pub async fn poll_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after {POLL_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
