//! Codec costs per message: `cargo bench -p conduit-core --bench codec`.
//!
//! Compares conduit's CBOR codec (`Cbor`: ciborium's encoder, the slice
//! decoder) with ciborium's own decoder (the reference, what `Cbor` used
//! before), cbor4ii and minicbor-serde (serde CBOR crates) and postcard
//! (not CBOR; what the `postcard` feature offers). Every CBOR candidate
//! decodes the bytes ciborium produced, so a candidate that rejects them
//! (half-precision floats, say) shows up as failing, not as fast.
//!
//! Plain `harness = false` timing: for each case, 15 batches of ~20 ms,
//! the median ns per message is printed with the min–max over batches.
//! Words after `--` pick the cases whose title holds one of them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use conduit_core::codec::{Cbor, Codec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The bench's typed message (crates/conduit-bench `Sample`): 61 B of CBOR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    kind: u8,
    seq: u64,
    value: f64,
    label: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Point,
    Circle(f32),
    Rect { w: u16, h: u16 },
}

/// A richer message: nested enums, Option, a byte string, a float that
/// ciborium writes as half precision, a map with integer keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Mixed {
    id: i64,
    shapes: Vec<Shape>,
    note: Option<String>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    scale: f64,
    counts: std::collections::BTreeMap<u32, u32>,
}

fn time_per_op(mut f: impl FnMut() -> bool) -> Option<(f64, f64, f64)> {
    if !f() {
        return None;
    }
    // Calibrate a batch to ~20 ms.
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() > Duration::from_millis(20) {
            break;
        }
        n *= 2;
    }
    let mut per: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    per.sort_by(f64::total_cmp);
    Some((per[per.len() / 2], per[0], per[per.len() - 1]))
}

fn row(name: &str, r: Option<(f64, f64, f64)>, note: &str) {
    match r {
        Some((med, lo, hi)) => {
            println!("  {name:<34} {med:>8.1} ns  ({lo:.1}–{hi:.1}) {note}")
        }
        None => println!("  {name:<34} {:>8}     fails {note}", "-"),
    }
}

fn case<T>(title: &str, value: T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    // `cargo bench -p conduit-core --bench codec -- Pool`: only the cases
    // whose title holds one of the words given.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !words.is_empty() && !words.iter().any(|w| title.contains(w.as_str())) {
        return;
    }
    let mut reference = Vec::new();
    if ciborium::into_writer(&value, &mut reference).is_err() {
        println!("{title}: ciborium cannot encode it");
        return;
    }
    println!("{title}: {} B of CBOR", reference.len());

    println!(" decode");
    let ok = |r: Option<T>| r.as_ref() == Some(&value);
    row(
        "ciborium from_reader (before)",
        time_per_op(|| ok(ciborium::from_reader::<T, _>(black_box(&reference[..])).ok())),
        "",
    );
    row(
        "cbor4ii serde from_slice",
        time_per_op(|| ok(cbor4ii::serde::from_slice::<T>(black_box(&reference)).ok())),
        "",
    );
    row(
        "minicbor-serde from_slice",
        time_per_op(|| ok(minicbor_serde::from_slice::<T>(black_box(&reference)).ok())),
        "",
    );
    row(
        "conduit Cbor (slice decoder)",
        time_per_op(|| ok(Cbor::decode::<T>(black_box(&reference)).ok())),
        "",
    );
    let pc = postcard::to_allocvec(&value).unwrap_or_default();
    row(
        "postcard from_bytes",
        time_per_op(|| ok(postcard::from_bytes::<T>(black_box(&pc)).ok())),
        &format!("(its own {} B encoding)", pc.len()),
    );

    println!(" encode (into a reused Vec)");
    let mut buf = Vec::with_capacity(4096);
    let same = |buf: &Vec<u8>| {
        if *buf == reference {
            ""
        } else {
            "(other bytes than ciborium)"
        }
    };
    row(
        "conduit Cbor",
        time_per_op(|| {
            buf.clear();
            Cbor::encode(black_box(&value), &mut buf).is_ok()
        }),
        same(&buf),
    );
    row(
        "ciborium into_writer",
        time_per_op(|| {
            buf.clear();
            ciborium::into_writer(black_box(&value), &mut buf).is_ok()
        }),
        same(&buf),
    );
    let mut out = Vec::new();
    row(
        "cbor4ii serde to_vec",
        time_per_op(|| {
            out = cbor4ii::serde::to_vec(std::mem::take(&mut buf), black_box(&value))
                .unwrap_or_default();
            buf = std::mem::take(&mut out);
            buf.clear();
            true
        }),
        {
            let v = cbor4ii::serde::to_vec(Vec::new(), &value).unwrap_or_default();
            if v == reference {
                ""
            } else {
                "(other bytes than ciborium)"
            }
        },
    );
    row(
        "minicbor-serde to_vec",
        time_per_op(|| minicbor_serde::to_vec(black_box(&value)).is_ok()),
        {
            let v = minicbor_serde::to_vec(&value).unwrap_or_default();
            if v == reference {
                "(allocates)"
            } else {
                "(allocates; other bytes than ciborium)"
            }
        },
    );
    row(
        "postcard to_extend",
        time_per_op(|| {
            buf.clear();
            postcard::to_extend(black_box(&value), std::mem::take(&mut buf))
                .map(|v| buf = v)
                .is_ok()
        }),
        "",
    );
    println!();
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    case(
        "Sample (the bench's typed message)",
        Sample {
            kind: 1,
            seq: 1_000_000,
            value: 100_000.0,
            label: "conduit-bench typed sample".into(),
        },
    );
    // What a Pool.map of 100,000 tiny tasks decodes: its results
    // (`x * x`, mostly 9-byte items) and its inputs (0..12,500, 1–3 bytes).
    case(
        "Pool results (12,500 u64 squares)",
        (87_500..100_000u64).map(|x| x * x).collect::<Vec<u64>>(),
    );
    case(
        "Pool inputs (12,500 u64, 0..12,500)",
        (0..12_500u64).collect::<Vec<u64>>(),
    );
    case(
        "Mixed (enums, Option, bytes, half float, int-keyed map)",
        Mixed {
            id: -123_456_789,
            shapes: vec![
                Shape::Point,
                Shape::Circle(2.5),
                Shape::Rect { w: 640, h: 480 },
            ],
            note: Some("a note".into()),
            blob: (0..32).collect(),
            scale: 0.5,
            counts: (0..8).map(|i| (i, i * i)).collect(),
        },
    );
}
