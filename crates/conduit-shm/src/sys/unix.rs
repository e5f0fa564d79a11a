//! Unix backend.
//!
//! - The segment is a file descriptor mapped with `mmap(MAP_SHARED)`: a sealed
//!   `memfd` on Linux, an `shm_open` object with a random name that is
//!   unlinked at once on macOS (see the `os` module). Either way it is mode
//!   0600, close-on-exec, and reaches the child only as a descriptor.
//! - The link is one end of a `socketpair(2)`. It exists so that the peer's
//!   death closes it, which `poll` reports as hang-up/readable; that needs
//!   no cooperation from a killed process. The only bytes ever written to it
//!   are doorbell rings (see the crate docs), which `peer_alive` drains.
//! - Parking is a shared futex on Linux and `__ulock_wait` on macOS, always
//!   with a bounded timeout (the liveness interval), after which the caller
//!   checks the link. Waiting on the futex and the socket at once is not
//!   possible with one system call, and a watcher thread per endpoint would
//!   cost more than a `poll` every 100 ms of idleness; the check is off the
//!   hot path (it only runs once a park has timed out).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use conduit_core::{Error, ErrorKind, Result};
use rustix::mm::{MapFlags, ProtFlags};

#[cfg(any(target_os = "linux", target_os = "android"))]
#[path = "linux.rs"]
mod os;

#[cfg(target_os = "macos")]
#[path = "macos.rs"]
mod os;

/// Other Unix systems: no cross-process address wait is wired up yet.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
mod os {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use conduit_core::{Error, ErrorKind, Result};

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the shm transport supports Linux, macOS and Windows",
        )
    }

    pub fn create_segment(_len: usize) -> io::Result<OwnedFd> {
        Err(unsupported())
    }

    pub fn check_segment(_fd: &OwnedFd) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the shm transport supports Linux, macOS and Windows",
        ))
    }

    pub fn wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) -> io::Result<bool> {
        Err(unsupported())
    }

    pub fn wake(_word: &AtomicU32) {}
}

#[cfg(not(target_vendor = "apple"))]
const DOORBELL_SEND: rustix::net::SendFlags =
    rustix::net::SendFlags::DONTWAIT.union(rustix::net::SendFlags::NOSIGNAL);
// macOS has no MSG_NOSIGNAL; core's socket pair has SO_NOSIGPIPE.
#[cfg(target_vendor = "apple")]
const DOORBELL_SEND: rustix::net::SendFlags = rustix::net::SendFlags::DONTWAIT;

/// A shared-memory object mapped read-write into this process.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Segment` owns its mapping and descriptor; the mapped memory is only
// reached through raw pointers by `crate::mem`, whose accessors are atomics or
// copies that tolerate concurrent access by other threads and processes.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`; `&Segment` only exposes the base pointer and length.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a new zero-filled segment of `len` bytes, private to the user.
    pub fn create(len: usize) -> Result<Segment> {
        let fd = os::create_segment(len)
            .map_err(|e| Error::from_io("cannot create a shared-memory segment", e))?;
        Segment::map(fd, len)
    }

    /// Maps a handed-over segment, checking that it has at least `len` bytes
    /// and cannot shrink.
    pub fn open(fd: OwnedFd, len: usize) -> Result<Segment> {
        os::check_segment(&fd)?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| Error::from_io("cannot inspect the handed shm segment", e.into()))?;
        if u64::try_from(stat.st_size).unwrap_or(0) < len as u64 {
            return Err(Error::protocol(format!(
                "the handed shm segment has {} bytes, the ring needs {len}",
                stat.st_size
            )));
        }
        Segment::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Segment> {
        // SAFETY: a null hint lets the kernel pick an address range that
        // overlaps nothing we use. The object behind `fd` is at least `len`
        // bytes and cannot shrink (checked by `os::create_segment` /
        // `os::check_segment`), so every page of the mapping stays backed for
        // its whole life and accesses cannot fault.
        let addr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| Error::from_io("cannot map the shared-memory segment", e.into()))?;
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| Error::new(ErrorKind::Io, "mmap returned a null address"))?;
        Ok(Segment { fd, ptr, len })
    }

    /// The first byte of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapping's length in bytes.
    #[allow(clippy::len_without_is_empty)] // a segment is never empty
    pub fn len(&self) -> usize {
        self.len
    }

    /// A new close-on-exec descriptor for the same object, for a handoff.
    pub fn clone_handle(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `map`, and
        // every reference into it borrows `self`, so none outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One side's link to the other: parking, waking, and the lifeline socket.
#[derive(Debug)]
pub struct Link {
    life: OwnedFd,
}

impl Link {
    /// How many handles a link is made of.
    pub const HANDLES: usize = 1;

    /// The sender's and the receiver's links of one ring.
    pub fn pair() -> Result<(Link, Link)> {
        // Core's close-on-exec (and, on macOS, no-SIGPIPE) socket pair.
        let (a, b) = conduit_core::transport::sys::socketpair()
            .map_err(|e| Error::from_io("cannot create the lifeline socket pair", e))?;
        Ok((Link { life: a }, Link { life: b }))
    }

    /// Parks until woken, `word != expected`, or `timeout` (then true).
    pub fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) -> Result<bool> {
        os::wait(word, expected, timeout).map_err(|e| Error::from_io("cannot park the thread", e))
    }

    /// Wakes the peer parked on `word`.
    pub fn wake(&self, word: &AtomicU32) {
        os::wake(word)
    }

    /// False once the other side's process has closed its end (exited or was
    /// killed). The peer writes to the socket only to ring the doorbell, so
    /// bytes are drained (the doorbell is only a hint; whoever waits on it
    /// looks at the ring after arming) and end-of-file means gone.
    pub fn peer_alive(&self) -> bool {
        self.drain()
    }

    /// Reads whatever doorbell bytes are waiting, without blocking; false
    /// when the socket reached end-of-file or failed (the peer is gone).
    /// Bounded: a peer that keeps writing cannot hold this side here.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 64];
        for _ in 0..16 {
            match rustix::net::recv(&self.life, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => return false,
                Ok((n, _)) if n < buf.len() => return true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Rings the peer's doorbell: one byte on the lifeline socket, without
    /// blocking (a full socket is readable already) and without `SIGPIPE`
    /// (a gone peer is noticed by its own lifeline checks).
    pub fn ring(&self) {
        let _ = rustix::net::send(&self.life, &[1], DOORBELL_SEND);
    }

    /// The descriptor that turns readable when the peer rings or is gone.
    pub fn wait_handle(&self) -> Option<BorrowedFd<'_>> {
        Some(self.life.as_fd())
    }

    /// The handles, for a handoff.
    pub fn into_handles(self) -> Vec<OwnedFd> {
        vec![self.life]
    }

    /// Rebuilds a link from handed-over handles.
    pub fn from_handles(handles: Vec<OwnedFd>) -> Result<Link> {
        let [life]: [OwnedFd; 1] = handles
            .try_into()
            .map_err(|_| Error::invalid_input("an shm link is made of exactly one descriptor"))?;
        let stat = rustix::fs::fstat(life.as_fd())
            .map_err(|e| Error::from_io("cannot inspect the handed lifeline socket", e.into()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
            return Err(Error::invalid_input(
                "the handed shm lifeline descriptor is not a socket",
            ));
        }
        Ok(Link { life })
    }
}
