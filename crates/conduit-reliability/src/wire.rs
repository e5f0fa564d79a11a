//! The soak's messages: a sequence number, a checksum and a body, as raw
//! `Vec<u8>` (16-byte header, then the body) or as a typed struct; and the
//! receiver's bookkeeping ([`Tracker`]).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest body.
pub const MAX_BODY: usize = 64 << 10;

/// A 64-bit FNV-1a variant that folds 8 bytes at a time (fast enough for
/// gigabytes), over the sequence number, the length and the body.
pub fn checksum(seq: u64, body: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(PRIME).rotate_left(29);
    mix(seq);
    mix(body.len() as u64);
    let mut chunks = body.chunks_exact(8);
    for c in chunks.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        mix(u64::from_le_bytes(w));
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(u64::from_le_bytes(w));
    h
}

/// Body sizes: 90 % 1–256 B, 9 % up to 4 KiB, 1 % up to 64 KiB.
pub fn body_len(rng: &mut fastrand::Rng) -> usize {
    match rng.u32(..100) {
        0 => rng.usize(4097..=MAX_BODY),
        1..=9 => rng.usize(257..=4096),
        _ => rng.usize(1..=256),
    }
}

/// The bytes bodies are cut from: random, with room for any offset below 4 KiB.
pub fn pattern(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..MAX_BODY + 4096).map(|_| rng.u8(..)).collect()
}

/// The body of message `seq`, `len` bytes long.
pub fn body(pattern: &[u8], seq: u64, len: usize) -> &[u8] {
    let off = (seq.wrapping_mul(2_654_435_761) % 4096) as usize;
    &pattern[off..off + len]
}

/// What a receiver makes of one message.
pub enum Check {
    /// Intact; its sequence number.
    Good(u64),
    /// The checksum or the framing of the message is wrong.
    Corrupt,
}

/// A soak message type.
pub trait SoakMsg: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The mode names of this type (one-way, echo).
    const MODES: [&'static str; 2];
    /// Builds message `seq` with `body`.
    fn make(seq: u64, body: &[u8]) -> Self;
    /// Checks a received message.
    fn check(&self) -> Check;
    /// Bytes of payload it carries (for MB/s).
    fn bytes(&self) -> usize;
}

impl SoakMsg for Vec<u8> {
    const MODES: [&'static str; 2] = ["one-way", "echo"];

    fn make(seq: u64, body: &[u8]) -> Self {
        let mut m = Vec::with_capacity(16 + body.len());
        m.extend_from_slice(&seq.to_le_bytes());
        m.extend_from_slice(&checksum(seq, body).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    fn check(&self) -> Check {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if self.len() < 16 {
            return Check::Corrupt;
        }
        let seq = word(0);
        if word(8) == checksum(seq, &self[16..]) {
            Check::Good(seq)
        } else {
            Check::Corrupt
        }
    }

    fn bytes(&self) -> usize {
        self.len()
    }
}

/// A few shapes of typed content, chosen by the sequence number.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum Shape {
    /// Nothing more.
    Plain,
    /// A string derived from the sequence number.
    Tagged(String),
    /// Numbers derived from the sequence number.
    Pair(u32, i16),
    /// A float derived from the sequence number.
    Float(f64),
}

impl Shape {
    fn of(seq: u64) -> Shape {
        match seq % 4 {
            0 => Shape::Plain,
            1 => Shape::Tagged(format!("m{seq}")),
            2 => Shape::Pair(seq as u32, (seq % 30_000) as i16 - 15_000),
            _ => Shape::Float(seq as f64 / 7.0),
        }
    }
}

/// The typed soak message.
#[derive(Serialize, Deserialize, Debug)]
pub struct Typed {
    /// Sequence number.
    pub seq: u64,
    /// [`checksum`] of `seq` and `body`.
    pub sum: u64,
    /// Derived from `seq`.
    pub shape: Shape,
    /// The body, as a CBOR byte string.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// `Some(seq)` for odd sequence numbers.
    pub odd: Option<u64>,
}

impl SoakMsg for Typed {
    const MODES: [&'static str; 2] = ["typed one-way", "typed echo"];

    fn make(seq: u64, body: &[u8]) -> Self {
        Typed {
            seq,
            sum: checksum(seq, body),
            shape: Shape::of(seq),
            body: body.to_vec(),
            odd: (seq % 2 == 1).then_some(seq),
        }
    }

    fn check(&self) -> Check {
        let odd = (self.seq % 2 == 1).then_some(self.seq);
        if self.sum == checksum(self.seq, &self.body)
            && self.shape == Shape::of(self.seq)
            && self.odd == odd
        {
            Check::Good(self.seq)
        } else {
            Check::Corrupt
        }
    }

    fn bytes(&self) -> usize {
        self.body.len() + 16
    }
}

/// Counts what a receiver saw of messages `0..n`.
pub struct Tracker {
    n: u64,
    seen: Vec<u64>,
    distinct: u64,
    /// Highest sequence number seen so far, plus one.
    high: u64,
    /// Messages received (intact or not).
    pub received: u64,
    /// Intact messages seen before.
    pub dup: u64,
    /// Intact messages that arrived after a later one.
    pub reordered: u64,
    /// Messages whose checksum, shape or sequence number is wrong, or that did
    /// not decode.
    pub corrupt: u64,
    /// Payload bytes received.
    pub bytes: u64,
}

impl Tracker {
    /// A tracker for messages `0..n`.
    pub fn new(n: u64) -> Tracker {
        Tracker {
            n,
            seen: vec![0; n.div_ceil(64) as usize],
            distinct: 0,
            high: 0,
            received: 0,
            dup: 0,
            reordered: 0,
            corrupt: 0,
            bytes: 0,
        }
    }

    /// Records one received message.
    pub fn add<M: SoakMsg>(&mut self, m: &M) {
        self.received += 1;
        self.bytes += m.bytes() as u64;
        match m.check() {
            Check::Good(seq) if seq < self.n => {
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if self.seen[word] & bit != 0 {
                    self.dup += 1;
                    return;
                }
                self.seen[word] |= bit;
                self.distinct += 1;
                if seq + 1 < self.high {
                    self.reordered += 1;
                }
                self.high = self.high.max(seq + 1);
            }
            _ => self.corrupt += 1,
        }
    }

    /// Records a message that did not decode.
    pub fn add_undecodable(&mut self) {
        self.received += 1;
        self.corrupt += 1;
    }

    /// Messages never received intact.
    pub fn lost(&self) -> u64 {
        self.n - self.distinct
    }

    /// Every message arrived intact.
    pub fn complete(&self) -> bool {
        self.distinct == self.n
    }

    /// Makes [`lost`](Self::lost) say `lost` of `n` (for a report read back
    /// from another process).
    pub fn set_lost(&mut self, n: u64, lost: u64) {
        self.n = n;
        self.distinct = n.saturating_sub(lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_defects() {
        let p = pattern(1);
        let raw = |seq| Vec::<u8>::make(seq, body(&p, seq, 10));
        let mut t = Tracker::new(5);
        for seq in [0, 2, 1, 2] {
            t.add(&raw(seq));
        }
        let mut bad = raw(3);
        bad[20] ^= 1;
        t.add(&bad);
        t.add(&vec![1u8; 3]);
        assert_eq!((t.dup, t.reordered, t.corrupt, t.lost()), (1, 1, 2, 2));
        let typed = Typed::make(7, body(&p, 7, 100));
        assert!(matches!(typed.check(), Check::Good(7)));
    }
}
