//! The ring protocol: the sender's [`Producer`] and the receiver's
//! [`Consumer`] over one segment, in safe code on top of [`crate::mem`].
//!
//! Each side keeps its own index (the producer its tail, the consumer its
//! head) in a local variable and only *stores* it to the segment; the peer's
//! index is loaded and validated before use. See the crate documentation for
//! the layout, the invariants and the wake-up protocol.
//!
//! Submodules: [`wait`] (spinning, parking and waking), [`producer`] and
//! [`consumer`].

use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::{Duration, Instant};

use conduit_core::{Error, ErrorKind, Result};

use crate::layout::{self, Word};
use crate::mem::Region;

/// What both ends of a ring agree on, plus this side's waiting policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Ring capacity in bytes: a power of two.
    pub cap: u32,
    /// Largest message in bytes.
    pub max_frame: u32,
    /// Codec id.
    pub codec: u8,
    /// How long to spin before parking.
    pub spin: Duration,
    /// How long one park may last before the peer's liveness is checked.
    pub tick: Duration,
}

/// How often a call that does not park (a send into free space, a receive
/// whose deadline has passed) checks that the peer's process is alive: the
/// bound on how long such calls can go on after the peer was killed.
const LIVENESS_POLL: Duration = Duration::from_millis(5);

/// Sends between two looks at the clock for [`LIVENESS_POLL`]: reading the
/// clock on every send cost ~20% of a 64-byte round trip in `cargo xtask
/// bench`.
const SENDS_PER_CLOCK_CHECK: u32 = 16;

/// Rate-limits the lifeline checks of calls that do not park.
#[derive(Debug)]
pub(super) struct LivenessClock {
    next: Instant,
    /// Calls since the clock was last read (see [`LivenessClock::due_often`]).
    calls: u32,
}

impl LivenessClock {
    pub(super) fn new() -> LivenessClock {
        LivenessClock {
            next: Instant::now(),
            calls: 0,
        }
    }

    /// Like [`due`](Self::due), but reads the clock only every
    /// [`SENDS_PER_CLOCK_CHECK`] calls.
    pub(super) fn due_often(&mut self) -> bool {
        self.calls += 1;
        if self.calls < SENDS_PER_CLOCK_CHECK {
            return false;
        }
        self.calls = 0;
        self.due()
    }

    /// True when a check is due (and schedules the next one).
    pub(super) fn due(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + LIVENESS_POLL;
            true
        } else {
            false
        }
    }
}

impl Params {
    /// Largest record written whole; bigger messages are streamed in pieces.
    pub(super) fn whole_limit(&self) -> u64 {
        u64::from(self.cap / 2)
    }

    /// Largest payload of one piece.
    pub(super) fn max_piece(&self) -> usize {
        (self.cap / 4) as usize
    }
}

/// Splits raw record bytes around the first kind word: bytes 0..4, the
/// kind, bytes 8.. (`None` when there is no whole kind word).
#[cfg(any(test, feature = "testing"))]
pub(super) fn split_kind(bytes: &[u8]) -> Option<(&[u8], u32, &[u8])> {
    let word = bytes.get(4..8)?;
    let kind = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
    Some((&bytes[..4], kind, &bytes[8..]))
}

/// Writes a fresh segment header for `p`.
pub fn init_header(region: &Region, p: &Params) {
    region.word(Word::Version).store(layout::VERSION, Release);
    region.word(Word::Codec).store(u32::from(p.codec), Release);
    region.word(Word::MaxFrame).store(p.max_frame, Release);
    region.word(Word::Capacity).store(p.cap, Release);
    region
        .word(Word::DataOffset)
        .store(layout::DATA_OFFSET as u32, Release);
    region.word(Word::Magic).store(layout::MAGIC, Release);
}

/// Checks the segment header against this side's parameters.
pub fn check_header(region: &Region, p: &Params) -> Result<()> {
    let load = |w| region.word(w).load(Acquire);
    let magic = load(Word::Magic);
    if magic != layout::MAGIC {
        return Err(Error::protocol(format!(
            "bad shm segment header: magic {:02x?} is not {:?}; the peer is not a conduit endpoint",
            magic.to_le_bytes(),
            "CNDS"
        )));
    }
    let version = load(Word::Version);
    if version != layout::VERSION {
        return Err(Error::protocol(format!(
            "the peer speaks conduit shm protocol v{version}, this side v{}: build both with the same conduit version",
            layout::VERSION
        )));
    }
    let codec = load(Word::Codec);
    if codec != u32::from(p.codec) {
        return Err(Error::protocol(format!(
            "the peer encodes messages with codec id {codec} ({}), this side expects codec id {} ({}): use the same codec on both sides",
            u8::try_from(codec).map_or("an unknown codec", conduit_core::codec::codec_name),
            p.codec,
            conduit_core::codec::codec_name(p.codec)
        )));
    }
    let max = load(Word::MaxFrame);
    if max != p.max_frame {
        return Err(Error::protocol(format!(
            "the peer's maximum frame size is {max} bytes, ours is {}: configure both ends with the same max_frame",
            p.max_frame
        )));
    }
    let cap = load(Word::Capacity);
    let data = load(Word::DataOffset);
    if cap != p.cap || data != layout::DATA_OFFSET as u32 {
        return Err(Error::protocol(format!(
            "the segment header describes a ring of {cap} bytes at offset {data}, this side expects {} bytes at {}: the shared memory is corrupted",
            p.cap,
            layout::DATA_OFFSET
        )));
    }
    Ok(())
}

pub(crate) fn closed_error(state: &Option<(ErrorKind, String)>) -> Option<Error> {
    state.as_ref().map(|(kind, msg)| Error::closed(*kind, msg))
}

mod consumer;
mod producer;
mod wait;

pub use consumer::Consumer;
pub use producer::Producer;
