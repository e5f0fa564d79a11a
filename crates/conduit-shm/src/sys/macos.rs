//! macOS: the segment is a POSIX shared-memory object created with a random
//! name (`O_CREAT | O_EXCL`, mode 0600) and unlinked right away, so the name
//! exists for a few microseconds and only the descriptor, passed with
//! `SCM_RIGHTS`, reaches the child. macOS cannot resize a POSIX shared-memory
//! object once it has a size, so a peer cannot shrink it under our mapping.
//!
//! Parking uses `__ulock_wait`/`__ulock_wake` with
//! `UL_COMPARE_AND_WAIT_SHARED`, the cross-process futex of the Darwin kernel
//! (exported by libSystem since macOS 10.12; libc++'s `atomic::wait` and
//! libdispatch use the same calls). `os_sync_wait_on_address` is the public
//! spelling but needs macOS 14.4, and a pipe doorbell would cost a `write`
//! per wake-up plus a `read` to drain it.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use conduit_core::Result;
use rustix::fs::Mode;
use rustix::io::{Errno, FdFlags};

const UL_COMPARE_AND_WAIT_SHARED: u32 = 3;
const ULF_NO_ERRNO: u32 = 0x0100_0000;

extern "C" {
    fn __ulock_wait(operation: u32, addr: *mut c_void, value: u64, timeout_us: u32) -> c_int;
    fn __ulock_wake(operation: u32, addr: *mut c_void, wake_value: u64) -> c_int;
}

/// A fresh, unpredictable shm name (at most 31 bytes on macOS): 64 bits
/// from the OS random generator.
fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!("/cndt-{:016x}", u64::from_le_bytes(bytes)))
}

/// Creates an unlinked shm object of `len` bytes.
pub fn create_segment(len: usize) -> io::Result<OwnedFd> {
    let flags = rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR;
    for _ in 0..16 {
        let name = random_name()?;
        match rustix::shm::open(name.as_str(), flags, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => {
                let _ = rustix::shm::unlink(name.as_str());
                rustix::io::fcntl_setfd(&fd, FdFlags::CLOEXEC)?;
                rustix::fs::ftruncate(&fd, len as u64)?;
                return Ok(fd);
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free random shm name after 16 attempts",
    ))
}

/// Nothing to check beyond the size (checked by the caller): macOS cannot
/// resize a POSIX shared-memory object once it has its size.
pub fn check_segment(_fd: &OwnedFd) -> Result<()> {
    Ok(())
}

/// Cross-process wait on `word`; true on timeout.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<bool> {
    // A zero timeout means "forever" to __ulock_wait.
    let us = timeout.as_micros().clamp(1, u32::MAX as u128) as u32;
    // SAFETY: `word` is a live, aligned 4-byte atomic in a shared mapping that
    // outlives the call; the kernel only reads it to compare with `expected`.
    let r = unsafe {
        __ulock_wait(
            UL_COMPARE_AND_WAIT_SHARED | ULF_NO_ERRNO,
            word.as_ptr().cast(),
            u64::from(expected),
            us,
        )
    };
    if r >= 0 {
        return Ok(false);
    }
    let errno = -r;
    if errno == Errno::TIMEDOUT.raw_os_error() {
        Ok(true)
    } else if errno == Errno::INTR.raw_os_error() || errno == Errno::FAULT.raw_os_error() {
        Ok(false)
    } else {
        Err(io::Error::from_raw_os_error(errno))
    }
}

/// Wakes the one thread that can be parked on `word`.
pub fn wake(word: &AtomicU32) {
    // SAFETY: as in `wait`; waking has no memory effects. ENOENT (no waiter)
    // is expected and ignored.
    let _ = unsafe {
        __ulock_wake(
            UL_COMPARE_AND_WAIT_SHARED | ULF_NO_ERRNO,
            word.as_ptr().cast(),
            0,
        )
    };
}
