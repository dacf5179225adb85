//! A one-pass check that accepts the plain JSON most documents are, without
//! simd-json's set-up: for a document of a few hundred bytes, that set-up
//! (a scratch copy, the structural index, the tape) costs more than the
//! document does.
//!
//! It only ever says "accepted" or "not sure". "Not sure" covers every
//! error and everything outside the plain subset (a `\u` escape, a long
//! number, a large document); the full check in [`super::validate`] then
//! decides and words the error, so what is accepted and every message stay
//! exactly what they were.
//!
//! The plain subset: one value with optional JSON whitespace around it,
//! valid UTF-8, nesting at most [`MAX_DEPTH`], strings without raw control
//! characters whose escapes are the two-character ones (`\"`, `\\`, `\/`,
//! `\b`, `\f`, `\n`, `\r`, `\t`), numbers of at most [`MAX_NUMBER`]
//! characters following the JSON grammar, and `true`, `false`, `null`.
//! Every such document is JSON by RFC 8259, which the full check accepts.
//!
//! Invariant: no I/O, no allocation.

use super::{ENDS_PLAIN_STRING, MAX_DEPTH, is_number};

/// Documents longer than this go to the full check, whose SIMD passes win
/// on long inputs.
const MAX_DOCUMENT: usize = 16 * 1024;

/// Numbers longer than this go to the full check (a number beyond 64 bits
/// takes its slow path; none this short does).
const MAX_NUMBER: usize = 18;

/// Whether `doc` is a plain JSON document (see the module comment). `false`
/// means only that the full check must decide.
pub(super) fn accepts(doc: &[u8]) -> bool {
    if doc.len() > MAX_DOCUMENT || (!doc.is_ascii() && std::str::from_utf8(doc).is_err()) {
        return false;
    }
    let mut at = 0;
    // Bit `d` is set when the container at depth `d` is an object; 128
    // bits for at most MAX_DEPTH (128) open containers.
    let mut objects: u128 = 0;
    let mut depth = 0;
    loop {
        // A value starts here.
        at = skip_whitespace(doc, at);
        let Some(&byte) = doc.get(at) else {
            return false;
        };
        match byte {
            b'{' | b'[' => {
                if depth == MAX_DEPTH {
                    return false;
                }
                let object = byte == b'{';
                if object {
                    objects |= 1 << depth;
                } else {
                    objects &= !(1 << depth);
                }
                depth += 1;
                at = skip_whitespace(doc, at + 1);
                let close = if object { b'}' } else { b']' };
                if doc.get(at) == Some(&close) {
                    depth -= 1;
                    at += 1;
                } else {
                    if object {
                        let Some(next) = member_name(doc, at) else {
                            return false;
                        };
                        at = next;
                    }
                    continue;
                }
            }
            b'"' => match string_end(doc, at) {
                Some(end) => at = end,
                None => return false,
            },
            b't' | b'f' | b'n' => {
                let word: &[u8] = match byte {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !doc[at..].starts_with(word) {
                    return false;
                }
                at += word.len();
            }
            b'-' | b'0'..=b'9' => {
                let len = doc[at..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(doc.len() - at);
                if len > MAX_NUMBER || !is_number(&doc[at..at + len]) {
                    return false;
                }
                at += len;
            }
            _ => return false,
        }
        // A value ended here: close containers until the next value starts.
        loop {
            at = skip_whitespace(doc, at);
            if depth == 0 {
                return at == doc.len();
            }
            let object = objects & (1 << (depth - 1)) != 0;
            match doc.get(at) {
                Some(b',') => {
                    at += 1;
                    if object {
                        let Some(next) = member_name(doc, skip_whitespace(doc, at)) else {
                            return false;
                        };
                        at = next;
                    }
                    break;
                }
                Some(b'}') if object => {
                    depth -= 1;
                    at += 1;
                }
                Some(b']') if !object => {
                    depth -= 1;
                    at += 1;
                }
                _ => return false,
            }
        }
    }
}

/// The position after JSON whitespace from `at`.
fn skip_whitespace(doc: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = doc.get(at) {
        at += 1;
    }
    at
}

/// A member's name and its colon at `at`: the position after the colon.
fn member_name(doc: &[u8], at: usize) -> Option<usize> {
    if doc.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_whitespace(doc, string_end(doc, at)?);
    (doc.get(at) == Some(&b':')).then_some(at + 1)
}

/// The position after the plain string that opens at `at`.
fn string_end(doc: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        at += doc
            .get(at..)?
            .iter()
            .position(|&b| ENDS_PLAIN_STRING[usize::from(b)])?;
        match doc[at] {
            b'"' => return Some(at + 1),
            b'\\' => match doc.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                _ => return None,
            },
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::accepts;
    use crate::value::{MAX_DEPTH, full_check};

    /// Plain documents of every shape are accepted.
    #[test]
    fn accepts_plain_documents() {
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let deep_objects = "{\"a\":".repeat(MAX_DEPTH - 1) + "{}" + &"}".repeat(MAX_DEPTH - 1);
        for doc in [
            "{}",
            "[]",
            "0",
            "-0",
            "-1.5e10",
            "1E+2",
            "true",
            "false",
            "null",
            "\"\"",
            "\"x\"",
            " {\"a\" : [1, 2]} \n",
            "\t[ ]\r\n",
            "{ }",
            "\"héllo 🦤 \\n\\t\\\"\\\\\\/\\b\\f\\r\"",
            "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
            "[{},[],{\"\":\"\"},1,\"x\",true,null]",
            r#"{"user":"ada","score":1234,"tags":["a","b","c"],"active":true,"note":"0123456789abcdef0123"}"#,
            &deep,
            &deep_objects,
        ] {
            assert!(accepts(doc.as_bytes()), "{doc:?}");
            assert!(full_check(doc.as_bytes()).is_ok(), "{doc:?}");
        }
    }

    /// What falls outside the plain subset goes to the full check, valid
    /// or not.
    #[test]
    fn leaves_the_rest_to_the_full_check() {
        let too_deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let too_long = format!("[{}1]", "1,".repeat(10_000));
        for doc in [
            "",
            " ",
            "{",
            "}",
            "[",
            "]",
            "[}",
            "{]",
            "[1,]",
            "[,1]",
            "{\"a\":}",
            "{\"a\"}",
            "{\"a\":1,}",
            "{,}",
            "{1:2}",
            "{a:1}",
            "nul",
            "nulll",
            "tru",
            "01",
            "1.",
            "-",
            "1e",
            "+1",
            "{} {}",
            "1 2",
            "'x'",
            "\"unterminated",
            "\"a\\",
            "\"\\x\"",
            "\"\\u00e9\"",
            "[1] x",
            "\u{0}",
            "1\0",
            "\"a\u{1}b\"",
            "123456789012345678901234567890",
            &too_deep,
            &too_long,
        ] {
            assert!(!accepts(doc.as_bytes()), "{doc:?}");
        }
        assert!(!accepts(b"\"\xff\""));
        assert!(!accepts(b"[1,\xc3]"));
    }

    /// Random edits of plain documents: whatever the quick check accepts,
    /// the full check and serde_json accept too; and the documents it is
    /// for are all accepted.
    #[test]
    fn never_accepts_what_the_full_check_refuses() {
        let seeds: [&[u8]; 6] = [
            br#"{"user":"ada","score":1234,"tags":["a","b","c"],"active":true,"note":"0\n1"}"#,
            br#"[1,-2.5e-3,0,{"a":[null,false]},"x\"y",[[],{}]]"#,
            b" { \"k\" : \"v\" , \"n\" : [ 1 , 2 ] } ",
            br#""s\\t\/""#,
            b"-0.0E+12",
            "{\"é\":\"🦤\"}".as_bytes(),
        ];
        let alphabet = b"{}[]:,\" \\ntfrue0123456789-+.eEaz\x01\x7f\xc3\xa9";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            // xorshift64*: reproducible and enough to spread the edits.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        let mut accepted = 0;
        for round in 0..200_000 {
            let mut doc = seeds[round % seeds.len()].to_vec();
            if round >= seeds.len() {
                for _ in 0..1 + next(3) {
                    let at = next(doc.len() + 1);
                    match next(3) {
                        0 if at < doc.len() => {
                            doc.remove(at);
                        }
                        1 if at < doc.len() => doc[at] = alphabet[next(alphabet.len())],
                        _ => doc.insert(at, alphabet[next(alphabet.len())]),
                    }
                }
            }
            if accepts(&doc) {
                accepted += 1;
                assert!(
                    full_check(&doc).is_ok(),
                    "{:?}",
                    String::from_utf8_lossy(&doc)
                );
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&doc).is_ok(),
                    "{:?}",
                    String::from_utf8_lossy(&doc)
                );
            } else if round < seeds.len() {
                panic!("seed {round} is plain");
            }
        }
        // The edits keep many documents valid, so the property was tested
        // on accepted documents, not only on refusals.
        assert!(accepted > 10_000, "{accepted}");
    }
}
