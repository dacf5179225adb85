//! Validation of JSON documents on their way into the store.
//!
//! simd-json parses in place (it unescapes strings inside its input), so the
//! document is parsed from a per-thread scratch copy and the caller's bytes
//! stay untouched: the store keeps exactly what the client sent.

use std::cell::RefCell;

use simd_json::{Buffers, Tape};

/// The deepest nesting of arrays and objects accepted. Deeper documents
/// are rejected on write so that every stored value can be re-read by any
/// ordinary JSON parser (serde_json stops at 128) during recovery, export
/// and webhook delivery.
pub const MAX_DEPTH: usize = 128;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a JSON document.
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    /// Valid JSON nested deeper than [`MAX_DEPTH`].
    #[error("JSON nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Reused parser state: one per thread, so validation allocates nothing in
/// the steady state.
struct Validator {
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

thread_local! {
    static VALIDATOR: RefCell<Validator> = RefCell::new(Validator {
        scratch: Vec::new(),
        buffers: Buffers::default(),
        tape: Some(Tape::null()),
    });
}

/// Checks that `doc` is one complete JSON document (any type, surrounding
/// whitespace allowed) nested at most [`MAX_DEPTH`] deep.
///
/// # Errors
///
/// [`ValueError`] saying what is wrong.
pub fn validate(doc: &[u8]) -> Result<(), ValueError> {
    validate_overlapping(doc, || {})
}

/// [`validate`], calling `meanwhile` once the parser has accepted the
/// document's structure and before the token scan: a put starts loading
/// its key's entry there, so that the scan hides that cache miss. It
/// runs while this thread's validator is in use, so it must not validate.
///
/// # Errors
///
/// As [`validate`].
pub fn validate_overlapping(doc: &[u8], meanwhile: impl FnOnce()) -> Result<(), ValueError> {
    VALIDATOR.with(|cell| {
        let mut guard = cell.borrow_mut();
        let validator = &mut *guard;
        validator.scratch.clear();
        validator.scratch.extend_from_slice(doc);
        let mut tape = validator.tape.take().unwrap_or_else(Tape::null).reset();
        let parsed =
            simd_json::fill_tape(&mut validator.scratch, &mut validator.buffers, &mut tape);
        let result = match parsed {
            Ok(()) => {
                meanwhile();
                check_tokens(doc)
            }
            Err(e) if *e.error() == simd_json::ErrorType::InvalidNumber => validate_slowly(doc),
            Err(e) => Err(ValueError::Invalid(e.to_string())),
        };
        validator.tape = Some(tape.reset());
        // Don't let one huge document pin megabytes per thread forever.
        if validator.scratch.capacity() > 1 << 20 {
            validator.scratch = Vec::new();
        }
        result
    })
}

/// The rare path for documents simd-json refuses only for a number it cannot
/// hold in 64 bits (`18446744073709551616`, `-9223372036854775809`): JSON puts
/// no bound on numbers and the store keeps bytes, so serde_json, which reads
/// any integer, decides instead.
fn validate_slowly(doc: &[u8]) -> Result<(), ValueError> {
    // serde_json skips over strings it ignores without checking their UTF-8.
    std::str::from_utf8(doc).map_err(|e| ValueError::Invalid(e.to_string()))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(doc)
        .map_err(|e| ValueError::Invalid(e.to_string()))?;
    check_tokens(doc)
}

/// Checks each scalar outside strings against the JSON grammar, strings
/// for raw control characters, and the nesting depth, after a parser
/// accepted the structure of `doc`.
///
/// simd-json checks the structure but is lax about some scalars: fuzzing
/// found it taking `1\0` (a NUL after a number) and
/// `18446773440737097955Z16` (garbage after a number too big for 64
/// bits). serde_json refuses both, so a stored value like that made every
/// later snapshot unreadable and the server refused to start. This pass is
/// one cheap scan; the strict parser stays off the hot path. Brackets
/// are counted in the same scan, which is cheaper than walking the tape.
fn check_tokens(doc: &[u8]) -> Result<(), ValueError> {
    let bad = |at: usize, what: &str| Err(ValueError::Invalid(format!("{what} at offset {at}")));
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = doc.get(i) {
        i += 1;
        // Strings first: after them, most of a document is punctuation.
        if byte == b'"' {
            loop {
                i = plain_run_end(doc, i);
                match doc.get(i) {
                    None => return Ok(()),
                    Some(b'"') => break,
                    Some(b'\\') => i += 2,
                    Some(_) => return bad(i, "a raw control character in a string"),
                }
                if i >= doc.len() {
                    return Ok(());
                }
            }
            i += 1;
            continue;
        }
        // Plain branches, the commonest class first: as a `match`, this
        // compiled to a jump table whose indirect jump took much of the
        // scan's time.
        let class = OUTSIDE_STRINGS[usize::from(byte)];
        if class == Outside::Skip {
            continue;
        }
        if class == Outside::Open {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
        } else if class == Outside::Close {
            // The parser already checked that brackets balance.
            depth = depth.saturating_sub(1);
        } else if class == Outside::Scalar {
            let start = i - 1;
            i += doc[i..]
                .iter()
                .position(|&b| OUTSIDE_STRINGS[usize::from(b)] != Outside::Scalar)
                .unwrap_or(doc.len() - i);
            let token = &doc[start..i];
            if !matches!(token, b"true" | b"false" | b"null") && !is_number(token) {
                return bad(start, "not a number, true, false or null");
            }
        }
    }
    Ok(())
}

/// The first position at or after `at` that is not plain string content
/// (a `"`, a `\\` or a control character), or the end of `doc`: eight
/// bytes at a time, which is where [`check_tokens`] spends most of its
/// time otherwise.
fn plain_run_end(doc: &[u8], mut at: usize) -> usize {
    // 0x01 and 0x80 in every byte.
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES * 0x80;
    // Flags the bytes of `w` below `n` (n ≤ 128). Only the lowest flag is
    // exact (a borrow can flag a higher byte), and only it is used.
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS;
    let quotes = ONES * u64::from(b'"');
    let backslashes = ONES * u64::from(b'\\');
    while let Some(chunk) = doc.get(at..at + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let ends = below(w, 0x20) | below(w ^ quotes, 1) | below(w ^ backslashes, 1);
        if ends != 0 {
            // Little-endian: the lowest flag is the first such byte.
            return at + (ends.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + doc[at..]
        .iter()
        .position(|&b| ENDS_PLAIN_STRING[usize::from(b)])
        .unwrap_or(doc.len() - at)
}

/// What a byte outside strings is to [`check_tokens`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outside {
    /// Whitespace, `:` and `,`.
    Skip,
    /// `{` or `[`.
    Open,
    /// `}` or `]`.
    Close,
    /// `"`: a string starts.
    Quote,
    /// Anything else: part of a number, `true`, `false` or `null`.
    Scalar,
}

/// [`Outside`] of every byte, looked up instead of matched: one load per
/// byte.
static OUTSIDE_STRINGS: [Outside; 256] = {
    let mut table = [Outside::Scalar; 256];
    let mut skip: &[u8] = b" \t\n\r:,";
    while let [first, rest @ ..] = skip {
        table[*first as usize] = Outside::Skip;
        skip = rest;
    }
    table[b'{' as usize] = Outside::Open;
    table[b'[' as usize] = Outside::Open;
    table[b'}' as usize] = Outside::Close;
    table[b']' as usize] = Outside::Close;
    table[b'"' as usize] = Outside::Quote;
    table
};

/// Bytes that end a run of plain string content: `"`, `\\` and the
/// control characters (which JSON forbids raw in strings).
static ENDS_PLAIN_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number.
fn is_number(token: &[u8]) -> bool {
    fn digits(t: &[u8]) -> usize {
        t.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let mut t = token.strip_prefix(b"-").unwrap_or(token);
    match t.first() {
        Some(b'0') => t = &t[1..],
        Some(b'1'..=b'9') => t = &t[digits(t)..],
        _ => return false,
    }
    if let Some(rest) = t.strip_prefix(b".") {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        t = &rest[n..];
    }
    if let Some(rest) = t.strip_prefix(b"e").or_else(|| t.strip_prefix(b"E")) {
        let rest = rest
            .strip_prefix(b"+")
            .or_else(|| rest.strip_prefix(b"-"))
            .unwrap_or(rest);
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        t = &rest[n..];
    }
    t.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(doc: &str, ok: bool) {
        assert_eq!(validate(doc.as_bytes()).is_ok(), ok, "{doc:?}");
    }

    #[test]
    fn accepts_every_json_type_with_whitespace() {
        for doc in [
            "{}",
            "[]",
            "0",
            "-1.5e10",
            "true",
            "false",
            "null",
            "\"x\"",
            " {\"a\" : [1, 2]} \n",
            "\"\\u00e9\\n\"",
            "\"héllo 🦤\"",
            "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
        ] {
            check(doc, true);
        }
    }

    #[test]
    fn rejects_broken_documents() {
        for doc in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":}",
            "nul",
            "01",
            "{} {}",
            "1 2",
            "'x'",
            "{a:1}",
            "\"unterminated",
            "[1] x",
            "\u{0}",
            "184467440737\0\0\0\x001616",
            "1\0",
            "[1\0]",
            "\"a\0b\"",
            "{\"a\":1}\0",
            "18446773440737097955Z16",
            "[1Z]",
            "\"a\u{1}b\"",
            "1.",
            "-",
            "1e",
            "tru",
            "nulll",
        ] {
            check(doc, false);
        }
    }

    /// A small deterministic generator (xorshift64*), so that a failure
    /// names a seed that reproduces it.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// A random JSON document at most `depth` deep, with random spacing.
    fn generate(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
        let space = |rng: &mut Rng, out: &mut Vec<u8>| {
            out.extend_from_slice(rng.pick(&["", "", "", " ", "\n", " \t\r\n "]).as_bytes())
        };
        space(rng, out);
        let kind = if depth == 0 {
            rng.below(3)
        } else {
            rng.below(5)
        };
        match kind {
            0 => out.extend_from_slice(
                rng.pick(&[
                    "0",
                    "-0",
                    "1234",
                    "-7",
                    "3.25",
                    "1e10",
                    "-2.5E-3",
                    "1e+2",
                    "0.5",
                    "18446744073709551616",
                    "123456789012345678901234567890",
                    "true",
                    "false",
                    "null",
                ])
                .as_bytes(),
            ),
            1 | 2 => {
                out.push(b'"');
                for _ in 0..rng.below(12) {
                    out.extend_from_slice(
                        rng.pick(&[
                            "a", "b", "Z", "0", " ", "\\\"", "\\\\", "\\n", "\\/", "é", "🦤",
                        ])
                        .as_bytes(),
                    );
                }
                out.push(b'"');
            }
            3 => {
                out.push(b'[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    generate(rng, depth - 1, out);
                }
                space(rng, out);
                out.push(b']');
            }
            _ => {
                out.push(b'{');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    space(rng, out);
                    out.extend_from_slice(rng.pick(&["\"k\"", "\"name\"", "\"\""]).as_bytes());
                    space(rng, out);
                    out.push(b':');
                    generate(rng, depth - 1, out);
                }
                space(rng, out);
                out.push(b'}');
            }
        }
        space(rng, out);
    }

    /// Replaces, inserts or deletes a few bytes of `doc`, with bytes that
    /// matter to JSON's grammar (and a few that never may appear raw).
    fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
        const BYTES: &[u8] = b"\"\\{}[],:0123456789-+.eEtrfalsn \t\n\r\x00\x01\x1fZ\x7f\xc3\xff";
        for _ in 0..=rng.below(3) {
            let byte = BYTES[rng.below(BYTES.len())];
            let at = rng.below(doc.len() + 1);
            match rng.below(3) {
                0 if at < doc.len() => doc[at] = byte,
                1 if at < doc.len() => {
                    doc.remove(at);
                }
                _ => doc.insert(at, byte),
            }
        }
    }

    /// What a strict reader says of `doc`: serde_json, which rejects what
    /// simd-json is lax about, after a UTF-8 check (it skips the strings
    /// it ignores without one).
    fn strictly_valid(doc: &[u8]) -> bool {
        std::str::from_utf8(doc).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok()
    }

    #[test]
    fn agrees_with_serde_json_on_generated_and_mutated_documents() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..60_000 {
            let mut doc = Vec::new();
            generate(&mut rng, 4, &mut doc);
            if case % 2 == 1 {
                mutate(&mut rng, &mut doc);
            }
            let expected = strictly_valid(&doc);
            assert_eq!(
                validate(&doc).is_ok(),
                expected,
                "case {case}: {:?}",
                String::from_utf8_lossy(&doc)
            );
            if expected {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both sides of the comparison were exercised.
        assert!(
            accepted > 30_000 && refused > 10_000,
            "{accepted} / {refused}"
        );
    }

    #[test]
    fn the_overlapping_call_runs_once_for_a_parsed_document_and_never_for_a_refused_one() {
        let calls = |doc: &[u8]| {
            let mut n = 0;
            let result = validate_overlapping(doc, || n += 1);
            (result.is_ok(), n)
        };
        assert_eq!(calls(br#"{"a":[1,2,{"b":null}]}"#), (true, 1));
        // Parsed, then refused by the token scan: the call was made.
        assert_eq!(calls(b"[1\0]"), (false, 1));
        assert_eq!(calls(br#"{"a":"#), (false, 0));
        assert_eq!(calls(b"nope"), (false, 0));
    }

    #[test]
    fn accepts_numbers_beyond_64_bits() {
        for doc in [
            "18446744073709551616",
            "-9223372036854775809",
            "[1, 123456789012345678901234567890, {\"a\": -99999999999999999999999}]",
        ] {
            check(doc, true);
        }
        for doc in ["[18446744073709551616", "18446744073709551616 1", "-"] {
            check(doc, false);
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + "18446744073709551616" + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(validate(deep.as_bytes()), Err(ValueError::TooDeep));
        assert!(validate(b"[18446744073709551616, \"\xff\"]").is_err());
        // Brackets inside strings do not nest.
        let in_string = format!(
            r#"[{{"a\"[": "{}"}}, 18446744073709551616]"#,
            "[".repeat(200)
        );
        check(&in_string, true);
    }

    #[test]
    fn strings_are_checked_at_every_offset() {
        // Escapes and control characters anywhere in a string, at every
        // place within and across the eight-byte words it is read in.
        for at in 0..40 {
            let with =
                |middle: &str| format!("[\"{}{middle}{}\"]", "a".repeat(at), "b".repeat(40 - at));
            check(&with("\u{1}"), false);
            check(&with("\u{1f}"), false);
            check(&with("\\\""), true);
            check(&with("\\\\"), true);
            check(&with("\u{7f}é"), true);
        }
    }

    /// The scan of string content, which reads eight bytes at a time,
    /// stops at a control character, a quote or a backslash wherever it
    /// lies in the word.
    #[test]
    fn the_string_scan_stops_at_every_offset() {
        let not_a_token = |at: usize| {
            Err(ValueError::Invalid(format!(
                "not a number, true, false or null at offset {at}"
            )))
        };
        for len in 1..40 {
            let doc = |at: usize, special: &[u8]| {
                let mut doc = vec![b'"'];
                doc.extend(std::iter::repeat_n(b'a', len));
                doc.push(b'"');
                doc[1 + at..1 + at + special.len()].copy_from_slice(special);
                doc
            };
            for at in 0..len {
                let control = Err(ValueError::Invalid(format!(
                    "a raw control character in a string at offset {}",
                    1 + at
                )));
                assert_eq!(check_tokens(&doc(at, b"\x1f")), control, "{len} {at}");
                assert_eq!(check_tokens(&doc(at, b"\0")), control, "{len} {at}");
                // The string ends there, and the `a`s after it are no token.
                let ended = if at + 1 < len {
                    not_a_token(2 + at)
                } else {
                    Ok(())
                };
                assert_eq!(check_tokens(&doc(at, b"\"")), ended, "{len} {at}");
                if at + 1 < len {
                    // An escaped quote does not end it.
                    assert_eq!(check_tokens(&doc(at, b"\\\"")), Ok(()), "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn rejects_invalid_utf8_inside_strings() {
        assert!(validate(b"\"\xff\"").is_err());
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for good in ["0", "-0", "12", "1.5", "-1.5e10", "1E+2", "3e-7", "0.0"] {
            assert!(is_number(good.as_bytes()), "{good}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "0x10", "1.5.5",
        ] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn limits_nesting_depth() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        check(&ok, true);
        assert_eq!(validate(deep.as_bytes()), Err(ValueError::TooDeep));
        // Depth is nesting, not the number of containers.
        let siblings = format!("[{}]", vec!["[[1]]"; 200].join(","));
        check(&siblings, true);
        let in_string = format!(r#"["{}"]"#, "[".repeat(200));
        check(&in_string, true);
        let deep_in_object = "{\"a\":".repeat(MAX_DEPTH + 1) + "1" + &"}".repeat(MAX_DEPTH + 1);
        assert_eq!(
            validate(deep_in_object.as_bytes()),
            Err(ValueError::TooDeep)
        );
    }
}
