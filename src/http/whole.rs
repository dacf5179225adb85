//! JSON numbers as whole numbers the way JSON Schema's `integer` counts
//! them: `3`, `3.0` and `0.3e1` are all 3, so a document that says
//! `integer` describes what the handlers take.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The value of a JSON number that is a whole number from 0 to
/// `u64::MAX`, however it is written (`3`, `3.0`, `0.3e1`), as JSON
/// Schema's `integer` counts it; `None` for anything else. Exact: computed
/// on the digits, never through a float.
pub(super) fn whole_number(raw: &str) -> Option<u64> {
    let text = raw.trim_ascii();
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (text, None),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !is_digits(int) || !is_digits(frac) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    if negative {
        return None;
    }
    let exponent: i64 = exponent.map_or(Some(0), |e| e.parse().ok())?;
    let trimmed = significant.trim_end_matches('0');
    let zeros = i64::try_from(significant.len() - trimmed.len()).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    let scale = exponent.checked_sub(frac_len)?.checked_add(zeros)?;
    if !(0..=20).contains(&scale) {
        return None;
    }
    let mut n: u64 = trimmed.parse().ok()?;
    for _ in 0..scale {
        n = n.checked_mul(10)?;
    }
    Some(n)
}

/// serde `deserialize_with` for an optional whole-number field: absent or
/// `null` is `None`.
///
/// # Errors
///
/// For any other value that is not a whole number from 0 to `u64::MAX`.
pub(super) fn optional<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match Option::<Box<RawValue>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(raw) => whole_number(raw.get()).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{} is not a whole number from 0 to {}",
                raw.get(),
                u64::MAX
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_read_however_written() {
        let max = u64::MAX;
        for (raw, expected) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("0.000", Some(0)),
            ("-0.0e5", Some(0)),
            ("0e99999999999999999999", Some(0)),
            ("7", Some(7)),
            ("3066.0", Some(3066)),
            ("3066.000", Some(3066)),
            ("1e3", Some(1000)),
            ("1E+3", Some(1000)),
            ("1.5e1", Some(15)),
            ("0.3e1", Some(3)),
            ("1200e-2", Some(12)),
            ("18446744073709551615", Some(max)),
            ("18446744073709551615.0", Some(max)),
            ("1.8446744073709551615e19", Some(max)),
            ("18446744073709551616", None),
            ("1e20", None),
            ("7162952644997851119616", None),
            ("1.5", None),
            ("1e-1", None),
            ("12e-1", None),
            ("-1", None),
            ("-1.0", None),
            ("\"1\"", None),
            ("true", None),
            ("null", None),
            ("[1]", None),
        ] {
            assert_eq!(whole_number(raw), expected, "{raw}");
        }
    }

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "optional")]
        n: Option<u64>,
    }

    #[test]
    fn a_field_takes_whole_numbers_only() {
        let n = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.n).ok();
        assert_eq!(n(r#"{"n": 26.0}"#), Some(Some(26)));
        assert_eq!(n(r#"{"n": null}"#), Some(None));
        assert_eq!(n(r#"{}"#), Some(None));
        assert_eq!(n(r#"{"n": 2.5}"#), None);
        assert_eq!(n(r#"{"n": "2"}"#), None);
    }
}
