//! The client side of the `dododb` executable: the `get`, `put`, `del`,
//! `ls`, `count`, `watch` and `subscribe` commands and the `cli` shell, all
//! talking HTTP to a running server. It never touches the engine: it knows
//! the REST API only, like any other client.
//!
//! HTTP is reqwest's blocking client (its own small runtime thread), since
//! every command is one request after another on the main thread.

mod api;
pub mod args;
mod commands;
mod error;
mod output;
mod shell;
mod watch;

use std::process::ExitCode;

pub use args::{ClientCommand, Connect, Remote};

use api::Api;
use commands::{Caller, execute};
use output::Printer;

/// Runs one command from the command line; errors go to stderr as one
/// line, and the exit code says what happened (0 ok, 1 not found or
/// precondition failed, 2 anything else).
pub fn run(connect: &Connect, command: &ClientCommand) -> ExitCode {
    let result = Api::new(connect)
        .and_then(|api| execute(&api, command, Caller::CommandLine, &Printer::new()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_broken_pipe() {
                eprintln!("dododb: {e}");
            }
            e.exit_code()
        }
    }
}

/// Runs the interactive shell (`dododb cli`) until `exit` or the end of
/// input.
pub fn shell(connect: &Connect) -> ExitCode {
    match Api::new(connect) {
        Ok(api) => shell::run(&api),
        Err(e) => {
            eprintln!("dododb: {e}");
            e.exit_code()
        }
    }
}
