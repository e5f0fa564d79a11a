//! Windows backend.
//!
//! - The segment is an unnamed, pagefile-backed section
//!   (`CreateFileMappingW(INVALID_HANDLE_VALUE, …, name = NULL)`). Without a
//!   name it can only be reached through a handle: ours is not inheritable
//!   (null `SECURITY_ATTRIBUTES`) and reaches the child through the core's
//!   handoff, which duplicates it into that child only. Such a section cannot
//!   be resized, and `MapViewOfFile` refuses a view larger than the section,
//!   so a mapped view stays fully backed.
//! - The link is two auto-reset events (the one this side parks on, and the
//!   one it sets to wake the peer) and two anonymous pipes used as
//!   lifelines: this side keeps the write end of one, whose read end the peer
//!   watches, and watches the read end of the other. Nobody writes to them;
//!   `PeekNamedPipe` fails with `ERROR_BROKEN_PIPE` once the peer's process
//!   (the only holder of the write end) is gone.
//! - Parking is `WaitForSingleObject` on our event with the bounded timeout.
//!   Auto-reset events latch: a wake-up set between our last look at the ring
//!   and the wait is not lost, it ends the wait at once.
//! - The doorbell (`conduit::wait`, async endpoints; see the crate docs) is
//!   the same event: a ring sets the peer's park event, which its wait or
//!   its async registration (a thread-pool wait, see
//!   `conduit_core::transport::sys::reactor`) watches. Any stray signal
//!   (a wake-up meant for a blocking park) only makes the waiting side
//!   look at the ring for nothing. The lifelines signal nothing, so those
//!   waits time out every 100 ms to check them.

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, OwnedHandle};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conduit_core::transport::sys::owned;
use conduit_core::{Error, ErrorKind, Result};
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, FILE_MAP_READ, FILE_MAP_WRITE,
    MEMORY_MAPPED_VIEW_ADDRESS, PAGE_READWRITE,
};
use windows_sys::Win32::System::Pipes::PeekNamedPipe;
use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent, WaitForSingleObject};

fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

/// A shared-memory section mapped read-write into this process.
#[derive(Debug)]
pub struct Segment {
    handle: OwnedHandle,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Segment` owns its view and section handle; the mapped memory is only
// reached through raw pointers by `crate::mem`, whose accessors are atomics or
// copies that tolerate concurrent access by other threads and processes.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`; `&Segment` only exposes the base pointer and length.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a new zero-filled, unnamed section of `len` bytes.
    pub fn create(len: usize) -> Result<Segment> {
        let size = len as u64;
        // SAFETY: INVALID_HANDLE_VALUE asks for a pagefile-backed section; a
        // null SECURITY_ATTRIBUTES (default security, not inheritable) and a
        // null name are allowed. The result is checked for null.
        let h = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                ptr::null(),
                PAGE_READWRITE,
                (size >> 32) as u32,
                size as u32,
                ptr::null(),
            )
        };
        // SAFETY: the return value of the CreateFileMappingW call just made;
        // a new section handle nobody else owns.
        let handle = unsafe { owned(h) }
            .map_err(|e| Error::from_io("cannot create a shared-memory segment", e))?;
        Segment::map(handle, len)
    }

    /// Maps a handed-over section; fails when it is not a section or is
    /// smaller than `len`.
    pub fn open(handle: OwnedHandle, len: usize) -> Result<Segment> {
        Segment::map(handle, len).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("cannot map the handed shm segment of {len} bytes (too small, or not a section?): {e}"),
            )
        })
    }

    fn map(handle: OwnedHandle, len: usize) -> Result<Segment> {
        // SAFETY: the handle is open for the duration of the call; the system
        // validates it and the view size (at most the section's size) and
        // returns a null address on failure, which is checked.
        let view =
            unsafe { MapViewOfFile(raw(&handle), FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, len) };
        let ptr = NonNull::new(view.Value.cast::<u8>()).ok_or_else(|| {
            Error::from_io(
                "cannot map the shared-memory segment",
                io::Error::last_os_error(),
            )
        })?;
        Ok(Segment { handle, ptr, len })
    }

    /// The first byte of the view (aligned to the allocation granularity).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The view's length in bytes.
    #[allow(clippy::len_without_is_empty)] // a segment is never empty
    pub fn len(&self) -> usize {
        self.len
    }

    /// A new non-inheritable handle to the same section, for a handoff.
    pub fn clone_handle(&self) -> io::Result<OwnedHandle> {
        self.handle.try_clone()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the base of the view made in `map`, and every
        // reference into it borrows `self`, so none outlives this call.
        let _ = unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.ptr.as_ptr().cast(),
            })
        };
    }
}

fn event() -> Result<OwnedHandle> {
    // SAFETY: null attributes (not inheritable) and a null name are allowed;
    // auto-reset, initially not signalled. The result is checked for null.
    let h = unsafe { CreateEventW(ptr::null(), 0, 0, ptr::null()) };
    // SAFETY: the return value of the CreateEventW call just made; a new
    // event handle nobody else owns.
    unsafe { owned(h) }.map_err(|e| Error::from_io("cannot create a wake-up event", e))
}

/// One side's link to the other: events for parking and waking, lifeline pipes.
#[derive(Debug)]
pub struct Link {
    /// The event this side parks on.
    park: OwnedHandle,
    /// The event the peer parks on.
    bell: OwnedHandle,
    /// Read end of the pipe whose write end only the peer holds.
    watch: OwnedHandle,
    /// Write end of the pipe the peer watches; held, never written.
    keep: OwnedHandle,
}

impl Link {
    /// How many handles a link is made of.
    pub const HANDLES: usize = 4;

    /// The sender's and the receiver's links of one ring.
    pub fn pair() -> Result<(Link, Link)> {
        let rx_event = event()?;
        let tx_event = event()?;
        let dup = |h: &OwnedHandle| {
            h.try_clone()
                .map_err(|e| Error::from_io("cannot duplicate a wake-up event", e))
        };
        let pipe = || {
            conduit_core::transport::sys::pipe()
                .map_err(|e| Error::from_io("cannot create a lifeline pipe", e))
        };
        let (sender_life_r, sender_life_w) = pipe()?;
        let (receiver_life_r, receiver_life_w) = pipe()?;
        let sender = Link {
            park: dup(&tx_event)?,
            bell: dup(&rx_event)?,
            watch: receiver_life_r,
            keep: sender_life_w,
        };
        let receiver = Link {
            park: rx_event,
            bell: tx_event,
            watch: sender_life_r,
            keep: receiver_life_w,
        };
        Ok((sender, receiver))
    }

    /// Parks until woken, `word != expected`, or `timeout` (then true).
    pub fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) -> Result<bool> {
        if word.load(Ordering::SeqCst) != expected {
            return Ok(false);
        }
        // Round up so that a short timeout does not become a busy loop;
        // u32::MAX would mean INFINITE.
        let ms = timeout
            .as_nanos()
            .div_ceil(1_000_000)
            .clamp(1, u128::from(u32::MAX - 1)) as u32;
        // SAFETY: the event handle is open for the lifetime of `self`.
        let r = unsafe { WaitForSingleObject(raw(&self.park), ms) };
        match r {
            WAIT_OBJECT_0 => Ok(false),
            WAIT_TIMEOUT => Ok(true),
            _ => Err(Error::from_io(
                "cannot park the thread",
                io::Error::last_os_error(),
            )),
        }
    }

    /// Wakes the peer parked on its event.
    pub fn wake(&self, _word: &AtomicU32) {
        // SAFETY: the event handle is open for the lifetime of `self`.
        let _ = unsafe { SetEvent(raw(&self.bell)) };
    }

    /// False once the peer's process no longer holds its lifeline pipe.
    pub fn peer_alive(&self) -> bool {
        let mut avail = 0u32;
        // SAFETY: the handle is open; only the `avail` out-pointer is given.
        let ok = unsafe {
            PeekNamedPipe(
                raw(&self.watch),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
                &mut avail,
                ptr::null_mut(),
            )
        };
        // A failure is ERROR_BROKEN_PIPE once the peer's write end is closed;
        // any other failure also means the lifeline cannot vouch for the peer.
        ok != 0
    }

    /// Reads waiting doorbell rings: a ring is a signal of the park event,
    /// consumed by whatever waited on it (see [`ring`](Self::ring)), so
    /// there is nothing to read; false once the peer is gone.
    pub fn drain(&self) -> bool {
        self.peer_alive()
    }

    /// Rings the peer's doorbell: sets the event the peer parks on, which
    /// is also what the peer's `conduit::wait` or async endpoint watches
    /// (see [`wait_handle`](Self::wait_handle)). An auto-reset event
    /// latches, so a ring before the peer waits ends its wait at once.
    pub fn ring(&self) {
        // SAFETY: the event handle is open for the lifetime of `self`.
        let _ = unsafe { SetEvent(raw(&self.bell)) };
    }

    /// What `conduit::wait` and async endpoints watch: the event this side
    /// parks on, set by the peer's doorbell rings and wake-ups. The
    /// lifelines signal no handle, so the waits that watch it time out
    /// every `conduit_core::transport::sys::WAIT_TICK_MS` to look at them.
    pub fn wait_handle(&self) -> Option<BorrowedHandle<'_>> {
        Some(self.park.as_handle())
    }

    /// The handles, for a handoff.
    pub fn into_handles(self) -> Vec<OwnedHandle> {
        vec![self.park, self.bell, self.watch, self.keep]
    }

    /// Rebuilds a link from handed-over handles.
    pub fn from_handles(handles: Vec<OwnedHandle>) -> Result<Link> {
        let [park, bell, watch, keep]: [OwnedHandle; 4] = handles
            .try_into()
            .map_err(|_| Error::invalid_input("an shm link is made of exactly four handles"))?;
        Ok(Link {
            park,
            bell,
            watch,
            keep,
        })
    }
}
