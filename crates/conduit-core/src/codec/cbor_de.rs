//! A serde deserializer that reads CBOR straight from a byte slice.
//!
//! It accepts what ciborium's deserializer accepts for the same target types
//! and hands visitors the same values (ciborium stays the reference: the
//! differential tests in `tests/` compare the two), but it borrows strings
//! and byte strings from the input instead of copying them through a
//! zeroed 4 KiB scratch buffer, and reads headers from the slice instead of
//! one `read_exact` at a time. Decoding allocates nothing beyond what the
//! target type owns (and a buffer for indefinite-length strings, which have
//! to be joined).
//!
//! Every read is bounds-checked against the slice: garbage is an error,
//! never a panic, and nesting is limited so that hostile input cannot
//! exhaust the stack.

use std::fmt;

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};

/// Tags for big integers (RFC 8949 §3.4.3).
const TAG_BIGPOS: u64 = 2;
const TAG_BIGNEG: u64 = 3;
/// Simple values.
const FALSE: u8 = 20;
const TRUE: u8 = 21;
const NULL: u8 = 22;
const UNDEFINED: u8 = 23;
/// The name ciborium's tag types (`ciborium::tag::*`, `ciborium::Value`)
/// pass to `deserialize_enum`, and the variant names of its tag protocol.
const TAG_ENUM: &str = "@@TAG@@";
const TAGGED: &str = "@@TAGGED@@";
const UNTAGGED: &str = "@@UNTAGGED@@";

/// A decoding error: what went wrong and at which byte offset.
#[derive(Debug)]
pub(crate) struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, DeError>;

/// One CBOR item header.
#[derive(Clone, Copy, Debug)]
enum Header {
    Positive(u64),
    Negative(u64),
    Bytes(Option<usize>),
    Text(Option<usize>),
    Array(Option<usize>),
    Map(Option<usize>),
    Tag(u64),
    Simple(u8),
    Float(f64),
    Break,
}

impl Header {
    fn unexpected(self) -> Unexpected<'static> {
        match self {
            Header::Positive(x) => Unexpected::Unsigned(x),
            Header::Negative(x) => Unexpected::Signed(x as i64 ^ !0),
            Header::Bytes(_) => Unexpected::Other("bytes"),
            Header::Text(_) => Unexpected::Other("string"),
            Header::Array(_) => Unexpected::Seq,
            Header::Map(_) => Unexpected::Map,
            Header::Tag(_) => Unexpected::Other("tag"),
            Header::Simple(FALSE) => Unexpected::Bool(false),
            Header::Simple(TRUE) => Unexpected::Bool(true),
            Header::Simple(NULL) => Unexpected::Other("null"),
            Header::Simple(UNDEFINED) => Unexpected::Other("undefined"),
            Header::Simple(_) => Unexpected::Other("simple"),
            Header::Float(x) => Unexpected::Float(x),
            Header::Break => Unexpected::Other("break"),
        }
    }

    #[cold]
    #[inline(never)]
    fn expected(self, what: &'static str) -> DeError {
        de::Error::invalid_type(self.unexpected(), &what)
    }
}

/// Decodes one CBOR item from `bytes` into `T`; trailing bytes are an error.
pub(crate) fn from_slice<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
    recursion_limit: usize,
) -> Result<T> {
    from_slice_seed(bytes, recursion_limit, std::marker::PhantomData)
}

/// Decodes one CBOR item from `bytes` with `seed`; trailing bytes are an
/// error.
pub(crate) fn from_slice_seed<'de, S: de::DeserializeSeed<'de>>(
    bytes: &'de [u8],
    recursion_limit: usize,
    seed: S,
) -> Result<S::Value> {
    let mut de = Deserializer {
        input: bytes,
        pos: 0,
        depth: recursion_limit,
    };
    let value = seed.deserialize(&mut de)?;
    if de.pos != bytes.len() {
        return Err(DeError(format!(
            "{} trailing bytes after a cbor message",
            bytes.len() - de.pos
        )));
    }
    Ok(value)
}

struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
    /// How many more levels of nesting are allowed.
    depth: usize,
}

impl<'de> Deserializer<'de> {
    #[cold]
    #[inline(never)]
    fn eof(&self) -> DeError {
        DeError(format!(
            "the cbor item ends early, at byte {} of {}",
            self.pos,
            self.input.len()
        ))
    }

    #[cold]
    #[inline(never)]
    fn syntax(&self, at: usize) -> DeError {
        DeError(format!("invalid cbor at byte {at}"))
    }

    /// Takes the next `n` bytes.
    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        let input: &'de [u8] = self.input;
        let end = self.pos.checked_add(n).ok_or_else(|| self.eof())?;
        let s = input.get(self.pos..end).ok_or_else(|| self.eof())?;
        self.pos = end;
        Ok(s)
    }

    #[inline(always)]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads the next header.
    #[inline(always)]
    fn pull(&mut self) -> Result<Header> {
        let at = self.pos;
        let first = *self.input.get(at).ok_or_else(|| self.eof())?;
        self.pos += 1;
        let major = first >> 5;
        let minor = first & 0x1f;
        // The argument: None for indefinite length / break.
        let arg: Option<u64> = match minor {
            0..=23 => Some(u64::from(minor)),
            24 => Some(u64::from(self.take_array::<1>()?[0])),
            25 => Some(u64::from(u16::from_be_bytes(self.take_array()?))),
            26 => Some(u64::from(u32::from_be_bytes(self.take_array()?))),
            27 => Some(u64::from_be_bytes(self.take_array()?)),
            31 => None,
            _ => return Err(self.syntax(at)),
        };
        let len = |arg: Option<u64>| -> Result<Option<usize>> {
            arg.map(usize::try_from)
                .transpose()
                .map_err(|_| DeError(format!("invalid cbor at byte {at}: length too large")))
        };
        Ok(match (major, arg) {
            (0, Some(x)) => Header::Positive(x),
            (1, Some(x)) => Header::Negative(x),
            (2, a) => Header::Bytes(len(a)?),
            (3, a) => Header::Text(len(a)?),
            (4, a) => Header::Array(len(a)?),
            (5, a) => Header::Map(len(a)?),
            (6, Some(x)) => Header::Tag(x),
            (7, None) => Header::Break,
            (7, Some(x)) => match minor {
                0..=24 => Header::Simple(x as u8),
                25 => Header::Float(half::f16::from_bits(x as u16).to_f64()),
                26 => Header::Float(f64::from(f32::from_bits(x as u32))),
                _ => Header::Float(f64::from_bits(x)),
            },
            _ => return Err(self.syntax(at)),
        })
    }

    /// Reads the next header without consuming it.
    #[inline]
    fn peek(&mut self) -> Result<Header> {
        let at = self.pos;
        let h = self.pull();
        self.pos = at;
        h
    }

    /// Reads the next header, skipping any tags before it.
    #[inline(always)]
    fn pull_untagged(&mut self) -> Result<Header> {
        loop {
            match self.pull()? {
                Header::Tag(_) => continue,
                h => return Ok(h),
            }
        }
    }

    #[inline]
    fn recurse<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth == 0 {
            return Err(DeError(
                "the cbor item is nested too deeply (recursion limit exceeded)".into(),
            ));
        }
        self.depth -= 1;
        let r = f(self);
        self.depth += 1;
        r
    }

    /// The segments of an indefinite-length byte or text string, joined.
    /// Like ciborium, an indefinite segment inside is read as more segments.
    fn segments(&mut self, text: bool) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut nested = 1usize;
        loop {
            let at = self.pos;
            match self.pull()? {
                Header::Break if nested == 1 => return Ok(out),
                Header::Break => nested -= 1,
                Header::Bytes(None) if !text => nested += 1,
                Header::Text(None) if text => nested += 1,
                Header::Bytes(Some(n)) if !text => out.extend_from_slice(self.take(n)?),
                Header::Text(Some(n)) if text => {
                    let s = self.take(n)?;
                    if std::str::from_utf8(s).is_err() {
                        return Err(self.syntax(at));
                    }
                    out.extend_from_slice(s);
                }
                _ => return Err(self.syntax(at)),
            }
        }
    }

    #[inline(always)]
    fn text(&mut self, at: usize, n: usize) -> Result<&'de str> {
        let s = self.take(n)?;
        std::str::from_utf8(s).map_err(|_| self.syntax(at))
    }

    fn text_buf(&mut self, at: usize) -> Result<String> {
        let v = self.segments(true)?;
        String::from_utf8(v).map_err(|_| self.syntax(at))
    }

    /// An integer: plain, or a big integer (tag 2 or 3 on a byte string of
    /// at most 16 significant bytes). Other tags before it are skipped.
    #[inline(always)]
    fn integer(&mut self, first: Option<Header>) -> Result<(bool, u128)> {
        let h = match first {
            Some(h) => h,
            None => self.pull()?,
        };
        match h {
            Header::Positive(x) => Ok((false, x.into())),
            Header::Negative(x) => Ok((true, x.into())),
            h => self.integer_tagged(h),
        }
    }

    #[inline(never)]
    fn integer_tagged(&mut self, first: Header) -> Result<(bool, u128)> {
        let mut first = Some(first);
        loop {
            let h = match first.take() {
                Some(h) => h,
                None => self.pull()?,
            };
            let neg = match h {
                Header::Positive(x) => return Ok((false, x.into())),
                Header::Negative(x) => return Ok((true, x.into())),
                Header::Tag(TAG_BIGPOS) => false,
                Header::Tag(TAG_BIGNEG) => true,
                Header::Tag(_) => continue,
                h => return Err(h.expected("integer")),
            };
            let digits: std::borrow::Cow<'de, [u8]> = match self.pull()? {
                Header::Bytes(Some(n)) => self.take(n)?.into(),
                Header::Bytes(None) => self.segments(false)?.into(),
                h => return Err(h.expected("bytes")),
            };
            let significant = match digits.iter().position(|&b| b != 0) {
                Some(i) => &digits[i..],
                None => &[][..],
            };
            if significant.len() > 16 {
                return Err(de::Error::custom("bigint too large"));
            }
            let mut be = [0u8; 16];
            be[16 - significant.len()..].copy_from_slice(significant);
            return Ok((neg, u128::from_be_bytes(be)));
        }
    }

    /// Visits an array of `len` elements (`None`: up to a break). Elements
    /// the visitor leaves unread (a tuple from a longer array) are an error,
    /// not bytes left for the next item to misread.
    fn seq<V: Visitor<'de>>(&mut self, len: Option<usize>, visitor: V) -> Result<V::Value> {
        self.recurse(|me| {
            let mut access = Access { de: me, len };
            let value = visitor.visit_seq(&mut access)?;
            access.finish("array")?;
            Ok(value)
        })
    }

    /// Visits a map of `len` entries, like [`seq`](Self::seq).
    fn map<V: Visitor<'de>>(&mut self, len: Option<usize>, visitor: V) -> Result<V::Value> {
        self.recurse(|me| {
            let mut access = Access { de: me, len };
            let value = visitor.visit_map(&mut access)?;
            access.finish("map")?;
            Ok(value)
        })
    }

    #[inline]
    fn int_i64(&mut self) -> Result<i64> {
        let r = match self.integer(None)? {
            (false, raw) => i64::try_from(raw),
            (true, raw) => i64::try_from(raw).map(|x| x ^ !0),
        };
        r.map_err(|_| de::Error::custom("integer too large"))
    }

    #[inline]
    fn int_u64(&mut self) -> Result<u64> {
        match self.integer(None)? {
            (false, raw) => u64::try_from(raw).map_err(|_| de::Error::custom("integer too large")),
            (true, _) => Err(de::Error::custom("unexpected negative integer")),
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.pos;
        let h = self.pull()?;
        match h {
            Header::Positive(x) => visitor.visit_u64(x),
            Header::Negative(x) => match i64::try_from(x) {
                Ok(x) => visitor.visit_i64(x ^ !0),
                Err(_) => visitor.visit_i128(i128::from(x) ^ !0),
            },
            Header::Bytes(Some(n)) => visitor.visit_borrowed_bytes(self.take(n)?),
            Header::Bytes(None) => visitor.visit_byte_buf(self.segments(false)?),
            Header::Text(Some(n)) => visitor.visit_borrowed_str(self.text(at, n)?),
            Header::Text(None) => visitor.visit_string(self.text_buf(at)?),
            Header::Array(len) => self.seq(len, visitor),
            Header::Map(len) => self.map(len, visitor),
            Header::Tag(tag) => {
                let big = matches!(self.peek()?, Header::Bytes(Some(n)) if n <= 16);
                if (tag == TAG_BIGPOS || tag == TAG_BIGNEG) && big {
                    match self.integer(Some(h))? {
                        (false, raw) => visitor.visit_u128(raw),
                        (true, raw) => match i128::try_from(raw) {
                            Ok(x) => visitor.visit_i128(x ^ !0),
                            Err(_) => Err(de::Error::custom("integer too large")),
                        },
                    }
                } else {
                    self.recurse(|me| visitor.visit_enum(TagAccess::new(me, Some(tag))))
                }
            }
            Header::Float(x) => visitor.visit_f64(x),
            Header::Simple(FALSE) => visitor.visit_bool(false),
            Header::Simple(TRUE) => visitor.visit_bool(true),
            Header::Simple(NULL | UNDEFINED) => visitor.visit_none(),
            h @ Header::Simple(_) => Err(h.expected("known simple value")),
            h @ Header::Break => Err(h.expected("non-break")),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Simple(FALSE) => visitor.visit_bool(false),
            Header::Simple(TRUE) => visitor.visit_bool(true),
            h => Err(h.expected("bool")),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Float(x) => visitor.visit_f64(x),
            h => Err(h.expected("float")),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.int_i64()?)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.int_i64()?)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.int_i64()?)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.int_i64()?)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let r = match self.integer(None)? {
            (false, raw) => i128::try_from(raw),
            (true, raw) => i128::try_from(raw).map(|x| x ^ !0),
        };
        visitor.visit_i128(r.map_err(|_| de::Error::custom("integer too large"))?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.int_u64()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.int_u64()?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.int_u64()?)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.int_u64()?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.integer(None)? {
            (false, raw) => visitor.visit_u128(raw),
            (true, _) => Err(de::Error::custom("unexpected negative integer")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            let h = self.pull()?;
            return match h {
                Header::Tag(_) => continue,
                Header::Text(Some(n)) if n <= 4 => {
                    let s = self.text(at, n)?;
                    let mut chars = s.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => visitor.visit_char(c),
                        _ => Err(h.expected("char")),
                    }
                }
                h => Err(h.expected("char")),
            };
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                Header::Tag(_) => continue,
                Header::Text(Some(n)) => visitor.visit_borrowed_str(self.text(at, n)?),
                Header::Text(None) => visitor.visit_string(self.text_buf(at)?),
                h => Err(h.expected("str")),
            };
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Bytes(Some(n)) => visitor.visit_borrowed_bytes(self.take(n)?),
            Header::Bytes(None) => visitor.visit_byte_buf(self.segments(false)?),
            Header::Array(len) => self.seq(len, visitor),
            h => Err(h.expected("bytes")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Bytes(Some(n)) => visitor.visit_byte_buf(self.take(n)?.to_vec()),
            Header::Bytes(None) => visitor.visit_byte_buf(self.segments(false)?),
            Header::Array(len) => self.seq(len, visitor),
            h => Err(h.expected("byte buffer")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            Header::Simple(NULL | UNDEFINED) => {
                self.pull()?;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Simple(NULL | UNDEFINED) => visitor.visit_unit(),
            h => Err(h.expected("unit")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Array(len) => self.seq(len, visitor),
            Header::Bytes(Some(n)) => visitor.visit_seq(BytesAccess(self.take(n)?.iter())),
            Header::Bytes(None) => {
                let v = self.segments(false)?;
                visitor.visit_seq(BytesAccess(v.iter()))
            }
            h => Err(h.expected("array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Map(len) => self.map(len, visitor),
            h => Err(h.expected("map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if name == TAG_ENUM {
            // ciborium's tag types: an optional tag, then the item.
            let tag = match self.peek()? {
                Header::Tag(t) => {
                    self.pull()?;
                    Some(t)
                }
                _ => None,
            };
            return self.recurse(|me| visitor.visit_enum(TagAccess::new(me, tag)));
        }
        loop {
            let at = self.pos;
            match self.pull()? {
                Header::Tag(_) => continue,
                // {"Variant": value}
                Header::Map(Some(1)) => {
                    return self.recurse(|me| {
                        visitor.visit_enum(EnumAccess {
                            de: me,
                            unit: false,
                        })
                    })
                }
                // "Variant"
                Header::Text(_) => {
                    self.pos = at;
                    return self
                        .recurse(|me| visitor.visit_enum(EnumAccess { de: me, unit: true }));
                }
                h => return Err(h.expected("enum")),
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                Header::Tag(_) => continue,
                Header::Text(Some(n)) => visitor.visit_borrowed_str(self.text(at, n)?),
                Header::Bytes(Some(n)) => visitor.visit_borrowed_bytes(self.take(n)?),
                h => Err(h.expected("str or bytes")),
            };
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of an array or the entries of a map; `len` is `None` for
/// indefinite length (ended by a break).
struct Access<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    len: Option<usize>,
}

impl Access<'_, '_> {
    /// True when another element follows (consuming the break if not).
    #[inline]
    fn more(&mut self) -> Result<bool> {
        match self.len {
            Some(0) => Ok(false),
            Some(n) => {
                self.len = Some(n - 1);
                Ok(true)
            }
            None => match self.de.peek()? {
                Header::Break => {
                    self.de.pull()?;
                    self.len = Some(0);
                    Ok(false)
                }
                _ => Ok(true),
            },
        }
    }

    /// Checks that every element was read (consuming the break of an
    /// indefinite-length item).
    fn finish(&mut self, what: &str) -> Result<()> {
        let done = match self.len {
            Some(n) => n == 0,
            None => !self.more()?,
        };
        match done {
            true => Ok(()),
            false => Err(DeError(format!(
                "the cbor {what} at byte {} has more elements than the message type takes",
                self.de.pos
            ))),
        }
    }

    #[inline]
    fn hint(&self) -> Option<usize> {
        // Every element takes at least a byte: never promise more than that.
        self.len
            .map(|n| n.min(self.de.input.len().saturating_sub(self.de.pos)))
    }
}

impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.more()? {
            seed.deserialize(&mut *self.de).map(Some)
        } else {
            Ok(None)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::MapAccess<'de> for Access<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.more()? {
            seed.deserialize(&mut *self.de).map(Some)
        } else {
            Ok(None)
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

/// A byte string read as a sequence of `u8`.
struct BytesAccess<'a>(std::slice::Iter<'a, u8>);

impl<'de> de::SeqAccess<'de> for BytesAccess<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.0.next() {
            Some(&b) => seed
                .deserialize(de::value::U8Deserializer::<DeError>::new(b))
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// An externally tagged enum: `"Variant"` (`unit`) or `{"Variant": value}`.
struct EnumAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    unit: bool,
}

impl<'a, 'de> de::EnumAccess<'de> for EnumAccess<'a, 'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let variant = seed.deserialize(&mut *self.de)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for EnumAccess<'_, 'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<()> {
        if self.unit {
            Ok(())
        } else {
            // {"Variant": null} is how ciborium reads a unit variant in map form.
            de::Deserialize::deserialize(&mut *self.de)
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        if self.unit {
            return Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a variant with a value",
            ));
        }
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        if self.unit {
            return Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a tuple variant",
            ));
        }
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if self.unit {
            return Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a struct variant",
            ));
        }
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
}

/// ciborium's protocol for tags (what `ciborium::Value::Tag` and the
/// `ciborium::tag` types expect): an enum whose variant is `"@@TAGGED@@"`
/// or `"@@UNTAGGED@@"` and whose content is the sequence (tag, item).
struct TagAccess<'a, 'de> {
    de: Option<&'a mut Deserializer<'de>>,
    state: usize,
    tag: Option<u64>,
}

impl<'a, 'de> TagAccess<'a, 'de> {
    fn new(de: &'a mut Deserializer<'de>, tag: Option<u64>) -> Self {
        TagAccess {
            de: Some(de),
            state: 0,
            tag,
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut TagAccess<'_, 'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.state += 1;
        match (self.state, self.tag) {
            (1, Some(_)) => visitor.visit_borrowed_str(TAGGED),
            (1, None) => visitor.visit_borrowed_str(UNTAGGED),
            (_, Some(tag)) => visitor.visit_u64(tag),
            (_, None) => Err(de::Error::custom("expected tag")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for TagAccess<'_, 'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(mut self, seed: V) -> Result<(V::Value, Self)> {
        let variant = seed.deserialize(&mut self)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for TagAccess<'_, 'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<()> {
        Err(de::Error::custom("expected tag"))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(mut self, seed: T) -> Result<T::Value> {
        match self.de.take() {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::custom("expected tag")),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(self)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(de::Error::custom("expected tag"))
    }
}

impl<'de> de::SeqAccess<'de> for TagAccess<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.state < 2 {
            return seed.deserialize(&mut *self).map(Some);
        }
        match self.de.take() {
            Some(de) => seed.deserialize(de).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn de<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        from_slice(bytes, 128)
    }

    #[test]
    fn half_single_double_floats() {
        // 1.5 as half, single, double
        assert_eq!(de::<f64>(&[0xf9, 0x3e, 0x00]).unwrap(), 1.5);
        assert_eq!(de::<f64>(&[0xfa, 0x3f, 0xc0, 0, 0]).unwrap(), 1.5);
        assert_eq!(
            de::<f32>(&[0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]).unwrap(),
            1.5
        );
        assert!(de::<f64>(&[0xf9, 0x7c, 0x00]).unwrap().is_infinite());
    }

    #[test]
    fn indefinite_lengths_and_bignums() {
        // (_ "ab", "c")
        assert_eq!(
            de::<String>(&[0x7f, 0x62, b'a', b'b', 0x61, b'c', 0xff]).unwrap(),
            "abc"
        );
        // [_ 1, 2]
        assert_eq!(de::<Vec<u8>>(&[0x9f, 1, 2, 0xff]).unwrap(), [1, 2]);
        // 2(h'0100') = 256
        assert_eq!(de::<u64>(&[0xc2, 0x42, 1, 0]).unwrap(), 256);
        // 3(h'00') = -1
        assert_eq!(de::<i8>(&[0xc3, 0x41, 0]).unwrap(), -1);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &[][..],
            &[0x1c],
            &[0x5a, 0xff, 0xff, 0xff, 0xff],
            &[0x7f, 0x41, 0],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x62, 0xff, 0xfe],
            &[0xff],
        ] {
            assert!(de::<Vec<String>>(bad).is_err(), "{bad:?}");
            assert!(de::<String>(bad).is_err(), "{bad:?}");
        }
        let deep = vec![0x81u8; 10_000];
        assert!(de::<ciborium::Value>(&deep).is_err());
    }
}
