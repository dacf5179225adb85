//! Validation of JSON documents on their way into the store.
//!
//! simd-json parses in place (it unescapes strings inside its input), so the
//! document is parsed from a per-thread scratch copy and the caller's bytes
//! stay untouched: the store keeps exactly what the client sent.

use std::cell::RefCell;

use simd_json::{Buffers, Node, Tape};

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
    VALIDATOR.with(|cell| {
        let mut guard = cell.borrow_mut();
        let validator = &mut *guard;
        validator.scratch.clear();
        validator.scratch.extend_from_slice(doc);
        let mut tape = validator.tape.take().unwrap_or_else(Tape::null).reset();
        let parsed =
            simd_json::fill_tape(&mut validator.scratch, &mut validator.buffers, &mut tape);
        let result = match parsed {
            Ok(()) if max_depth(&tape.0) > MAX_DEPTH => Err(ValueError::TooDeep),
            Ok(()) => Ok(()),
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

/// The nesting depth of a parsed tape (0 for a scalar).
fn max_depth(nodes: &[Node<'_>]) -> usize {
    // Each open container is remembered by the index just past its last node.
    let mut open_until: Vec<usize> = Vec::new();
    let mut deepest = 0;
    for (i, node) in nodes.iter().enumerate() {
        while open_until.last().is_some_and(|&end| end <= i) {
            open_until.pop();
        }
        if let Node::Object { count, .. } | Node::Array { count, .. } = node {
            open_until.push(i + count + 1);
            deepest = deepest.max(open_until.len());
            if deepest > MAX_DEPTH {
                break;
            }
        }
    }
    deepest
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
        ] {
            check(doc, false);
        }
    }

    #[test]
    fn rejects_invalid_utf8_inside_strings() {
        assert!(validate(b"\"\xff\"").is_err());
    }

    #[test]
    fn limits_nesting_depth() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        check(&ok, true);
        assert_eq!(validate(deep.as_bytes()), Err(ValueError::TooDeep));
        let siblings = format!("[{}]", vec!["[[1]]"; 50].join(","));
        assert_eq!(max_depth_of(&siblings), 3);
    }

    fn max_depth_of(doc: &str) -> usize {
        let mut bytes = doc.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("valid");
        max_depth(&tape.0)
    }
}
