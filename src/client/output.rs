//! How results reach standard output: JSON pretty-printed for a person at
//! a terminal, compact (one document a line) when piped. The reformatting
//! works on the text, so numbers of any size and string escapes come out
//! exactly as the server stored them.

use std::io::{IsTerminal, Write};

/// The JSON layout of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Indented by two spaces, one member a line.
    Pretty,
    /// No whitespace at all.
    Compact,
}

impl Layout {
    /// Pretty when standard output is a terminal, compact otherwise.
    pub fn for_stdout() -> Layout {
        if std::io::stdout().is_terminal() {
            Layout::Pretty
        } else {
            Layout::Compact
        }
    }
}

/// Writes results to standard output in one layout.
pub struct Printer {
    layout: Layout,
}

impl Printer {
    /// A printer for standard output as it is now.
    pub fn new() -> Printer {
        Printer {
            layout: Layout::for_stdout(),
        }
    }

    /// Prints one JSON document (which the server already validated) and a
    /// line break.
    ///
    /// # Errors
    ///
    /// Standard output refused the write (a closed pipe, say).
    pub fn json(&self, doc: &[u8]) -> std::io::Result<()> {
        let mut text = reformat(doc, self.layout);
        text.push(b'\n');
        let mut out = std::io::stdout().lock();
        out.write_all(&text)?;
        out.flush()
    }

    /// Prints one line of text.
    ///
    /// # Errors
    ///
    /// Standard output refused the write.
    pub fn line(&self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }
}

/// Lays out valid JSON `doc` again, touching only the whitespace between
/// tokens. Bytes inside strings and numbers are copied as they are.
pub fn reformat(doc: &[u8], layout: Layout) -> Vec<u8> {
    let pretty = layout == Layout::Pretty;
    let mut out = Vec::with_capacity(doc.len() + doc.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // The last token opened an object or array: the next value (if any)
    // starts its first line.
    let mut opened = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    for &b in doc {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if pretty && !opened {
                    newline(&mut out, depth);
                }
                opened = false;
                out.push(b);
                continue;
            }
            b',' => {
                out.push(b);
                if pretty {
                    newline(&mut out, depth);
                }
                continue;
            }
            b':' => {
                out.push(b);
                if pretty {
                    out.push(b' ');
                }
                continue;
            }
            _ => {}
        }
        // The first byte of a value, or a later byte of a number or word.
        if opened && pretty {
            newline(&mut out, depth);
        }
        opened = false;
        out.push(b);
        match b {
            b'{' | b'[' => {
                depth += 1;
                opened = true;
            }
            b'"' => in_string = true,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, layout: Layout, expected: &str) {
        let got = reformat(input.as_bytes(), layout);
        assert_eq!(
            std::str::from_utf8(&got).expect("utf-8"),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn compact() {
        check(
            r#" { "a" : [ 1 , 2 ] } "#,
            Layout::Compact,
            r#"{"a":[1,2]}"#,
        );
        check(r#""a b \" { ""#, Layout::Compact, r#""a b \" { ""#);
        check("[ ]", Layout::Compact, "[]");
        check(
            "123456789012345678901234567890",
            Layout::Compact,
            "123456789012345678901234567890",
        );
        check(r#"{"k\\":"v"}"#, Layout::Compact, r#"{"k\\":"v"}"#);
    }

    #[test]
    fn pretty() {
        check("1", Layout::Pretty, "1");
        check("{}", Layout::Pretty, "{}");
        check("[{}, []]", Layout::Pretty, "[\n  {},\n  []\n]");
        check(
            r#"{"a":{"b":[1,true,null]},"c":"x, y: {z}"}"#,
            Layout::Pretty,
            "{\n  \"a\": {\n    \"b\": [\n      1,\n      true,\n      null\n    ]\n  },\n  \"c\": \"x, y: {z}\"\n}",
        );
    }

    #[test]
    fn pretty_matches_serde_json() {
        // Keys in order and plain numbers, so serde_json's map and float
        // formatting keep the text as it is.
        let doc =
            r#"{"n":-1.5,"name":"Ada","nested":{"deep":[[1],[2,3]],"e":{}},"tags":["a","b"]}"#;
        let value: serde_json::Value = serde_json::from_str(doc).expect("json");
        let expected = serde_json::to_string_pretty(&value).expect("pretty");
        check(doc, Layout::Pretty, &expected);
    }
}
