//! A serde serializer that writes CBOR into a `Vec<u8>` directly, byte for
//! byte what ciborium's serializer writes (the differential tests in
//! `tests/` compare the two): shortest integer heads, floats in the
//! shortest of half, single and double precision that keeps every bit,
//! definite lengths where serde knows them, structs as maps keyed by field
//! name, enums externally tagged.
//!
//! ciborium's tag protocol (`ciborium::Value::Tag`, `ciborium::tag::*`) is
//! not handled here: meeting it returns [`SerError::Fallback`], and the
//! caller encodes the message with ciborium instead.

use std::fmt;

use serde::ser::{self, Serialize};

/// The enum name ciborium's tag types serialize under.
const TAG_ENUM: &str = "@@TAG@@";

#[derive(Debug)]
pub(crate) enum SerError {
    /// The value uses ciborium's tag protocol: encode it with ciborium.
    Fallback,
    /// The value's `Serialize` impl failed.
    Custom(String),
}

impl fmt::Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerError::Fallback => f.write_str("a cbor tag (encoded by ciborium instead)"),
            SerError::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SerError::Custom(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, SerError>;

/// Appends the CBOR encoding of `value` to `out`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result {
    value.serialize(&mut Serializer { out })
}

struct Serializer<'a> {
    out: &'a mut Vec<u8>,
}

impl Serializer<'_> {
    #[inline]
    fn head(&mut self, major: u8, v: u64) {
        let m = major << 5;
        if v < 24 {
            self.out.push(m | v as u8);
        } else if v <= u64::from(u8::MAX) {
            self.out.extend_from_slice(&[m | 24, v as u8]);
        } else if v <= u64::from(u16::MAX) {
            let b = (v as u16).to_be_bytes();
            self.out.extend_from_slice(&[m | 25, b[0], b[1]]);
        } else if v <= u64::from(u32::MAX) {
            let b = (v as u32).to_be_bytes();
            self.out
                .extend_from_slice(&[m | 26, b[0], b[1], b[2], b[3]]);
        } else {
            self.out.push(m | 27);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    #[inline]
    fn len_head(&mut self, major: u8, len: Option<usize>) {
        match len {
            Some(n) => self.head(major, n as u64),
            None => self.out.push(major << 5 | 31),
        }
    }

    fn big(&mut self, tag: u64, raw: u128) {
        let bytes = raw.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        self.head(6, tag);
        self.head(2, (16 - skip) as u64);
        self.out.extend_from_slice(&bytes[skip..]);
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Serializer<'b> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Collection<'a, 'b>;
    type SerializeTuple = Collection<'a, 'b>;
    type SerializeTupleStruct = Collection<'a, 'b>;
    type SerializeTupleVariant = Collection<'a, 'b>;
    type SerializeMap = Collection<'a, 'b>;
    type SerializeStruct = Collection<'a, 'b>;
    type SerializeStructVariant = Collection<'a, 'b>;

    fn serialize_bool(self, v: bool) -> Result {
        self.out.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result {
        if v < 0 {
            self.head(1, v as u64 ^ !0);
        } else {
            self.head(0, v as u64);
        }
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result {
        let (neg, raw) = if v < 0 {
            (true, v as u128 ^ !0)
        } else {
            (false, v as u128)
        };
        match (neg, u64::try_from(raw)) {
            (false, Ok(x)) => self.head(0, x),
            (true, Ok(x)) => self.head(1, x),
            (false, Err(_)) => self.big(2, raw),
            (true, Err(_)) => self.big(3, raw),
        }
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(v.into())
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result {
        self.head(0, v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result {
        match u64::try_from(v) {
            Ok(x) => self.head(0, x),
            Err(_) => self.big(2, v),
        }
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result {
        self.serialize_f64(v.into())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result {
        let half = half::f16::from_f64(v);
        let single = v as f32;
        if half.to_f64().to_bits() == v.to_bits() {
            let b = half.to_be_bytes();
            self.out.extend_from_slice(&[0xf9, b[0], b[1]]);
        } else if f64::from(single).to_bits() == v.to_bits() {
            self.out.push(0xfa);
            self.out.extend_from_slice(&single.to_be_bytes());
        } else {
            self.out.push(0xfb);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result {
        self.head(3, v.len() as u64);
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.head(2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result {
        self.out.push(0xf6);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_none()
    }

    fn serialize_unit_variant(self, _name: &'static str, _i: u32, variant: &'static str) -> Result {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        if name == TAG_ENUM {
            return Err(SerError::Fallback);
        }
        self.out.push(0xa1);
        self.serialize_str(variant)?;
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Collection<'a, 'b>> {
        self.len_head(4, len);
        Ok(Collection {
            ser: self,
            ending: len.is_none(),
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Collection<'a, 'b>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Collection<'a, 'b>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Collection<'a, 'b>> {
        if name == TAG_ENUM {
            return Err(SerError::Fallback);
        }
        self.out.push(0xa1);
        self.serialize_str(variant)?;
        self.head(4, len as u64);
        Ok(Collection {
            ser: self,
            ending: false,
        })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Collection<'a, 'b>> {
        self.len_head(5, len);
        Ok(Collection {
            ser: self,
            ending: len.is_none(),
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Collection<'a, 'b>> {
        self.head(5, len as u64);
        Ok(Collection {
            ser: self,
            ending: false,
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Collection<'a, 'b>> {
        self.out.push(0xa1);
        self.serialize_str(variant)?;
        self.head(5, len as u64);
        Ok(Collection {
            ser: self,
            ending: false,
        })
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of an array or map; `ending`: indefinite length, closed
/// with a break.
struct Collection<'a, 'b> {
    ser: &'a mut Serializer<'b>,
    ending: bool,
}

impl Collection<'_, '_> {
    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn finish(self) -> Result {
        if self.ending {
            self.ser.out.push(0xff);
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeTuple for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeMap for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.element(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeStruct for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.ser.serialize_str_key(key);
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Collection<'_, '_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.ser.serialize_str_key(key);
        self.element(value)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

impl Serializer<'_> {
    #[inline]
    fn serialize_str_key(&mut self, key: &str) {
        self.head(3, key.len() as u64);
        self.out.extend_from_slice(key.as_bytes());
    }
}
