//! The copy of a value the store keeps: small values live inline in one
//! allocation that also holds their reference count.
//!
//! A `Bytes` made from a `Vec` costs two allocations once it is first
//! cloned (and every stored value is cloned for its change event): the
//! buffer, and a 24-byte shared header allocated by that first clone. Here
//! the buffer sits inside the header's allocation (`Bytes::from_owner`), in
//! size classes that fill mimalloc's size bins, so a 100-byte value costs
//! one 112-byte block instead of 112 + 24 bytes and an allocation on its
//! first clone.
//!
//! Invariant: no I/O, no locks; a pure copy.

use bytes::Bytes;

/// A value stored inline; `len` bytes of `data` are the value.
struct Inline<const N: usize> {
    len: u32,
    data: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        // `copy_inline` never sets `len` beyond `N`.
        &self.data[..self.len as usize]
    }
}

/// `src` inline in a class of capacity `N` (the caller checked it fits).
fn copy_inline<const N: usize>(src: &[u8]) -> Bytes {
    let mut data = [0u8; N];
    data[..src.len()].copy_from_slice(src);
    // At most N (≤ 1012) bytes, so the length fits.
    let len = src.len() as u32;
    Bytes::from_owner(Inline { len, data })
}

/// A copy of `src` for keeping: inline in one allocation up to 1012
/// bytes, a plain buffer beyond (where the 24-byte header no longer
/// matters).
pub fn copy_value(src: &[u8]) -> Bytes {
    // Each capacity is a mimalloc bin size less the 12 bytes of reference
    // count and length before the data.
    macro_rules! by_class {
        ($($capacity:literal)*) => {
            $(if src.len() <= $capacity {
                return copy_inline::<$capacity>(src);
            })*
        };
    }
    by_class!(12 20 28 36 44 52 68 84 100 116 148 180 212 244 308 372 436 500 628 756 884 1012);
    Bytes::copy_from_slice(src)
}

#[cfg(test)]
mod tests {
    use super::copy_value;

    #[test]
    fn copies_are_exact_at_every_size() {
        for len in 0..1100 {
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let copy = copy_value(&src);
            assert_eq!(&copy[..], &src[..], "{len}");
            let clone = copy.clone();
            drop(copy);
            assert_eq!(&clone[..], &src[..], "{len}");
            assert_eq!(clone.slice(1.min(len)..).len(), len.saturating_sub(1));
        }
    }
}
