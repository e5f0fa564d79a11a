//! The memory layer: the only code that touches the mapped segment.
//!
//! A [`Region`] is a mapped segment plus the ring capacity this side was
//! configured with (never the capacity read from the segment). Control words
//! are fixed offsets below the data area, checked once when the region is
//! built. Every access to the data area takes an offset and a length that
//! may come from the peer and is bounds-checked against the capacity here,
//! so no input can make this process touch memory outside the mapping.
//! Multi-byte values the protocol reads from the ring (record headers) are
//! loaded with atomic loads, copied into locals and validated by the caller;
//! they are never re-read after validation. Payload bytes are copied out
//! through raw pointers ([`Region::copy_out`]); no Rust reference to bytes
//! the peer can write is ever formed.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use conduit_core::{Error, ErrorKind, Result};

use crate::layout::{Word, DATA_OFFSET, RECORD_HEADER};
use crate::sys::Segment;

/// A mapped segment seen as control words plus a ring of `cap` bytes.
#[derive(Clone, Debug)]
pub struct Region {
    seg: Arc<Segment>,
    cap: u32,
}

fn out_of_bounds(off: u64, len: usize) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("ring access at offset {off} of {len} bytes is out of bounds"),
    )
}

impl Region {
    /// Views `seg` as a ring of `cap` bytes; fails unless `cap` is a power of
    /// two of at least one record header and the segment is large enough.
    pub fn new(seg: Arc<Segment>, cap: u32) -> Result<Region> {
        let fits = (DATA_OFFSET as u64)
            .checked_add(u64::from(cap))
            .is_some_and(|end| end <= seg.len() as u64);
        if !cap.is_power_of_two() || cap < RECORD_HEADER || !fits {
            return Err(Error::protocol(format!(
                "a ring of {cap} bytes does not fit a segment of {} bytes",
                seg.len()
            )));
        }
        Ok(Region { seg, cap })
    }

    /// The segment.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// A control word.
    pub fn word(&self, w: Word) -> &AtomicU32 {
        // SAFETY: `w.offset()` is a multiple of 4 below DATA_OFFSET, which
        // `new` checked to lie inside the mapping; the mapping is page-aligned,
        // so the pointer is aligned for `AtomicU32` (same layout as `u32`). The
        // mapping lives as long as `self.seg`, which the returned reference
        // borrows. Every access from this process goes through atomics; other
        // processes may write the word at any time, which atomics tolerate.
        unsafe { &*self.seg.as_ptr().add(w.offset()).cast::<AtomicU32>() }
    }

    fn check(&self, off: u32, len: usize) -> Result<*mut u8> {
        let end = (off as usize).checked_add(len);
        if !matches!(end, Some(end) if end <= self.cap as usize) {
            return Err(out_of_bounds(u64::from(off), len));
        }
        // SAFETY: DATA_OFFSET + off + len <= DATA_OFFSET + cap <= the mapping's
        // length (checked above and in `new`), so the pointer stays in bounds.
        Ok(unsafe { self.seg.as_ptr().add(DATA_OFFSET + off as usize) })
    }

    /// The ring word at `off` (a multiple of 4), as an atomic.
    pub fn atomic(&self, off: u32) -> Result<&AtomicU32> {
        if off % 4 != 0 {
            return Err(out_of_bounds(u64::from(off), 4));
        }
        let p = self.check(off, 4)?;
        // SAFETY: `p` is in bounds (checked) and 4-aligned (page-aligned base,
        // DATA_OFFSET and `off` multiples of 4); the mapping lives as long as
        // `self.seg`, which the returned reference borrows. See `word` for why
        // an atomic view of shared memory is sound.
        Ok(unsafe { &*p.cast::<AtomicU32>() })
    }

    /// Loads the ring word at `off` (a multiple of 4).
    pub fn load(&self, off: u32) -> Result<u32> {
        Ok(self.atomic(off)?.load(Ordering::Relaxed))
    }

    /// Copies `src` into the ring at `off`.
    pub fn write(&self, off: u32, src: &[u8]) -> Result<()> {
        let p = self.check(off, src.len())?;
        // SAFETY: the destination range is inside the mapping (checked) and any
        // byte value is valid there. `ptr::copy` allows overlap, in case `src`
        // itself lies in a mapping of the same segment.
        unsafe { std::ptr::copy(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Appends a copy of `len` bytes of the ring at `off` to `out`.
    ///
    /// No reference to the shared bytes is ever formed: the peer can write
    /// them at any time (a hostile one will), and a `&[u8]` over memory that
    /// changes under it is undefined behaviour. The bytes are copied with a
    /// raw-pointer copy into memory this process owns; a peer writing
    /// during the copy makes the copy garbage (a `Decode` error later), not
    /// undefined behaviour of the safe code that reads it.
    pub fn copy_out(&self, off: u32, len: u32, out: &mut Vec<u8>) -> Result<()> {
        let src = self.check(off, len as usize)?;
        let len = len as usize;
        out.try_reserve(len).map_err(|_| {
            Error::new(
                ErrorKind::Io,
                format!("cannot allocate {len} bytes for an incoming message"),
            )
        })?;
        let at = out.len();
        // SAFETY: `src..src + len` is inside the mapping (checked above) and
        // only read, through a raw pointer. `out` has room for `len` more
        // bytes (reserved above), the destination is this process's own
        // heap memory, which cannot overlap the mapping, and after the copy
        // those `len` bytes are initialized (any byte value is a valid `u8`),
        // so the new length is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(at), len);
            out.set_len(at + len);
        }
        Ok(())
    }

    /// Test hook: writes `bytes` anywhere in the segment (header included),
    /// bounds-checked against the mapping.
    #[cfg(any(test, feature = "testing"))]
    pub fn poke(&self, at: u64, bytes: &[u8]) -> Result<()> {
        let end = at.checked_add(bytes.len() as u64);
        if !matches!(end, Some(end) if end <= self.seg.len() as u64) {
            return Err(Error::invalid_input(format!(
                "poke of {} bytes at {at} is outside the {}-byte segment",
                bytes.len(),
                self.seg.len()
            )));
        }
        // SAFETY: the range is inside the mapping (checked just above).
        unsafe {
            std::ptr::copy(
                bytes.as_ptr(),
                self.seg.as_ptr().add(at as usize),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// The segment's length in bytes.
    #[cfg(any(test, feature = "testing"))]
    pub fn segment_len(&self) -> usize {
        self.seg.len()
    }
}
