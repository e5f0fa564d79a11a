//! Differential tests of conduit's CBOR decoder against ciborium (the
//! reference, which encodes every conduit message and decoded them before):
//!
//! * typed values encoded by ciborium decode to the same value through
//!   `Cbor::decode` and through ciborium;
//! * hand-built CBOR items in every encoding RFC 8949 allows (half, single
//!   and double floats, non-shortest integers, indefinite-length arrays,
//!   maps and strings, big integers, tags, non-string map keys) decode to
//!   the same `ciborium::Value` through both, or fail through both;
//! * `Cbor::encode` writes exactly ciborium's bytes (what a cbor2 peer
//!   reads), for typed values and for every `ciborium::Value`.
//!
//! Garbage input is fuzzed by `cargo xtask fuzz cbor_differential`.

use std::collections::BTreeMap;

use ciborium::Value;
use conduit::{Cbor, Codec};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Code(i32),
    Pair(u8, String),
    Shape { w: u16, h: Option<u16> },
    Nested(Box<Kind>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Msg {
    small: u8,
    id: u64,
    neg: i64,
    big: u128,
    bigneg: i128,
    #[serde(with = "conduit::serde_bytes")]
    blob: Vec<u8>,
    list: Vec<u8>,
    maybe: Option<String>,
    kinds: Vec<Kind>,
    by_int: BTreeMap<i32, String>,
    by_pair: BTreeMap<(u8, bool), f32>,
    single: f32,
    double: f64,
    c: char,
    unit: (),
    flag: bool,
}

fn kind() -> impl Strategy<Value = Kind> {
    let leaf = prop_oneof![
        Just(Kind::Unit),
        any::<i32>().prop_map(Kind::Code),
        (any::<u8>(), ".{0,8}").prop_map(|(a, b)| Kind::Pair(a, b)),
        (any::<u16>(), any::<Option<u16>>()).prop_map(|(w, h)| Kind::Shape { w, h }),
    ];
    leaf.prop_recursive(3, 8, 1, |inner| {
        inner.prop_map(|k| Kind::Nested(Box::new(k)))
    })
}

/// Floats that ciborium writes as half, single or double precision.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.5),
        Just(-0.0),
        Just(65504.0),
        Just(f64::INFINITY),
        Just(5.960464477539063e-8), // the smallest half subnormal
        any::<f32>().prop_map(f64::from),
        any::<f64>(),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        (
            any::<u8>(),
            any::<u64>(),
            any::<i64>(),
            any::<u128>(),
            any::<i128>(),
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..10),
            proptest::option::of(".{0,20}"),
            proptest::collection::vec(kind(), 0..4),
        ),
        (
            proptest::collection::btree_map(any::<i32>(), ".{0,4}", 0..4),
            proptest::collection::btree_map((any::<u8>(), any::<bool>()), any::<f32>(), 0..4),
        ),
        (float(), float(), any::<char>(), any::<bool>()),
    )
        .prop_map(
            |(
                (small, id, neg, big, bigneg),
                (blob, list, maybe, kinds),
                (by_int, by_pair),
                (s, d, c, flag),
            )| Msg {
                small,
                id,
                neg,
                big,
                bigneg,
                blob,
                list,
                maybe,
                kinds,
                by_int,
                by_pair,
                single: s as f32,
                double: d,
                c,
                unit: (),
                flag,
            },
        )
}

fn ciborium_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = ciborium::into_writer(v, &mut out) {
        panic!("ciborium cannot encode {e}");
    }
    out
}

/// Decodes through both and returns both results, errors as strings.
fn both<T: DeserializeOwned>(bytes: &[u8]) -> (Result<T, String>, Result<T, String>) {
    let fast = Cbor::decode::<T>(bytes).map_err(|e| e.to_string());
    let mut rest = bytes;
    let reference = ciborium::from_reader::<T, _>(&mut rest)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            if rest.is_empty() {
                Ok(v)
            } else {
                Err("trailing bytes".into())
            }
        });
    (fast, reference)
}

/// One CBOR item and the encoding choices to write it with.
#[derive(Clone, Debug)]
enum Item {
    /// An integer, `width` 0..=4: shortest, then 1, 2, 4, 8 argument bytes.
    Uint(u64, u8),
    Nint(u64, u8),
    /// A big integer (tag 2 or 3) with leading zero bytes.
    Big(bool, Vec<u8>, bool),
    Bytes(Vec<u8>, Option<usize>),
    Text(String, Option<usize>),
    Array(Vec<Item>, bool),
    Map(Vec<(Item, Item)>, bool),
    Tag(u64, Box<Item>),
    Half(u16),
    Single(f32),
    Double(f64),
    Simple(u8),
}

fn head(out: &mut Vec<u8>, major: u8, v: u64, width: u8) {
    let m = major << 5;
    let w = match width {
        0 if v < 24 => 0,
        0 if v <= 0xff => 1,
        0 if v <= 0xffff => 2,
        0 if v <= 0xffff_ffff => 4,
        0 => 8,
        1 if v <= 0xff => 1,
        2 if v <= 0xffff => 2,
        3 if v <= 0xffff_ffff => 4,
        _ => 8,
    };
    match w {
        0 => out.push(m | v as u8),
        1 => out.extend([m | 24, v as u8]),
        2 => {
            out.push(m | 25);
            out.extend((v as u16).to_be_bytes())
        }
        4 => {
            out.push(m | 26);
            out.extend((v as u32).to_be_bytes())
        }
        _ => {
            out.push(m | 27);
            out.extend(v.to_be_bytes())
        }
    }
}

fn chunked(out: &mut Vec<u8>, major: u8, data: &[u8], chunk: Option<usize>, text: bool) {
    match chunk {
        None => {
            head(out, major, data.len() as u64, 0);
            out.extend(data);
        }
        Some(n) => {
            out.push(major << 5 | 31);
            let mut rest = data;
            while !rest.is_empty() {
                let mut k = n.max(1).min(rest.len());
                if text {
                    // Segments are whole UTF-8 sequences.
                    while std::str::from_utf8(&rest[..k]).is_err() {
                        k += 1;
                    }
                }
                head(out, major, k as u64, 0);
                out.extend(&rest[..k]);
                rest = &rest[k..];
            }
            out.push(0xff);
        }
    }
}

impl Item {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Item::Uint(v, w) => head(out, 0, *v, *w),
            Item::Nint(v, w) => head(out, 1, *v, *w),
            Item::Big(neg, digits, indefinite) => {
                head(out, 6, if *neg { 3 } else { 2 }, 0);
                chunked(out, 2, digits, indefinite.then_some(3), false);
            }
            Item::Bytes(b, chunk) => chunked(out, 2, b, *chunk, false),
            Item::Text(s, chunk) => chunked(out, 3, s.as_bytes(), *chunk, true),
            Item::Array(items, indefinite) => {
                if *indefinite {
                    out.push(0x9f);
                } else {
                    head(out, 4, items.len() as u64, 0);
                }
                items.iter().for_each(|i| i.write(out));
                if *indefinite {
                    out.push(0xff);
                }
            }
            Item::Map(entries, indefinite) => {
                if *indefinite {
                    out.push(0xbf);
                } else {
                    head(out, 5, entries.len() as u64, 0);
                }
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
                if *indefinite {
                    out.push(0xff);
                }
            }
            Item::Tag(t, inner) => {
                head(out, 6, *t, 0);
                inner.write(out);
            }
            Item::Half(h) => {
                out.push(0xf9);
                out.extend(h.to_be_bytes());
            }
            Item::Single(f) => {
                out.push(0xfa);
                out.extend(f.to_be_bytes());
            }
            Item::Double(f) => {
                out.push(0xfb);
                out.extend(f.to_be_bytes());
            }
            Item::Simple(s) => out.push(0xe0 | s),
        }
    }
}

fn item() -> impl Strategy<Value = Item> {
    let chunk = proptest::option::of(1usize..6);
    let leaf = prop_oneof![
        (any::<u64>(), 0u8..5).prop_map(|(v, w)| Item::Uint(v, w)),
        (any::<u64>(), 0u8..5).prop_map(|(v, w)| Item::Nint(v, w)),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            any::<bool>()
        )
            .prop_map(|(n, d, i)| Item::Big(n, d, i)),
        (proptest::collection::vec(any::<u8>(), 0..12), chunk.clone())
            .prop_map(|(b, c)| Item::Bytes(b, c)),
        (".{0,12}", chunk).prop_map(|(s, c)| Item::Text(s, c)),
        any::<u16>().prop_map(Item::Half),
        any::<f32>().prop_map(Item::Single),
        any::<f64>().prop_map(Item::Double),
        prop_oneof![Just(20u8), Just(21), Just(22), Just(23), 0u8..20].prop_map(Item::Simple),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            (
                proptest::collection::vec(inner.clone(), 0..6),
                any::<bool>()
            )
                .prop_map(|(v, i)| Item::Array(v, i)),
            (
                proptest::collection::vec((inner.clone(), inner.clone()), 0..4),
                any::<bool>()
            )
                .prop_map(|(v, i)| Item::Map(v, i)),
            (0u64..40, inner).prop_map(|(t, i)| Item::Tag(t, Box::new(i))),
        ]
    })
}

/// Values compared through ciborium's encoding, so that NaN equals NaN.
fn same_value(a: &Value, b: &Value) -> bool {
    ciborium_bytes(a) == ciborium_bytes(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn typed_values_decode_like_ciborium(m in msg()) {
        let bytes = ciborium_bytes(&m);
        let (fast, reference) = both::<Msg>(&bytes);
        let fast = fast.map_err(TestCaseError::fail)?;
        let reference = reference.map_err(TestCaseError::fail)?;
        // NaN: compare the encodings.
        prop_assert_eq!(ciborium_bytes(&fast), ciborium_bytes(&reference));
        prop_assert_eq!(ciborium_bytes(&fast), bytes.clone());
        // The encoder writes exactly ciborium's bytes.
        let mut ours = Vec::new();
        Cbor::encode(&m, &mut ours).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ours, bytes);
    }

    #[test]
    fn any_cbor_item_decodes_like_ciborium(i in item(), trailing in any::<bool>()) {
        let mut bytes = Vec::new();
        i.write(&mut bytes);
        if trailing {
            bytes.push(0);
        }
        let (fast, reference) = both::<Value>(&bytes);
        if let Ok(v) = &reference {
            // Every value (tags included) encodes to ciborium's bytes.
            let mut ours = Vec::new();
            Cbor::encode(v, &mut ours).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ours, ciborium_bytes(v));
        }
        match (&fast, &reference) {
            (Ok(a), Ok(b)) => prop_assert!(same_value(a, b), "{:?} vs {:?}", a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "fast {:?} vs ciborium {:?} on {:02x?}", fast, reference, bytes),
        }
        // The same bytes as typed targets: where ciborium decodes, so do we, alike.
        let (fast, reference) = both::<Msg>(&bytes);
        if let Ok(r) = reference {
            let f = fast.map_err(TestCaseError::fail)?;
            prop_assert_eq!(ciborium_bytes(&f), ciborium_bytes(&r));
        }
        let (fast, reference) = both::<Vec<Option<(i64, f32)>>>(&bytes);
        if let Ok(r) = reference {
            let f = fast.map_err(TestCaseError::fail)?;
            prop_assert_eq!(ciborium_bytes(&f), ciborium_bytes(&r));
        }
    }
}

#[test]
fn half_precision_from_a_cbor2_peer() {
    // cbor2 writes 1.5 as a half: f9 3e 00. And [_ 1.0, 2(h'01 00')] mixes
    // an indefinite array, a half and a big integer.
    assert_eq!(Cbor::decode::<f64>(&[0xf9, 0x3e, 0x00]).unwrap(), 1.5);
    let v: (f32, u16) = Cbor::decode(&[0x9f, 0xf9, 0x3c, 0x00, 0xc2, 0x42, 1, 0, 0xff]).unwrap();
    assert_eq!(v, (1.0, 256));
}
