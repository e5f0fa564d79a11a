//! The receiving side of a ring.

use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::time::Instant;

use conduit_core::{Error, ErrorKind, Result};

use crate::layout::{self, kind, record_len, Kind, Word, RECORD_HEADER as HDR};
use crate::mem::Region;
use crate::sys::Link;

use super::wait::{ring_door, ring_peer, wait_until, Waited, CONSUMER_PARK};
use super::{check_header, LivenessClock, Params};

/// Where the next message is.
pub enum Ready {
    /// Whole in the ring: payload at `off`, `len` bytes, record of `rec` bytes.
    InRing { off: u32, len: u32, rec: u32 },
    /// Reassembled from pieces in the consumer's buffer.
    Assembled,
}

/// A record at the head, read from the ring and validated.
#[derive(Clone, Copy, Debug)]
struct Record {
    kind: Kind,
    /// Ring offset of the payload.
    off: u32,
    /// Payload bytes.
    len: u32,
    /// A first piece's message length (0 otherwise).
    total: u32,
    /// Ring bytes the record takes (header and padded payload).
    rec: u32,
}

/// What the record at the head is.
enum Step {
    /// Not enough published bytes for the next record yet.
    NeedMore,
    /// Padding of `n` bytes to skip.
    Skip(u32),
    /// A whole message, or a piece of one.
    Record(Record),
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
        ring_door(&self.region, &self.link, Word::TxDoor);
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
        let Some(word) = self.head_words()?.published(Acquire) else {
            return Ok(Step::NeedMore);
        };
        let kind = Kind::try_from(word).map_err(|other| {
            Error::protocol(format!(
                "unknown record kind {other} at ring offset {off}: the shared memory is corrupted"
            ))
        })?;
        let len = self.region.load(off)?;
        let total = self.region.load(off + layout::TOTAL_AT)?;
        match kind {
            Kind::Empty => return Ok(Step::NeedMore),
            // Padding runs to the ring's end; at its start it would skip a
            // whole lap and land on itself.
            Kind::Pad if off == 0 => {
                return Err(Error::protocol(
                    "a padding record at the start of the ring: the shared memory is corrupted",
                ))
            }
            Kind::Pad => return Ok(Step::Skip(room)),
            Kind::Whole | Kind::First => self.check_start(kind, len, total)?,
            Kind::More | Kind::Last => self.check_piece(kind, len)?,
        }
        let rec = record_len(u64::from(len));
        if rec > u64::from(room) {
            return Err(Error::protocol(format!(
                "a record of {len} bytes at ring offset {off} runs past the end of the ring: the shared memory is corrupted"
            )));
        }
        Ok(Step::Record(Record {
            kind,
            off: off + HDR,
            len,
            total,
            rec: rec as u32,
        }))
    }

    /// Checks a record that starts a message (whole, or its first piece).
    fn check_start(&self, kind: Kind, len: u32, total: u32) -> Result<()> {
        if matches!(self.state, RxState::Assembling { .. }) {
            return Err(Error::protocol(
                "a new message started before the previous one was complete: the shared memory is corrupted",
            ));
        }
        let size = if kind == Kind::Whole { len } else { total };
        if size > self.p.max_frame {
            return Err(Error::too_large(format!(
                "the peer announced a frame of {size} bytes, above the maximum of {} bytes; the channel is closed",
                self.p.max_frame
            )));
        }
        if kind == Kind::First && len > total {
            return Err(Error::protocol(format!(
                "a first piece of {len} bytes is longer than its message of {total} bytes: the shared memory is corrupted"
            )));
        }
        Ok(())
    }

    /// Checks a middle or last piece against the message being assembled.
    fn check_piece(&self, kind: Kind, len: u32) -> Result<()> {
        let RxState::Assembling { total } = self.state else {
            return Err(Error::protocol(
                "a piece arrived outside of a message: the shared memory is corrupted",
            ));
        };
        let got = self.buf.len() as u64 + u64::from(len);
        let fits = if kind == Kind::Last {
            got == u64::from(total)
        } else {
            got < u64::from(total)
        };
        if !fits {
            return Err(Error::protocol(format!(
                "pieces add up to {got} bytes for a message of {total} bytes: the shared memory is corrupted"
            )));
        }
        Ok(())
    }

    fn take_piece(&mut self, r: Record) -> Result<()> {
        let Record {
            kind,
            off,
            len,
            total,
            rec,
        } = r;
        if kind == Kind::First {
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
        if self.buf.len() == total as usize || kind == Kind::Last {
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
        ring_door(&self.region, &self.link, Word::TxDoor);
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
                Step::Record(Record {
                    kind: Kind::Whole,
                    off,
                    len,
                    rec,
                    ..
                }) => return Ok(Ready::InRing { off, len, rec }),
                Step::Record(piece) => {
                    if let Err(e) = self.take_piece(piece) {
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

    /// The parameters both ends agreed on.
    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Registers for the doorbell and says whether a receive would not
    /// block now (see "Doorbell" in the crate docs): drains the lifeline,
    /// sets the door word, then looks at the ring. Never parks.
    pub fn wait_arm(&mut self) -> Result<bool> {
        let alive = self.link.drain();
        self.set_door(1);
        let ready = self.poll(Some(Instant::now()))?;
        if ready {
            self.set_door(0);
            return Ok(true);
        }
        if !alive && !self.published()? {
            // End-of-file on the lifeline: the sender's process is gone.
            let e = self.sender_gone("the sender exited or was killed");
            self.pending = Some(e);
            self.set_door(0);
            return Ok(true);
        }
        Ok(false)
    }

    fn set_door(&self, v: u32) {
        self.region.word(Word::RxDoor).store(v, SeqCst);
    }

    /// Ends a doorbell registration.
    pub fn wait_disarm(&mut self) {
        self.set_door(0);
    }

    /// The descriptor the doorbell rings (and that reads end-of-file once
    /// the sender's process is gone).
    pub fn wait_handle(&self) -> Option<conduit_core::WaitHandle<'_>> {
        self.link.wait_handle()
    }

    /// How long this side spins before parking.
    pub fn spin(&self) -> std::time::Duration {
        self.p.spin
    }

    /// The region (for the test hook).
    #[cfg(any(test, feature = "testing"))]
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
