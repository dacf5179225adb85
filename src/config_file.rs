//! `--config FILE` (or `DODODB_CONFIG`): a TOML file with the settings of
//! `serve`, merged under the command line so that flags beat environment
//! variables, which beat the file, which beats the defaults.
//!
//! The file is not a second schema to keep in step with the flags: each key
//! must name a `serve` flag (`snapshot_interval` for `--snapshot-interval`),
//! and its value goes through that flag's own clap parser, so the file takes
//! exactly what the command line takes and is refused with the same reasons.
//! A value is used only where clap says the flag's value came from its
//! default (or it has none): an explicit flag or environment variable wins.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

/// Why the command line, with its config file, is unusable.
#[derive(Debug)]
pub enum ParseFailure {
    /// A bad flag (or `--help` / `--version`, which clap reports this way).
    Cli(clap::Error),
    /// The config file is missing, not TOML, or has a bad key or value:
    /// one line that names the file and the key.
    File(String),
}

impl From<clap::Error> for ParseFailure {
    fn from(e: clap::Error) -> Self {
        ParseFailure::Cli(e)
    }
}

/// Parses the process's command line and merges its config file, if any.
///
/// # Errors
///
/// [`ParseFailure`] saying what is wrong.
pub fn parse() -> Result<Cli, ParseFailure> {
    parse_from(std::env::args_os().collect())
}

fn parse_from(mut argv: Vec<OsString>) -> Result<Cli, ParseFailure> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // The flags of the subcommand that runs: `serve`'s, or the top-level
    // ones when no subcommand is named (`serve` is the default).
    let (serve_matches, path) = match (&cli.command, matches.subcommand()) {
        (None, _) => (&matches, cli.serve.config.as_deref()),
        (Some(Command::Serve(args)), Some((_, sub))) => (sub, args.config.as_deref()),
        _ => return Ok(cli),
    };
    let Some(path) = path else {
        return Ok(cli);
    };
    let extra = file_flags(path, serve_matches)?;
    if extra.is_empty() {
        return Ok(cli);
    }
    // Appended flags belong to whichever command the line ended in, which
    // is the one that runs.
    argv.extend(extra);
    let matches = Cli::command().try_get_matches_from(&argv)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The flags (`--name=value`) that the file at `path` adds: one per key
/// whose flag was neither given nor set through the environment.
fn file_flags(path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, ParseFailure> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ParseFailure::File(format!("cannot read config file {name}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map_or(1, |span| text[..span.start].matches('\n').count() + 1);
        ParseFailure::File(format!(
            "config file {name}, line {line}: {}",
            e.message().trim()
        ))
    })?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| ParseFailure::File("internal: no serve subcommand".into()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let bad = |why: String| ParseFailure::File(format!("config file {name}: `{key}` {why}"));
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && key != "config")
            .ok_or_else(|| bad("is not a setting (see dododb serve --help)".into()))?;
        let long = arg.get_long().unwrap_or(key.as_str());
        let flag = if arg.get_action().takes_values() {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                _ => return Err(bad("must be a string or a whole number".into())),
            };
            format!("--{long}={text}")
        } else {
            match value {
                toml::Value::Boolean(true) => format!("--{long}"),
                toml::Value::Boolean(false) => continue,
                _ => return Err(bad("must be true or false".into())),
            }
        };
        // The value alone through the flag's own parser, so a bad one is
        // reported against its key rather than as a made-up flag.
        if let Err(e) = Cli::command().try_get_matches_from(["dododb", "serve", flag.as_str()]) {
            let why = std::error::Error::source(&e)
                .map_or_else(|| first_line(&e.to_string()), |s| s.to_string());
            return Err(bad(format!("has a bad value: {why}")));
        }
        if matches!(
            given.value_source(arg.get_id().as_str()),
            None | Some(ValueSource::DefaultValue)
        ) {
            flags.push(OsString::from(flag));
        }
    }
    Ok(flags)
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text);
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(file: &str, args: &[&str]) -> Result<Cli, ParseFailure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dododb.toml");
        std::fs::write(&path, file).expect("write");
        let mut argv: Vec<OsString> = vec!["dododb".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.into_os_string());
        parse_from(argv)
    }

    fn file_error(file: &str) -> String {
        match parse_with(file, &[]) {
            Err(ParseFailure::File(line)) => line,
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn file_values_fill_what_flags_leave_at_default() {
        let cli = parse_with(
            "snapshot_interval = 7\nfsync = \"never\"\nin_memory = true\nmax_key_bytes = 64\n",
            &["--max-key-bytes", "32"],
        )
        .expect("parses");
        assert_eq!(cli.serve.snapshot_interval, 7);
        assert_eq!(cli.serve.fsync, dododb::FsyncPolicy::Never);
        assert!(cli.serve.in_memory);
        assert_eq!(cli.serve.max_key_bytes, 32, "the flag beats the file");
    }

    #[test]
    fn the_serve_subcommand_reads_the_file_too() {
        let cli = parse_with("request_timeout_secs = 9\n", &["serve"]).expect("parses");
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.request_timeout_secs, 9),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            (
                "no_such_setting = 1\n",
                "`no_such_setting` is not a setting",
            ),
            ("snapshot_retain = 0\n", "`snapshot_retain` has a bad value"),
            ("fsync = \"sometimes\"\n", "`fsync` has a bad value"),
            ("in_memory = \"yes\"\n", "`in_memory` must be true or false"),
            (
                "listen = [1]\n",
                "`listen` must be a string or a whole number",
            ),
            ("config = \"other.toml\"\n", "`config` is not a setting"),
            ("listen = \n", "line 1"),
        ];
        for (file, needle) in cases {
            let line = file_error(file);
            assert!(line.contains(needle), "{file:?}: {line}");
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
    }
}
