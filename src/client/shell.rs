//! `dododb cli`: an interactive shell over the client commands. At a
//! terminal it edits lines with rustyline (history in
//! `~/.dododb_history`, or `$DODODB_HISTORY`; tab completes command names);
//! otherwise it reads one command a line from stdin, printing no prompt,
//! so scripts and tests can drive it. Words split like a POSIX shell's:
//! quotes group them, except that JSON typed after `put KEY` is taken as
//! typed.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Context, Editor, Helper, Highlighter, Hinter, Validator};

use super::api::Api;
use super::args::ClientCommand;
use super::commands::{Caller, execute};
use super::output::Printer;

const PROMPT: &str = "dododb> ";

// One line of the shell, parsed by clap like the command line is.
#[derive(Parser, Debug)]
#[command(
    multicall = true,
    name = "dododb",
    about = "Commands of the DodoDB shell (`help COMMAND` for one in detail). A value that is \
             not JSON is stored as a JSON string; quote words to keep them together."
)]
struct ShellLine {
    #[command(subcommand)]
    command: ShellCommand,
}

#[derive(Subcommand, Debug)]
enum ShellCommand {
    #[command(flatten)]
    Client(ClientCommand),
    /// Leave the shell.
    #[command(alias = "quit")]
    Exit,
}

/// Whether the shell goes on after a line.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

/// Runs the shell on `api` until `exit` or the end of input.
pub fn run(api: &Api) -> ExitCode {
    let result = if std::io::stdin().is_terminal() {
        interactive(api)
    } else {
        scripted(api)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dododb: {e}");
            ExitCode::from(2)
        }
    }
}

/// Lines from a pipe or a file: no prompt, no history.
fn scripted(api: &Api) -> Result<(), ReadlineError> {
    for line in std::io::stdin().lock().lines() {
        if handle(api, &line?) == Flow::Exit {
            break;
        }
    }
    Ok(())
}

/// Lines from a person, edited by rustyline.
fn interactive(api: &Api) -> Result<(), ReadlineError> {
    let mut editor: Editor<ShellHelper, DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(ShellHelper {
        names: command_names(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        // A first run has no history yet.
        let _ = editor.load_history(path);
    }
    println!("DodoDB shell: type `help` for the commands, `exit` or Ctrl-D to leave.");
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if handle(api, &line) == Flow::Exit {
                    break;
                }
            }
            // Ctrl-C drops the line being typed, as in bash.
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    if let Some(path) = &history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!("dododb: cannot save the history to {}: {e}", path.display());
    }
    Ok(())
}

/// `$DODODB_HISTORY`, else `.dododb_history` in the home directory.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DODODB_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::home_dir().map(|home| home.join(".dododb_history"))
}

/// Runs one line; errors are printed and the shell goes on.
fn handle(api: &Api, line: &str) -> Flow {
    let words = match shell_words::split(line) {
        Ok(words) => words,
        Err(e) => {
            eprintln!("error: {e}");
            return Flow::Continue;
        }
    };
    if words.is_empty() || words[0].starts_with('#') {
        return Flow::Continue;
    }
    let words = keep_raw_json(line, words);
    let command = match ShellLine::try_parse_from(&words) {
        Ok(parsed) => parsed.command,
        Err(e) => {
            // `help` and `help put` land here too, as clap's "errors".
            let _ = e.print();
            return Flow::Continue;
        }
    };
    match command {
        ShellCommand::Exit => Flow::Exit,
        ShellCommand::Client(command) => {
            if let Err(e) = execute(api, &command, Caller::Shell, &Printer::new())
                && !e.is_broken_pipe()
            {
                eprintln!("error: {e}");
            }
            Flow::Continue
        }
    }
}

/// Word splitting eats the double quotes inside JSON (`put k {"a": 1}`
/// would arrive as `{a:` and `1}`), so when the text after `put KEY` is
/// one JSON document as typed, that text is the value. `put k "42"`
/// stores the string "42" this way, while `put k 42` stores the number.
fn keep_raw_json(line: &str, words: Vec<String>) -> Vec<String> {
    let is_put = ShellLine::command()
        .find_subcommand(&words[0])
        .is_some_and(|sub| sub.get_name() == "put");
    // A flag in the key's place means this is not the plain shape.
    if !is_put || words.len() < 3 || words[1].starts_with('-') {
        return words;
    }
    let raw = after_words(line, 2);
    if serde_json::from_str::<&serde_json::value::RawValue>(raw).is_err() {
        return words;
    }
    let mut words = words;
    words.truncate(2);
    words.push(raw.to_string());
    words
}

/// `line` after its first `n` shell words (quotes and backslashes
/// respected), trimmed.
fn after_words(line: &str, n: usize) -> &str {
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start();
        let mut quote = None;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            match (quote, c) {
                (None | Some('"'), '\\') => escaped = true,
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    rest.trim()
}

/// Every word that starts a command: names and aliases, plus `help`.
fn command_names() -> Vec<String> {
    let command = ShellLine::command();
    let mut names: Vec<String> = command
        .get_subcommands()
        .flat_map(|sub| std::iter::once(sub.get_name()).chain(sub.get_all_aliases()))
        .map(str::to_string)
        .collect();
    if !names.iter().any(|n| n == "help") {
        names.push("help".into());
    }
    names.sort();
    names
}

/// The completions of the text before the cursor: command names while the
/// first word is being typed, nothing after it.
fn complete_command(names: &[String], before: &str) -> (usize, Vec<String>) {
    let start = before.len() - before.trim_start().len();
    let word = &before[start..];
    if word.contains(char::is_whitespace) {
        return (before.len(), Vec::new());
    }
    let matches = names
        .iter()
        .filter(|name| name.starts_with(word))
        .cloned()
        .collect();
    (start, matches)
}

#[derive(Helper, Hinter, Highlighter, Validator)]
struct ShellHelper {
    names: Vec<String>,
}

impl Completer for ShellHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        Ok(complete_command(&self.names, before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(before: &str, expected_start: usize, expected: &[&str]) {
        let (start, got) = complete_command(&command_names(), before);
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(
            (start, got.as_slice()),
            (expected_start, expected),
            "{before:?}"
        );
    }

    #[test]
    fn completes_command_names() {
        check("g", 0, &["get"]);
        check(
            "  s",
            2,
            &["set", "sub-enable", "sub-recover", "subs", "subscribe"],
        );
        check("del", 0, &["del", "delete"]);
        check("e", 0, &["exit", "export"]);
        check("he", 0, &["help"]);
        check("get us", 6, &[]);
        check("zz", 0, &[]);
    }

    #[test]
    fn raw_text_after_words() {
        assert_eq!(after_words(r#"put k {"a": [1, 2]}"#, 2), r#"{"a": [1, 2]}"#);
        assert_eq!(after_words(r#"set "a key" "x y" "#, 2), r#""x y""#);
        assert_eq!(after_words(r#"set 'it''s' 1"#, 2), "1");
        assert_eq!(after_words(r"set a\ b 2", 2), "2");
        assert_eq!(after_words("get", 2), "");
    }

    fn value_of(line: &str) -> Option<String> {
        let words = keep_raw_json(line, shell_words::split(line).expect("words"));
        let parsed = ShellLine::try_parse_from(&words).expect("parses");
        match parsed.command {
            ShellCommand::Client(ClientCommand::Put(args)) => args.value,
            _ => None,
        }
    }

    #[test]
    fn json_typed_after_the_key_is_kept_as_typed() {
        let value = |line: &str| value_of(line).expect("a value");
        assert_eq!(value(r#"put k {"a": [1, 2]}"#), r#"{"a": [1, 2]}"#);
        assert_eq!(value(r#"set k "42""#), r#""42""#);
        assert_eq!(value("set k 42"), "42");
        assert_eq!(value(r#"set user:1 "Alice Johnson""#), r#""Alice Johnson""#);
        // Not JSON as typed: the shell word, which `put` then stores as a
        // string.
        assert_eq!(value("set k Alice"), "Alice");
        assert_eq!(value(r#"set k "a" --ttl 5"#), "a");
        assert_eq!(value(r#"set k '{"a": 1}'"#), r#"{"a": 1}"#);
    }
}
