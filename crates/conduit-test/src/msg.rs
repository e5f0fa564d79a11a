//! Message types and proptest strategies shared by the conformance suite.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// A typed message with the shapes users send: unit, integers, text, a struct
/// with a byte field and an option, an enum inside a vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// No data.
    Unit,
    /// A signed integer.
    Int(i64),
    /// A string.
    Text(String),
    /// A struct-like variant.
    Job {
        /// An id.
        id: u64,
        /// A name.
        name: String,
        /// Tags.
        tags: Vec<String>,
        /// Bytes, stored as one CBOR byte string.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// An optional priority.
        priority: Option<u8>,
    },
    /// A list of pairs.
    Batch(Vec<(u32, Status)>),
}

/// A unit-only enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Waiting.
    Pending,
    /// Done.
    Done,
    /// Failed with a code.
    Failed(i32),
}

/// Strategy for [`Msg`].
pub fn any_msg() -> impl Strategy<Value = Msg> {
    let status = prop_oneof![
        Just(Status::Pending),
        Just(Status::Done),
        any::<i32>().prop_map(Status::Failed)
    ];
    prop_oneof![
        Just(Msg::Unit),
        any::<i64>().prop_map(Msg::Int),
        ".{0,64}".prop_map(Msg::Text),
        (
            any::<u64>(),
            "[a-z]{0,16}",
            prop::collection::vec("[a-z0-9]{0,8}", 0..4),
            prop::collection::vec(any::<u8>(), 0..2048),
            any::<Option<u8>>()
        )
            .prop_map(|(id, name, tags, payload, priority)| Msg::Job {
                id,
                name,
                tags,
                payload,
                priority
            }),
        prop::collection::vec((any::<u32>(), status), 0..16).prop_map(Msg::Batch),
    ]
}

/// A raw byte payload described by its size and a seed, so that multi-MiB
/// payloads are cheap to generate, shrink and check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Length in bytes.
    pub len: usize,
    /// Seed of the content.
    pub seed: u64,
}

impl Payload {
    /// The payload's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut v = vec![0u8; self.len];
        rng.fill(&mut v);
        v
    }
}

/// Raw payload sizes from 0 B to 4 MiB, weighted towards small ones.
pub fn any_payload() -> impl Strategy<Value = Payload> {
    let len = prop_oneof![
        6 => 0usize..=64,
        3 => 65usize..=64 * 1024,
        1 => (64 * 1024 + 1)..=(4usize << 20),
    ];
    (len, any::<u64>()).prop_map(|(len, seed)| Payload { len, seed })
}

/// One step of an echo sequence.
#[derive(Clone, Debug)]
pub enum Item {
    /// A typed message.
    Typed(Msg),
    /// A raw byte payload.
    Raw(Payload),
}

/// Strategy for echo sequences.
pub fn any_sequence() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        prop_oneof![
            any_msg().prop_map(Item::Typed),
            any_payload().prop_map(Item::Raw)
        ],
        0..24,
    )
}
