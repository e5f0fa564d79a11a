//! Overlapped I/O with a deadline: the rendezvous pipe's traffic is
//! cancelled (`CancelIoEx`) when its deadline passes, or when an optional
//! *wake* event is set first (`Interrupted`): the listener stops every
//! set-up when it is dropped. [`OvBox`] holds the OVERLAPPED of an
//! operation that outlives one call (the listener's `ConnectNamedPipe`).

use std::io;
use std::os::windows::io::OwnedHandle;
use std::time::Instant;

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_BROKEN_PIPE, ERROR_IO_INCOMPLETE, ERROR_IO_PENDING,
    ERROR_OPERATION_ABORTED, ERROR_PIPE_CONNECTED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Threading::{CreateEventW, WaitForMultipleObjects, INFINITE};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::{is, millis_until, owned, raw};

/// A heap-allocated OVERLAPPED whose address stays fixed while the system
/// writes to it, for an operation that stays in flight between calls; only
/// raw pointers to it are used. Its owner drops it only once the operation
/// completed (or leaks it when that cannot be established).
pub(super) struct OvBox(pub(super) *mut OVERLAPPED);

impl OvBox {
    /// A zeroed OVERLAPPED that signals `event` on completion.
    pub(super) fn new(event: &OwnedHandle) -> OvBox {
        OvBox(Box::into_raw(Box::new(OVERLAPPED {
            hEvent: raw(event),
            ..OVERLAPPED::default()
        })))
    }

    /// The outcome of the operation started on `file` with this
    /// OVERLAPPED: `None` while it is in flight (`wait`: blocks until it is
    /// not), else the bytes transferred or the operation's error.
    pub(super) fn outcome(&self, file: &OwnedHandle, wait: bool) -> Option<io::Result<u32>> {
        let mut n = 0u32;
        // SAFETY: `self.0` belongs to an operation started on `file`; `n`
        // outlives the call.
        let ok = unsafe { GetOverlappedResult(raw(file), self.0, &mut n, i32::from(wait)) };
        if ok != 0 {
            return Some(Ok(n));
        }
        // SAFETY: GetLastError has no preconditions.
        match unsafe { GetLastError() } {
            ERROR_IO_INCOMPLETE => None,
            code => Some(Err(io::Error::from_raw_os_error(code as i32))),
        }
    }

    /// Cancels the operation started on `file` and waits until the system
    /// is done with the OVERLAPPED; leaks it if that cannot be established
    /// (rather than free memory the system may still write).
    pub(super) fn finish(self, file: &OwnedHandle) {
        // SAFETY: `self.0` identifies our operation on `file`; cancelling
        // one that already completed is harmless.
        unsafe { CancelIoEx(raw(file), self.0) };
        if self.outcome(file, true).is_none() {
            std::mem::forget(self);
        }
    }
}

impl Drop for OvBox {
    fn drop(&mut self) {
        // SAFETY: from Box::into_raw in `new`; the owner drops an `OvBox`
        // only once its operation completed (`finish` leaks it otherwise).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

// SAFETY: the OVERLAPPED is reached only through this owner's pointer,
// handed to the system for one operation at a time; moving the owner to
// another thread does not move the allocation.
unsafe impl Send for OvBox {}

/// An event that ends an overlapped wait early when it is set.
#[derive(Clone, Copy)]
pub(super) struct Wake<'a>(pub(super) &'a OwnedHandle);

/// Runs one overlapped operation on `file` (started by `start` with the
/// OVERLAPPED to use) and waits for it until `deadline`, cancelling it then
/// (`TimedOut`) or when `wake` is set first (`Interrupted`; an operation
/// that completed before the cancel counts as done). Returns the number of
/// bytes transferred.
pub(super) fn overlapped(
    file: &OwnedHandle,
    deadline: Option<Instant>,
    wake: Option<Wake<'_>>,
    start: impl FnOnce(*mut OVERLAPPED) -> BOOL,
) -> io::Result<u32> {
    // SAFETY: no security attributes or name; a manual-reset event, not set.
    let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    // SAFETY: the return value of the CreateEventW call just made, a new
    // handle nobody else owns.
    let event = unsafe { owned(event) }?;
    let mut ov = OVERLAPPED {
        hEvent: raw(&event),
        ..OVERLAPPED::default()
    };
    // The system writes to `ov` while the operation runs: only this raw
    // pointer is used from here on, no reference.
    let ov = std::ptr::addr_of_mut!(ov);
    if start(ov) == 0 {
        // SAFETY: GetLastError has no preconditions.
        match unsafe { GetLastError() } {
            ERROR_IO_PENDING => {}
            // ConnectNamedPipe: the client came before the call; nothing pending.
            ERROR_PIPE_CONNECTED => return Ok(0),
            code => return Err(io::Error::from_raw_os_error(code as i32)),
        }
    }
    // The operation may be in flight: from here on `ov` (and the caller's
    // buffer) must stay in place until it has completed, so every path
    // below ends in a waiting GetOverlappedResult.
    let waits: [HANDLE; 2] = [raw(&event), wake.map_or(std::ptr::null_mut(), |w| raw(w.0))];
    let count = if wake.is_some() { 2 } else { 1 };
    let mut woken = false;
    loop {
        let ms = deadline.map_or(INFINITE, millis_until);
        // SAFETY: the first `count` entries of `waits` are valid event
        // handles (ours, and the caller's wake event, borrowed for the call).
        let woke = unsafe { WaitForMultipleObjects(count, waits.as_ptr(), 0, ms) };
        if woke == WAIT_OBJECT_0 {
            break;
        }
        if woke == WAIT_TIMEOUT && deadline.is_some_and(|d| Instant::now() < d) {
            continue;
        }
        woken = woke == WAIT_OBJECT_0 + 1;
        // Deadline passed (or the wait failed): cancel; the operation then
        // completes, with ERROR_OPERATION_ABORTED unless it finished first.
        // SAFETY: `ov` identifies our operation on `file`; cancelling an
        // operation that already completed is harmless.
        unsafe { CancelIoEx(raw(file), ov) };
        break;
    }
    let mut n = 0u32;
    // SAFETY: `ov` belongs to an operation on `file`; with bWait = TRUE this
    // returns only once the operation is complete, after which neither `ov`
    // nor the buffer is used by the system any more.
    let ok = unsafe { GetOverlappedResult(raw(file), ov, &mut n, 1) };
    if ok != 0 {
        return Ok(n);
    }
    // SAFETY: GetLastError has no preconditions.
    match unsafe { GetLastError() } {
        ERROR_OPERATION_ABORTED if woken => Err(io::Error::from(io::ErrorKind::Interrupted)),
        ERROR_OPERATION_ABORTED => Err(io::Error::from(io::ErrorKind::TimedOut)),
        code => Err(io::Error::from_raw_os_error(code as i32)),
    }
}

pub(super) fn read_exact(
    file: &OwnedHandle,
    buf: &mut [u8],
    deadline: Instant,
    wake: Option<Wake<'_>>,
) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let len = rest.len() as u32;
        let ptr = rest.as_mut_ptr();
        // SAFETY: `ptr` is valid for `len` bytes until `overlapped` returns,
        // which is after the read has completed; the count comes from
        // GetOverlappedResult, so the out-pointer may be null.
        let n = overlapped(file, Some(deadline), wake, |ov| unsafe {
            ReadFile(raw(file), ptr, len, std::ptr::null_mut(), ov)
        });
        match n {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => got += n as usize,
            Err(e) if is(&e, ERROR_BROKEN_PIPE) => {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn write_all(
    file: &OwnedHandle,
    mut buf: &[u8],
    deadline: Instant,
    wake: Option<Wake<'_>>,
) -> io::Result<()> {
    while !buf.is_empty() {
        let len = buf.len() as u32;
        let ptr = buf.as_ptr();
        // SAFETY: as in `read_exact`, for reading `len` bytes at `ptr`.
        let n = overlapped(file, Some(deadline), wake, |ov| unsafe {
            WriteFile(raw(file), ptr, len, std::ptr::null_mut(), ov)
        })?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[(n as usize).min(buf.len())..];
    }
    Ok(())
}
