//! The sending side of a ring.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::Instant;

use conduit_core::{Error, ErrorKind, Result};

use crate::layout::{self, kind, record_len, Word, RECORD_HEADER as HDR};
use crate::mem::Region;
use crate::sys::Link;

use super::wait::{ring_door, ring_peer, wait_until, Waited, PRODUCER_PARK};
use super::{closed_error, LivenessClock, Params};

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
    #[cfg(any(test, feature = "testing"))]
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
        let Some((head, kind_word, rest)) = super::split_kind(bytes) else {
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
    #[cfg(any(test, feature = "testing"))]
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
        ring_door(&self.region, &self.link, Word::RxDoor);
        Ok(())
    }

    /// Registers for the receiver's doorbell (an async sender waiting for
    /// room; see "Doorbell" in the crate docs): drains the lifeline and sets
    /// the tx door word. A lifeline at end-of-file breaks the channel (the
    /// receiver's process is gone), so the next send says so. The caller
    /// tries to send once more before it waits.
    pub fn wait_arm(&mut self) {
        if !self.link.drain() && self.broken.is_none() {
            let _ = self.fail(Error::disconnected("the receiver exited or was killed"));
        }
        self.region.word(Word::TxDoor).store(1, SeqCst);
    }

    /// Ends a doorbell registration.
    pub fn wait_disarm(&mut self) {
        self.region.word(Word::TxDoor).store(0, SeqCst);
    }

    /// The descriptor the receiver's doorbell rings.
    pub fn wait_handle(&self) -> Option<conduit_core::WaitHandle<'_>> {
        self.link.wait_handle()
    }

    /// Marks the sending side closed and wakes the receiver.
    pub fn close(&mut self) {
        self.region.word(Word::TxClosed).store(1, SeqCst);
        let bell = self.region.word(Word::RxBell);
        bell.fetch_add(1, SeqCst);
        self.link.wake(bell);
        ring_door(&self.region, &self.link, Word::RxDoor);
    }

    /// The broken state, if any.
    pub fn broken(&self) -> Option<Error> {
        closed_error(&self.broken)
    }

    /// The parameters both ends agreed on.
    pub fn params(&self) -> &Params {
        &self.p
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

    /// Takes the producer apart for a handoff: region, link, params, tail.
    pub fn into_parts(self) -> (Region, Link, Params, u32) {
        (self.region, self.link, self.p, self.tail)
    }
}
