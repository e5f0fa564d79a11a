//! conduit's slice-based CBOR decoder against ciborium (the reference) on
//! arbitrary input: never a panic; as a `ciborium::Value` both decode the
//! same value or both fail; as a typed message, where both decode they
//! agree, and conduit's encoder writes ciborium's bytes for them. (As a typed message conduit rejects some malformed input that
//! ciborium reads: a tuple from a longer array, whose extra elements
//! ciborium leaves unread, even when they are cut off.)
#![no_main]

use std::collections::BTreeMap;

use ciborium::Value;
use conduit_core::{Cbor, Codec, ErrorKind};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Kind {
    Unit,
    Code(i32),
    Pair(u8, String),
    Big(u128, i128),
}

#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    id: u64,
    neg: i64,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    maybe: Option<Box<Msg>>,
    kinds: Vec<Kind>,
    map: BTreeMap<i16, String>,
    half: f32,
    double: f64,
    flag: bool,
    c: char,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encodes");
    out
}

fn reference<T: DeserializeOwned>(mut data: &[u8]) -> Option<T> {
    let v = ciborium::de::from_reader_with_recursion_limit(&mut data, 128).ok()?;
    data.is_empty().then_some(v)
}

fn check<T: DeserializeOwned + Serialize>(data: &[u8], strict: bool) {
    let fast = Cbor::decode::<T>(data);
    if let Err(e) = &fast {
        assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    }
    match (fast.ok(), reference::<T>(data)) {
        // Compared through the encoding, so that NaN equals NaN.
        (Some(a), Some(b)) => {
            assert_eq!(enc(&a), enc(&b));
            // conduit's encoder writes ciborium's bytes.
            let mut ours = Vec::new();
            Cbor::encode(&a, &mut ours).expect("conduit encodes");
            assert_eq!(ours, enc(&a));
        }
        (None, Some(_)) if strict => panic!("ciborium decodes what conduit rejects"),
        (Some(_), None) if strict => panic!("conduit decodes what ciborium rejects"),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Value>(data, true);
    check::<Msg>(data, false);
    check::<Vec<(u8, Option<f64>)>>(data, false);
});
