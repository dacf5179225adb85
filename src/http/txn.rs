//! `POST /txn` (SPEC §4): the transaction document parsed one operation at a
//! time, so that every error names the operation's place
//! (`success[2]: unknown op "frob"`), and the answer written with each
//! value embedded byte for byte as stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::kv::body_error_over;
use super::whole::whole_number;
use super::{AppState, json_bytes};
use crate::db::{Op, Txn, TxnResult};
use crate::store::{Compare, Condition, OpResult};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody<'a> {
    #[serde(default, borrow)]
    compare: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    success: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    failure: Vec<&'a RawValue>,
}

/// An operation or compare: its fields by name, each value as written.
type Fields<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

pub(super) async fn txn(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let uri = request.uri().clone();
    // The body limit (--max-txn-bytes) travels in the request (admission).
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| body_error_over(e, "--max-txn-bytes"))?;
    let txn = parse(&body)?;
    let done = match &state.cluster {
        Some(cluster) => super::cluster::txn(&state, cluster, &uri, txn).await?,
        None => state.db.txn_async(txn).await?,
    };
    Ok(json_bytes(StatusCode::OK, answer(&done)))
}

/// Parses a whole transaction document.
///
/// # Errors
///
/// `invalid_json` for a body that is not JSON, `invalid_request` naming
/// the operation for anything else.
pub(crate) fn parse(body: &[u8]) -> Result<Txn, ApiError> {
    let shape = |why: &dyn std::fmt::Display| {
        ApiError::InvalidRequest(format!(
            "a transaction is {{\"compare\": [...], \"success\": [...], \"failure\": [...]}}: {why}"
        ))
    };
    let doc: TxnBody<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            shape(&e)
        } else {
            ApiError::InvalidJson(format!("body is not valid JSON: {e}"))
        }
    })?;
    // serde would also take a struct from an array.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(shape(&"the body is not an object"));
    }
    let compare = doc
        .compare
        .iter()
        .enumerate()
        .map(|(i, raw)| condition(raw).map_err(|why| bad(&format!("compare[{i}]"), &why)))
        .collect::<Result<_, _>>()?;
    let branch = |name: &str, ops: &[&RawValue]| -> Result<Vec<Op>, ApiError> {
        ops.iter()
            .enumerate()
            .map(|(i, raw)| op(raw).map_err(|why| bad(&format!("{name}[{i}]"), &why)))
            .collect()
    };
    Ok(Txn {
        compare,
        success: branch("success", &doc.success)?,
        failure: branch("failure", &doc.failure)?,
    })
}

fn bad(at: &str, why: &str) -> ApiError {
    ApiError::InvalidRequest(format!("{at}: {why}"))
}

fn fields(raw: &RawValue) -> Result<Fields<'_>, String> {
    serde_json::from_str(raw.get()).map_err(|_| "must be an object".to_string())
}

fn key(fields: &Fields<'_>) -> Result<String, String> {
    let raw = fields.get("key").ok_or("\"key\" is missing")?;
    serde_json::from_str(raw.get()).map_err(|_| "\"key\" must be a string".into())
}

fn only(fields: &Fields<'_>, allowed: &[&str], what: &str) -> Result<(), String> {
    match fields.keys().find(|name| !allowed.contains(&name.as_ref())) {
        Some(name) => Err(format!("unknown field {name:?} for {what}")),
        None => Ok(()),
    }
}

fn op(raw: &RawValue) -> Result<Op, String> {
    let fields = fields(raw)?;
    let name: String = match fields.get("op") {
        None => return Err("\"op\" is missing (put, delete or get)".into()),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| "\"op\" must be a string (put, delete or get)".to_string())?,
    };
    let key = key(&fields)?;
    match name.as_str() {
        "put" => {
            only(&fields, &["op", "key", "value", "ttl"], "a put")?;
            let value = fields.get("value").ok_or("\"value\" is missing")?;
            let ttl = match fields.get("ttl") {
                None => None,
                Some(raw) => match whole_number(raw.get()) {
                    Some(secs) if secs > 0 => Some(Duration::from_secs(secs)),
                    _ => {
                        return Err(format!(
                            "\"ttl\" must be a positive whole number of seconds; got {}",
                            raw.get()
                        ));
                    }
                },
            };
            Ok(Op::Put {
                key,
                value: Bytes::copy_from_slice(value.get().as_bytes()),
                ttl,
            })
        }
        "delete" => {
            only(&fields, &["op", "key"], "a delete")?;
            Ok(Op::Delete { key })
        }
        "get" => {
            only(&fields, &["op", "key"], "a get")?;
            Ok(Op::Get { key })
        }
        other => Err(format!(
            "unknown op {other:?} (expected put, delete or get)"
        )),
    }
}

fn condition(raw: &RawValue) -> Result<Condition, String> {
    let fields = fields(raw)?;
    let key = key(&fields)?;
    only(&fields, &["key", "version", "exists", "value"], "a compare")?;
    let mut checks = fields.iter().filter(|(name, _)| name.as_ref() != "key");
    let (Some((name, value)), None) = (checks.next(), checks.next()) else {
        return Err(
            "a compare has \"key\" and exactly one of \"version\", \"exists\" or \"value\"".into(),
        );
    };
    let compare = match name.as_ref() {
        "version" => Compare::Version(
            whole_number(value.get())
                .ok_or("\"version\" must be a whole number (0: the key is absent)")?,
        ),
        "exists" => Compare::Exists(
            serde_json::from_str(value.get()).map_err(|_| "\"exists\" must be true or false")?,
        ),
        _ => Compare::Value(Bytes::copy_from_slice(value.get().as_bytes())),
    };
    Ok(Condition {
        key: key.into_boxed_str(),
        compare,
    })
}

/// `{"succeeded":…,"revision":…,"results":[…]}` with each value embedded
/// as the stored bytes.
fn answer(done: &TxnResult) -> Vec<u8> {
    let values: usize = done
        .results
        .iter()
        .map(|r| match r {
            OpResult::Get(Some(e)) => e.value.len(),
            _ => 0,
        })
        .sum();
    let mut out = Vec::with_capacity(64 + values + done.results.len() * 48);
    let num =
        |out: &mut Vec<u8>, n: u64| out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(if done.succeeded {
        b"{\"succeeded\":true,\"revision\":"
    } else {
        b"{\"succeeded\":false,\"revision\":"
    });
    num(&mut out, done.revision);
    out.extend_from_slice(b",\"results\":[");
    for (i, result) in done.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match result {
            OpResult::Put { version, created } => {
                out.extend_from_slice(b"{\"version\":");
                num(&mut out, *version);
                out.extend_from_slice(if *created {
                    b",\"created\":true}"
                } else {
                    b",\"created\":false}"
                });
            }
            OpResult::Delete { version: Some(v) } => {
                out.extend_from_slice(b"{\"deleted\":true,\"version\":");
                num(&mut out, *v);
                out.push(b'}');
            }
            OpResult::Delete { version: None } => {
                out.extend_from_slice(b"{\"deleted\":false,\"version\":null}");
            }
            OpResult::Get(Some(entry)) => {
                out.extend_from_slice(b"{\"found\":true,\"value\":");
                out.extend_from_slice(&entry.value);
                out.extend_from_slice(b",\"version\":");
                num(&mut out, entry.version);
                out.push(b'}');
            }
            OpResult::Get(None) => {
                out.extend_from_slice(b"{\"found\":false,\"value\":null,\"version\":null}");
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(body: &str, expected: &str) {
        match parse(body.as_bytes()) {
            Err(ApiError::InvalidRequest(m)) => assert!(m.contains(expected), "{body}: {m}"),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_operation() {
        check_error(
            r#"{"success":[{"op":"get","key":"a"},{"op":"frob","key":"b"}]}"#,
            "success[1]: unknown op \"frob\"",
        );
        check_error(
            r#"{"failure":[{"op":"put","key":"a"}]}"#,
            "failure[0]: \"value\" is missing",
        );
        check_error(
            r#"{"success":[{"op":"get","key":1}]}"#,
            "success[0]: \"key\" must be a string",
        );
        check_error(
            r#"{"success":[{"op":"get","key":"a","value":1}]}"#,
            "success[0]: unknown field \"value\"",
        );
        check_error(
            r#"{"success":[{"op":"put","key":"a","value":1,"ttl":0}]}"#,
            "success[0]: \"ttl\"",
        );
        check_error(r#"{"compare":[{"key":"a"}]}"#, "compare[0]: a compare has");
        check_error(
            r#"{"compare":[{"key":"a","version":1,"exists":true}]}"#,
            "compare[0]",
        );
        check_error(
            r#"{"compare":[{"key":"a","version":-1}]}"#,
            "compare[0]: \"version\"",
        );
        check_error(
            r#"{"compare":[{"key":"a","version":1.5}]}"#,
            "compare[0]: \"version\"",
        );
        check_error(
            r#"{"success":[{"op":"put","key":"a","value":1,"ttl":2.5}]}"#,
            "success[0]: \"ttl\"",
        );
        check_error(r#"{"success":[5]}"#, "success[0]: must be an object");
        check_error(r#"{"sucess":[]}"#, "sucess");
        check_error(r#"[]"#, "a transaction is");
        assert!(matches!(parse(b"{oops"), Err(ApiError::InvalidJson(_))));
    }

    #[test]
    fn values_are_kept_as_written() {
        let txn = parse(br#"{"success":[{"op":"put","key":"k","value":{"b": 2, "a": [1.50]}}],"compare":[{"key":"k","value":null}]}"#).expect("parses");
        assert!(
            matches!(&txn.success[0], Op::Put { value, .. } if &value[..] == br#"{"b": 2, "a": [1.50]}"#)
        );
        assert!(matches!(&txn.compare[0].compare, Compare::Value(v) if &v[..] == b"null"));
    }
}
