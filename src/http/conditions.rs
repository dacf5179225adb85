//! `If-Match` and `If-None-Match` on writes (SPEC §3, RFC 9110 §13.1.1,
//! §13.1.2), read into the store's [`Precondition`] and evaluated in the
//! order of RFC 9110 §13.2.2: `If-Match` first, then `If-None-Match`.
//!
//! Only parsing happens here; whether a condition holds is decided by the
//! store under the key's lock, so a check and its write cannot be split by
//! another writer.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::ApiError;
use crate::store::Precondition;

/// Which conditional headers a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conditions {
    /// `If-Match` and `If-None-Match: *` (PUT).
    MatchAndNoneMatch,
    /// `If-Match` only (DELETE).
    MatchOnly,
}

/// The condition `headers` put on a write, `None` without one.
///
/// # Errors
///
/// `invalid_request` for a header that is not `*` or a list of version
/// ETags (an `If-None-Match` other than `*`, or on a route without it).
///
/// `If-Match` with `If-None-Match: *` is a condition that never holds: the
/// first needs the key to exist and the second needs it absent, so
/// whatever the key's state, one of them fails (`412`). It goes to the
/// store like any other, so the body is still checked first.
pub(super) fn precondition(
    headers: &HeaderMap,
    conditions: Conditions,
) -> Result<Option<Precondition>, ApiError> {
    let if_match = if_match(headers)?;
    let if_none_match = if_none_match(headers, conditions)?;
    match (if_match, if_none_match) {
        (Some(_), true) => Ok(Some(Precondition::IfVersionIn(Box::new([])))),
        (Some(pre), false) => Ok(Some(pre)),
        (None, true) => Ok(Some(Precondition::IfAbsent)),
        (None, false) => Ok(None),
    }
}

/// One field line of `name`, without the whitespace around it.
fn line<'h>(value: &'h HeaderValue, name: &HeaderName) -> Result<&'h str, ApiError> {
    value
        .to_str()
        .map(|text| text.trim_matches([' ', '\t']))
        .map_err(|_| ApiError::InvalidRequest(format!("{name} is not ASCII")))
}

/// The elements of a list: comma-separated, with the optional whitespace
/// and empty elements RFC 9110 §5.6.1 allows.
fn elements(line: &str) -> impl Iterator<Item = &str> {
    line.split(',')
        .map(|e| e.trim_matches([' ', '\t']))
        .filter(|e| !e.is_empty())
}

/// `If-Match = "*" / #entity-tag`: `*` stands alone, never in a list.
fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let bad = |got: &str| {
        ApiError::InvalidRequest(format!(
            "If-Match must be * or a list of versions in quotes, like \"42\" or \"3\", W/\"5\"; \
             got {got:?}"
        ))
    };
    let mut n_lines = 0_usize;
    let mut any = false;
    let mut n_tags = 0_usize;
    // The usual single tag needs no list.
    let mut first: Option<u64> = None;
    let mut more: Vec<u64> = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        let line = line(value, &header::IF_MATCH)?;
        n_lines += 1;
        if line == "*" {
            any = true;
            continue;
        }
        for element in elements(line) {
            n_tags += 1;
            match version_tag(element) {
                None => return Err(bad(element)),
                Some(None) => {}
                Some(Some(version)) if first.is_none() => first = Some(version),
                Some(Some(version)) => more.push(version),
            }
        }
    }
    if n_lines == 0 {
        return Ok(None);
    }
    if !any && n_tags == 0 {
        return Err(bad(""));
    }
    if any {
        return if n_lines == 1 {
            Ok(Some(Precondition::IfExists))
        } else {
            Err(bad("* together with other tags"))
        };
    }
    Ok(Some(match (first, more.is_empty()) {
        (Some(version), true) => Precondition::IfVersion(version),
        (first, _) => Precondition::IfVersionIn(first.into_iter().chain(more).collect()),
    }))
}

/// Whether `If-None-Match: *` is present; the only form taken.
fn if_none_match(headers: &HeaderMap, conditions: Conditions) -> Result<bool, ApiError> {
    let mut lines = headers.get_all(header::IF_NONE_MATCH).iter();
    let Some(first) = lines.next() else {
        return Ok(false);
    };
    let got = line(first, &header::IF_NONE_MATCH)?;
    if conditions == Conditions::MatchAndNoneMatch && got == "*" && lines.next().is_none() {
        return Ok(true);
    }
    Err(ApiError::InvalidRequest(match conditions {
        Conditions::MatchAndNoneMatch => {
            format!("only If-None-Match: * is supported; got {got:?}")
        }
        Conditions::MatchOnly => {
            format!("If-None-Match is taken only on PUT (as *); got {got:?}")
        }
    }))
}

/// The version an ETag (`"42"`, or weak `W/"42"`) names: `None` when it is
/// not such a tag, `Some(None)` for digits no version is written as
/// (leading zeros, beyond `u64`), which match nothing.
///
/// Weak tags match like strong ones (SPEC §3): a version names one value
/// exactly, and proxies that compress answers weaken the tags they pass.
fn version_tag(element: &str) -> Option<Option<u64>> {
    let opaque = element.strip_prefix("W/").unwrap_or(element);
    let digits = opaque.strip_prefix('"')?.strip_suffix('"')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let canonical = digits.len() == 1 || !digits.starts_with('0');
    Some(digits.parse().ok().filter(|_| canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a request with these headers asks: `Ok(None)` for no
    /// condition, `Err(status)` for a refusal.
    fn check(
        if_match: &[&str],
        if_none_match: &[&str],
        expected: Result<Option<Precondition>, u16>,
    ) {
        for conditions in [Conditions::MatchAndNoneMatch, Conditions::MatchOnly] {
            let mut headers = HeaderMap::new();
            for value in if_match {
                headers.append(
                    header::IF_MATCH,
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            for value in if_none_match {
                headers.append(
                    header::IF_NONE_MATCH,
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            let got = precondition(&headers, conditions).map_err(|e| e.status().as_u16());
            let expected = if conditions == Conditions::MatchOnly && !if_none_match.is_empty() {
                // DELETE takes no If-None-Match at all.
                Err(400)
            } else {
                expected.clone()
            };
            assert_eq!(
                got, expected,
                "If-Match {if_match:?} If-None-Match {if_none_match:?} on {conditions:?}"
            );
        }
    }

    fn versions(list: &[u64]) -> Result<Option<Precondition>, u16> {
        Ok(Some(Precondition::IfVersionIn(list.into())))
    }

    #[test]
    fn if_match_takes_a_star_or_a_list_of_version_tags() {
        check(&[], &[], Ok(None));
        check(&["*"], &[], Ok(Some(Precondition::IfExists)));
        check(&["\"3\""], &[], Ok(Some(Precondition::IfVersion(3))));
        check(&["W/\"3\""], &[], Ok(Some(Precondition::IfVersion(3))));
        check(&["\"3\", \"5\""], &[], versions(&[3, 5]));
        check(&["\"3\",W/\"5\" ,\t\"7\""], &[], versions(&[3, 5, 7]));
        check(&["\"3\"", "\"5\""], &[], versions(&[3, 5]));
        check(&["\"3\"", ""], &[], Ok(Some(Precondition::IfVersion(3))));
        check(&[", \"3\",, \"5\","], &[], versions(&[3, 5]));
        check(&[" * "], &[], Ok(Some(Precondition::IfExists)));
        check(&["\"0\""], &[], Ok(Some(Precondition::IfVersion(0))));
        check(
            &["\"18446744073709551615\""],
            &[],
            Ok(Some(Precondition::IfVersion(u64::MAX))),
        );
        // Tags no version is written as match nothing.
        check(&["\"007\""], &[], versions(&[]));
        check(&["\"18446744073709551616\""], &[], versions(&[]));
        check(
            &["\"007\", \"7\""],
            &[],
            Ok(Some(Precondition::IfVersion(7))),
        );
    }

    #[test]
    fn anything_else_in_if_match_is_invalid_request() {
        for bad in [
            "",
            " ",
            ",",
            ", ,",
            "3",
            "abc",
            "\"x\"",
            "\"-1\"",
            "\"1.5\"",
            "\"\"",
            "\"3",
            "3\"",
            "w/\"3\"",
            "W/3",
            "W/ \"3\"",
            "\"3\" \"5\"",
            "\"3\";\"5\"",
            "*, \"3\"",
            "**",
            "\"3\", *",
            "\" 3\"",
            "\"+3\"",
        ] {
            check(&[bad], &[], Err(400));
        }
        check(&["*", "*"], &[], Err(400));
        check(&["*", "\"3\""], &[], Err(400));
        check(&["*", ""], &[], Err(400));
    }

    #[test]
    fn if_none_match_takes_only_a_star() {
        check(&[], &["*"], Ok(Some(Precondition::IfAbsent)));
        check(&[], &[" *\t"], Ok(Some(Precondition::IfAbsent)));
        for bad in [
            "", "\"1\"", "W/\"1\"", "*, *", "* \"1\"", "abc", "**", ",*", "*,",
        ] {
            check(&[], &[bad], Err(400));
        }
        check(&[], &["*", "*"], Err(400));
    }

    #[test]
    fn both_headers_never_hold_and_malformed_ones_come_first() {
        check(&["*"], &["*"], versions(&[]));
        check(&["\"3\""], &["*"], versions(&[]));
        check(&["\"3\", \"5\""], &["*"], versions(&[]));
        check(&["abc"], &["*"], Err(400));
        check(&["*"], &["\"1\""], Err(400));
        check(&[""], &[""], Err(400));
    }
}
