//! `POST /txn` (SPEC §4): the transaction document read in one pass, each
//! operation's fields kept as raw JSON borrowed from the body and checked
//! afterwards, so that every error names the operation's place
//! (`success[2]: unknown op "frob"`); and the answer written with each
//! value embedded byte for byte as stored.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
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
    compare: Vec<Fields<'a>>,
    #[serde(default, borrow)]
    success: Vec<Fields<'a>>,
    #[serde(default, borrow)]
    failure: Vec<Fields<'a>>,
}

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

/// Parses a whole transaction document in one pass. Keys without escapes
/// and values are borrowed from `body` until they are built into the
/// transaction, values as slices of it (the database copies what it
/// keeps).
///
/// # Errors
///
/// `invalid_json` for a body that is not JSON, `invalid_request` naming
/// the operation for anything else.
pub(crate) fn parse(body: &Bytes) -> Result<Txn, ApiError> {
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
        .map(|(i, fields)| {
            condition(body, fields).map_err(|why| bad(&format!("compare[{i}]"), &why))
        })
        .collect::<Result<_, _>>()?;
    let branch = |name: &str, ops: &[Fields<'_>]| -> Result<Vec<Op>, ApiError> {
        ops.iter()
            .enumerate()
            .map(|(i, fields)| op(body, fields).map_err(|why| bad(&format!("{name}[{i}]"), &why)))
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

/// An operation or compare as written: the fields either may have, each
/// as its raw JSON (a field given twice keeps its last value), and the
/// first of any other fields by name. Read in the body's one pass, so a
/// non-object is recorded rather than refused there, and its error can
/// name its place.
#[derive(Default)]
struct Fields<'a> {
    /// Whether it is a JSON object at all.
    object: bool,
    op: Option<&'a RawValue>,
    key: Option<&'a RawValue>,
    value: Option<&'a RawValue>,
    ttl: Option<&'a RawValue>,
    version: Option<&'a RawValue>,
    exists: Option<&'a RawValue>,
    /// The smallest name of a field that neither has.
    other: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    /// The smallest name among the fields present that are not in
    /// `allowed` (of those an operation or compare may have) and the
    /// other fields.
    fn unknown(&self, allowed: &[&str]) -> Option<&str> {
        let known = [
            ("exists", self.exists),
            ("key", self.key),
            ("op", self.op),
            ("ttl", self.ttl),
            ("value", self.value),
            ("version", self.version),
        ];
        known
            .iter()
            .filter(|(name, raw)| raw.is_some() && !allowed.contains(name))
            .map(|(name, _)| *name)
            .chain(self.other.as_deref())
            .min()
    }

    fn only(&self, allowed: &[&str], what: &str) -> Result<(), String> {
        match self.unknown(allowed) {
            Some(name) => Err(format!("unknown field {name:?} for {what}")),
            None => Ok(()),
        }
    }

    fn key(&self) -> Result<Cow<'a, str>, String> {
        let raw = self.key.ok_or("\"key\" is missing")?;
        string(raw).ok_or_else(|| "\"key\" must be a string".into())
    }
}

/// The text of a JSON string, borrowed when it has no escapes; `None` for
/// any other JSON value. serde_json has checked the string (UTF-8, no raw
/// control characters), so without a backslash its text is what is
/// between the quotes.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(plain) if !plain.contains('\\') => Some(Cow::Borrowed(plain)),
        _ => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldsVisitor(PhantomData))
    }
}

struct FieldsVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
    type Value = Fields<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'a>, A::Error> {
        let mut fields = Fields {
            object: true,
            ..Fields::default()
        };
        while let Some(Name(name)) = map.next_key()? {
            // Every value is read as a raw value, which serde_json checks
            // whole (UTF-8 too), even those of fields that are refused.
            let raw: &'de RawValue = map.next_value()?;
            let slot = match &*name {
                "op" => &mut fields.op,
                "key" => &mut fields.key,
                "value" => &mut fields.value,
                "ttl" => &mut fields.ttl,
                "version" => &mut fields.version,
                "exists" => &mut fields.exists,
                _ => {
                    if fields.other.as_ref().is_none_or(|other| name < *other) {
                        fields.other = Some(name);
                    }
                    continue;
                }
            };
            *slot = Some(raw);
        }
        Ok(fields)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fields<'a>, A::Error> {
        while seq.next_element::<&'de RawValue>()?.is_some() {}
        Ok(Fields::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }

    fn visit_unit<E>(self) -> Result<Fields<'a>, E> {
        Ok(Fields::default())
    }
}

/// A field's name, borrowed from the body unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}

fn op(body: &Bytes, fields: &Fields<'_>) -> Result<Op, String> {
    if !fields.object {
        return Err("must be an object".into());
    }
    let name = match fields.op {
        None => return Err("\"op\" is missing (put, delete or get)".into()),
        Some(raw) => {
            string(raw).ok_or("\"op\" must be a string (put, delete or get)".to_string())?
        }
    };
    let key = fields.key()?.into_owned();
    match &*name {
        "put" => {
            fields.only(&["op", "key", "value", "ttl"], "a put")?;
            let value = fields.value.ok_or("\"value\" is missing")?;
            let ttl = match fields.ttl {
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
                value: body.slice_ref(value.get().as_bytes()),
                ttl,
            })
        }
        "delete" => {
            fields.only(&["op", "key"], "a delete")?;
            Ok(Op::Delete { key })
        }
        "get" => {
            fields.only(&["op", "key"], "a get")?;
            Ok(Op::Get { key })
        }
        other => Err(format!(
            "unknown op {other:?} (expected put, delete or get)"
        )),
    }
}

fn condition(body: &Bytes, fields: &Fields<'_>) -> Result<Condition, String> {
    if !fields.object {
        return Err("must be an object".into());
    }
    let key = fields.key()?;
    fields.only(&["key", "version", "exists", "value"], "a compare")?;
    let checks = [
        ("version", fields.version),
        ("exists", fields.exists),
        ("value", fields.value),
    ];
    let mut given = checks
        .iter()
        .filter_map(|(name, raw)| Some((*name, (*raw)?)));
    let (Some((name, value)), None) = (given.next(), given.next()) else {
        return Err(
            "a compare has \"key\" and exactly one of \"version\", \"exists\" or \"value\"".into(),
        );
    };
    let compare = match name {
        "version" => Compare::Version(
            whole_number(value.get())
                .ok_or("\"version\" must be a whole number (0: the key is absent)")?,
        ),
        "exists" => Compare::Exists(
            serde_json::from_str(value.get()).map_err(|_| "\"exists\" must be true or false")?,
        ),
        _ => Compare::Value(body.slice_ref(value.get().as_bytes())),
    };
    Ok(Condition {
        key: key.into(),
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
        match parse(&Bytes::copy_from_slice(body.as_bytes())) {
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
        assert!(matches!(
            parse(&Bytes::from_static(b"{oops")),
            Err(ApiError::InvalidJson(_))
        ));
    }

    fn parsed(body: &[u8]) -> Result<Txn, ApiError> {
        parse(&Bytes::copy_from_slice(body))
    }

    #[test]
    fn fields_are_read_as_json_reads_them() {
        // Escapes in keys, op names and field names; a field given twice
        // keeps its last value.
        let txn = parsed(
            br#"{"success":[{"o\u0070":"p\u0075t","key":"a\u0062","value":1},
                {"op":"get","key":"\u00e9t\u00e9"},{"op":"delete","key":"x\"y"},
                {"op":"put","key":"c","key":"d","value":1,"value":[ 2 ]},
                {"op":"put","op":"get","key":"e"}]}"#,
        )
        .expect("parses");
        let keys: Vec<&str> = txn
            .success
            .iter()
            .map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key.as_str(),
            })
            .collect();
        assert_eq!(keys, ["ab", "été", "x\"y", "d", "e"]);
        assert!(matches!(&txn.success[3], Op::Put { value, .. } if &value[..] == b"[ 2 ]"));
        assert!(matches!(&txn.success[4], Op::Get { .. }));
        check_error(
            r#"{"success":[{"op":"get","key":"a","zz":1,"exists":true,"version":1,"aa":2}]}"#,
            "success[0]: unknown field \"aa\" for a get",
        );
        check_error(
            r#"{"success":[{"op":"get","key":"a","zz":1,"exists":true}]}"#,
            "success[0]: unknown field \"exists\" for a get",
        );
        check_error(
            r#"{"compare":[{"key":"a","op":"get","version":1}]}"#,
            "compare[0]: unknown field \"op\" for a compare",
        );
        check_error(
            r#"{"success":[{"op":"get","key":"a","op":1}]}"#,
            "success[0]: \"op\" must be a string",
        );
        check_error(
            r#"{"success":[{"op":"put"}]}"#,
            "success[0]: \"key\" is missing",
        );
        check_error(
            r#"{"success":[[1,{"a":2}]]}"#,
            "success[0]: must be an object",
        );
        check_error(r#"{"failure":[null]}"#, "failure[0]: must be an object");
        check_error(r#"{"compare":["k"]}"#, "compare[0]: must be an object");
        assert!(matches!(
            parsed(br#"{"compare":[{"key":"a","version":1,"version":2}]}"#),
            Ok(Txn { compare, .. }) if compare[0].compare == Compare::Version(2)
        ));
    }

    #[test]
    fn bad_json_anywhere_is_invalid_json() {
        for body in [
            &b"{\"success\":[{\"op\":\"get\",\"key\":\"a\",\"zz\":\"\xff\"}]}"[..],
            b"{\"success\":[[\"\xff\"]]}",
            b"{\"success\":[\"\xff\"]}",
            b"{\"success\":[{\"op\":\"get\",\"key\":\"\xff\"}]}",
            b"{\"success\":[{\"op\":\"get\",\"key\":\"tab\there\"}]}",
            b"{\"success\":[{\"op\":\"put\",\"key\":\"a\",\"value\":01}]}",
            b"{\"success\":[{\"op\":\"put\",\"key\":\"a\",\"value\":1}],}",
        ] {
            let got = parsed(body);
            assert!(
                matches!(got, Err(ApiError::InvalidJson(_))),
                "{}: {got:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn values_are_kept_as_written() {
        let body = Bytes::from_static(
            br#"{"success":[{"op":"put","key":"k","value":{"b": 2, "a": [1.50]}}],"compare":[{"key":"k","value":null}]}"#,
        );
        let txn = parse(&body).expect("parses");
        let Op::Put { value, .. } = &txn.success[0] else {
            panic!("{txn:?}")
        };
        assert_eq!(&value[..], br#"{"b": 2, "a": [1.50]}"#);
        // Not copied: the database copies what it keeps.
        assert!(body.as_ptr_range().contains(&value.as_ptr()));
        assert!(matches!(&txn.compare[0].compare, Compare::Value(v) if &v[..] == b"null"));
    }
}
