//! A fast path for chunks of plain integers (`u64`, `i64`, `u32`, `i32`,
//! `usize`, `isize`): the tiny tasks a pool is benchmarked with and often
//! used for.
//!
//! Written by hand because serde costs more than the work here: decoding a
//! packed chunk of 12,500 `u64`s through serde's per-element calls took
//! ~80 µs (6–8 ns per item, measured with `cargo bench -p conduit-core
//! --bench codec -- Pool`), a loop over the CBOR heads ~1–2 ns per item.
//! The bytes are exactly what the serde path (`Cbor`) writes and reads —
//! CBOR's shortest head for each integer — so either side may take either
//! path.
//!
//! Which type is in hand is found with `TypeId` (through `dyn Any`), which
//! the compiler folds away in each monomorphized copy.

use std::any::Any;

/// Moves `v` into a `T` when `U` is `T` (a no-op after monomorphization).
#[inline(always)]
fn cast<U: 'static, T: 'static>(v: U) -> Option<T> {
    let mut slot = Some(v);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// Appends a CBOR head of major type `major` and argument `v`, shortest
/// form (what serde's encoder writes).
#[inline(always)]
fn head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        let b = (v as u16).to_be_bytes();
        out.extend_from_slice(&[m | 25, b[0], b[1]]);
    } else if v <= u64::from(u32::MAX) {
        let b = (v as u32).to_be_bytes();
        out.extend_from_slice(&[m | 26, b[0], b[1], b[2], b[3]]);
    } else {
        let b = v.to_be_bytes();
        out.extend_from_slice(&[m | 27, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
}

#[inline(always)]
fn signed(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        // CBOR stores -1 - n for negative n.
        head(out, 1, !(v as u64));
    }
}

/// Appends the CBOR encoding of `v` if `T` is one of the integer types
/// this module handles; false (nothing written) otherwise.
#[inline(always)]
pub(crate) fn encode<T: 'static>(v: &T, out: &mut Vec<u8>) -> bool {
    let any = v as &dyn Any;
    if let Some(&x) = any.downcast_ref::<u64>() {
        head(out, 0, x);
    } else if let Some(&x) = any.downcast_ref::<u32>() {
        head(out, 0, u64::from(x));
    } else if let Some(&x) = any.downcast_ref::<usize>() {
        head(out, 0, x as u64);
    } else if let Some(&x) = any.downcast_ref::<i64>() {
        signed(out, x);
    } else if let Some(&x) = any.downcast_ref::<i32>() {
        signed(out, i64::from(x));
    } else if let Some(&x) = any.downcast_ref::<isize>() {
        signed(out, x as i64);
    } else {
        return false;
    }
    true
}

/// True if `T` takes this fast path.
pub(crate) fn handles<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    [
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
        TypeId::of::<usize>(),
        TypeId::of::<i64>(),
        TypeId::of::<i32>(),
        TypeId::of::<isize>(),
    ]
    .contains(&t)
}

/// Reads the CBOR head at `bytes[at..]`: (major type, argument, length).
/// `None` for anything but a definite head that is all there.
#[inline(always)]
fn read_head(bytes: &[u8], at: usize) -> Option<(u8, u64, usize)> {
    let first = *bytes.get(at)?;
    let (major, minor) = (first >> 5, first & 0x1f);
    let fixed = |n: usize| bytes.get(at + 1..at + 1 + n);
    let (arg, len) = match minor {
        0..=23 => (u64::from(minor), 1),
        24 => (u64::from(*bytes.get(at + 1)?), 2),
        25 => (u64::from(u16::from_be_bytes(fixed(2)?.try_into().ok()?)), 3),
        26 => (u64::from(u32::from_be_bytes(fixed(4)?.try_into().ok()?)), 5),
        27 => (u64::from_be_bytes(fixed(8)?.try_into().ok()?), 9),
        _ => return None,
    };
    Some((major, arg, len))
}

/// The integer of a head (major 0 or 1) as `T`, if it fits.
#[inline(always)]
fn value<T: 'static>(major: u8, arg: u64) -> Option<T> {
    match major {
        0 => from_u64::<T>(arg),
        1 => i64::try_from(arg).ok().and_then(|n| from_i64::<T>(!n)),
        _ => None,
    }
}

#[inline(always)]
fn from_u64<T: 'static>(v: u64) -> Option<T> {
    cast::<u64, T>(v)
        .or_else(|| u32::try_from(v).ok().and_then(cast::<u32, T>))
        .or_else(|| usize::try_from(v).ok().and_then(cast::<usize, T>))
        .or_else(|| i64::try_from(v).ok().and_then(from_i64::<T>))
}

#[inline(always)]
fn from_i64<T: 'static>(v: i64) -> Option<T> {
    cast::<i64, T>(v)
        .or_else(|| i32::try_from(v).ok().and_then(cast::<i32, T>))
        .or_else(|| isize::try_from(v).ok().and_then(cast::<isize, T>))
        .or_else(|| u64::try_from(v).ok().and_then(cast::<u64, T>))
        .or_else(|| u32::try_from(v).ok().and_then(cast::<u32, T>))
        .or_else(|| usize::try_from(v).ok().and_then(cast::<usize, T>))
}

/// Decodes a packed frame (one definite-length CBOR array) of integers of
/// type `T`, handing each to `f` in order. `None` when `T` is not an
/// integer type of this module or the frame does not start with a
/// definite array header (the caller then takes the serde path, and no
/// item was handed out); `Some(Err)` names the first item that is not a
/// `T` or is cut short (the items before it were handed out).
pub(crate) fn decode<T: 'static>(
    frame: &[u8],
    limit: usize,
    mut f: impl FnMut(T),
) -> Option<Result<usize, String>> {
    if !handles::<T>() {
        return None;
    }
    let (major, count, mut at) = read_head(frame, 0)?;
    if major != 4 {
        return None;
    }
    let Ok(count) = usize::try_from(count) else {
        return Some(Err(format!("an array of {count} items")));
    };
    if count > limit {
        return Some(Err(format!(
            "an array of {count} items, more than the {limit} expected"
        )));
    }
    for i in 0..count {
        let Some((major, arg, len)) = read_head(frame, at) else {
            return Some(Err(format!("item {i} is not an integer or is cut short")));
        };
        let Some(v) = value::<T>(major, arg) else {
            return Some(Err(format!(
                "item {i} is not a {}",
                std::any::type_name::<T>()
            )));
        };
        f(v);
        at += len;
    }
    if at != frame.len() {
        return Some(Err(format!(
            "{} bytes after the {count} items",
            frame.len() - at
        )));
    }
    Some(Ok(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_core::codec::{Cbor, Codec};

    fn serde_bytes<T: serde::Serialize>(v: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        Cbor::encode(v, &mut out).unwrap();
        out
    }

    fn ours<T: 'static + Copy>(v: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        head(&mut out, 4, v.len() as u64);
        for x in v {
            assert!(encode(x, &mut out));
        }
        out
    }

    fn back<T: 'static>(frame: &[u8]) -> Option<Result<Vec<T>, String>> {
        let mut got = Vec::new();
        decode::<T>(frame, usize::MAX, |x| got.push(x)).map(|r| r.map(|_| got))
    }

    fn edges_u64() -> Vec<u64> {
        let mut v = vec![0, 1, 23, 24, 255, 256, 65535, 65536, u32::MAX as u64];
        v.extend([u32::MAX as u64 + 1, u64::MAX - 1, u64::MAX]);
        v
    }

    fn edges_i64() -> Vec<i64> {
        let mut v: Vec<i64> = vec![0, -1, -24, -25, -256, -257, -65536, -65537];
        v.extend([i64::from(i32::MIN), i64::MIN, i64::MAX, 23, 24, 1 << 40]);
        v
    }

    #[test]
    fn same_bytes_as_the_serde_path_and_back() {
        let u = edges_u64();
        assert_eq!(ours(&u), serde_bytes(&u));
        assert_eq!(back::<u64>(&serde_bytes(&u)), Some(Ok(u)));
        let i = edges_i64();
        assert_eq!(ours(&i), serde_bytes(&i));
        assert_eq!(back::<i64>(&serde_bytes(&i)), Some(Ok(i)));
        let i32s: Vec<i32> = vec![0, -1, i32::MIN, i32::MAX, 300, -300];
        assert_eq!(ours(&i32s), serde_bytes(&i32s));
        assert_eq!(back::<i32>(&serde_bytes(&i32s)), Some(Ok(i32s)));
        let u32s: Vec<u32> = vec![0, u32::MAX, 24, 23];
        assert_eq!(ours(&u32s), serde_bytes(&u32s));
        assert_eq!(back::<u32>(&serde_bytes(&u32s)), Some(Ok(u32s)));
    }

    #[test]
    fn out_of_range_and_bad_frames_are_errors() {
        // u64::MAX is not an i64, -1 not a u64, 2^32 not a u32.
        assert!(matches!(
            back::<i64>(&serde_bytes(&[u64::MAX])),
            Some(Err(_))
        ));
        assert!(matches!(back::<u64>(&serde_bytes(&[-1i64])), Some(Err(_))));
        assert!(matches!(
            back::<u32>(&serde_bytes(&[1u64 << 32])),
            Some(Err(_))
        ));
        // Cut short, trailing bytes, a string item, more than the limit.
        let frame = serde_bytes(&[1u64 << 40, 7]);
        assert!(matches!(
            back::<u64>(&frame[..frame.len() - 3]),
            Some(Err(_))
        ));
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(back::<u64>(&long), Some(Err(_))));
        assert!(matches!(back::<u64>(&serde_bytes(&["x"])), Some(Err(_))));
        assert!(matches!(decode::<u64>(&frame, 1, |_| ()), Some(Err(_))));
        // Not an array, or not an integer type: the serde path decides.
        assert!(back::<u64>(&serde_bytes(&[7u64])[1..]).is_none());
        assert!(back::<String>(&frame).is_none());
        assert!(!encode(&1.5f64, &mut Vec::new()));
    }
}
