//! The ring protocol: the sender's [`Producer`] and the receiver's
//! [`Consumer`] over one segment, in safe code on top of [`crate::mem`].
//!
//! Each side keeps its own index (the producer its tail, the consumer its
//! head) in a local variable and only *stores* it to the segment; the peer's
//! index is loaded and validated before use. See the crate documentation for
//! the layout, the invariants and the wake-up protocol.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use conduit_core::{Error, ErrorKind, Result};

use crate::layout::{self, kind, record_len, Word, RECORD_HEADER as HDR};
use crate::mem::Region;
use crate::sys::Link;

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
struct LivenessClock {
    next: Instant,
    /// Calls since the clock was last read (see [`LivenessClock::due_often`]).
    calls: u32,
}

impl LivenessClock {
    fn new() -> LivenessClock {
        LivenessClock {
            next: Instant::now(),
            calls: 0,
        }
    }

    /// Like [`due`](Self::due), but reads the clock only every
    /// [`SENDS_PER_CLOCK_CHECK`] calls.
    fn due_often(&mut self) -> bool {
        self.calls += 1;
        if self.calls < SENDS_PER_CLOCK_CHECK {
            return false;
        }
        self.calls = 0;
        self.due()
    }

    /// True when a check is due (and schedules the next one).
    fn due(&mut self) -> bool {
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
    fn whole_limit(&self) -> u64 {
        u64::from(self.cap / 2)
    }

    /// Largest payload of one piece.
    fn max_piece(&self) -> usize {
        (self.cap / 4) as usize
    }
}

/// Splits raw record bytes around the first kind word: bytes 0..4, the
/// kind, bytes 8.. (`None` when there is no whole kind word).
fn split_kind(bytes: &[u8]) -> Option<(&[u8], u32, &[u8])> {
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
            "the peer encodes messages with codec id {codec}, this side expects codec id {}: use the same codec on both sides",
            p.codec
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

/// How a wait ended.
enum Waited {
    /// The watched word changed, the peer rang, or the peer closed its end.
    Moved,
    /// The deadline passed.
    Deadline,
    /// The peer's process is gone (its lifeline closed).
    PeerGone,
}

/// The words one side parks with.
struct ParkWords {
    /// Our "parked" flag (episode counter, odd while parked).
    flag: Word,
    /// The word we park on, which the peer bumps before waking us.
    bell: Word,
}

const CONSUMER_PARK: ParkWords = ParkWords {
    flag: Word::RxWait,
    bell: Word::RxBell,
};

const PRODUCER_PARK: ParkWords = ParkWords {
    flag: Word::TxWait,
    bell: Word::TxBell,
};

/// Spins for up to `limit` (and not past `deadline`) until `ready()`.
fn spin(limit: Duration, deadline: Option<Instant>, ready: &dyn Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    if limit.is_zero() {
        return false;
    }
    let start = Instant::now();
    let mut end = start.checked_add(limit).unwrap_or(start);
    if let Some(d) = deadline {
        end = end.min(d);
    }
    loop {
        for _ in 0..64 {
            std::hint::spin_loop();
            if ready() {
                return true;
            }
        }
        if Instant::now() >= end {
            return false;
        }
    }
}

/// Spins, then parks until `ready()` (the peer published, moved its index
/// or closed), `deadline` passes, or the peer's process is gone. `ready` must
/// load the words it looks at with `SeqCst`.
///
/// The parked flag is set and cleared by this side only (the waker never
/// touches it, so a late waker cannot erase a later park). The bell is read
/// after the flag is set and before the final look at `ready`, and the
/// waker bumps the bell after publishing (a `SeqCst` store) and before
/// waking; so either this side sees the change, or the futex sees a changed
/// bell, or the wake-up finds this side asleep.
fn wait_until(
    region: &Region,
    link: &Link,
    p: &Params,
    words: &ParkWords,
    ready: &dyn Fn() -> bool,
    episode: &mut u32,
    deadline: Option<Instant>,
) -> Result<Waited> {
    if spin(p.spin, deadline, ready) {
        return Ok(Waited::Moved);
    }
    let flag = region.word(words.flag);
    let bell = region.word(words.bell);
    loop {
        let now = Instant::now();
        let timeout = match deadline {
            Some(d) if d <= now => return Ok(Waited::Deadline),
            Some(d) => (d - now).min(p.tick),
            None => p.tick,
        };
        *episode = episode.wrapping_add(1) | 1;
        flag.store(*episode, SeqCst);
        let rung = bell.load(SeqCst);
        let was_ready = ready();
        let timed_out = if was_ready {
            Ok(false)
        } else {
            link.wait(bell, rung, timeout)
        };
        *episode = episode.wrapping_add(1);
        flag.store(*episode, Release);
        let timed_out = timed_out?;
        if was_ready || ready() {
            return Ok(Waited::Moved);
        }
        if timed_out {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Waited::Deadline);
            }
            if !link.peer_alive() {
                return Ok(Waited::PeerGone);
            }
        } else {
            // Woken (or a spurious return): the peer rang but may not have
            // published yet; look again before parking anew.
            if spin(p.spin, deadline, ready) {
                return Ok(Waited::Moved);
            }
        }
    }
}

/// Rings the peer's bell if it is parked in an episode we have not woken yet.
fn ring_peer(region: &Region, link: &Link, flag: Word, bell: Word, woken: &mut u32) {
    let episode = region.word(flag).load(SeqCst);
    if episode & 1 == 1 && episode != *woken {
        *woken = episode;
        let bell = region.word(bell);
        bell.fetch_add(1, SeqCst);
        link.wake(bell);
    }
}

fn closed_error(state: &Option<(ErrorKind, String)>) -> Option<Error> {
    state.as_ref().map(|(kind, msg)| Error::closed(*kind, msg))
}

/// The sending side of a ring.
#[derive(Debug)]
pub struct Producer {
    region: Region,
    link: Link,
    p: Params,
    /// Our tail: authoritative, only ever stored to the segment.
    tail: u32,
    /// The last validated head of the receiver.
    head_seen: u32,
    /// The receiver's park episode we last woke.
    woken: u32,
    /// Our own park episode counter.
    episode: u32,
    /// Set once the channel is unusable.
    broken: Option<(ErrorKind, String)>,
    /// When a send next checks the receiver's process.
    liveness: LivenessClock,
}

impl Producer {
    /// A producer whose tail is `tail` (0 for a new ring).
    pub fn new(region: Region, link: Link, p: Params, tail: u32) -> Producer {
        Producer {
            region,
            link,
            p,
            tail,
            // Assume the ring is full until the head has been read and checked.
            head_seen: tail.wrapping_sub(p.cap),
            woken: 0,
            episode: 0,
            broken: None,
            liveness: LivenessClock::new(),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken = Some((e.kind(), e.message().to_string()));
        e
    }

    /// Sends one message, waiting while the ring is full until `deadline`
    /// (then `Full`, nothing sent). A message streamed in pieces is finished
    /// once its first piece is in the ring, past the deadline if need be.
    pub fn send(&mut self, frame: &[u8], deadline: Option<Instant>) -> Result<()> {
        if let Some(e) = closed_error(&self.broken) {
            return Err(e);
        }
        if frame.len() > self.p.max_frame as usize {
            return Err(Error::frame_too_large(frame.len(), self.p.max_frame));
        }
        if self.region.word(Word::RxClosed).load(Acquire) != 0 {
            return Err(self.fail(Error::disconnected("the receiver closed the channel")));
        }
        // A killed receiver sets no flag; while the ring has room nothing
        // parks, so look at the lifeline every LIVENESS_POLL (reading the
        // clock every 16 sends).
        if self.liveness.due_often() && !self.link.peer_alive() {
            return Err(self.fail(Error::disconnected("the receiver exited or was killed")));
        }
        let rec = record_len(frame.len() as u64);
        if rec > self.p.whole_limit() {
            return self.send_pieces(frame, deadline);
        }
        let rec = rec as u32;
        let cap = self.p.cap;
        let off = self.tail & (cap - 1);
        let to_end = cap - off;
        // A whole record never wraps: pad to the end of the ring first.
        let (pad, at) = if rec > to_end { (to_end, 0) } else { (0, off) };
        // pad < rec <= cap / 2, so pad + rec + HDR <= cap.
        self.reserve(pad + rec + HDR, deadline)?;
        let end = self.tail.wrapping_add(pad + rec);
        self.clear_slot(end)?;
        let pos = self.tail.wrapping_add(pad);
        self.write_record(at, frame.len() as u32, 0, pos, frame)?;
        if pad > 0 {
            // The record at offset 0 is complete before the padding that
            // leads the receiver to it is published.
            self.region
                .atomic(at + layout::KIND_AT)?
                .store(kind::WHOLE, Release);
            self.write_record(off, pad - HDR, 0, self.tail, &[])?;
            self.publish(off, kind::PAD, end)
        } else {
            self.publish(at, kind::WHOLE, end)
        }
    }

    fn send_pieces(&mut self, frame: &[u8], mut deadline: Option<Instant>) -> Result<()> {
        let cap = self.p.cap;
        let total = frame.len() as u32;
        let mut sent = 0usize;
        while sent < frame.len() {
            if sent > 0 {
                // Started: finish the message whatever the deadline.
                deadline = None;
            }
            let off = self.tail & (cap - 1);
            let to_end = cap - off;
            if to_end == HDR {
                self.reserve(HDR + HDR, deadline)?;
                let end = self.tail.wrapping_add(HDR);
                self.clear_slot(end)?;
                self.write_record(off, 0, 0, self.tail, &[])?;
                self.publish(off, kind::PAD, end)?;
                continue;
            }
            let piece = (frame.len() - sent)
                .min(self.p.max_piece())
                .min((to_end - HDR) as usize);
            // to_end is a multiple of HDR, so the record ends by the ring's end.
            let rec = record_len(piece as u64) as u32;
            self.reserve(rec + HDR, deadline)?;
            let (k, t) = if sent == 0 {
                (kind::FIRST, total)
            } else if sent + piece == frame.len() {
                (kind::LAST, 0)
            } else {
                (kind::MORE, 0)
            };
            let end = self.tail.wrapping_add(rec);
            self.clear_slot(end)?;
            self.write_record(off, piece as u32, t, self.tail, &frame[sent..sent + piece])?;
            sent += piece;
            self.publish(off, k, end)?;
        }
        Ok(())
    }

    /// Marks the record slot at ring position `pos` (the next tail) empty, so
    /// that the receiver, reaching it, waits instead of reading what an
    /// earlier lap left there. Done before the record that ends at `pos` is
    /// published, which orders it before the receiver gets there.
    fn clear_slot(&self, pos: u32) -> Result<()> {
        let off = pos & (self.p.cap - 1);
        self.region
            .atomic(off + layout::KIND_AT)?
            .store(kind::EMPTY, Relaxed);
        Ok(())
    }

    /// Writes a record at ring offset `at` and ring position `pos`:
    /// everything but its kind word, which stays `EMPTY` until
    /// [`Producer::publish`].
    fn write_record(&self, at: u32, len: u32, total: u32, pos: u32, payload: &[u8]) -> Result<()> {
        self.region.atomic(at)?.store(len, Relaxed);
        self.region
            .atomic(at + layout::TOTAL_AT)?
            .store(total, Relaxed);
        self.region.atomic(at + layout::POS_AT)?.store(pos, Relaxed);
        self.region.write(at + HDR, payload)
    }

    /// Test hook: copies `bytes` verbatim into the ring at the tail
    /// (wrapping at the end), storing the kind word of the first record
    /// (bytes 4..8) last, which publishes them. The first record's position
    /// word (bytes 12..16) is filled in with the tail, as the protocol
    /// requires; `poke_shared` writes anything anywhere.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = closed_error(&self.broken) {
            return Err(e);
        }
        if bytes.len() + HDR as usize > self.p.cap as usize {
            return Err(Error::invalid_input("more raw bytes than the ring holds"));
        }
        let n = bytes.len() as u32;
        self.reserve(n + HDR, None)?;
        let end = self.tail.wrapping_add(n);
        if end % HDR == 0 {
            self.clear_slot(end)?;
        }
        let Some((head, kind_word, rest)) = split_kind(bytes) else {
            self.write_wrapping(self.tail, bytes)?;
            self.tail = end;
            return Ok(());
        };
        let off = self.tail & (self.p.cap - 1);
        self.write_wrapping(self.tail, head)?;
        self.write_wrapping(self.tail.wrapping_add(layout::TOTAL_AT), rest)?;
        if bytes.len() >= HDR as usize && off % HDR == 0 {
            self.region
                .atomic(off + layout::POS_AT)?
                .store(self.tail, Relaxed);
        }
        self.publish(off, kind_word, end)
    }

    /// Copies `bytes` into the ring from position `pos`, wrapping at the end.
    fn write_wrapping(&self, pos: u32, bytes: &[u8]) -> Result<()> {
        let cap = self.p.cap;
        let off = pos & (cap - 1);
        let first = bytes.len().min((cap - off) as usize);
        self.region.write(off, &bytes[..first])?;
        self.region.write(0, &bytes[first..])
    }

    fn free(&self) -> u32 {
        self.p.cap - self.tail.wrapping_sub(self.head_seen)
    }

    /// Checks and takes a head value read from the segment.
    fn accept_head(&mut self, head: u32) -> Result<()> {
        let in_flight = self.tail.wrapping_sub(self.head_seen);
        let advanced = head.wrapping_sub(self.head_seen);
        if advanced > in_flight {
            let e = Error::protocol(format!(
                "the receiver's ring index {head} is inconsistent with ours (tail {}, last head {}): the shared memory is corrupted",
                self.tail, self.head_seen
            ));
            return Err(self.fail(e));
        }
        self.head_seen = head;
        Ok(())
    }

    /// Waits until `need` (at most the capacity) bytes are free at the tail,
    /// or until `deadline` (then `Full`).
    fn reserve(&mut self, need: u32, deadline: Option<Instant>) -> Result<()> {
        loop {
            if self.free() >= need {
                return Ok(());
            }
            let closed = self.region.word(Word::RxClosed).load(Acquire) != 0;
            let head = self.region.word(Word::Head).load(Acquire);
            self.accept_head(head)?;
            if self.free() >= need {
                return Ok(());
            }
            if closed {
                return Err(self.fail(Error::disconnected("the receiver closed the channel")));
            }
            let head_word = self.region.word(Word::Head);
            let closed_word = self.region.word(Word::RxClosed);
            let moved = || head_word.load(SeqCst) != head || closed_word.load(SeqCst) != 0;
            let waited = wait_until(
                &self.region,
                &self.link,
                &self.p,
                &PRODUCER_PARK,
                &moved,
                &mut self.episode,
                deadline,
            )?;
            if let Waited::Deadline = waited {
                let head = self.region.word(Word::Head).load(Acquire);
                self.accept_head(head)?;
                if self.free() >= need {
                    return Ok(());
                }
                return Err(Error::full());
            }
            if let Waited::PeerGone = waited {
                let head = self.region.word(Word::Head).load(Acquire);
                self.accept_head(head)?;
                if self.free() < need {
                    return Err(self.fail(Error::disconnected("the receiver exited or was killed")));
                }
            }
        }
    }

    /// Publishes the record at ring offset `at` by storing its kind (all of
    /// it and the empty slot after it were written before), takes `end` as
    /// the new tail and wakes the receiver if it is parked.
    fn publish(&mut self, at: u32, kind: u32, end: u32) -> Result<()> {
        // SeqCst: ordered before the load of the receiver's wait word in
        // `ring_peer` (see `wait_until`).
        self.region
            .atomic(at + layout::KIND_AT)?
            .store(kind, SeqCst);
        self.tail = end;
        ring_peer(
            &self.region,
            &self.link,
            Word::RxWait,
            Word::RxBell,
            &mut self.woken,
        );
        Ok(())
    }

    /// Marks the sending side closed and wakes the receiver.
    pub fn close(&mut self) {
        self.region.word(Word::TxClosed).store(1, SeqCst);
        let bell = self.region.word(Word::RxBell);
        bell.fetch_add(1, SeqCst);
        self.link.wake(bell);
    }

    /// The broken state, if any.
    pub fn broken(&self) -> Option<Error> {
        closed_error(&self.broken)
    }

    /// The region (for the test hook).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Takes the producer apart for a handoff: region, link, params, tail.
    pub fn into_parts(self) -> (Region, Link, Params, u32) {
        (self.region, self.link, self.p, self.tail)
    }
}

/// Where the next message is.
pub enum Ready {
    /// Whole in the ring: payload at `off`, `len` bytes, record of `rec` bytes.
    InRing { off: u32, len: u32, rec: u32 },
    /// Reassembled from pieces in the consumer's buffer.
    Assembled,
}

/// What the record at the head is.
enum Step {
    /// Not enough published bytes for the next record yet.
    NeedMore,
    /// Padding of `n` bytes to skip.
    Skip(u32),
    /// A whole message.
    Whole { off: u32, len: u32, rec: u32 },
    /// A piece of a message.
    Piece {
        kind: u32,
        off: u32,
        len: u32,
        total: u32,
        rec: u32,
    },
}

/// The words of the record slot at the consumer's head.
struct HeadWords<'a> {
    kind: &'a std::sync::atomic::AtomicU32,
    pos: &'a std::sync::atomic::AtomicU32,
    head: u32,
}

impl HeadWords<'_> {
    /// The kind of the record at the head if one is published there: a kind
    /// other than `EMPTY` *and* the head's own position in the record's
    /// position word. A record left from an earlier lap (which a dead or
    /// hostile sender can expose, e.g. with padding) carries an older
    /// position and counts as not published, so no record is read twice.
    fn published(&self, order: std::sync::atomic::Ordering) -> Option<u32> {
        let k = self.kind.load(order);
        (k != kind::EMPTY && self.pos.load(order) == self.head).then_some(k)
    }
}

#[derive(Debug)]
enum RxState {
    Idle,
    /// Collecting pieces of a message of `total` bytes into `buf`.
    Assembling {
        total: u32,
    },
    /// A message is complete in `buf`.
    Assembled,
    Closed(ErrorKind, String),
}

/// The receiving side of a ring.
#[derive(Debug)]
pub struct Consumer {
    region: Region,
    link: Link,
    p: Params,
    /// Our head: authoritative, only ever stored to the segment.
    head: u32,
    /// The sender's park episode we last woke.
    woken: u32,
    /// Our own park episode counter.
    episode: u32,
    state: RxState,
    /// Reassembly buffer, and the copy of a whole message lent by `recv_with`.
    buf: Vec<u8>,
    /// When a receive that does not park next checks the sender's process.
    liveness: LivenessClock,
    /// An error met by `poll`, reported by the next receive.
    pending: Option<Error>,
}

fn timeout_error() -> Error {
    Error::timeout("no message arrived before the deadline")
}

/// Loop turns in [`Consumer::ready`] between two looks at the deadline.
const TURNS_PER_DEADLINE_CHECK: u32 = 64;

impl Consumer {
    /// A consumer whose head is `head` (0 for a new ring).
    pub fn new(region: Region, link: Link, p: Params, head: u32) -> Consumer {
        Consumer {
            region,
            link,
            p,
            head,
            woken: 0,
            episode: 0,
            state: RxState::Idle,
            buf: Vec::new(),
            liveness: LivenessClock::new(),
            pending: None,
        }
    }

    /// Closes the channel for good with `e` and tells the sender.
    fn close(&mut self, e: Error) -> Error {
        if !matches!(self.state, RxState::Closed(..)) {
            self.state = RxState::Closed(e.kind(), e.message().to_string());
            self.signal_closed();
        }
        e
    }

    fn signal_closed(&self) {
        self.region.word(Word::RxClosed).store(1, SeqCst);
        let bell = self.region.word(Word::TxBell);
        bell.fetch_add(1, SeqCst);
        self.link.wake(bell);
    }

    /// Marks the receiving side closed and wakes the sender.
    pub fn close_on_drop(&mut self) {
        self.signal_closed();
    }

    /// The kind and position words of the record slot at the head.
    fn head_words(&self) -> Result<HeadWords<'_>> {
        // The head only moves by whole records and padding, so its offset is
        // a multiple of HDR and a whole header fits before the ring's end.
        let off = self.head & (self.p.cap - 1);
        Ok(HeadWords {
            kind: self.region.atomic(off + layout::KIND_AT)?,
            pos: self.region.atomic(off + layout::POS_AT)?,
            head: self.head,
        })
    }

    /// Reads and validates the record at the head.
    fn step(&self) -> Result<Step> {
        let cap = self.p.cap;
        let off = self.head & (cap - 1);
        let room = cap - off;
        // Acquire: the sender stores the kind last, so once it is not EMPTY
        // the rest of the record is written.
        let Some(k) = self.head_words()?.published(Acquire) else {
            return Ok(Step::NeedMore);
        };
        let len = self.region.load(off)?;
        let total = self.region.load(off + layout::TOTAL_AT)?;
        if k == kind::PAD {
            if off == 0 {
                // Padding runs to the ring's end; at its start it would
                // skip a whole lap and land on itself.
                return Err(Error::protocol(
                    "a padding record at the start of the ring: the shared memory is corrupted",
                ));
            }
            return Ok(Step::Skip(room));
        }
        let assembling = match self.state {
            RxState::Assembling { total } => Some(total),
            _ => None,
        };
        match k {
            kind::WHOLE | kind::FIRST => {
                if assembling.is_some() {
                    return Err(Error::protocol(
                        "a new message started before the previous one was complete: the shared memory is corrupted",
                    ));
                }
                let size = if k == kind::WHOLE { len } else { total };
                if size > self.p.max_frame {
                    return Err(Error::too_large(format!(
                        "the peer announced a frame of {size} bytes, above the maximum of {} bytes; the channel is closed",
                        self.p.max_frame
                    )));
                }
                if k == kind::FIRST && len > total {
                    return Err(Error::protocol(format!(
                        "a first piece of {len} bytes is longer than its message of {total} bytes: the shared memory is corrupted"
                    )));
                }
            }
            kind::MORE | kind::LAST => {
                let Some(total) = assembling else {
                    return Err(Error::protocol(
                        "a piece arrived outside of a message: the shared memory is corrupted",
                    ));
                };
                let got = self.buf.len() as u64 + u64::from(len);
                let fits = if k == kind::LAST {
                    got == u64::from(total)
                } else {
                    got < u64::from(total)
                };
                if !fits {
                    return Err(Error::protocol(format!(
                        "pieces add up to {got} bytes for a message of {total} bytes: the shared memory is corrupted"
                    )));
                }
            }
            other => {
                return Err(Error::protocol(format!(
                "unknown record kind {other} at ring offset {off}: the shared memory is corrupted"
            )))
            }
        }
        let rec = record_len(u64::from(len));
        if rec > u64::from(room) {
            return Err(Error::protocol(format!(
                "a record of {len} bytes at ring offset {off} runs past the end of the ring: the shared memory is corrupted"
            )));
        }
        let rec = rec as u32;
        Ok(if k == kind::WHOLE {
            Step::Whole {
                off: off + HDR,
                len,
                rec,
            }
        } else {
            Step::Piece {
                kind: k,
                off: off + HDR,
                len,
                total,
                rec,
            }
        })
    }

    fn take_piece(&mut self, k: u32, off: u32, len: u32, total: u32, rec: u32) -> Result<()> {
        if k == kind::FIRST {
            self.buf.clear();
            // `total` was checked against max_frame before this allocation.
            self.buf.try_reserve_exact(total as usize).map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot allocate {total} bytes for an incoming message"),
                )
            })?;
            self.state = RxState::Assembling { total };
        }
        self.region.copy_out(off, len, &mut self.buf)?;
        self.release(rec);
        if self.buf.len() == total as usize || k == kind::LAST {
            self.state = RxState::Assembled;
        }
        Ok(())
    }

    /// Gives `n` bytes at the head back to the sender.
    fn release(&mut self, n: u32) {
        self.head = self.head.wrapping_add(n);
        self.region.word(Word::Head).store(self.head, SeqCst);
        ring_peer(
            &self.region,
            &self.link,
            Word::TxWait,
            Word::TxBell,
            &mut self.woken,
        );
    }

    /// The sender is gone and the tail no longer moves.
    fn sender_gone(&mut self, why: &str) -> Error {
        let pending = matches!(self.state, RxState::Assembling { .. });
        self.state = RxState::Closed(ErrorKind::Disconnected, why.to_string());
        if pending {
            Error::protocol(
                "truncated message: the sender stopped in the middle of a message (did it crash while sending?)",
            )
        } else {
            Error::disconnected(why)
        }
    }

    /// Makes the next message ready, waiting until `deadline`.
    ///
    /// Every turn of the loop either consumes a record (the head moves
    /// forward, and a record is only taken at the position it was written
    /// at, so nothing is read twice) or waits; every
    /// [`TURNS_PER_DEADLINE_CHECK`] turns the deadline is checked too, so a
    /// peer that keeps publishing pieces or padding cannot hold a call past
    /// its deadline.
    pub fn ready(&mut self, deadline: Option<Instant>) -> Result<Ready> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        let mut turns = 0u32;
        loop {
            turns = turns.wrapping_add(1);
            if turns % TURNS_PER_DEADLINE_CHECK == 0
                && deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Err(timeout_error());
            }
            match &self.state {
                RxState::Closed(kind, msg) => return Err(Error::closed(*kind, msg)),
                RxState::Assembled => return Ok(Ready::Assembled),
                RxState::Idle | RxState::Assembling { .. } => {}
            }
            if let Err(e) = check_header(&self.region, &self.p) {
                return Err(self.close(e));
            }
            let step = match self.step() {
                Ok(step) => step,
                Err(e) => return Err(self.close(e)),
            };
            match step {
                Step::Skip(n) => self.release(n),
                Step::Whole { off, len, rec } => return Ok(Ready::InRing { off, len, rec }),
                Step::Piece {
                    kind,
                    off,
                    len,
                    total,
                    rec,
                } => {
                    if let Err(e) = self.take_piece(kind, off, len, total, rec) {
                        return Err(self.close(e));
                    }
                }
                Step::NeedMore => {
                    // Closed first, then the slot: a sender publishes before
                    // it closes.
                    let closed = self.region.word(Word::TxClosed).load(SeqCst) != 0;
                    if self.published()? {
                        continue;
                    }
                    if closed {
                        return Err(self.sender_gone("the sender closed the channel"));
                    }
                    // Field by field, to leave `self.episode` free to borrow.
                    let off = self.head & (self.p.cap - 1);
                    let words = HeadWords {
                        kind: self.region.atomic(off + layout::KIND_AT)?,
                        pos: self.region.atomic(off + layout::POS_AT)?,
                        head: self.head,
                    };
                    let closed_word = self.region.word(Word::TxClosed);
                    let moved =
                        || words.published(SeqCst).is_some() || closed_word.load(SeqCst) != 0;
                    let waited = wait_until(
                        &self.region,
                        &self.link,
                        &self.p,
                        &CONSUMER_PARK,
                        &moved,
                        &mut self.episode,
                        deadline,
                    )?;
                    match waited {
                        Waited::Moved => {}
                        Waited::Deadline => {
                            // Calls with a short or zero timeout never park
                            // for a whole tick: look at the lifeline here.
                            if self.liveness.due()
                                && !self.link.peer_alive()
                                && !self.published()?
                            {
                                return Err(self.sender_gone("the sender exited or was killed"));
                            }
                            return Err(timeout_error());
                        }
                        Waited::PeerGone => {
                            if !self.published()? {
                                return Err(self.sender_gone("the sender exited or was killed"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// True when a record is published at the head.
    fn published(&mut self) -> Result<bool> {
        match self.head_words() {
            Ok(words) => Ok(words.published(Acquire).is_some()),
            Err(e) => Err(self.close(e)),
        }
    }

    /// Receives one message into `out`.
    pub fn recv_frame(&mut self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        match self.ready(deadline)? {
            Ready::InRing { off, len, rec } => {
                out.clear();
                if let Err(e) = self.region.copy_out(off, len, out) {
                    return Err(self.close(e));
                }
                self.release(rec);
            }
            Ready::Assembled => {
                std::mem::swap(out, &mut self.buf);
                self.buf.clear();
                self.state = RxState::Idle;
            }
        }
        Ok(())
    }

    /// Receives one message and lends `f` a private copy of it (see
    /// [`Region::copy_out`] for why it is never lent in place).
    pub fn recv_with(&mut self, deadline: Option<Instant>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        match self.ready(deadline)? {
            Ready::InRing { off, len, rec } => {
                self.buf.clear();
                if let Err(e) = self.region.copy_out(off, len, &mut self.buf) {
                    return Err(self.close(e));
                }
                self.release(rec);
                f(&self.buf);
            }
            Ready::Assembled => {
                self.state = RxState::Idle;
                f(&self.buf);
            }
        }
        if self.buf.capacity() > 4 << 20 {
            // Do not keep a huge buffer alive after one huge message.
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// True when a receive would not block: a whole message is ready, or
    /// the channel is closed (the peer is gone, or an error closed it; the
    /// next receive reports it). Waits until `deadline` (`None`: as long as
    /// it takes).
    pub fn poll(&mut self, deadline: Option<Instant>) -> Result<bool> {
        match self.ready(deadline) {
            Ok(_) => Ok(true),
            Err(e) if e.is_timeout() => Ok(false),
            Err(e) => {
                self.pending = Some(e);
                Ok(true)
            }
        }
    }

    /// The region (for the test hook).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Takes the consumer apart for a handoff: region, link, params, head.
    /// Fails when part of a message has been taken out of the ring already.
    pub fn into_parts(self) -> Result<(Region, Link, Params, u32)> {
        match self.state {
            RxState::Idle => Ok((self.region, self.link, self.p, self.head)),
            RxState::Closed(kind, msg) => Err(Error::new(
                kind,
                format!("cannot hand off a closed receiver: {msg}"),
            )),
            RxState::Assembling { .. } | RxState::Assembled => Err(Error::invalid_input(
                "cannot hand off a receiver in the middle of a message; hand it off before receiving",
            )),
        }
    }
}
