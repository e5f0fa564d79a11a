//! CBOR decoding (the default codec) of a nested message type with enums,
//! options, maps, byte strings and floats, and of `Vec<u8>` (the raw path):
//! arbitrary input is a `Decode` error or a value, never a panic or a stack
//! overflow; a decoded value encodes again and decodes to the same value.
#![no_main]

use std::collections::BTreeMap;

use conduit_core::codec::{decode_message, encode_message};
use conduit_core::{Cbor, ErrorKind};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Code(i32),
    Pair(u8, String),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Empty,
    Text(String),
    Record {
        id: u64,
        neg: i64,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        maybe: Option<Box<Msg>>,
        kinds: Vec<Kind>,
        map: BTreeMap<u32, String>,
        half: f32,
        double: f64,
        flag: bool,
    },
    Many(Vec<Msg>),
}

fuzz_target!(|data: &[u8]| {
    match decode_message::<Msg, Cbor>(data) {
        Ok(msg) => {
            let mut again = Vec::new();
            encode_message::<Msg, Cbor>(&msg, &mut again).expect("a decoded value encodes");
            let back: Msg = decode_message::<Msg, Cbor>(&again).expect("and decodes again");
            // NaN != NaN: compare the encodings instead.
            let mut twice = Vec::new();
            encode_message::<Msg, Cbor>(&back, &mut twice).expect("encodes");
            assert_eq!(again, twice);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
    }
    let raw: Vec<u8> = decode_message::<Vec<u8>, Cbor>(data).expect("the raw path takes any bytes");
    assert_eq!(raw, data);
});
