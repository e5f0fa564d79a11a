//! Linux: the segment is a `memfd` (no name in any file system), mode 0600,
//! close-on-exec, sealed against shrinking and growing so that a hostile peer
//! cannot truncate it under our mapping (which would turn our loads into
//! `SIGBUS`). Parking is a shared (not process-private) futex on a word of
//! the mapping.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use conduit_core::{Error, Result};
use rustix::fs::{MemfdFlags, Mode, SealFlags};
use rustix::io::Errno;
use rustix::thread::futex;

/// Creates the sealed memfd of `len` bytes.
pub fn create_segment(len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "conduit-shm",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Checks that a handed-over descriptor is a memfd sealed against shrinking
/// (its size is checked by the caller).
pub fn check_segment(fd: &OwnedFd) -> Result<()> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| {
        Error::protocol("the handed shm segment is not a sealed memfd (was it made by conduit?)")
    })?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(Error::protocol(
            "the handed shm segment is not sealed against shrinking; refusing to map it",
        ));
    }
    Ok(())
}

/// Futex wait on a shared mapping; true on timeout.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<bool> {
    let ts = futex::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    match futex::wait(word, futex::Flags::empty(), expected, Some(&ts)) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(false),
        Err(Errno::TIMEDOUT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Wakes the one thread that can be parked on `word`.
pub fn wake(word: &AtomicU32) {
    // Nothing useful can be done about a failure: the sleeper's bounded wait
    // still ends at the next liveness tick.
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}
