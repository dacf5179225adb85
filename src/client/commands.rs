//! Runs one [`ClientCommand`] against a server and prints its result; the
//! command line and the shell both come through here.

use std::io::Read;

use super::api::{Api, Condition};
use super::args::{ClientCommand, PutArgs};
use super::error::ClientError;
use super::output::Printer;
use super::watch::watch;

/// Who is running a command, which changes how `put` reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `dododb put ...`: the value is sent as given (the server rejects
    /// what is not JSON), and a missing value is read from stdin.
    CommandLine,
    /// The shell: a value that is not JSON is stored as a JSON string, and
    /// stdin carries commands, not values.
    Shell,
}

/// Runs `command` and prints what it returns.
///
/// # Errors
///
/// What the server or the transport reported, or a bad value source; see
/// [`ClientError`].
pub fn execute(
    api: &Api,
    command: &ClientCommand,
    caller: Caller,
    printer: &Printer,
) -> Result<(), ClientError> {
    match command {
        ClientCommand::Get(args) => printer.json(&api.get(&args.key)?)?,
        ClientCommand::Put(args) => {
            let value = read_value(args, caller)?;
            let condition = match (args.if_version, args.if_absent) {
                (Some(v), _) => Some(Condition::Version(v)),
                (None, true) => Some(Condition::Absent),
                (None, false) => None,
            };
            printer.json(&api.put(&args.key, value, args.ttl, condition)?)?;
        }
        ClientCommand::Del(args) => printer.json(&api.delete(&args.key, args.if_version)?)?,
        ClientCommand::Ls(args) => {
            let mut cursor = None;
            loop {
                let page = api.list(&args.prefix, cursor.as_deref())?;
                for key in &page.keys {
                    printer.line(key)?;
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        ClientCommand::Count(args) => {
            printer.line(&api.count(args.prefix.as_deref())?.to_string())?;
        }
        ClientCommand::Watch(args) => watch(api, args, printer)?,
        ClientCommand::Subscribe(args) => {
            let mut body = serde_json::json!({"callback_url": args.callback});
            match (&args.key, &args.prefix) {
                (Some(key), _) => body["key"] = key.as_str().into(),
                (None, Some(prefix)) => body["prefix"] = prefix.as_str().into(),
                (None, None) => {
                    return Err(ClientError::Usage("give --key or --prefix".into()));
                }
            }
            if let Some(secret) = &args.secret {
                body["secret"] = secret.as_str().into();
            }
            printer.json(&api.subscribe(&body)?)?;
        }
    }
    Ok(())
}

/// The bytes `put` sends: the argument, the file after `@`, or stdin.
fn read_value(args: &PutArgs, caller: Caller) -> Result<Vec<u8>, ClientError> {
    match args.value.as_deref() {
        None | Some("-") if caller == Caller::Shell => Err(ClientError::Usage(
            "put needs a value in the shell (JSON, a word, or @file)".into(),
        )),
        None | Some("-") => {
            let mut value = Vec::new();
            std::io::stdin().read_to_end(&mut value).map_err(|e| {
                ClientError::Usage(format!("cannot read the value from stdin: {e}"))
            })?;
            Ok(value)
        }
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}"))),
            None if caller == Caller::Shell => Ok(json_or_string(arg)),
            None => Ok(arg.as_bytes().to_vec()),
        },
    }
}

/// `text` itself when it is one JSON document, else `text` as a JSON
/// string: `Alice` becomes `"Alice"`, while `42` and `{"a": 1}` stay.
pub fn json_or_string(text: &str) -> Vec<u8> {
    // RawValue checks the syntax without converting numbers, so numbers
    // beyond 64 bits count as JSON, as they do on the server.
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(_) => text.as_bytes().to_vec(),
        Err(_) => serde_json::Value::String(text.to_string())
            .to_string()
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let got = json_or_string(input);
        assert_eq!(
            std::str::from_utf8(&got).expect("utf-8"),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn values_that_are_not_json_become_strings() {
        check("Alice", r#""Alice""#);
        check("Alice Johnson", r#""Alice Johnson""#);
        check(r#"say "hi""#, r#""say \"hi\"""#);
        check("", r#""""#);
        check("{oops", r#""{oops""#);
        check("1 2", r#""1 2""#);
    }

    #[test]
    fn json_values_stay_as_they_are() {
        check("42", "42");
        check(
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        );
        check("1e400", "1e400");
        check(r#""quoted""#, r#""quoted""#);
        check(r#"{"a": [1, true, null]}"#, r#"{"a": [1, true, null]}"#);
        check("null", "null");
    }
}
