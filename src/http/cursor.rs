//! Listing cursors: a position in the byte order of keys, base64url-encoded
//! (no padding) so it travels safely in a query string. A cursor the server
//! issued is the last key of a page, and the next page starts after it.
//!
//! Any well-formed base64url is a position, also bytes that are not UTF-8
//! (no key is such bytes): the page then starts at the first key that sorts
//! after them. Only text that is not base64url is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::ApiError;

/// The cursor of the page that follows `last_key`.
pub(super) fn encode(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_key.as_bytes())
}

/// The position `cursor` names: the page starts after these bytes.
///
/// # Errors
///
/// `invalid_request` when `cursor` is not unpadded base64url.
pub(super) fn decode(cursor: &str) -> Result<Vec<u8>, ApiError> {
    URL_SAFE_NO_PAD.decode(cursor).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "cursor {cursor:?} is not base64url (the next_cursor of a previous page)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cursor: &str, expected: Result<&[u8], ()>) {
        assert_eq!(
            decode(cursor).as_deref().map_err(|_| ()),
            expected,
            "{cursor:?}"
        );
    }

    #[test]
    fn cursors_name_positions() {
        check("", Ok(b""));
        check(&encode("k1"), Ok(b"k1"));
        check(&encode("ünï😀"), Ok("ünï😀".as_bytes()));
        // Not UTF-8: still a position.
        check("_w", Ok(b"\xff"));
        check(&URL_SAFE_NO_PAD.encode(b"a\x80"), Ok(b"a\x80"));
        for bad in ["a", "a===", "ab=", "a+b/", "?", "ab c", "_x"] {
            check(bad, Err(()));
        }
    }
}
