//! What can go wrong in a client command, and the exit code each case
//! gives: 1 for "not found" and "precondition failed", 2 for the rest.

use std::process::ExitCode;

/// A client command's failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with its error envelope (or at least a status).
    #[error("{code}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The SPEC's error code, like `not_found`.
        code: String,
        /// The server's human text.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server at {url}: {reason}")]
    Connect {
        /// The URL asked for.
        url: String,
        /// The transport's error with its causes (reqwest's own text
        /// alone does not say "connection refused").
        reason: String,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The command itself is wrong (a bad URL, an unreadable value file).
    #[error("{0}")]
    Usage(String),
    /// Standard output refused the result.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl ClientError {
    /// A transport failure on `url`, with the whole chain of causes.
    pub fn connect(url: &str, error: &reqwest::Error) -> ClientError {
        let mut reason = error.to_string();
        let mut cause = std::error::Error::source(error);
        while let Some(e) = cause {
            reason.push_str(": ");
            reason.push_str(&e.to_string());
            cause = e.source();
        }
        ClientError::Connect {
            url: url.to_string(),
            reason,
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ClientError::Server {
                status: 404 | 412, ..
            } => ExitCode::from(1),
            // `dododb ls | head` closing the pipe early is not a failure.
            ClientError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                ExitCode::SUCCESS
            }
            _ => ExitCode::from(2),
        }
    }

    /// Whether this is the output pipe closing, which ends a command
    /// quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
