//! Linux: the queue's messages in shared memory, one byte ring behind two
//! process-shared locks that survive their holder's death (design:
//! docs/design-notes.md, "A
//! shared-memory queue").
//!
//! - The **producer lock** serializes producers, the **consumer lock**
//!   consumers; between the two lock holders the ring is single-producer,
//!   single-consumer. A lock word holds its holder's pid: a waiter that
//!   finds the holder's process gone (`kill(pid, 0)`, at its tick) takes
//!   the lock over and repairs what the dead holder left (see `lock` for
//!   why not a robust `pthread` mutex).
//! - The ring: `head` and `tail` are byte positions (never wrapped, `u64`)
//!   in the segment's header; records are an 8-byte header (length, kind)
//!   and the payload, padded to 8 bytes, never split across the end (a
//!   `PAD` record fills the rest). A message up to [`Ring::piece_max`] is
//!   one `WHOLE` record; a longer one streams as `FIRST` (its total length,
//!   then bytes), `MIDDLE`… and `LAST`, written as the consumer frees room.
//! - A producer writes a record, then moves `tail` (so a record is visible
//!   whole or not at all); a consumer copies a record out, then moves
//!   `head`.
//!
//! What a crash leaves, and how the next lock holder repairs it:
//!
//! - A producer killed holding the producer lock: whatever it had not
//!   published is not in the ring (`tail` did not move). If it was part-way
//!   through a streamed message (`P_STREAMING` set), the next producer
//!   writes an `ABORT` record so that consumers drop the pieces. Lost: the
//!   one message it was sending.
//! - A consumer killed holding the consumer lock: if it had not moved
//!   `head`, the record is still there for the next consumer (it never
//!   returned the message to anyone: still exactly once). If it was part-way
//!   through a streamed message (`C_STREAMING` set), the next consumer skips
//!   the rest of it. Lost: at most the one message it was receiving.
//! - A consumer waiting for the next piece of a message whose producer died
//!   takes the producer lock over at its tick (its holder's process is gone)
//!   and
//!   drops the partial message.
//!
//! Every position and length read from the segment is checked against the
//! ring's bounds before use: a participant that scribbles on the segment
//! gets the others `Protocol` errors, never out-of-bounds accesses.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use conduit_core::{Error, ErrorKind, Result};
use conduit_shm::segment::Segment;
use rustix::io::Errno;
use rustix::thread::futex;

const MAGIC: u64 = u64::from_le_bytes(*b"cqring01");
/// The header page; the data area starts after it.
const HEADER: usize = 4096;
const MAGIC_AT: usize = 0;
const CAP_AT: usize = 8;
const P_LOCK_AT: usize = 64;
const C_LOCK_AT: usize = 192;
const TAIL_AT: usize = 320;
const P_STATE_AT: usize = 328;
const HEAD_AT: usize = 384;
const C_STATE_AT: usize = 392;
const DATA_SEQ_AT: usize = 448;
const DATA_WAITERS_AT: usize = 452;
const SPACE_SEQ_AT: usize = 512;
const SPACE_WAITERS_AT: usize = 516;
/// Async receivers and `conduit::wait`s registered for doorbells.
const RX_ARMED_AT: usize = 576;
/// Async senders registered for doorbells.
const TX_ARMED_AT: usize = 580;
/// Consumer ends alive (a hint: a killed process's ends stay counted).
const RX_ENDS_AT: usize = 640;
/// The head as producers last read it, on a line of their own (a hint,
/// so that a send reads the consumers' line only when the ring looks
/// full).
const HEAD_SEEN_AT: usize = 704;
/// The tail as consumers last read it, on a line of their own (a hint, so
/// that a receive reads the producers' line only when the ring looks
/// empty).
const TAIL_SEEN_AT: usize = 768;

const REC: u64 = 8;
const WHOLE: u32 = 1;
const FIRST: u32 = 2;
const MIDDLE: u32 = 3;
const LAST: u32 = 4;
const ABORT: u32 = 5;
const PAD: u32 = 6;

/// `P_STATE_AT`: a producer is part-way through a streamed message.
const P_STREAMING: u32 = 1;
/// `C_STATE_AT`: a consumer is part-way through a streamed message.
const C_STREAMING: u32 = 1;

/// How often a waiting call looks at the deadline, the other side's
/// presence and a dead streaming producer.
const TICK: Duration = Duration::from_millis(50);
/// How long a side spins before it sleeps on the futex.
const SPIN: Duration = Duration::from_micros(20);

/// The smallest and largest ring.
pub(crate) const MIN_CAPACITY: usize = 4096;
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// A mapped queue ring.
#[derive(Debug)]
pub(crate) struct Ring {
    seg: Segment,
    cap: u64,
}

/// What the waiting calls ask the queue: whether the other side is gone.
pub(crate) type Gone<'a> = &'a dyn Fn() -> Result<bool>;
/// Rings the other side's doorbell (async ends, `conduit::wait`).
pub(crate) type Bell<'a> = &'a dyn Fn();

fn corrupt(what: &str) -> Error {
    Error::protocol(format!(
        "the queue's shared ring is corrupted ({what}); a participant is misbehaving"
    ))
}

fn pad8(n: u64) -> u64 {
    (n + 7) & !7
}

impl Ring {
    /// A new ring of `capacity` bytes (rounded up to a power of two within
    /// bounds), its locks initialised.
    pub(crate) fn create(capacity: usize) -> Result<Ring> {
        let cap = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let seg = Segment::create(HEADER + cap)?;
        let ring = Ring {
            seg,
            cap: cap as u64,
        };
        ring.u64(CAP_AT).store(cap as u64, SeqCst);
        ring.u64(MAGIC_AT).store(MAGIC, SeqCst);
        Ok(ring)
    }

    /// Maps a handed-over ring.
    pub(crate) fn open(fd: OwnedFd) -> Result<Ring> {
        // The header first, to learn the capacity; then the whole segment.
        let head = Segment::open(fd, HEADER)?;
        let probe = Ring { seg: head, cap: 0 };
        if probe.u64(MAGIC_AT).load(SeqCst) != MAGIC {
            return Err(Error::protocol(
                "the handed queue ring is not a conduit queue's",
            ));
        }
        let cap = probe.u64(CAP_AT).load(SeqCst);
        if !(MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&cap) || !cap.is_power_of_two() {
            return Err(corrupt("capacity"));
        }
        let fd = probe
            .seg
            .clone_handle()
            .map_err(|e| Error::from_io("cannot map the queue ring", e))?;
        drop(probe);
        Ok(Ring {
            seg: Segment::open(fd, HEADER + cap as usize)?,
            cap,
        })
    }

    /// A new handle for the same ring, for a handoff.
    pub(crate) fn handle(&self) -> std::io::Result<OwnedFd> {
        self.seg.clone_handle()
    }

    /// The longest message sent as one record; longer ones stream.
    pub(crate) fn piece_max(&self) -> u64 {
        self.cap / 4 - REC
    }

    fn u64(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at % 8 == 0 && at + 8 <= HEADER);
        // SAFETY: `at` is one of this module's header offsets: 8-aligned
        // (the segment is page-aligned) and inside the header page, which
        // the mapping covers for as long as `self` lives. Only atomic
        // operations touch these words, in every process.
        unsafe { &*self.seg.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn u32(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at % 4 == 0 && at + 4 <= HEADER);
        // SAFETY: as for `u64`, 4-aligned.
        unsafe { &*self.seg.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// Takes the lock whose word is at `at` (the owner's pid, 0 when free;
    /// the waiters count in the next word), waiting until `deadline`
    /// (checking `gone` at every tick). `recovered` when its holder's
    /// process was found dead and the lock taken over.
    ///
    /// Hand-written rather than a robust `pthread` mutex: glibc keeps a
    /// robust mutex on its holder's robust list through pointers stored
    /// inside the mutex, which here is shared memory: a participant that
    /// scribbled on them would make the holder's unlock write where it
    /// chose. This lock keeps nothing but a pid in shared memory. A holder
    /// whose process is gone is noticed at the waiters' tick (`kill(pid,
    /// 0)` says no such process); a pid reused by a new process within the
    /// tick would look alive: a stall, never a wrong result.
    fn lock(&self, at: usize, deadline: Option<Instant>, gone: Gone<'_>) -> Result<Held<'_>> {
        // Uncontended: one CAS, no clock reads.
        if let Some(held) = self.try_lock(at) {
            return Ok(held);
        }
        let me = own_pid();
        let word = self.u32(at);
        let waiters = self.u32(at + 4);
        loop {
            for _ in 0..256 {
                if let Some(held) = self.try_lock(at) {
                    return Ok(held);
                }
                std::hint::spin_loop();
            }
            let owner = word.load(SeqCst);
            if owner != 0 {
                let mut timeout = TICK;
                if let Some(d) = deadline {
                    timeout = timeout.min(d.saturating_duration_since(Instant::now()));
                }
                if !timeout.is_zero() {
                    waiters.fetch_add(1, SeqCst);
                    let ts = futex::Timespec {
                        tv_sec: timeout.as_secs() as i64,
                        tv_nsec: timeout.subsec_nanos().into(),
                    };
                    // Returns when woken, when the word is no longer
                    // `owner`, or at the timeout; all are looked at below.
                    let _ = futex::wait(word, futex::Flags::empty(), owner, Some(&ts));
                    waiters.fetch_sub(1, SeqCst);
                }
                if let Some(held) = self.try_lock(at) {
                    return Ok(held);
                }
                let owner = word.load(SeqCst);
                if owner != 0 && owner != me && !alive(owner) {
                    // Its holder's process is gone: take the lock over.
                    if word.compare_exchange(owner, me, SeqCst, SeqCst).is_ok() {
                        return Ok(Held {
                            ring: self,
                            at,
                            recovered: true,
                        });
                    }
                    continue;
                }
            }
            if gone()? {
                return Err(Error::disconnected("the other side of the queue is gone"));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout("the queue stayed busy until the deadline"));
            }
        }
    }

    /// The lock at `at` if it is free now, or held by a process that is
    /// gone (then `recovered`).
    fn try_lock(&self, at: usize) -> Option<Held<'_>> {
        let me = own_pid();
        let word = self.u32(at);
        match word.compare_exchange(0, me, SeqCst, SeqCst) {
            Ok(_) => Some(Held {
                ring: self,
                at,
                recovered: false,
            }),
            Err(_) => None,
        }
    }

    /// [`try_lock`](Self::try_lock), also taking over a lock whose holder's
    /// process is gone (one system call: only off the hot path).
    fn try_lock_or_recover(&self, at: usize) -> Option<Held<'_>> {
        if let Some(held) = self.try_lock(at) {
            return Some(held);
        }
        let word = self.u32(at);
        let owner = word.load(SeqCst);
        let me = own_pid();
        if owner != 0
            && owner != me
            && !alive(owner)
            && word.compare_exchange(owner, me, SeqCst, SeqCst).is_ok()
        {
            return Some(Held {
                ring: self,
                at,
                recovered: true,
            });
        }
        None
    }

    /// Copies `src` into the data area at ring position `pos` (the caller
    /// checked that it does not cross the end).
    fn write_at(&self, pos: u64, src: &[u8]) -> Result<()> {
        let off = (pos & (self.cap - 1)) as usize;
        if off + src.len() > self.cap as usize {
            return Err(corrupt("a record would cross the end of the ring"));
        }
        // SAFETY: `off + src.len() <= cap`, so the copy stays inside the
        // data area of the mapping, which lives as long as `self`. The
        // destination is shared memory that other processes may read at the
        // same time: it is only ever accessed through raw copies and
        // atomics, never through references.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.seg.as_ptr().add(HEADER + off), src.len())
        };
        Ok(())
    }

    /// Appends `len` bytes at ring position `pos` to `out`, bounds-checked.
    fn read_at(&self, pos: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let off = pos & (self.cap - 1);
        if off + len > self.cap {
            return Err(corrupt("a record crosses the end of the ring"));
        }
        let len = len as usize;
        out.reserve(len);
        let start = out.len();
        // SAFETY: `off + len <= cap`: inside the data area of the mapping;
        // `out` has room for `len` more bytes (reserved), which the copy
        // initialises before `set_len`. The source may be written by a
        // misbehaving process concurrently: raw byte copy, any bytes are
        // valid `u8`s.
        unsafe {
            ptr::copy_nonoverlapping(
                self.seg.as_ptr().add(HEADER + off as usize),
                out.as_mut_ptr().add(start),
                len,
            );
            out.set_len(start + len);
        }
        Ok(())
    }

    /// Reads 8 bytes at ring position `pos`, bounds-checked.
    fn word_at(&self, pos: u64) -> Result<[u8; 8]> {
        let off = pos & (self.cap - 1);
        if off + 8 > self.cap {
            return Err(corrupt("a record header crosses the end of the ring"));
        }
        let mut b = [0u8; 8];
        // SAFETY: `off + 8 <= cap`: inside the data area of the mapping;
        // raw byte copy of shared memory (see `read_at`).
        unsafe {
            ptr::copy_nonoverlapping(
                self.seg.as_ptr().add(HEADER + off as usize),
                b.as_mut_ptr(),
                8,
            )
        };
        Ok(b)
    }

    fn header_at(&self, pos: u64) -> Result<(u32, u32)> {
        let b = self.word_at(pos)?;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let kind = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        Ok((len, kind))
    }

    /// Wakes the side sleeping on `seq`, if any. The caller's store (tail
    /// or head, `SeqCst`) comes first; a sleeper counts itself in
    /// `waiters` (`SeqCst`) before its last look: so either it sees the
    /// store, or this sees it counted and bumps `seq` (which fails or ends
    /// its futex wait).
    fn wake_one(&self, seq: usize, waiters: usize) {
        if self.u32(waiters).load(SeqCst) > 0 {
            self.u32(seq).fetch_add(1, SeqCst);
            // Nothing to do about a failure: the sleeper's wait is bounded
            // by its tick.
            let _ = futex::wake(self.u32(seq), futex::Flags::empty(), 1);
        }
    }

    /// Spins, then sleeps on the futex `seq` until `ready()`, a tick, or
    /// `deadline`. True when ready.
    fn wait(
        &self,
        seq: usize,
        waiters: usize,
        deadline: Option<Instant>,
        ready: &dyn Fn() -> bool,
    ) -> bool {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= SPIN {
                break;
            }
        }
        let now = Instant::now();
        let mut timeout = TICK;
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        if timeout.is_zero() {
            return ready();
        }
        let seen = self.u32(seq).load(SeqCst);
        self.u32(waiters).fetch_add(1, SeqCst);
        if !ready() {
            let ts = futex::Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: timeout.subsec_nanos().into(),
            };
            match futex::wait(self.u32(seq), futex::Flags::empty(), seen, Some(&ts)) {
                Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => {}
                Err(_) => {}
            }
        }
        self.u32(waiters).fetch_sub(1, SeqCst);
        ready()
    }

    /// Room for `need` bytes at the tail, waiting until `deadline`.
    fn room(&self, need: u64, deadline: Option<Instant>, gone: Gone<'_>) -> Result<()> {
        let tail = self.u64(TAIL_AT).load(SeqCst);
        // The head last seen: room then is room now (the head only moves
        // on), unless a participant scribbled on the hint, which is caught
        // below like a scribbled head.
        let seen = self.u64(HEAD_SEEN_AT).load(SeqCst);
        let used = tail.wrapping_sub(seen);
        if used <= self.cap && self.cap - used >= need {
            return Ok(());
        }
        loop {
            let head = self.u64(HEAD_AT).load(SeqCst);
            self.u64(HEAD_SEEN_AT).store(head, SeqCst);
            let used = tail.wrapping_sub(head);
            if used > self.cap {
                return Err(corrupt("head is ahead of tail"));
            }
            if self.cap - used >= need {
                return Ok(());
            }
            let ready = || {
                let head = self.u64(HEAD_AT).load(SeqCst);
                self.cap.saturating_sub(tail.wrapping_sub(head)) >= need
            };
            if self.wait(SPACE_SEQ_AT, SPACE_WAITERS_AT, deadline, &ready) {
                continue;
            }
            if gone()? {
                return Err(Error::disconnected(
                    "every receiver of the queue is gone (dropped, exited or killed)",
                ));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(ErrorKind::Full, "the queue is full"));
            }
        }
    }

    /// Writes one record at the tail (with a `PAD` first if it would cross
    /// the end) and publishes it.
    /// `extra`: room to leave free after it (for an abort record), `bell`:
    /// rings async receivers once it is published.
    fn put(
        &self,
        kind: u32,
        parts: &[&[u8]],
        deadline: Option<Instant>,
        gone: Gone<'_>,
        extra: u64,
        bell: Bell<'_>,
    ) -> Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let size = REC + pad8(len);
        let tail = self.u64(TAIL_AT).load(SeqCst);
        let left = self.cap - (tail & (self.cap - 1));
        let pad = if left < size { left } else { 0 };
        self.room(pad + size + extra, deadline, gone)?;
        let mut at = tail;
        if pad > 0 {
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&((pad - REC) as u32).to_le_bytes());
            h[4..].copy_from_slice(&PAD.to_le_bytes());
            self.write_at(at, &h)?;
            at += pad;
        }
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&(len as u32).to_le_bytes());
        h[4..].copy_from_slice(&kind.to_le_bytes());
        self.write_at(at, &h)?;
        let mut p = at + REC;
        for part in parts {
            self.write_at(p, part)?;
            p += part.len() as u64;
        }
        self.u64(TAIL_AT).store(at + size, SeqCst);
        self.wake_one(DATA_SEQ_AT, DATA_WAITERS_AT);
        if self.rx_armed() > 0 {
            bell();
        }
        Ok(())
    }

    /// Ring bytes the records of a streamed message of `n` bytes take, with
    /// room for one padding record at the end of the ring.
    fn stream_bytes(&self, n: u64) -> u64 {
        let piece = self.piece_max();
        let first = piece - 8;
        let rest = n.saturating_sub(first);
        let records = 1 + rest.div_ceil(piece);
        records * (REC + pad8(piece)) + REC + pad8(piece)
    }

    /// Whether a streamed message of `n` bytes fits in the ring whole (with
    /// room for an abort record): it is then written, and taken, all at
    /// once, so deadlines hold for it; a longer one has to move through
    /// the ring while it is written.
    fn fits(&self, n: u64) -> bool {
        self.stream_bytes(n) <= self.cap - REC
    }

    /// Sends `msg`, waiting for the producer lock and for room until
    /// `deadline`. `gone` tells whether every receiver is gone.
    #[cfg(test)]
    pub(crate) fn send(&self, msg: &[u8], deadline: Option<Instant>, gone: Gone<'_>) -> Result<()> {
        self.send_with(msg, deadline, gone, &|| {})
    }

    /// [`send`](Self::send), calling `bell` after each record it publishes
    /// while an async receiver is registered.
    pub(crate) fn send_with(
        &self,
        msg: &[u8],
        deadline: Option<Instant>,
        gone: Gone<'_>,
        bell: Bell<'_>,
    ) -> Result<()> {
        let held = self.lock(P_LOCK_AT, deadline, gone)?;
        if held.recovered && self.u32(P_STATE_AT).load(SeqCst) == P_STREAMING {
            // The last holder died streaming: end its message (it kept
            // room for this record).
            self.put(ABORT, &[], None, gone, 0, bell)?;
            self.u32(P_STATE_AT).store(0, SeqCst);
        }
        let piece = self.piece_max() as usize;
        if msg.len() <= piece {
            return self.put(WHOLE, &[msg], deadline, gone, 0, bell);
        }
        // Streamed: FIRST (total length + bytes), MIDDLE..., LAST.
        let n = msg.len() as u64;
        let fits = self.fits(n);
        if fits {
            // All of it at once: room for every record first (within the
            // deadline), then no waiting.
            self.room(self.stream_bytes(n), deadline, gone)?;
        }
        let total = n.to_le_bytes();
        let (first, mut rest) = msg.split_at(piece - 8);
        // Marked before the first piece: a producer that dies after it is
        // published is always seen streaming (an abort with no stream
        // begun is ignored by consumers).
        self.u32(P_STATE_AT).store(P_STREAMING, SeqCst);
        // Every piece leaves room for an abort record behind it.
        if let Err(e) = self.put(FIRST, &[&total, first], deadline, gone, REC, bell) {
            self.u32(P_STATE_AT).store(0, SeqCst);
            return Err(e);
        }
        while !rest.is_empty() {
            let (p, r) = rest.split_at(rest.len().min(piece));
            rest = r;
            let kind = if rest.is_empty() { LAST } else { MIDDLE };
            let extra = if kind == LAST { 0 } else { REC };
            match self.put(kind, &[p], deadline, gone, extra, bell) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Full => {
                    // The deadline passed part-way (a message longer than
                    // the ring, which consumers did not take in time):
                    // nothing is sent, the pieces in the ring are dropped.
                    let aborted = self.put(ABORT, &[], None, gone, 0, bell);
                    self.u32(P_STATE_AT).store(0, SeqCst);
                    aborted?;
                    return Err(e);
                }
                Err(e) => {
                    // Receivers gone: nobody reads the ring any more.
                    self.u32(P_STATE_AT).store(0, SeqCst);
                    return Err(e);
                }
            }
        }
        self.u32(P_STATE_AT).store(0, SeqCst);
        drop(held);
        Ok(())
    }

    /// Whether the streamed message whose first piece is at `head` is all
    /// published (its last piece, or an abort, is before the tail).
    fn complete(&self, head: u64) -> Result<bool> {
        let tail = self.u64(TAIL_AT).load(SeqCst);
        let mut pos = head;
        // Bounded: records are at least 8 bytes, so at most cap / 8 of them.
        for _ in 0..self.cap / REC {
            if tail.wrapping_sub(pos) < REC || tail.wrapping_sub(pos) > self.cap {
                return Ok(false);
            }
            let (len, kind) = self.header_at(pos)?;
            match kind {
                LAST | ABORT | WHOLE => return Ok(true),
                _ => pos += REC + pad8(u64::from(len)),
            }
        }
        Err(corrupt("a streamed message without an end"))
    }

    /// Waits until the streamed message at `head` is all published (true),
    /// or `deadline` passes (false). A producer found dead part-way (its
    /// lock says so) gets the abort record it owed.
    fn wait_complete(&self, head: u64, deadline: Option<Instant>, gone: Gone<'_>) -> Result<bool> {
        loop {
            if self.complete(head)? {
                return Ok(true);
            }
            let tail = self.u64(TAIL_AT).load(SeqCst);
            let ready = || self.u64(TAIL_AT).load(SeqCst) != tail;
            if self.wait(DATA_SEQ_AT, DATA_WAITERS_AT, deadline, &ready) {
                continue;
            }
            if let Some(held) = self.try_lock_or_recover(P_LOCK_AT) {
                if held.recovered && self.u32(P_STATE_AT).load(SeqCst) == P_STREAMING {
                    // The writer kept room for this record.
                    self.put(ABORT, &[], None, gone, 0, &|| {})?;
                    self.u32(P_STATE_AT).store(0, SeqCst);
                    continue;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The record at the head, waiting for one until `deadline`: `(kind,
    /// payload length, position)`.
    fn next(
        &self,
        deadline: Option<Instant>,
        gone: Gone<'_>,
        streaming: bool,
        bell: Bell<'_>,
    ) -> Result<(u32, u64, u64)> {
        loop {
            let head = self.u64(HEAD_AT).load(SeqCst);
            // The tail last seen: records before it are published (the
            // tail only moves on); the producers' line is read only when
            // that says empty.
            let mut tail = self.u64(TAIL_SEEN_AT).load(SeqCst);
            if tail.wrapping_sub(head) < REC || tail.wrapping_sub(head) > self.cap {
                tail = self.u64(TAIL_AT).load(SeqCst);
                self.u64(TAIL_SEEN_AT).store(tail, SeqCst);
            }
            let avail = tail.wrapping_sub(head);
            if avail > self.cap {
                return Err(corrupt("head is ahead of tail"));
            }
            if avail >= REC {
                let (len, kind) = self.header_at(head)?;
                let size = REC + pad8(u64::from(len));
                if size > avail || (head & (self.cap - 1)) + size > self.cap {
                    return Err(corrupt("a record is longer than what was published"));
                }
                if kind == PAD {
                    self.advance(head, size, bell);
                    continue;
                }
                return Ok((kind, u64::from(len), head));
            }
            let ready = || {
                let t = self.u64(TAIL_AT).load(SeqCst);
                t != tail
            };
            if self.wait(DATA_SEQ_AT, DATA_WAITERS_AT, deadline, &ready) {
                continue;
            }
            if streaming {
                // A producer that died part-way through this message: its
                // lock says so. Its stream gets the abort record it owed,
                // after whatever it published (it kept room for it).
                if let Some(held) = self.try_lock_or_recover(P_LOCK_AT) {
                    if held.recovered && self.u32(P_STATE_AT).load(SeqCst) == P_STREAMING {
                        self.put(ABORT, &[], None, gone, 0, bell)?;
                        self.u32(P_STATE_AT).store(0, SeqCst);
                        continue;
                    }
                }
            }
            if gone()? && self.u64(TAIL_AT).load(SeqCst) == head {
                return Err(Error::disconnected(
                    "the queue is empty and every sender is gone (dropped, exited or killed)",
                ));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout("no message arrived in time"));
            }
        }
    }

    fn advance(&self, head: u64, size: u64, bell: Bell<'_>) {
        self.u64(HEAD_AT).store(head + size, SeqCst);
        self.wake_one(SPACE_SEQ_AT, SPACE_WAITERS_AT);
        if self.tx_armed() > 0 {
            bell();
        }
    }

    /// Receives one message, waiting for the consumer lock and for a
    /// message until `deadline`. `gone` tells whether every sender is gone.
    #[cfg(test)]
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
        gone: Gone<'_>,
        max: u64,
    ) -> Result<Vec<u8>> {
        self.recv_with(deadline, gone, max, &|| {})
    }

    /// [`recv`](Self::recv), calling `bell` after each record it frees
    /// while an async sender is registered.
    pub(crate) fn recv_with(
        &self,
        deadline: Option<Instant>,
        gone: Gone<'_>,
        max: u64,
        bell: Bell<'_>,
    ) -> Result<Vec<u8>> {
        let empty_and_gone = || Ok(self.used() == 0 && gone()?);
        let held = self.lock(C_LOCK_AT, deadline, &empty_and_gone)?;
        // A holder died part-way through a streamed message: skip the rest
        // of it (that message is lost). The mark stays until the skip ends,
        // so that a consumer killed while skipping leaves it to the next.
        let mut skipping = self.u32(C_STATE_AT).load(SeqCst) == C_STREAMING;
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut assembling = false;
        loop {
            // Skipping the rest of a dead consumer's message holds nothing
            // of ours: the caller's deadline applies. Assembling a message
            // longer than the ring does (its producer is streaming it and
            // frees nothing else until it is taken).
            let (kind, len, at) = self.next(
                if assembling { None } else { deadline },
                gone,
                assembling || skipping,
                bell,
            )?;
            if skipping && (kind == WHOLE || kind == FIRST) {
                // The dead consumer had finished its stream (or not begun
                // taking this one): nothing left to skip.
                skipping = false;
                self.u32(C_STATE_AT).store(0, SeqCst);
            }
            let in_stream = assembling || skipping;
            match kind {
                WHOLE if !in_stream => {
                    self.read_at(at + REC, len, &mut out)?;
                    self.advance(at, REC + pad8(len), bell);
                    drop(held);
                    return Ok(out);
                }
                FIRST if !in_stream => {
                    if len < 8 {
                        return Err(corrupt("a first piece without its length"));
                    }
                    total = u64::from_le_bytes(self.word_at(at + REC)?);
                    if total > max {
                        // Only a peer with another maximum writes this (ends
                        // share theirs). Refuse it the way a dead consumer's
                        // stream is left: take the first piece and leave the
                        // mark, so the next receive skips the rest instead
                        // of every receive refusing the same record.
                        self.u32(C_STATE_AT).store(C_STREAMING, SeqCst);
                        self.advance(at, REC + pad8(len), bell);
                        drop(held);
                        return Err(Error::too_large(format!(
                            "a queued message of {total} bytes is longer than this receiver's \
                             maximum of {max} bytes (QueueConfig::max_message); it was skipped"
                        )));
                    }
                    // A message that fits the ring is taken once it is all
                    // there, so the deadline holds; a longer one is taken
                    // as it comes (its producer needs the room).
                    if self.fits(total) && !self.wait_complete(at, deadline, gone)? {
                        return Err(Error::timeout("no message arrived in time"));
                    }
                    out.reserve(total as usize);
                    self.read_at(at + REC + 8, len - 8, &mut out)?;
                    self.u32(C_STATE_AT).store(C_STREAMING, SeqCst);
                    self.advance(at, REC + pad8(len), bell);
                    assembling = true;
                }
                MIDDLE | LAST if in_stream => {
                    if assembling {
                        if out.len() as u64 + len > total {
                            return Err(corrupt("a streamed message longer than announced"));
                        }
                        self.read_at(at + REC, len, &mut out)?;
                    }
                    self.advance(at, REC + pad8(len), bell);
                    if kind == LAST {
                        self.u32(C_STATE_AT).store(0, SeqCst);
                        if skipping {
                            skipping = false;
                            continue;
                        }
                        if out.len() as u64 != total {
                            return Err(corrupt("a streamed message shorter than announced"));
                        }
                        drop(held);
                        return Ok(out);
                    }
                }
                ABORT => {
                    if at != u64::MAX {
                        self.advance(at, REC + pad8(len), bell);
                    }
                    self.u32(C_STATE_AT).store(0, SeqCst);
                    out.clear();
                    assembling = false;
                    skipping = false;
                }
                // A whole message or a new stream where a stream's pieces
                // were expected: the stream's producer died and this one
                // was written after its abort... which is not how producers
                // write; or a piece with no stream.
                _ => return Err(corrupt("records out of order")),
            }
        }
    }

    /// Counts a doorbell registration of a consumer in (`true`) or out.
    pub(crate) fn arm_rx(&self, on: bool) {
        self.arm(RX_ARMED_AT, on);
    }

    /// Counts a doorbell registration of a producer in (`true`) or out.
    pub(crate) fn arm_tx(&self, on: bool) {
        self.arm(TX_ARMED_AT, on);
    }

    fn arm(&self, at: usize, on: bool) {
        let w = self.u32(at);
        if on {
            w.fetch_add(1, SeqCst);
        } else {
            let _ = w.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        }
    }

    /// Counts a consumer end in (`true`) or out.
    pub(crate) fn count_rx(&self, on: bool) {
        self.arm(RX_ENDS_AT, on);
    }

    /// Consumer ends alive as counted (a killed process's ends stay in the
    /// count: zero means gone, more proves nothing).
    pub(crate) fn rx_ends(&self) -> u32 {
        self.u32(RX_ENDS_AT).load(SeqCst)
    }

    /// Whether a consumer is registered for doorbells (a process killed
    /// while registered leaves the count up: producers then ring for
    /// nothing, which costs a system call per message, nothing else).
    pub(crate) fn rx_armed(&self) -> u32 {
        self.u32(RX_ARMED_AT).load(SeqCst)
    }

    /// Whether a producer is registered for doorbells.
    pub(crate) fn tx_armed(&self) -> u32 {
        self.u32(TX_ARMED_AT).load(SeqCst)
    }

    /// Bytes queued (approximate).
    pub(crate) fn used(&self) -> u64 {
        let head = self.u64(HEAD_AT).load(SeqCst);
        self.u64(TAIL_AT)
            .load(SeqCst)
            .wrapping_sub(head)
            .min(self.cap)
    }
}

/// A held lock; released on drop.
struct Held<'a> {
    ring: &'a Ring,
    at: usize,
    recovered: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.ring.u32(self.at).store(0, SeqCst);
        if self.ring.u32(self.at + 4).load(SeqCst) > 0 {
            // A failure leaves the sleeper to its tick.
            let _ = futex::wake(self.ring.u32(self.at), futex::Flags::empty(), 1);
        }
    }
}

/// This process's id, the owner value of the locks (cached: a process
/// forked without `exec` must not use queue ends it inherited, as with
/// every conduit endpoint).
fn own_pid() -> u32 {
    match PID.load(SeqCst) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, SeqCst);
            pid
        }
        pid => pid,
    }
}

static PID: AtomicU32 = AtomicU32::new(0);

/// Whether process `pid` is running: it exists (`kill(pid, 0)`; a process
/// of another user counts) and is not a zombie (a killed process stays one
/// until its parent reaps it, and holds nothing any more).
fn alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    if matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH)) {
        return false;
    }
    // The state is the field after the command name's closing parenthesis.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        // Gone between the two looks, or no /proc: trust `kill`.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn never() -> Result<bool> {
        Ok(false)
    }

    /// The pid of a process that has exited (what a killed holder leaves
    /// in a lock word).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    }

    fn msg(producer: u8, seq: u32, len: usize) -> Vec<u8> {
        let mut m = vec![producer; len.max(5)];
        m[1..5].copy_from_slice(&seq.to_le_bytes());
        m.truncate(len.max(5));
        m
    }

    #[test]
    fn whole_and_streamed_messages_in_order() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY * 4).unwrap());
        let piece = ring.piece_max() as usize;
        let sizes = [5, 8, piece, piece + 1, piece * 3 + 7, 100_000, 9];
        let r = Arc::clone(&ring);
        let reader = std::thread::spawn(move || {
            (0..sizes.len())
                .map(|_| r.recv(None, &never, 1 << 20).unwrap())
                .collect::<Vec<_>>()
        });
        for (i, &n) in sizes.iter().enumerate() {
            ring.send(&msg(1, i as u32, n), None, &never).unwrap();
        }
        let got = reader.join().unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(got[i], msg(1, i as u32, n), "message {i} of {n} bytes");
        }
        assert_eq!(ring.used(), 0);
    }

    #[test]
    fn timeouts_full_and_empty() {
        let ring = Ring::create(MIN_CAPACITY).unwrap();
        let now = Some(Instant::now());
        let e = ring.recv(now, &never, 1 << 20).unwrap_err();
        assert!(e.is_timeout(), "{e}");
        let mut n = 0;
        loop {
            match ring.send(&[7u8; 100], Some(Instant::now()), &never) {
                Ok(()) => n += 1,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Full, "{e}");
                    break;
                }
            }
            assert!(n < 1000);
        }
        assert!(n > 10);
        for _ in 0..n {
            assert_eq!(ring.recv(None, &never, 1 << 20).unwrap(), vec![7u8; 100]);
        }
    }

    #[test]
    fn every_message_once_with_four_producers_and_four_consumers() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY * 16).unwrap());
        let per = 5000u32;
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let r = Arc::clone(&ring);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let m = r.recv(None, &never, 1 << 20).unwrap();
                        if m.len() == 1 {
                            return got;
                        }
                        got.push(m);
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..4u8)
            .map(|p| {
                let r = Arc::clone(&ring);
                std::thread::spawn(move || {
                    for i in 0..per {
                        let len = if i % 97 == 0 {
                            20_000
                        } else {
                            16 + (i as usize % 50)
                        };
                        r.send(&msg(p + 10, i, len), None, &never).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        for _ in 0..4 {
            ring.send(&[0], None, &never).unwrap();
        }
        let mut last = [None::<u32>; 4];
        let mut count = 0;
        for c in consumers {
            let got = c.join().unwrap();
            // Per consumer, each producer's messages arrive in order.
            let mut seen = [None::<u32>; 4];
            for m in got {
                let p = (m[0] - 10) as usize;
                let seq = u32::from_le_bytes([m[1], m[2], m[3], m[4]]);
                let len = if seq % 97 == 0 {
                    20_000
                } else {
                    16 + (seq as usize % 50)
                };
                assert_eq!(m, msg(p as u8 + 10, seq, len));
                assert!(seen[p].is_none_or(|s| s < seq), "reordered");
                seen[p] = Some(seq);
                last[p] = Some(last[p].map_or(seq, |l: u32| l.max(seq)));
                count += 1;
            }
        }
        assert_eq!(count, 4 * per as usize);
    }

    #[test]
    fn a_producer_that_dies_mid_stream_is_aborted() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let piece = ring.piece_max() as usize;
        // A thread that takes the producer lock, starts a streamed message
        // and ends holding the lock (its pid then names no live process).
        let r = Arc::clone(&ring);
        std::thread::spawn(move || {
            let held = r.lock(P_LOCK_AT, None, &never).unwrap();
            r.u32(P_STATE_AT).store(P_STREAMING, SeqCst);
            let total = (piece as u64 * 3).to_le_bytes();
            r.put(
                FIRST,
                &[&total, &vec![1u8; piece - 8]],
                None,
                &never,
                REC,
                &|| {},
            )
            .unwrap();
            std::mem::forget(held);
            r.u32(P_LOCK_AT).store(dead_pid(), SeqCst);
        })
        .join()
        .unwrap();
        // A consumer waiting for the rest notices, and the next message is
        // whole.
        let r = Arc::clone(&ring);
        let reader = std::thread::spawn(move || r.recv(None, &never, 1 << 20).unwrap());
        ring.send(b"after", None, &never).unwrap();
        assert_eq!(reader.join().unwrap(), b"after");
    }

    #[test]
    fn a_consumer_that_dies_mid_stream_loses_only_that_message() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let piece = ring.piece_max() as usize;
        let big = vec![3u8; piece * 2];
        let r = Arc::clone(&ring);
        let writer = std::thread::spawn(move || {
            r.send(&big, None, &never).unwrap();
            r.send(b"next", None, &never).unwrap();
        });
        // Take the first piece the way `recv` does, then die holding the
        // consumer lock.
        let r = Arc::clone(&ring);
        std::thread::spawn(move || {
            let held = r.lock(C_LOCK_AT, None, &never).unwrap();
            let (kind, len, at) = r.next(None, &never, false, &|| {}).unwrap();
            assert_eq!(kind, FIRST);
            r.u32(C_STATE_AT).store(C_STREAMING, SeqCst);
            r.advance(at, REC + pad8(len), &|| {});
            std::mem::forget(held);
            r.u32(C_LOCK_AT).store(dead_pid(), SeqCst);
        })
        .join()
        .unwrap();
        assert_eq!(ring.recv(None, &never, 1 << 20).unwrap(), b"next");
        writer.join().unwrap();
    }

    #[test]
    fn a_streamed_message_above_the_maximum_is_skipped_once() {
        // A producer with a larger maximum than this consumer (a hostile or
        // mismatched peer: handed-off ends share the maximum) streams a
        // message; the consumer refuses it with TooLarge and the queue goes
        // on with the next message instead of refusing the same one forever.
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let big = vec![5u8; ring.piece_max() as usize * 2];
        let r = Arc::clone(&ring);
        let writer = std::thread::spawn(move || {
            r.send(&big, None, &never).unwrap();
            r.send(b"next", None, &never).unwrap();
        });
        let max = ring.piece_max();
        let e = ring.recv(None, &never, max).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        assert_eq!(ring.recv(None, &never, max).unwrap(), b"next");
        writer.join().unwrap();
    }

    #[test]
    fn scribbled_positions_are_errors() {
        let ring = Ring::create(MIN_CAPACITY).unwrap();
        ring.send(b"hello", None, &never).unwrap();
        ring.u64(HEAD_AT).store(u64::MAX / 2, SeqCst);
        let e = ring
            .recv(Some(Instant::now()), &never, 1 << 20)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        // A producer reads the head when its hint does not vouch for room.
        ring.u64(HEAD_SEEN_AT).store(u64::MAX / 3, SeqCst);
        let e = ring.send(b"x", Some(Instant::now()), &never).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        ring.u64(HEAD_AT).store(0, SeqCst);
        // A record header claiming more than was published.
        ring.write_at(0, &[0xff, 0xff, 0, 0, 1, 0, 0, 0]).unwrap();
        let e = ring
            .recv(Some(Instant::now()), &never, 1 << 20)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    }

    /// Runs `f` on a thread; `None` when it is still running after 2 s.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(2)).ok()
    }

    /// A consumer killed after it took a stream's last piece but before it
    /// cleared `C_STATE` (kill -9 lands between `advance` and the store):
    /// the next consumer's `try_recv` on the then empty ring must not wait
    /// without a deadline for pieces to skip.
    #[test]
    fn a_consumer_killed_after_its_stream_leaves_try_recv_non_blocking() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let r = Arc::clone(&ring);
        std::thread::spawn(move || {
            let held = r.lock(C_LOCK_AT, None, &never).unwrap();
            r.u32(C_STATE_AT).store(C_STREAMING, SeqCst);
            std::mem::forget(held);
            r.u32(C_LOCK_AT).store(dead_pid(), SeqCst);
        })
        .join()
        .unwrap();
        let r = Arc::clone(&ring);
        let out = within(move || {
            r.recv(Some(Instant::now()), &never, 1 << 20)
                .map_err(|e| e.kind())
        });
        // Releases a blocked receive.
        ring.send(b"x", None, &never).unwrap();
        let out = out.expect("try_recv on an empty ring was still blocked 2 s later");
        assert_eq!(out, Err(ErrorKind::Timeout));
    }

    /// Every size around the piece boundaries, at every alignment the
    /// records can take in the ring, arrives whole and in order.
    #[test]
    fn sizes_around_piece_boundaries_at_every_offset() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let piece = ring.piece_max() as usize;
        let mut sizes = vec![0usize, 1, 7, 8, 9];
        for k in 1..=5 {
            for d in [-9i64, -8, -1, 0, 1, 8, 9] {
                sizes.push((piece as i64 * k + d) as usize);
                sizes.push((piece as i64 * k - 8 + d) as usize);
            }
        }
        sizes.push(MIN_CAPACITY);
        sizes.push(MIN_CAPACITY * 3 + 5);
        let mut all = Vec::new();
        for shift in (0..64).step_by(8) {
            all.push(shift);
            all.extend(sizes.iter().copied());
        }
        let want: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 13 + j) as u8).collect())
            .collect();
        let r = Arc::clone(&ring);
        let n = want.len();
        let reader = std::thread::spawn(move || {
            (0..n)
                .map(|_| {
                    r.recv(
                        Some(Instant::now() + Duration::from_secs(20)),
                        &never,
                        1 << 20,
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        });
        for m in &want {
            ring.send(m, Some(Instant::now() + Duration::from_secs(20)), &never)
                .unwrap();
        }
        let got = reader.join().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "message {i} of {} bytes", w.len());
        }
        assert_eq!(ring.used(), 0);
    }

    /// A participant that scribbles on a lock word's neighbours while
    /// another process holds the lock: glibc keeps a robust mutex on its
    /// holder's robust list through the `__list` pointers *inside the
    /// mutex* (shared memory), and `pthread_mutex_unlock` writes through
    /// them (`next->__prev = prev; prev->__next = next`). The holder then
    /// writes scribbler-chosen values at scribbler-chosen addresses of its
    /// own memory: the documented "never undefined behaviour" does not hold.
    /// Here the addresses point into a buffer of the holder's, so the test
    /// only shows the writes.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    fn scribbled_lock_makes_the_holder_write_its_own_memory() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let r = Arc::clone(&ring);
        let buf = std::thread::spawn(move || {
            let mut buf = Box::new([0u64; 8]);
            let base = buf.as_mut_ptr() as usize;
            let held = r.lock(P_LOCK_AT, None, &never).unwrap();
            // The scribbler: glibc x86_64 `struct __pthread_mutex_s` has
            // `__list.__prev` at 24 and `__list.__next` at 32.
            let m = r.seg.as_ptr().wrapping_add(P_LOCK_AT);
            // SAFETY: inside the header page of the mapping; what a hostile
            // process with the segment mapped can do at any time.
            unsafe {
                ptr::write_unaligned(m.add(24).cast::<usize>(), base + 5 * 8);
                ptr::write_unaligned(m.add(32).cast::<usize>(), base + 2 * 8);
            }
            drop(held);
            *buf
        })
        .join()
        .unwrap();
        assert_eq!(
            buf, [0u64; 8],
            "unlocking the scribbled lock wrote into the holder's own memory"
        );
        drop(ring);
    }

    /// Two consumers killed in a row inside one streamed message: the
    /// first after taking its first piece, the second (a real `recv` in a
    /// forked process) while it skips the rest, after it skipped a piece.
    /// The third must still skip the rest of that message and get the next
    /// one, not fail on its remaining pieces (which every later consumer
    /// would hit too: the queue is wedged). `recv` clears `C_STATE` as soon
    /// as it takes the lock over, before it skipped anything.
    #[test]
    fn two_consumers_killed_in_one_stream_lose_only_that_message() {
        let ring = Arc::new(Ring::create(MIN_CAPACITY).unwrap());
        let piece = ring.piece_max() as usize;
        // A producer part-way through a stream: FIRST and one MIDDLE out,
        // holding the producer lock until told to go on.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (out_tx, out_rx) = std::sync::mpsc::channel::<()>();
        let r = Arc::clone(&ring);
        let writer = std::thread::spawn(move || {
            let held = r.lock(P_LOCK_AT, None, &never).unwrap();
            r.u32(P_STATE_AT).store(P_STREAMING, SeqCst);
            let total = (piece as u64 * 3).to_le_bytes();
            let no = &|| {};
            r.put(
                FIRST,
                &[&total, &vec![1u8; piece - 8]],
                None,
                &never,
                REC,
                no,
            )
            .unwrap();
            r.put(MIDDLE, &[&vec![2u8; piece]], None, &never, REC, no)
                .unwrap();
            out_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            r.put(MIDDLE, &[&vec![2u8; piece]], None, &never, REC, no)
                .unwrap();
            r.put(LAST, &[&vec![3u8; piece]], None, &never, 0, no)
                .unwrap();
            r.u32(P_STATE_AT).store(0, SeqCst);
            drop(held);
            r.send(b"next", None, &never).unwrap();
        });
        out_rx.recv().unwrap();
        // The first consumer: takes the first piece, dies holding the lock.
        let r = Arc::clone(&ring);
        std::thread::spawn(move || {
            let held = r.lock(C_LOCK_AT, None, &never).unwrap();
            let (kind, len, at) = r.next(None, &never, false, &|| {}).unwrap();
            assert_eq!(kind, FIRST);
            r.u32(C_STATE_AT).store(C_STREAMING, SeqCst);
            r.advance(at, REC + pad8(len), &|| {});
            std::mem::forget(held);
            r.u32(C_LOCK_AT).store(dead_pid(), SeqCst);
        })
        .join()
        .unwrap();
        // The second: a real receive in a child process, which skips the
        // middle piece and waits for the rest; killed there.
        let tail = ring.u64(TAIL_AT).load(SeqCst);
        // SAFETY: the child only runs `Ring::recv` on the shared mapping
        // (no allocation while skipping) and then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // A process of its own for the locks (see `own_pid`).
            PID.store(0, SeqCst);
            let _ = ring.recv(None, &never, 1 << 20);
            // SAFETY: ends the forked child without running the parent's
            // destructors or test harness.
            unsafe { libc::_exit(0) };
        }
        let started = Instant::now();
        while ring.u64(HEAD_AT).load(SeqCst) != tail {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the second consumer skipped nothing"
            );
            std::thread::yield_now();
        }
        // SAFETY: `pid` is our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        go_tx.send(()).unwrap();
        let r = Arc::clone(&ring);
        let got = within(move || r.recv(None, &never, 1 << 20).map_err(|e| e.to_string()));
        writer.join().unwrap();
        assert_eq!(got, Some(Ok(b"next".to_vec())));
    }
}
