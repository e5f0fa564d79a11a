//! Constants of the segment layout described in the crate documentation.

/// `"CNDS"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CNDS");
/// Version of the segment layout and ring protocol (4: doorbell words for
/// `conduit::wait` and async receivers; 3: a record carries its ring position; 2: records are published by their kind word; 1 published
/// a tail index).
pub const VERSION: u32 = 4;
/// Where the ring's data bytes start in the segment.
pub const DATA_OFFSET: usize = 1024;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u32 = 4096;
/// Largest ring capacity.
pub const MAX_CAPACITY: u32 = 1 << 30;
/// Size of a record header; records start at multiples of it.
pub const RECORD_HEADER: u32 = 16;

/// Record kinds (the second word of a record header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Not written yet: the sender stores a real kind here last, publishing
    /// the record.
    Empty = 0,
    /// A whole message.
    Whole = 1,
    /// The first piece of a message streamed in pieces; carries the total.
    First = 2,
    /// A middle piece.
    More = 3,
    /// The last piece.
    Last = 4,
    /// Filler up to the end of the ring.
    Pad = 5,
}

impl Kind {
    /// The kind word.
    pub const fn word(self) -> u32 {
        self as u32
    }
}

impl TryFrom<u32> for Kind {
    /// The unknown word.
    type Error = u32;

    fn try_from(word: u32) -> Result<Kind, u32> {
        Ok(match word {
            0 => Kind::Empty,
            1 => Kind::Whole,
            2 => Kind::First,
            3 => Kind::More,
            4 => Kind::Last,
            5 => Kind::Pad,
            other => return Err(other),
        })
    }
}

/// The kind words, for the code that stores them.
pub mod kind {
    use super::Kind;
    /// [`Kind::Empty`].
    pub const EMPTY: u32 = Kind::Empty.word();
    /// [`Kind::Whole`].
    pub const WHOLE: u32 = Kind::Whole.word();
    /// [`Kind::First`].
    pub const FIRST: u32 = Kind::First.word();
    /// [`Kind::More`].
    pub const MORE: u32 = Kind::More.word();
    /// [`Kind::Last`].
    pub const LAST: u32 = Kind::Last.word();
    /// [`Kind::Pad`].
    pub const PAD: u32 = Kind::Pad.word();
}

/// The control words of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    Magic,
    Version,
    Codec,
    MaxFrame,
    Capacity,
    DataOffset,
    /// Bytes ever consumed by the receiver (mod 2^32).
    Head,
    /// Odd while the receiver is parked; written by the receiver only.
    RxWait,
    /// Bumped by the sender before it wakes the receiver; the receiver parks on it.
    RxBell,
    /// 1 once the receiver is gone.
    RxClosed,
    /// 1 while the receiver waits on its lifeline descriptor (`conduit::wait`,
    /// async): the sender swaps it to 0 and rings the doorbell (one byte on
    /// the lifeline socket) at its next publish.
    RxDoor,
    /// Odd while the sender is parked on a full ring; written by the sender only.
    TxWait,
    /// Bumped by the receiver before it wakes the sender; the sender parks on it.
    TxBell,
    /// 1 once the sender is gone.
    TxClosed,
    /// 1 while the sender waits on its lifeline descriptor for room (async):
    /// the receiver swaps it to 0 and rings at its next release.
    TxDoor,
}

impl Word {
    /// Byte offset in the segment; a multiple of 4 below [`DATA_OFFSET`].
    pub const fn offset(self) -> usize {
        match self {
            Word::Magic => 0,
            Word::Version => 4,
            Word::Codec => 8,
            Word::MaxFrame => 12,
            Word::Capacity => 16,
            Word::DataOffset => 20,
            Word::Head => 256,
            Word::RxWait => 384,
            Word::RxBell => 388,
            Word::RxClosed => 392,
            Word::RxDoor => 396,
            Word::TxWait => 512,
            Word::TxBell => 516,
            Word::TxClosed => 520,
            Word::TxDoor => 524,
        }
    }
}

/// Bytes a record with `payload` bytes takes in the ring (header + payload
/// rounded up to the record alignment).
pub const fn record_len(payload: u64) -> u64 {
    RECORD_HEADER as u64 + payload.div_ceil(RECORD_HEADER as u64) * RECORD_HEADER as u64
}

/// Offset of the kind word in a record header.
pub const KIND_AT: u32 = 4;
/// Offset of the total word in a record header.
pub const TOTAL_AT: u32 = 8;
/// Offset of the position word in a record header: the ring position
/// (bytes ever written before the record, mod 2³²) the record was written
/// at, so that a record left from an earlier lap never passes for a new one.
pub const POS_AT: u32 = 12;

/// Encodes a record header (position 0: the raw-send test hook fills in the
/// real one).
#[cfg(test)]
pub fn header(len: u32, kind: u32, total: u32) -> [u8; RECORD_HEADER as usize] {
    let mut h = [0u8; RECORD_HEADER as usize];
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&kind.to_ne_bytes());
    h[8..12].copy_from_slice(&total.to_ne_bytes());
    h
}

/// Encodes a record header written at ring position `pos`.
#[cfg(test)]
pub fn header_at(len: u32, kind: u32, total: u32, pos: u32) -> [u8; RECORD_HEADER as usize] {
    let mut h = header(len, kind, total);
    h[12..16].copy_from_slice(&pos.to_ne_bytes());
    h
}
