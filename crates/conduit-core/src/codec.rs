//! Codecs turn typed messages into frame payloads and back.
//!
//! [`Cbor`] (serde; ciborium's encoder and a slice-based decoder) is the
//! default. Whatever the codec, a message of
//! type `Vec<u8>` takes the *raw path*: its bytes are the frame payload as they
//! are, with no per-byte encoding (plain serde would encode a `Vec<u8>` as an
//! array of integers, one CBOR item per byte). Inside your own structs, mark byte
//! fields with `#[serde(with = "serde_bytes")]` (re-exported as
//! [`crate::serde_bytes`]) so that CBOR stores them as one byte string.

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

mod cbor_de;
mod cbor_ser;

/// A message encoding. The id travels in the connection handshake so that
/// peers using different codecs fail with [`ErrorKind::Protocol`].
///
/// # Examples
///
/// ```
/// use conduit_core::codec::{Cbor, Codec};
/// let mut buf = Vec::new();
/// Cbor::encode(&("job", 7u32), &mut buf).unwrap();
/// let back: (String, u32) = Cbor::decode(&buf).unwrap();
/// assert_eq!(back, ("job".to_string(), 7));
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The id sent in the handshake. 0 is reserved for raw byte channels.
    const ID: u8;
    /// A short name for error messages.
    const NAME: &'static str;
    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()>;
    /// Decodes one whole value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// CBOR (RFC 8949) through serde: the default codec, id 1.
///
/// Encoding writes exactly the bytes ciborium writes (what a Python `cbor2`
/// peer reads), straight into the send buffer (values with ciborium's tag
/// types are handed to ciborium itself). Decoding
/// reads straight from the received frame: strings and byte strings are
/// borrowed from it where the message type allows, and nothing is allocated
/// beyond what the message owns. It accepts what ciborium accepts (half,
/// single and double floats, indefinite lengths, big integers, tags) and
/// yields the same values; `tests/codec_differential.rs` and the
/// `cbor_differential` fuzz target hold it to that. Nesting deeper than 128
/// levels is a `Decode` error, as is anything after the one item.
///
/// # Examples
///
/// ```
/// use conduit_core::codec::{Cbor, Codec};
/// let mut buf = Vec::new();
/// Cbor::encode(&vec![1u32, 2, 3], &mut buf).unwrap();
/// assert_eq!(Cbor::decode::<Vec<u32>>(&buf).unwrap(), vec![1, 2, 3]);
/// assert!(Cbor::decode::<Vec<u32>>(&[0xff, 0x00]).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Cbor;

/// Nesting limit for decoding, so that hostile input cannot exhaust the stack.
const CBOR_RECURSION_LIMIT: usize = 128;

impl Codec for Cbor {
    const ID: u8 = 1;
    const NAME: &'static str = "cbor";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let res = match cbor_ser::to_vec(value, out) {
            Err(cbor_ser::SerError::Fallback) => {
                // ciborium's own tag types: let ciborium write them.
                out.truncate(start);
                ciborium::ser::into_writer(value, &mut *out).map_err(|e| e.to_string())
            }
            r => r.map_err(|e| e.to_string()),
        };
        res.map_err(|e| {
            out.truncate(start);
            Error::with_source(
                ErrorKind::Encode,
                "cannot encode the message as cbor (does its Serialize impl fail?)",
                e,
            )
        })
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        cbor_de::from_slice(bytes, CBOR_RECURSION_LIMIT).map_err(|e| {
            Error::with_source(
                ErrorKind::Decode,
                format!(
                    "cannot decode a {} message from a cbor frame (do both peers use the same message type?)",
                    std::any::type_name::<T>()
                ),
                e.to_string(),
            )
        })
    }
}

impl Cbor {
    /// Decodes one whole CBOR item from `bytes` through a serde
    /// [`DeserializeSeed`](serde::de::DeserializeSeed), for example to
    /// decode an array's elements one at a time into a collection that
    /// already exists instead of a new `Vec`. Trailing bytes are an error,
    /// as for [`Codec::decode`].
    ///
    /// # Examples
    ///
    /// ```
    /// use conduit_core::codec::{Cbor, Codec};
    /// use std::marker::PhantomData;
    /// let mut buf = Vec::new();
    /// Cbor::encode(&(1u8, "two"), &mut buf).unwrap();
    /// let back: (u8, String) = Cbor::decode_seed(&buf, PhantomData).unwrap();
    /// assert_eq!(back, (1, "two".to_string()));
    /// ```
    pub fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value> {
        cbor_de::from_slice_seed(bytes, CBOR_RECURSION_LIMIT, seed).map_err(|e| {
            Error::with_source(
                ErrorKind::Decode,
                format!(
                    "cannot decode a {} from a cbor frame (do both peers use the same message type?)",
                    std::any::type_name::<S::Value>()
                ),
                e.to_string(),
            )
        })
    }
}

/// [postcard](https://docs.rs/postcard): a compact, non-self-describing
/// serde format, id 2 (cargo feature `postcard`). For Rust-to-Rust links
/// where both ends are built with the same message types: about a third of
/// CBOR's decode cost and a smaller frame, but no field names, so a peer
/// in another language (Python's `cbor2`) cannot read it, and messages
/// cannot evolve (adding a field breaks old peers). Both ends must pick
/// it: a CBOR peer fails the handshake with a `Protocol` error naming both
/// codecs. See `docs/codec.md`.
///
/// # Examples
///
/// ```
/// use conduit_core::codec::{Codec, Postcard};
/// let mut buf = Vec::new();
/// Postcard::encode(&("job", 7u32), &mut buf).unwrap();
/// let back: (String, u32) = Postcard::decode(&buf).unwrap();
/// assert_eq!(back, ("job".to_string(), 7));
/// assert!(Postcard::decode::<(String, u32)>(&buf[..3]).is_err());
/// ```
#[cfg(feature = "postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "postcard")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const ID: u8 = 2;
    const NAME: &'static str = "postcard";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
        let buf = std::mem::take(out);
        match postcard::to_extend(value, buf) {
            Ok(buf) => {
                *out = buf;
                Ok(())
            }
            Err(e) => Err(Error::with_source(
                ErrorKind::Encode,
                "cannot encode the message with postcard (does its Serialize impl fail, or use a map of unknown length?)",
                e.to_string(),
            )),
        }
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        let decode_err = |e: String| {
            Error::with_source(
                ErrorKind::Decode,
                format!(
                    "cannot decode a {} message from a postcard frame (do both peers use the same message type?)",
                    std::any::type_name::<T>()
                ),
                e,
            )
        };
        let (value, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| decode_err(e.to_string()))?;
        if !rest.is_empty() {
            return Err(decode_err(format!(
                "{} trailing bytes after a postcard message",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// The name of the codec with handshake id `id`, for error messages.
pub fn codec_name(id: u8) -> &'static str {
    match id {
        0 => "raw bytes",
        1 => "cbor",
        2 => "postcard",
        _ => "an unknown codec",
    }
}

/// True when messages of type `T` take the raw path (no codec, bytes as they are).
pub fn is_raw<T: 'static + ?Sized>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Vec<u8>>()
}

/// Encodes `value` with `C`, or copies its bytes when `T` takes the raw path.
pub fn encode_message<T: Serialize + 'static, C: Codec>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<()> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        out.extend_from_slice(bytes);
        Ok(())
    } else {
        C::encode(value, out)
    }
}

/// Decodes a frame with `C`, or hands back its bytes when `T` takes the raw path.
pub fn decode_message<T: DeserializeOwned + 'static, C: Codec>(frame: &[u8]) -> Result<T> {
    if is_raw::<T>() {
        let boxed: Box<dyn Any> = Box::new(frame.to_vec());
        boxed
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| Error::new(ErrorKind::Decode, "raw path type mismatch"))
    } else {
        C::decode(frame)
    }
}

/// Like [`decode_message`] but takes the frame by value, so the raw path moves
/// the buffer instead of copying it.
pub fn decode_message_owned<T: DeserializeOwned + 'static, C: Codec>(frame: Vec<u8>) -> Result<T> {
    if is_raw::<T>() {
        let boxed: Box<dyn Any> = Box::new(frame);
        boxed
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| Error::new(ErrorKind::Decode, "raw path type mismatch"))
    } else {
        C::decode(&frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_path_is_byte_exact_and_cbor_is_not() {
        let payload: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        encode_message::<_, Cbor>(&payload, &mut out).unwrap();
        assert_eq!(out, payload);
        let back: Vec<u8> = decode_message::<_, Cbor>(&out).unwrap();
        assert_eq!(back, payload);
        let mut cbor = Vec::new();
        encode_message::<_, Cbor>(&vec![1u16, 2], &mut cbor).unwrap();
        assert_eq!(cbor, [0x82, 0x01, 0x02]);
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_round_trips_and_rejects_garbage() {
        let mut buf = Vec::new();
        Postcard::encode(&(1u8, "two".to_string(), vec![3u16]), &mut buf).unwrap();
        let back: (u8, String, Vec<u16>) = Postcard::decode(&buf).unwrap();
        assert_eq!(back, (1, "two".into(), vec![3]));
        let mut longer = buf.clone();
        longer.push(0);
        let err = Postcard::decode::<(u8, String, Vec<u16>)>(&longer).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        let err = Postcard::decode::<String>(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode_message::<String, Cbor>(&[0x7f, 0xff, 0x00]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        let err = decode_message::<u8, Cbor>(&[0x01, 0x02]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
