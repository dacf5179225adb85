//! Runs one [`ClientCommand`] against a server and prints its result; the
//! command line and the shell both come through here.

use std::io::{Read, Write};

use super::api::{Api, Condition};
use serde_json::value::RawValue;

use super::args::{ClientCommand, ClusterCommand, MsetArgs, PutArgs};
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
        ClientCommand::Subs(_) => printer.json(&api.subscriptions()?)?,
        ClientCommand::SubRecover(args) => printer.json(&api.subscription_action(
            &args.id,
            "recover",
            &serde_json::json!({"since": args.since}),
        )?)?,
        ClientCommand::SubEnable(args) => {
            printer.json(&api.subscription_action(&args.id, "enable", &serde_json::json!({}))?)?
        }
        ClientCommand::Txn(args) => {
            let body = read_source(
                args.file.as_deref(),
                caller,
                "txn needs a file in the shell",
            )?;
            let answer = api.txn(body)?;
            printer.json(&answer)?;
            if !succeeded(&answer)? {
                return Err(ClientError::Server {
                    status: 412,
                    code: "precondition_failed".into(),
                    message: "a compare did not hold; the failure branch ran".into(),
                });
            }
        }
        ClientCommand::Mget(args) => {
            let gets: Vec<_> = args
                .keys
                .iter()
                .map(|key| serde_json::json!({"op": "get", "key": key}))
                .collect();
            let answer = api.txn(
                serde_json::json!({"success": gets})
                    .to_string()
                    .into_bytes(),
            )?;
            printer.json(&found_values(&args.keys, &answer)?)?;
        }
        ClientCommand::Mset(args) => {
            printer.json(&api.txn(mset_body(args, caller)?)?)?;
        }
        ClientCommand::Import(args) => {
            let body = match args.file.as_str() {
                "-" if caller == Caller::Shell => {
                    return Err(ClientError::Usage(
                        "import needs a file in the shell".into(),
                    ));
                }
                "-" => reqwest::blocking::Body::new(std::io::stdin()),
                path => {
                    let path = path.strip_prefix('@').unwrap_or(path);
                    let file = std::fs::File::open(path)
                        .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}")))?;
                    reqwest::blocking::Body::from(file)
                }
            };
            printer.json(&api.import(body, args.replace)?)?;
        }
        ClientCommand::Export(_) => {
            let mut response = api.export()?;
            let mut out = std::io::stdout().lock();
            // A transport error mid-stream would look like an output error.
            response
                .copy_to(&mut out)
                .map_err(|e| ClientError::Protocol(format!("the export stopped: {e}")))?;
            out.flush()?;
        }
        ClientCommand::Cluster(command) => cluster(api, command, printer)?,
    }
    Ok(())
}

fn succeeded(answer: &[u8]) -> Result<bool, ClientError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        succeeded: bool,
    }
    serde_json::from_slice::<Answer>(answer)
        .map(|a| a.succeeded)
        .map_err(|e| ClientError::Protocol(format!("/txn: {e}")))
}

/// `{"key": value, ...}` of the keys a batch read found, each value as the
/// server sent it.
fn found_values(keys: &[String], answer: &[u8]) -> Result<Vec<u8>, ClientError> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        results: Vec<Found<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Found<'a> {
        found: bool,
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let answer: Answer<'_> =
        serde_json::from_slice(answer).map_err(|e| ClientError::Protocol(format!("/txn: {e}")))?;
    let mut out = b"{".to_vec();
    for (key, found) in keys.iter().zip(&answer.results) {
        if !found.found {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::Value::from(key.as_str()).to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(found.value.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// One transaction of puts; in the shell a value that is not JSON is a
/// string, as for `put`.
fn mset_body(args: &MsetArgs, caller: Caller) -> Result<Vec<u8>, ClientError> {
    if !args.pairs.len().is_multiple_of(2) {
        return Err(ClientError::Usage(
            "mset takes keys and values in pairs: mset K1 V1 K2 V2 ...".into(),
        ));
    }
    let mut puts = Vec::with_capacity(args.pairs.len() / 2);
    for pair in args.pairs.chunks(2) {
        let text = match caller {
            Caller::Shell => String::from_utf8(json_or_string(&pair[1]))
                .map_err(|e| ClientError::Usage(e.to_string()))?,
            Caller::CommandLine => pair[1].clone(),
        };
        let value = RawValue::from_string(text).map_err(|e| {
            ClientError::Usage(format!("the value of {:?} is not JSON: {e}", pair[0]))
        })?;
        // Written as text: a `serde_json::Value` would round big numbers.
        let mut put = format!(
            "{{\"op\":\"put\",\"key\":{},\"value\":{}",
            serde_json::Value::from(pair[0].as_str()),
            value.get()
        );
        if let Some(ttl) = args.ttl {
            put.push_str(&format!(",\"ttl\":{ttl}"));
        }
        put.push('}');
        puts.push(put);
    }
    Ok(format!("{{\"success\":[{}]}}", puts.join(",")).into_bytes())
}

/// The bytes of `source`: a file, or stdin for `-` or nothing (not in the
/// shell, whose stdin carries commands).
fn read_source(
    source: Option<&str>,
    caller: Caller,
    in_shell: &str,
) -> Result<Vec<u8>, ClientError> {
    match source {
        None | Some("-") if caller == Caller::Shell => Err(ClientError::Usage(in_shell.into())),
        None | Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| ClientError::Usage(format!("cannot read standard input: {e}")))?;
            Ok(bytes)
        }
        Some(path) => {
            let path = path.strip_prefix('@').unwrap_or(path);
            std::fs::read(path).map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}")))
        }
    }
}

/// `cluster init|add|remove|status` over the `/cluster` routes.
fn cluster(api: &Api, command: &ClusterCommand, printer: &Printer) -> Result<(), ClientError> {
    let answer = match command {
        ClusterCommand::Status => api.get_path("/cluster/status")?,
        ClusterCommand::Init(args) => {
            let mut members = serde_json::Map::new();
            for member in &args.members {
                let (id, url) = member.split_once('=').ok_or_else(|| {
                    ClientError::Usage(format!("a member is ID=URL; got {member:?}"))
                })?;
                members.insert(id.to_string(), serde_json::json!({ "url": url }));
            }
            api.post_membership("/cluster/init", &serde_json::json!({ "members": members }))?
        }
        ClusterCommand::Add(args) => {
            let learner = serde_json::json!({"id": args.id, "url": args.url});
            let answer = api.post_membership("/cluster/learners", &learner)?;
            if args.learner {
                answer
            } else {
                let mut voters = voters(api)?;
                voters.push(args.id);
                api.post_membership("/cluster/members", &serde_json::json!({ "voters": voters }))?
            }
        }
        ClusterCommand::Remove(args) => {
            let voters: Vec<u64> = voters(api)?.into_iter().filter(|&v| v != args.id).collect();
            api.post_membership("/cluster/members", &serde_json::json!({ "voters": voters }))?
        }
    };
    printer.json(&answer)?;
    Ok(())
}

/// The voting members, from `/cluster/status`.
fn voters(api: &Api) -> Result<Vec<u64>, ClientError> {
    let status: serde_json::Value = serde_json::from_slice(&api.get_path("/cluster/status")?)
        .map_err(|e| ClientError::Protocol(format!("/cluster/status: {e}")))?;
    let members = status["members"]
        .as_object()
        .ok_or_else(|| ClientError::Protocol("/cluster/status has no members".into()))?;
    Ok(members
        .iter()
        .filter(|(_, m)| m["voter"] == true)
        .filter_map(|(id, _)| id.parse().ok())
        .collect())
}

/// The bytes `put` sends: the argument, the file after `@`, or stdin.
fn read_value(args: &PutArgs, caller: Caller) -> Result<Vec<u8>, ClientError> {
    let in_shell = "put needs a value in the shell (JSON, a word, or @file)";
    match args.value.as_deref() {
        None | Some("-") => read_source(None, caller, in_shell),
        Some(arg) if arg.starts_with('@') => read_source(Some(arg), caller, in_shell),
        Some(arg) if caller == Caller::Shell => Ok(json_or_string(arg)),
        Some(arg) => Ok(arg.as_bytes().to_vec()),
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
