//! Read-index batching: concurrent linearizable reads share one
//! read-index round (on the leader a quorum heartbeat round, on a
//! follower one call to the leader) instead of running one each.
//!
//! At most one round is in flight. A read that arrives while none runs
//! starts one; a read that arrives while one runs waits for the next
//! round, which starts as soon as the running one ends and serves every
//! read that arrived meanwhile. So every round starts after each read it
//! answers arrived, which is what makes its index good for them: every
//! write acknowledged before the read was committed before the round
//! confirmed leadership.
//!
//! Invariant: a round is driven by a spawned task, never by a reader, so
//! a reader that goes away (its client disconnected) stalls nobody.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::ClusterError;

/// One round: the read index it found.
type Round = Pin<Box<dyn Future<Output = Result<u64, ClusterError>> + Send>>;

type Answer = oneshot::Sender<Result<u64, ClusterError>>;

#[derive(Default)]
struct Waiting {
    /// Whether a driver task runs rounds.
    running: bool,
    /// The reads the next round answers.
    readers: Vec<Answer>,
}

/// Runs read-index rounds for many readers at once.
pub struct ReadBatch {
    round: Box<dyn Fn() -> Round + Send + Sync>,
    /// Held only to push a reader or take the waiting ones; never across
    /// an await.
    waiting: Mutex<Waiting>,
}

impl ReadBatch {
    /// A batch whose rounds are `round()`.
    pub fn new<F, Fut>(round: F) -> Arc<ReadBatch>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64, ClusterError>> + Send + 'static,
    {
        Arc::new(ReadBatch {
            round: Box::new(move || Box::pin(round())),
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// The read index of a round that started after this call.
    ///
    /// # Errors
    ///
    /// What that round failed with; [`ClusterError::Unavailable`] when
    /// the runtime is shutting down.
    pub async fn index(self: &Arc<Self>) -> Result<u64, ClusterError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut waiting = self.lock();
            waiting.readers.push(answer);
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drive());
        }
        answered
            .await
            .map_err(|_| ClusterError::Unavailable("the read-index round was dropped".into()))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs rounds until no reader waits.
    async fn drive(self: Arc<Self>) {
        loop {
            let readers = {
                let mut waiting = self.lock();
                if waiting.readers.is_empty() {
                    waiting.running = false;
                    return;
                }
                std::mem::take(&mut waiting.readers)
            };
            let index = (self.round)().await;
            for reader in readers {
                // A reader that went away no longer wants its answer.
                let _ = reader.send(index.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// A round that waits for `gate`, then answers how many rounds
    /// started so far.
    fn gated(gate: Arc<Notify>, rounds: Arc<AtomicU64>) -> Arc<ReadBatch> {
        ReadBatch::new(move || {
            let gate = Arc::clone(&gate);
            let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                gate.notified().await;
                Ok(n)
            }
        })
    }

    #[tokio::test]
    async fn readers_during_a_round_share_the_next_one() {
        let gate = Arc::new(Notify::new());
        let rounds = Arc::new(AtomicU64::new(0));
        let batch = gated(Arc::clone(&gate), Arc::clone(&rounds));
        let first = tokio::spawn({
            let batch = Arc::clone(&batch);
            async move { batch.index().await }
        });
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Round 1 runs: these 50 arrived after it started, so they must
        // not get its answer; they share round 2.
        let later: Vec<_> = (0..50)
            .map(|_| {
                let batch = Arc::clone(&batch);
                tokio::spawn(async move { batch.index().await })
            })
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.expect("join"), Ok(1));
        while rounds.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for reader in later {
            assert_eq!(reader.await.expect("join"), Ok(2));
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_readers_and_the_next_one_runs() {
        let rounds = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&rounds);
        let batch = ReadBatch::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    Err(ClusterError::NoLeader)
                } else {
                    Ok(n)
                }
            }
        });
        assert_eq!(batch.index().await, Err(ClusterError::NoLeader));
        assert_eq!(batch.index().await, Ok(2));
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_stalls_nobody() {
        let gate = Arc::new(Notify::new());
        let rounds = Arc::new(AtomicU64::new(0));
        let batch = gated(Arc::clone(&gate), Arc::clone(&rounds));
        let gone = tokio::spawn({
            let batch = Arc::clone(&batch);
            async move { batch.index().await }
        });
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        gate.notify_one();
        while rounds.load(Ordering::SeqCst) == 1 && batch.lock().running {
            tokio::task::yield_now().await;
        }
        let next = tokio::spawn({
            let batch = Arc::clone(&batch);
            async move { batch.index().await }
        });
        while rounds.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(next.await.expect("join"), Ok(2));
    }
}
