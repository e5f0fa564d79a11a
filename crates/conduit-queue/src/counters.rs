//! The queue's shared counters: approximately how many messages are queued
//! (Python's `qsize()`), and how many sent messages are not yet marked done
//! (`JoinableQueue`'s unfinished tasks).
//!
//! They live in one page of shared memory (a conduit-shm segment: sealed,
//! private to the user, reachable only through handed-over handles). Only
//! atomic operations touch it, so a participant that scribbles on it can make
//! `len()` or `join()` wrong, never cause undefined behaviour; the messages
//! themselves never pass through it.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use conduit_core::handoff::OsHandle;
use conduit_core::{Error, ErrorKind, Result};
use conduit_shm::segment::Segment;

const LEN: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"cqcount2");
const MAGIC_AT: usize = 0;
// One cache line each, away from the magic: producers add to `ENQUEUED`,
// consumers to `DEQUEUED` (the queued count is the difference), so that a
// message does not move one line between a producer's and a consumer's
// CPU (that cost the Linux ring a third of its rate).
const ENQUEUED_AT: usize = 64;
const DEQUEUED_AT: usize = 128;
const UNFINISHED_AT: usize = 192;

/// A mapped counters page.
#[derive(Debug)]
pub(crate) struct Counters {
    seg: Segment,
}

impl Counters {
    /// A new zeroed page.
    pub(crate) fn create() -> Result<Counters> {
        let c = Counters {
            seg: Segment::create(LEN)?,
        };
        c.word(MAGIC_AT).store(MAGIC, Ordering::Release);
        Ok(c)
    }

    /// Maps a handed-over page.
    pub(crate) fn open(handle: OsHandle) -> Result<Counters> {
        let c = Counters {
            seg: Segment::open(handle, LEN)?,
        };
        if c.word(MAGIC_AT).load(Ordering::Acquire) != MAGIC {
            return Err(Error::protocol(
                "the handed queue counters page is not a conduit queue's",
            ));
        }
        Ok(c)
    }

    /// A new handle for the same page, for a handoff.
    pub(crate) fn handle(&self) -> io::Result<OsHandle> {
        self.seg.clone_handle()
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at + 8 <= LEN && at % 8 == 0);
        // SAFETY: `at` is one of the constants above, so `at + 8 <= LEN`
        // (the mapping's length, checked by `Segment::create/open`) and the
        // address is 8-aligned (the mapping is page-aligned). The page stays
        // mapped as long as `self`, which the returned reference borrows.
        // Other processes may write the word at any time, with anything: every
        // bit pattern is a valid `u64`, and this process only ever accesses
        // it atomically, so there is no data race in Rust's memory model.
        unsafe { AtomicU64::from_ptr(self.seg.as_ptr().add(at).cast::<u64>()) }
    }

    /// Before a message is sent: one more queued, one more unfinished.
    pub(crate) fn sending(&self) {
        self.word(ENQUEUED_AT).fetch_add(1, Ordering::Relaxed);
        self.word(UNFINISHED_AT).fetch_add(1, Ordering::AcqRel);
    }

    /// A send that [`sending`](Self::sending) announced failed.
    pub(crate) fn not_sent(&self) {
        self.word(ENQUEUED_AT).fetch_sub(1, Ordering::Relaxed);
        self.word(UNFINISHED_AT).fetch_sub(1, Ordering::AcqRel);
    }

    /// A message was taken off the queue.
    pub(crate) fn received(&self) {
        self.word(DEQUEUED_AT).fetch_add(1, Ordering::Relaxed);
    }

    /// Approximate number of queued messages (never negative).
    pub(crate) fn queued(&self) -> usize {
        let dequeued = self.word(DEQUEUED_AT).load(Ordering::Relaxed);
        let enqueued = self.word(ENQUEUED_AT).load(Ordering::Relaxed);
        let v = enqueued.wrapping_sub(dequeued) as i64;
        usize::try_from(v.max(0)).unwrap_or(usize::MAX)
    }

    /// Sent messages not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        let v = self.word(UNFINISHED_AT).load(Ordering::Acquire) as i64;
        v.max(0) as u64
    }

    /// Marks one message done; refuses to go below zero.
    pub(crate) fn task_done(&self) -> Result<()> {
        let word = self.word(UNFINISHED_AT);
        let mut cur = word.load(Ordering::Acquire);
        // Bounded: each failed exchange means another participant changed
        // the word; a million in a row means something is wrong with it.
        for _ in 0..1_000_000 {
            if cur as i64 <= 0 {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "task_done() was called more times than messages were sent \
                     (call it once per received message)",
                ));
            }
            match word.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
        Err(Error::protocol(
            "the queue's unfinished-task counter keeps changing; a participant is misbehaving",
        ))
    }
}
