//! Write batching on the leader: the writes of concurrent clients share
//! log entries, so they share the leader's fsync and its AppendEntries
//! calls.
//!
//! openraft 0.9 appends each proposal on its own, and its core task waits
//! for that append to be flushed before it takes the next proposal. One
//! proposal per write would cost one leader fsync per write, one after
//! another. Here writes queue instead; one driver task proposes everything
//! queued as one entry ([`Command::Batch`]) and proposes again only once
//! the log has flushed an append since (or the proposal was answered), so
//! the writes that arrive during one fsync go together in the next.
//!
//! Invariant: a write's answer is its own command's reply, taken from the
//! batch's replies by position, and only once the batch was committed and
//! applied; a proposal that fails fails every write in it, none of which
//! was acknowledged.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::types::{Command, Raft, Reply};
use super::{ClusterError, client_write_error};

/// The most writes one entry carries.
const MAX_WRITES: usize = 1024;

/// An entry takes no more writes once it holds this many bytes of keys
/// and values (one write may be larger), so that an AppendEntries call of
/// openraft's up to 300 entries stays well inside the Raft RPC body limit.
const MAX_BYTES: usize = 256 << 10;

/// How long the driver waits for the log before it proposes anyway: only
/// a safety net for a flush it missed; it is never needed for
/// correctness.
const GATE_LIMIT: Duration = Duration::from_millis(500);

type Answer = oneshot::Sender<Result<Reply, ClusterError>>;

struct Queued {
    command: Command,
    answer: Answer,
}

/// The queue of writes waiting to be proposed.
pub(super) struct WriteBatch {
    queue: mpsc::UnboundedSender<Queued>,
}

impl WriteBatch {
    /// Starts the driver that proposes through `raft`; `flushed` counts the
    /// log's flushed appends. The driver ends when the batch is dropped.
    pub(super) fn start(raft: Raft, flushed: watch::Receiver<u64>) -> WriteBatch {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(drive(raft, queued, flushed));
        WriteBatch { queue }
    }

    /// Proposes `command` in the next entry; its reply once that entry is
    /// committed and applied here.
    ///
    /// # Errors
    ///
    /// As [`super::Cluster::write`].
    pub(super) async fn write(&self, command: Command) -> Result<Reply, ClusterError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { command, answer })
            .map_err(|_| ClusterError::Unavailable("the cluster is stopping".into()))?;
        answered
            .await
            .map_err(|_| ClusterError::Unavailable("the cluster is stopping".into()))?
    }
}

/// Takes the next batch: waits for one write, then takes what else is
/// queued, within the limits. `None` once the queue is closed.
async fn next_batch(queued: &mut mpsc::UnboundedReceiver<Queued>) -> Option<Vec<Queued>> {
    let first = queued.recv().await?;
    let mut bytes = first.command.weight();
    let mut batch = vec![first];
    while batch.len() < MAX_WRITES && bytes < MAX_BYTES {
        let Ok(next) = queued.try_recv() else { break };
        bytes += next.command.weight();
        batch.push(next);
    }
    Some(batch)
}

async fn drive(
    raft: Raft,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    mut flushed: watch::Receiver<u64>,
) {
    while let Some(batch) = next_batch(&mut queued).await {
        let (mut commands, answers): (Vec<Command>, Vec<Answer>) =
            batch.into_iter().map(|q| (q.command, q.answer)).unzip();
        let command = if commands.len() == 1 {
            commands.remove(0)
        } else {
            Command::Batch(commands)
        };
        let seen = *flushed.borrow_and_update();
        let writes = answers.len();
        let proposed = Instant::now();
        let responder = match raft.client_write_ff(command).await {
            Ok(responder) => responder,
            Err(fatal) => {
                let e = ClusterError::Unavailable(fatal.to_string());
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
                continue;
            }
        };
        let (done, answered) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let result = match responder.await {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(e)) => Err(client_write_error(openraft::error::RaftError::APIError(e))),
                Err(_) => Err(ClusterError::Unavailable(
                    "Raft stopped before the write was committed".into(),
                )),
            };
            hand_out(result, answers);
            drop(done);
            tracing::debug!(
                target: "dododb::raft::timing",
                writes,
                answered_us = proposed.elapsed().as_micros() as u64,
                "batch answered"
            );
        });
        // The core task now appends this entry and waits for its flush;
        // the writes that arrive meanwhile make the next entry.
        let _ = tokio::time::timeout(GATE_LIMIT, async {
            tokio::select! {
                _ = flushed.wait_for(|n| *n > seen) => {}
                _ = answered => {}
            }
        })
        .await;
        tracing::debug!(
            target: "dododb::raft::timing",
            writes,
            gate_us = proposed.elapsed().as_micros() as u64,
            "batch proposed"
        );
    }
}

/// Gives each write its reply from `result`, the entry's outcome.
fn hand_out(result: Result<Reply, ClusterError>, answers: Vec<Answer>) {
    match result {
        Ok(reply) if answers.len() == 1 => {
            if let Some(answer) = answers.into_iter().next() {
                let _ = answer.send(Ok(reply));
            }
        }
        Ok(Reply::Batch(replies)) if replies.len() == answers.len() => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(Ok(reply));
            }
        }
        Ok(other) => {
            // Applying a batch gives one reply per write; anything else is
            // a bug, and no write of it is acknowledged.
            let e = ClusterError::Unavailable(format!(
                "a batch of {} writes was answered with {other:?}",
                answers.len()
            ));
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Condition;

    fn put(key: &str, value_bytes: usize) -> Command {
        Command::Put {
            key: key.into(),
            value: "1".repeat(value_bytes),
            expires_at_ms: 0,
            condition: Condition::None,
            at_ms: 0,
        }
    }

    type Answered = oneshot::Receiver<Result<Reply, ClusterError>>;

    fn queue(queue: &mpsc::UnboundedSender<Queued>, command: Command) -> Answered {
        let (answer, answered) = oneshot::channel();
        queue.send(Queued { command, answer }).expect("queue open");
        answered
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_within_its_limits() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _small: Vec<Answered> = (0..MAX_WRITES + 6)
            .map(|i| queue(&tx, put(&format!("k{i}"), 1)))
            .collect();
        let _big = queue(&tx, put("big", MAX_BYTES));
        let _after = queue(&tx, put("after", 1));
        assert_eq!(next_batch(&mut rx).await.map(|b| b.len()), Some(MAX_WRITES));
        // The rest of the small ones and the big one, which fills the
        // entry: the next write waits for another.
        assert_eq!(next_batch(&mut rx).await.map(|b| b.len()), Some(7));
        let last = next_batch(&mut rx).await.expect("a batch");
        assert_eq!(last.len(), 1);
        assert!(matches!(&last[0].command, Command::Put { key, .. } if key == "after"));
        drop(tx);
        assert!(next_batch(&mut rx).await.is_none());
    }

    fn answers(n: usize) -> (Vec<Answer>, Vec<Answered>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    fn take(answered: Vec<Answered>) -> Vec<Result<Reply, ClusterError>> {
        answered
            .into_iter()
            .map(|mut a| a.try_recv().expect("answered"))
            .collect()
    }

    #[test]
    fn each_write_gets_its_own_reply_by_position() {
        let (senders, answered) = answers(3);
        let replies = vec![
            Reply::Written {
                version: 7,
                created: true,
            },
            Reply::PreconditionFailed { current: Some(7) },
            Reply::NotFound,
        ];
        hand_out(Ok(Reply::Batch(replies.clone())), senders);
        assert_eq!(
            take(answered),
            replies.into_iter().map(Ok).collect::<Vec<_>>()
        );

        let (senders, answered) = answers(1);
        hand_out(Ok(Reply::Cleared { n: 2 }), senders);
        assert_eq!(take(answered), vec![Ok(Reply::Cleared { n: 2 })]);
    }

    #[test]
    fn a_failed_or_misshapen_batch_acknowledges_no_write() {
        let (senders, answered) = answers(2);
        hand_out(Err(ClusterError::NoLeader), senders);
        assert_eq!(
            take(answered),
            vec![Err(ClusterError::NoLeader), Err(ClusterError::NoLeader)]
        );

        let (senders, answered) = answers(2);
        hand_out(Ok(Reply::Batch(vec![Reply::Done])), senders);
        assert!(
            take(answered)
                .iter()
                .all(|r| matches!(r, Err(ClusterError::Unavailable(_))))
        );
    }
}
