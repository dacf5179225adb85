//! Equality of two JSON documents as values, for a transaction's
//! `{"key", "value": …}` compare: object members in any order, whitespace
//! ignored, strings equal after unescaping, and numbers equal by value
//! (`1`, `1.0` and `1e0` are one number; integers beyond 64 bits compare
//! exactly, digit by digit, not through a float).
//!
//! Pure functions over bytes; the documents were validated on their way in,
//! so anything unparsable simply compares unequal.

use std::collections::BTreeMap;

/// A parsed document in a form where equal values are equal Rust values.
#[derive(Debug, PartialEq, Eq)]
enum Json {
    Null,
    Bool(bool),
    Number(Decimal),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

/// A number as `sign × digits × 10^exponent`, with no leading or trailing
/// zeros in `digits` (zero is the empty digit string, without a sign).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

/// Whether `a` and `b` are the same JSON value. Objects with a repeated
/// member name keep its last value, as most parsers do.
pub fn json_eq(a: &[u8], b: &[u8]) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn parse(doc: &[u8]) -> Option<Json> {
    let mut p = Parser { s: doc, at: 0 };
    let value = p.value(0)?;
    p.space();
    (p.at == doc.len()).then_some(value)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self
            .s
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.space();
        if self.s.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, text: &[u8], value: Json) -> Option<Json> {
        self.s[self.at..].starts_with(text).then(|| {
            self.at += text.len();
            value
        })
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > crate::value::MAX_DEPTH {
            return None;
        }
        self.space();
        match *self.s.get(self.at)? {
            b'n' => self.literal(b"null", Json::Null),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'"' => self.string().map(Json::String),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Json::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'{' => {
                self.at += 1;
                let mut members = BTreeMap::new();
                if self.eat(b'}') {
                    return Some(Json::Object(members));
                }
                loop {
                    self.space();
                    let name = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    members.insert(name, self.value(depth + 1)?);
                    if self.eat(b'}') {
                        return Some(Json::Object(members));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            _ => self.number().map(Json::Number),
        }
    }

    /// A string token at the cursor, unescaped (serde_json does the work).
    fn string(&mut self) -> Option<String> {
        let start = self.at;
        if self.s.get(start) != Some(&b'"') {
            return None;
        }
        let mut i = start + 1;
        loop {
            match *self.s.get(i)? {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        self.at = i + 1;
        serde_json::from_slice(&self.s[start..self.at]).ok()
    }

    fn number(&mut self) -> Option<Decimal> {
        let start = self.at;
        let negative = self.s.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        self.digits();
        let int = &self.s[int_start..self.at];
        if int.is_empty() {
            return None;
        }
        let mut frac: &[u8] = &[];
        if self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            let frac_start = self.at;
            self.digits();
            frac = &self.s[frac_start..self.at];
        }
        let mut exponent: i64 = 0;
        if matches!(self.s.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            let exp_negative = match self.s.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let exp_start = self.at;
            self.digits();
            for &d in &self.s[exp_start..self.at] {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(d - b'0'));
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        if self.at == start {
            return None;
        }
        let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
        exponent = exponent.saturating_sub(i64::try_from(frac.len()).unwrap_or(i64::MAX));
        let leading = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..leading);
        while digits.last() == Some(&b'0') {
            digits.pop();
            exponent = exponent.saturating_add(1);
        }
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Decimal {
            negative,
            digits,
            exponent,
        })
    }

    fn digits(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_eq;

    fn check(a: &str, b: &str, equal: bool) {
        assert_eq!(json_eq(a.as_bytes(), b.as_bytes()), equal, "{a} vs {b}");
        assert_eq!(json_eq(b.as_bytes(), a.as_bytes()), equal, "{b} vs {a}");
    }

    #[test]
    fn equal_as_values() {
        check(r#"{"a":1,"b":2}"#, r#"{"b": 2, "a": 1}"#, true);
        check(" [1, 2] ", "[1,2]", true);
        check("[1,2]", "[2,1]", false);
        check("1", "1.0", true);
        check("1", "1e0", true);
        check("100", "1E2", true);
        check("0.5", "5e-1", true);
        check("-0", "0", true);
        check("0.0", "0", true);
        check("1", "2", false);
        check("-1", "1", false);
        check(
            "123456789012345678901234567890",
            "1.2345678901234567890123456789e29",
            true,
        );
        check(
            "123456789012345678901234567890",
            "123456789012345678901234567891",
            false,
        );
        check(r#""a\u0062c""#, r#""abc""#, true);
        check(r#""abc""#, r#""abd""#, false);
        check("null", "false", false);
        check("true", "true", true);
        check(
            r#"{"a":{"b":[1,{"c":null}]}}"#,
            r#"{"a":{"b":[1,{"c":null}]}}"#,
            true,
        );
        check(r#"{"a":1}"#, r#"{"a":1,"b":2}"#, false);
        check("{oops", "{oops", false);
    }
}
