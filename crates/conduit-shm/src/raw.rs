//! Not part of the supported API: two shared words for measuring the raw
//! cost of a shared-memory spin ping-pong, the baseline the transport's
//! latency is compared with in benchmarks.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use conduit_core::{Error, Result};

use crate::layout::{Word, DATA_OFFSET, MIN_CAPACITY};
use crate::mem::Region;
use crate::sys::{OsHandle, Segment};

/// Two `u32` words on separate cache lines of a fresh segment.
#[derive(Debug)]
pub struct SpinPair {
    region: Region,
}

impl SpinPair {
    /// Creates a new segment.
    pub fn create() -> Result<SpinPair> {
        let seg = Segment::create(DATA_OFFSET + MIN_CAPACITY as usize)?;
        Ok(SpinPair {
            region: Region::new(Arc::new(seg), MIN_CAPACITY)?,
        })
    }

    /// Maps a segment received from [`SpinPair::handle`] in another process.
    pub fn open(handle: OsHandle) -> Result<SpinPair> {
        let seg = Segment::open(handle, DATA_OFFSET + MIN_CAPACITY as usize)?;
        Ok(SpinPair {
            region: Region::new(Arc::new(seg), MIN_CAPACITY)?,
        })
    }

    /// A new handle to the segment, to hand to another process.
    pub fn handle(&self) -> Result<OsHandle> {
        self.region
            .segment()
            .clone_handle()
            .map_err(|e| Error::from_io("cannot duplicate the segment handle", e))
    }

    /// The word the first side writes.
    pub fn ping(&self) -> &AtomicU32 {
        self.region.word(Word::Head)
    }

    /// The word the second side writes.
    pub fn pong(&self) -> &AtomicU32 {
        self.region.word(Word::TxWait)
    }
}
