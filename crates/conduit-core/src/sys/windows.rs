//! Windows backend: streams over pipe handles (`ReadFile`/`WriteFile`), handles
//! passed to the child by the child duplicating them out of the parent with
//! `DUPLICATE_CLOSE_SOURCE`.
//!
//! The stream calls `ReadFile`/`WriteFile` itself rather than going through
//! `std::fs::File` over the `OwnedHandle`: std's synchronous read aborts the
//! process if the kernel answers `STATUS_PENDING` (a handle opened for
//! overlapped I/O), where this code returns an error; the wrappers also map
//! `ERROR_NO_DATA` / `ERROR_PIPE_NOT_CONNECTED` to a broken pipe
//! (`Disconnected`) explicitly, not by std's error-kind table. They are
//! small and checked.
//!
//! Handles never become inheritable, so no other child spawned at the same
//! time can inherit them (std's `CreateProcessW` inherits every inheritable
//! handle). The parent's copies are closed by the child's duplication.
//! Limitation of that (pull) path, used by bare `handoff` to a `Command`: if
//! the child never adopts the endpoint (it exits first), the parent keeps
//! them until it exits, and its end does not see the peer disconnect: std's
//! `Command` has no hook at or after `CreateProcessW` on stable Rust, and
//! `send_handles` never learns the child's process handle.
//!
//! Code that has the child's process handle (`conduit::Process`) pushes
//! instead, like Python's multiprocessing: after the spawn,
//! `send_handles_to` duplicates each handle into the child with
//! `DUPLICATE_CLOSE_SOURCE` (the parent's copy is closed even when that
//! fails) and returns the child's values (`own=<handle>:...`), which the
//! parent sends over a channel to the child, where `take_own_handles` takes
//! them without any duplication. A child that exits without adopting closes
//! them with its handle table, so the parent's end sees `Disconnected`. An
//! `own=` part is never accepted from the environment (`receive_handles`
//! refuses it): `take_own_handles` is `unsafe`, for a part that came from
//! the parent over a channel only it can write.
//!
//! A token names handle *values* in another process, which mean nothing by
//! themselves: `receive_handles` duplicates them only out of this process's
//! own parent (checked with a toolhelp snapshot, and the parent must have been
//! created before this process, against a reused pid), so a token inherited by
//! a grandchild is refused instead of stealing whatever handles the named
//! process now has under those values.
//!
//! Stream pipes are opened for overlapped I/O ([`pipe`] makes a named pipe
//! pair; anonymous pipes cannot do overlapped I/O), so that waits have a
//! handle to watch: `wait_readable` keeps a zero-byte read in flight, which
//! completes when data arrives or the pipe breaks, and waits on its event
//! (that event is also what `conduit::wait` and async receivers watch). A
//! non-blocking write (async senders) starts writing a copy of the bytes
//! and reports them written; the next write reports `WouldBlock` until it
//! completed, and its event is what async senders watch. Blocking reads
//! and writes wait for their operation to complete; a stream being dropped
//! or handed off cancels its zero-byte read and waits for a write in
//! flight. Every wait on these handles is bounded by its caller's deadline.

use std::io::{self, IoSlice};
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, IntoRawHandle, OwnedHandle,
};
use std::process::Command;
use std::time::{Duration, Instant};

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{
    DuplicateHandle, GetHandleInformation, GetLastError, DUPLICATE_CLOSE_SOURCE,
    DUPLICATE_SAME_ACCESS, ERROR_BROKEN_PIPE, ERROR_IO_INCOMPLETE, ERROR_IO_PENDING,
    ERROR_MORE_DATA, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED, FILETIME, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_ABANDONED_0, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
    FILE_GENERIC_WRITE, OPEN_EXISTING, PIPE_ACCESS_INBOUND,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, PeekNamedPipe, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, GetCurrentProcessId, GetProcessTimes, OpenProcess,
    WaitForMultipleObjects, WaitForSingleObject, PROCESS_DUP_HANDLE,
    PROCESS_QUERY_LIMITED_INFORMATION,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::StreamKind;
use crate::error::{Error, Result};

/// The owned OS handle type.
pub type OsHandle = OwnedHandle;

/// A blocking byte stream over a pipe handle (opened for overlapped I/O:
/// see [`pipe`]).
#[derive(Debug)]
pub struct OsStream {
    handle: OwnedHandle,
    /// What deadline waits and async endpoints need; `None` when its
    /// events could not be made (the stream then cannot be waited on).
    aio: Option<Aio>,
    /// Writes start in the background and report `WouldBlock` while one
    /// is in flight (see [`OsStream::write`]).
    nonblocking_writes: bool,
}

/// The operations a stream keeps in flight: a zero-byte read (what a wait
/// for data watches) and a write started by a non-blocking send.
#[derive(Debug)]
struct Aio {
    /// A duplicate of the stream's handle (the same file object): what
    /// started the operations, and cancels or finishes them when this is
    /// dropped, even after `into_handle` gave the stream's handle away.
    file: OwnedHandle,
    /// Signalled when the zero-byte read completed (manual reset; a new
    /// read resets it).
    read_event: OwnedHandle,
    /// Signalled when the write in flight completed (manual reset).
    write_event: OwnedHandle,
    state: std::sync::Mutex<AioState>,
}

#[derive(Debug, Default)]
struct AioState {
    zero_read: Option<Op>,
    write: Option<Op>,
}

/// One operation in flight: its OVERLAPPED and the bytes it uses.
#[derive(Debug)]
struct Op {
    ov: OvBox,
    /// Written from (a write) until the operation completed; its heap
    /// allocation never moves.
    buf: Vec<u8>,
}

/// A heap-allocated OVERLAPPED whose address stays fixed while the system
/// writes to it; only raw pointers to it are used.
#[derive(Debug)]
struct OvBox(*mut OVERLAPPED);

impl OvBox {
    fn new(event: &OwnedHandle) -> OvBox {
        OvBox(Box::into_raw(Box::new(OVERLAPPED {
            hEvent: event.as_raw_handle() as HANDLE,
            ..OVERLAPPED::default()
        })))
    }
}

impl Drop for OvBox {
    fn drop(&mut self) {
        // SAFETY: from Box::into_raw in `new`; an `Op` is dropped only once
        // its operation completed (`Aio::finish` leaks it otherwise).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

// SAFETY: the OVERLAPPED is reached only through this owner's pointer,
// handed to the system for one operation at a time; moving the owner does
// not move the allocation.
unsafe impl Send for OvBox {}
// SAFETY: `&OvBox` gives nothing but the pointer value.
unsafe impl Sync for OvBox {}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn manual_reset_event() -> io::Result<OwnedHandle> {
    // SAFETY: null attributes (not inheritable) and name; manual reset,
    // not set. The result is checked by `owned`.
    let h = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    // SAFETY: the return value of the call just made, owned by nobody else.
    unsafe { owned(h) }
}

impl Aio {
    fn new(handle: &OwnedHandle) -> io::Result<Aio> {
        Ok(Aio {
            file: handle.try_clone()?,
            read_event: manual_reset_event()?,
            write_event: manual_reset_event()?,
            state: std::sync::Mutex::default(),
        })
    }

    fn file(&self) -> HANDLE {
        self.file.as_raw_handle() as HANDLE
    }

    /// The outcome of `op`, `None` while it is in flight (`wait`: blocks
    /// until it is not).
    fn outcome(&self, op: &Op, wait: bool) -> Option<io::Result<u32>> {
        let mut n = 0u32;
        // SAFETY: `op.ov` belongs to an operation started on `self.file`'s
        // file object; `n` outlives the call.
        let ok = unsafe { GetOverlappedResult(self.file(), op.ov.0, &mut n, i32::from(wait)) };
        if ok != 0 {
            return Some(Ok(n));
        }
        // SAFETY: GetLastError has no preconditions.
        match unsafe { GetLastError() } {
            ERROR_IO_INCOMPLETE => None,
            code => Some(Err(last_error_from(code))),
        }
    }

    /// Waits for `op` to end (after cancelling it when `cancel`); if that
    /// cannot be established, leaks it rather than free memory the system
    /// may still write.
    fn finish(&self, op: Op, cancel: bool) {
        if cancel {
            // SAFETY: `op.ov` identifies our operation on this file object;
            // cancelling one that completed already is harmless.
            unsafe { CancelIoEx(self.file(), op.ov.0) };
        }
        if self.outcome(&op, true).is_none() {
            std::mem::forget(op);
        }
    }

    /// Makes sure a zero-byte read is in flight; true when it has
    /// completed (data arrived, or the pipe broke): look at the pipe.
    fn arm_read(&self) -> io::Result<bool> {
        let mut st = lock(&self.state);
        if let Some(op) = &st.zero_read {
            return Ok(match self.outcome(op, false) {
                None => false,
                Some(_) => {
                    st.zero_read = None;
                    true
                }
            });
        }
        let op = Op {
            ov: OvBox::new(&self.read_event),
            buf: Vec::new(),
        };
        // SAFETY: a zero-byte read (the buffer pointer is never written
        // through) with `op.ov`, which stays in `self.state` until the read
        // completed; `finish` cancels and waits for it on drop.
        let ok = unsafe {
            ReadFile(
                self.file(),
                op.buf.as_ptr().cast_mut(),
                0,
                std::ptr::null_mut(),
                op.ov.0,
            )
        };
        if ok != 0 {
            return Ok(true);
        }
        // SAFETY: GetLastError has no preconditions.
        match unsafe { GetLastError() } {
            ERROR_IO_PENDING => {
                st.zero_read = Some(op);
                Ok(false)
            }
            ERROR_MORE_DATA | ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED => {
                Ok(true)
            }
            code => Err(last_error_from(code)),
        }
    }
}

impl Drop for Aio {
    /// Cancels the zero-byte read and lets a write in flight finish (its
    /// bytes were reported written), waiting for both.
    fn drop(&mut self) {
        let st = std::mem::take(&mut *lock(&self.state));
        if let Some(op) = st.zero_read {
            self.finish(op, true);
        }
        if let Some(op) = st.write {
            self.finish(op, false);
        }
    }
}

thread_local! {
    /// The event blocking operations of this thread wait on (manual
    /// reset; each operation resets it when it starts).
    static IO_EVENT: Option<OwnedHandle> = manual_reset_event().ok();
}

/// Runs one operation (started by `start` with the OVERLAPPED to use) on
/// `file` to its end, blocking; the number of bytes transferred. Works on
/// handles opened with and without `FILE_FLAG_OVERLAPPED`.
fn blocking_io(file: HANDLE, start: impl FnOnce(*mut OVERLAPPED) -> BOOL) -> io::Result<u32> {
    IO_EVENT.with(|event| {
        let event = event
            .as_ref()
            .ok_or_else(|| io::Error::other("cannot create an I/O event"))?;
        let mut ov = OVERLAPPED {
            hEvent: event.as_raw_handle() as HANDLE,
            ..OVERLAPPED::default()
        };
        // The system writes to `ov` while the operation runs: only this
        // raw pointer is used from here on.
        let ov = std::ptr::addr_of_mut!(ov);
        if start(ov) == 0 {
            // SAFETY: GetLastError has no preconditions.
            let code = unsafe { GetLastError() };
            if code != ERROR_IO_PENDING {
                return Err(last_error_from(code));
            }
        }
        let mut n = 0u32;
        // SAFETY: `ov` belongs to the operation just started on `file`;
        // with bWait = TRUE this returns once it is complete, after which
        // the system uses neither `ov` nor the caller's buffer.
        if unsafe { GetOverlappedResult(file, ov, &mut n, 1) } == 0 {
            return Err(last_error());
        }
        Ok(n)
    })
}

impl OsStream {
    /// Wraps a handle (the kind does not matter on Windows).
    pub fn new(handle: OwnedHandle, _kind: StreamKind) -> OsStream {
        let aio = Aio::new(&handle).ok();
        OsStream {
            handle,
            aio,
            nonblocking_writes: false,
        }
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Reads what is available, blocking until at least one byte or EOF (0).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let ptr = buf.as_mut_ptr();
        // SAFETY: `buf` is valid for writes of `len` bytes until
        // `blocking_io` returns, after the read completed; the count comes
        // from GetOverlappedResult.
        let r = blocking_io(self.raw(), |ov| unsafe {
            ReadFile(self.raw(), ptr, len, std::ptr::null_mut(), ov)
        });
        match r {
            Ok(n) => Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(ERROR_BROKEN_PIPE as i32) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Writes some of `buf`. Blocking (the default): waits while the pipe
    /// is full. Non-blocking ([`set_nonblocking_writes`]): `WouldBlock`
    /// while an earlier write is in flight; otherwise starts writing a copy
    /// of `buf` and reports it all written (the pipe finishes it in the
    /// background: a frame is committed whole; dropping the stream waits
    /// for it).
    ///
    /// [`set_nonblocking_writes`]: Self::set_nonblocking_writes
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let Some(aio) = self.aio.as_ref() else {
            return self.write_blocking(&buf[..len as usize]);
        };
        let mut st = lock(&aio.state);
        if let Some(op) = &st.write {
            let done = if self.nonblocking_writes {
                aio.outcome(op, false)
            } else {
                aio.outcome(op, true)
            };
            match done {
                None => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
                Some(r) => {
                    st.write = None;
                    r?;
                }
            }
        }
        if !self.nonblocking_writes {
            drop(st);
            return self.write_blocking(&buf[..len as usize]);
        }
        let op = Op {
            ov: OvBox::new(&aio.write_event),
            buf: buf[..len as usize].to_vec(),
        };
        // SAFETY: `op.buf` is valid for reads of `len` bytes and `op.ov` is
        // set up for this write; both stay in `aio.state` until it
        // completed (`Aio`'s drop waits for it).
        let ok = unsafe {
            WriteFile(
                aio.file(),
                op.buf.as_ptr(),
                len,
                std::ptr::null_mut(),
                op.ov.0,
            )
        };
        if ok != 0 {
            return match aio.outcome(&op, true) {
                Some(r) => r.map(|n| n as usize),
                None => {
                    std::mem::forget(op);
                    Err(io::Error::other("a completed write did not report its end"))
                }
            };
        }
        // SAFETY: GetLastError has no preconditions.
        match unsafe { GetLastError() } {
            ERROR_IO_PENDING => {
                st.write = Some(op);
                Ok(len as usize)
            }
            code => Err(last_error_from(code)),
        }
    }

    fn write_blocking(&self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u32;
        let ptr = buf.as_ptr();
        // SAFETY: `buf` is valid for reads of `len` bytes until
        // `blocking_io` returns, after the write completed.
        let n = blocking_io(self.raw(), |ov| unsafe {
            WriteFile(self.raw(), ptr, len, std::ptr::null_mut(), ov)
        })?;
        Ok(n as usize)
    }

    /// Writes the first non-empty buffer (pipes have no gather write).
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.write(b),
            None => Ok(0),
        }
    }

    fn avail(&self) -> bool {
        let mut avail = 0u32;
        // SAFETY: the handle is open; only the `avail` out-pointer is given.
        let ok = unsafe {
            PeekNamedPipe(
                self.raw(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut avail,
                std::ptr::null_mut(),
            )
        };
        ok == 0 || avail > 0
    }

    /// Waits until data is available or the pipe is broken, or `deadline`
    /// passes (false). With a zero-byte read in flight (kept for the next
    /// wait, and for async endpoints: [`wait_handle`](Self::wait_handle)).
    pub fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let Some(deadline) = deadline else {
            return Ok(true);
        };
        if self.avail() {
            return Ok(true);
        }
        let Some(aio) = self.aio.as_ref() else {
            return self.poll_readable(deadline);
        };
        loop {
            if aio.arm_read()? && self.avail() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let ms = (deadline - now)
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(u32::MAX - 1)) as u32;
            // SAFETY: the event is open for the lifetime of `aio`.
            let r = unsafe { WaitForSingleObject(aio.read_event.as_raw_handle() as HANDLE, ms) };
            if r != WAIT_OBJECT_0 && r != WAIT_TIMEOUT {
                return Err(last_error());
            }
        }
    }

    /// `wait_readable` without events: `PeekNamedPipe` with a backoff of
    /// up to 5 ms between checks.
    fn poll_readable(&self, deadline: Instant) -> io::Result<bool> {
        let mut pause = Duration::from_micros(50);
        loop {
            if self.avail() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Gives back the handle, after ending what is in flight on it.
    pub fn into_handle(self) -> OwnedHandle {
        let OsStream { handle, aio, .. } = self;
        drop(aio);
        handle
    }

    /// What `conduit::wait` and async receivers watch: the event of the
    /// zero-byte read that [`wait_readable`](Self::wait_readable) keeps in
    /// flight.
    pub fn wait_handle(&self) -> Option<WaitHandle<'_>> {
        self.aio.as_ref().map(|a| a.read_event.as_handle())
    }

    /// What async senders watch: the event of the write in flight.
    pub fn send_wait_handle(&self) -> Option<WaitHandle<'_>> {
        self.aio.as_ref().map(|a| a.write_event.as_handle())
    }

    /// Borrows the handle.
    pub fn handle(&self) -> BorrowedHandle<'_> {
        self.handle.as_handle()
    }
}

fn last_error() -> io::Error {
    // SAFETY: GetLastError has no preconditions.
    last_error_from(unsafe { GetLastError() })
}

/// The checked-call helper every conduit crate uses for `BOOL`-returning
/// Win32 calls: the thread's last OS error when the call failed.
pub fn check(ok: windows_sys::core::BOOL) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes ownership of the handle a `Create*`/`Open*` call just returned
/// (directly or through an out-parameter), or gives that call's OS error
/// when it is null or `INVALID_HANDLE_VALUE`.
///
/// # Safety
///
/// `h` must come from the Win32 call made just before (so that the last OS
/// error is that call's), and when it is a handle, nothing else may own or
/// close it.
pub unsafe fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid handle that nobody else owns (the caller's contract).
    Ok(unsafe { OwnedHandle::from_raw_handle(h as _) })
}

/// What `conduit::wait` watches on Windows: a waitable handle.
pub type WaitHandle<'a> = BorrowedHandle<'a>;

/// The longest one OS wait lasts, in ms, before [`wait_any`] and the async
/// [`reactor`] report every handle anyway. Some endpoints have no handle
/// that signals their peer's death (the shm lifeline is an anonymous pipe,
/// which signals nothing): waking up this often lets them look, so a dead
/// peer is noticed within this interval. The cost is one wake-up per
/// 100 ms of idleness per waiting call or async endpoint.
pub const WAIT_TICK_MS: u32 = 100;

/// How many handles one `WaitForMultipleObjects` call takes
/// (`MAXIMUM_WAIT_OBJECTS`).
const MAX_WAIT_OBJECTS: usize = 64;

/// Waits until one of `handles` is signalled or `deadline` passes; returns
/// the indices of those that are (empty once the deadline passed).
///
/// Up to 64 handles are waited on with one `WaitForMultipleObjects` call;
/// more are looked at in groups of 64 without blocking, pausing 1 ms, then
/// up to 5 ms between rounds. Each call returns after at most
/// [`WAIT_TICK_MS`]: then with every index (nothing signalled, but the
/// caller looks at every object again; see [`WAIT_TICK_MS`]).
///
/// Waiting consumes the signal of an auto-reset event; the caller looks at
/// the state of every object whose index is returned, so nothing is lost.
pub fn wait_any(
    handles: &[BorrowedHandle<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<usize>> {
    let raw: Vec<HANDLE> = handles
        .iter()
        .map(|h| h.as_raw_handle() as HANDLE)
        .collect();
    let start = Instant::now();
    let tick = start + Duration::from_millis(u64::from(WAIT_TICK_MS));
    let end = deadline.map_or(tick, |d| d.min(tick));
    let mut pause = Duration::from_millis(1);
    loop {
        let now = Instant::now();
        let left = end.saturating_duration_since(now);
        let mut fired = Vec::new();
        if raw.len() <= MAX_WAIT_OBJECTS {
            let ms = left
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(WAIT_TICK_MS)) as u32;
            fired = signalled(&raw, ms)?;
        } else {
            for (c, chunk) in raw.chunks(MAX_WAIT_OBJECTS).enumerate() {
                fired.extend(
                    signalled(chunk, 0)?
                        .into_iter()
                        .map(|i| c * MAX_WAIT_OBJECTS + i),
                );
            }
        }
        if !fired.is_empty() {
            return Ok(fired);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Vec::new());
        }
        if now >= tick {
            return Ok((0..raw.len()).collect());
        }
        if raw.len() > MAX_WAIT_OBJECTS {
            std::thread::sleep(pause.min(end.saturating_duration_since(now)));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

/// The indices of the signalled handles among `handles` (at most 64),
/// waiting up to `ms` for the first.
fn signalled(handles: &[HANDLE], ms: u32) -> io::Result<Vec<usize>> {
    let n = handles.len();
    if n == 0 {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
        return Ok(Vec::new());
    }
    // SAFETY: `handles` holds `n` (1..=64) handles borrowed from the
    // caller, open for the whole call; the call only reads the array.
    let r = unsafe { WaitForMultipleObjects(n as u32, handles.as_ptr(), 0, ms) };
    // WAIT_OBJECT_0 is 0: `r` below `n` names the first signalled handle.
    let first = if r.wrapping_sub(WAIT_OBJECT_0) < n as u32 {
        r.wrapping_sub(WAIT_OBJECT_0) as usize
    } else if r.wrapping_sub(WAIT_ABANDONED_0) < n as u32 {
        r.wrapping_sub(WAIT_ABANDONED_0) as usize
    } else if r == WAIT_TIMEOUT {
        return Ok(Vec::new());
    } else {
        return Err(last_error());
    };
    let mut out = vec![first];
    for (j, &h) in handles.iter().enumerate().skip(first + 1) {
        // SAFETY: as above; a zero timeout only tests the handle's state.
        let r = unsafe { WaitForSingleObject(h, 0) };
        if r == WAIT_OBJECT_0 || r == WAIT_ABANDONED_0 {
            out.push(j);
        }
    }
    Ok(out)
}

/// tokio glue (feature `tokio`): the handles an endpoint waits on, watched
/// by the Windows thread pool on behalf of a task.
///
/// Each handle is duplicated for the registration (it owns what it
/// watches, as the Unix `AsyncFd` does), and watched with
/// `RegisterWaitForSingleObject` (`WT_EXECUTEONLYONCE`): the thread pool's
/// wait threads multiplex up to 63 handles each, so there is no thread per
/// endpoint. When the handle is signalled, or after
/// [`WAIT_TICK_MS`](super::WAIT_TICK_MS) without a signal (so that an
/// endpoint whose peer's death signals no handle still looks), the
/// callback marks the handle fired and wakes the task. tokio's own reactor
/// is not involved: it watches sockets only (an I/O completion port).
///
/// Like the Unix reactor, readiness is a hint that is cleared when
/// [`Registration::poll_ready`] reports it: the caller then looks at the
/// endpoint's state (a non-blocking attempt) before it polls again. A
/// signal that arrives between a report and the next poll is kept by the
/// handle itself (an event stays signalled until a wait consumes it), and
/// the next poll re-registers the wait, which then ends at once.
#[cfg(feature = "tokio")]
pub mod reactor {
    use std::ffi::c_void;
    use std::io;
    use std::os::windows::io::{AsRawHandle, OwnedHandle};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::task::{Context, Poll, Waker};

    use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::System::Threading::{
        RegisterWaitForSingleObject, UnregisterWaitEx, WT_EXECUTEINWAITTHREAD, WT_EXECUTEONLYONCE,
    };

    use super::{check, WAIT_TICK_MS};
    use crate::wait::{WaitFor, WaitHandle};

    /// What the thread pool's callback and the task share for one handle.
    #[derive(Debug, Default)]
    struct Slot {
        /// Set by the callback; cleared by the poll that reports it.
        fired: AtomicBool,
        /// The task to wake.
        waker: Mutex<Option<Waker>>,
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // A panic while the lock was held cannot leave a waker slot
        // half-written: take it as it is.
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A registered wait (the value `RegisterWaitForSingleObject` gave).
    #[derive(Debug)]
    struct WaitObject(HANDLE);

    // SAFETY: a wait handle is a token of the process-wide thread pool,
    // valid on any thread; it is only passed to `UnregisterWaitEx`, once,
    // by its owner.
    unsafe impl Send for WaitObject {}

    /// One watched handle.
    #[derive(Debug)]
    struct Watch {
        handle: OwnedHandle,
        slot: Arc<Slot>,
        /// The pending wait, if one is registered.
        wait: Option<WaitObject>,
    }

    /// The thread pool's callback: marks the slot fired and wakes the task.
    ///
    /// # Safety
    ///
    /// `ctx` is `Arc::as_ptr` of the [`Slot`] of the [`Watch`] that
    /// registered this wait; the watch keeps that `Arc` until
    /// `UnregisterWaitEx(.., INVALID_HANDLE_VALUE)` has returned, which
    /// waits for a running callback to finish.
    unsafe extern "system" fn on_signal(ctx: *mut c_void, _timed_out: bool) {
        // SAFETY: the function's contract: the slot outlives every call.
        let slot = unsafe { &*(ctx as *const Slot) };
        slot.fired.store(true, Ordering::Release);
        let waker = lock(&slot.waker).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    impl Watch {
        fn register(&mut self) -> io::Result<()> {
            let mut wait: HANDLE = std::ptr::null_mut();
            // SAFETY: `self.handle` is a waitable handle this watch owns,
            // open until the watch is dropped, which unregisters the wait
            // first; the context is the slot's address, kept alive as
            // `on_signal` requires (see `unregister` and `Drop`); `wait`
            // outlives the call. `WT_EXECUTEINWAITTHREAD` is for short
            // callbacks: `on_signal` only stores a flag and wakes a task.
            let ok = unsafe {
                RegisterWaitForSingleObject(
                    &mut wait,
                    self.handle.as_raw_handle() as HANDLE,
                    Some(on_signal),
                    Arc::as_ptr(&self.slot).cast(),
                    WAIT_TICK_MS,
                    WT_EXECUTEONLYONCE | WT_EXECUTEINWAITTHREAD,
                )
            };
            check(ok)?;
            self.wait = Some(WaitObject(wait));
            Ok(())
        }

        /// Ends the pending wait, waiting for a running callback to return.
        fn unregister(&mut self) {
            if let Some(WaitObject(wait)) = self.wait.take() {
                // SAFETY: `wait` came from RegisterWaitForSingleObject and
                // is unregistered once (taken out of `self.wait`).
                // INVALID_HANDLE_VALUE makes the call wait for a callback
                // in progress, so none runs after it returns.
                let ok = unsafe { UnregisterWaitEx(wait, INVALID_HANDLE_VALUE) };
                if ok == 0 {
                    // The wait may still call back: keep its slot alive
                    // for good rather than risk a dangling context.
                    std::mem::forget(Arc::clone(&self.slot));
                }
            }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            self.unregister();
        }
    }

    /// Handles watched for the current task.
    #[derive(Debug)]
    pub struct Registration {
        watches: Mutex<Vec<Watch>>,
    }

    impl Registration {
        /// Registers duplicates of `handles` (what they are waited for does
        /// not matter on Windows: a signal means "look again"). Fails
        /// outside a tokio runtime (with `Other`), like the Unix version,
        /// or when a handle cannot be duplicated.
        pub fn new(handles: &[(WaitHandle<'_>, WaitFor)]) -> io::Result<Registration> {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other(
                    "into_async must be called inside a tokio runtime",
                ));
            }
            let mut watches = Vec::with_capacity(handles.len());
            for (h, _) in handles {
                watches.push(Watch {
                    handle: h.try_clone_to_owned()?,
                    slot: Arc::default(),
                    wait: None,
                });
            }
            Ok(Registration {
                watches: Mutex::new(watches),
            })
        }

        /// `Ready` when one of the handles signalled, or its wait timed out
        /// (see the module docs; cleared: look at the endpoint before
        /// polling again); `Pending` with the task's waker stored and a
        /// wait registered on every handle otherwise.
        pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut watches = lock(&self.watches);
            let mut any = false;
            for w in watches.iter_mut() {
                {
                    let mut waker = lock(&w.slot.waker);
                    if !waker.as_ref().is_some_and(|x| x.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                }
                if w.slot.fired.swap(false, Ordering::AcqRel) {
                    // A one-shot wait that ended: release it (its callback
                    // has run or is returning).
                    w.unregister();
                    any = true;
                } else if w.wait.is_none() {
                    if let Err(e) = w.register() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
            if any {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }
}

fn last_error_from(code: u32) -> io::Error {
    match code {
        ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED => io::Error::from(io::ErrorKind::BrokenPipe),
        _ => io::Error::from_raw_os_error(code as i32),
    }
}

/// Leaves the handles in this process for the child to duplicate out; returns
/// the token's handle part (`pid=<our pid>:<handle>:<handle>...`).
pub fn send_handles(_cmd: &mut Command, handles: Vec<OwnedHandle>) -> Result<String> {
    // SAFETY: GetCurrentProcessId has no preconditions.
    let mut part = format!("pid={}", unsafe { GetCurrentProcessId() });
    for h in handles {
        // The child closes this copy with DUPLICATE_CLOSE_SOURCE when it adopts.
        part.push_str(&format!(":{}", h.into_raw_handle() as usize));
    }
    Ok(part)
}

/// Moves `handles` into the process `child` (Python's multiprocessing does
/// the same on Windows): each is duplicated into the child's handle table
/// with `DUPLICATE_CLOSE_SOURCE`, which closes this process's copy whether
/// the duplication succeeds or not (for example when the child has already
/// exited). Returns the handle part naming the child's values
/// (`own=<handle>:<handle>...`), which only [`take_own_handles`] accepts.
///
/// Once this returns, nothing of the endpoint is left in this process: a
/// child that exits without taking the handles closes them with its handle
/// table, so the parent's end sees the peer disconnect. Every handle is
/// moved or closed even when one fails; the first failure is returned.
pub fn send_handles_to(child: BorrowedHandle<'_>, handles: Vec<OwnedHandle>) -> Result<String> {
    let mut part = String::from("own=");
    let mut failed = None;
    for (i, h) in handles.into_iter().enumerate() {
        let mut dup: HANDLE = std::ptr::null_mut();
        // SAFETY: `child` is a process handle borrowed for the call, `h` is
        // a handle this process owns and gives up here (into_raw_handle:
        // DUPLICATE_CLOSE_SOURCE closes it even when the call fails, so it
        // is never used or closed again here), and `dup` outlives the call.
        // The value written to `dup` names a handle in the child's table,
        // not ours: it is only formatted, never used in this process.
        let ok = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                h.into_raw_handle() as HANDLE,
                child.as_raw_handle() as HANDLE,
                &mut dup,
                0,
                0,
                DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE,
            )
        };
        if ok == 0 {
            failed.get_or_insert_with(last_error);
            continue;
        }
        if i > 0 {
            part.push(':');
        }
        part.push_str(&(dup as usize).to_string());
    }
    match failed {
        None => Ok(part),
        Some(e) => Err(Error::from_io(
            "cannot move a handle into the child process (has it exited already?)",
            e,
        )),
    }
}

/// Takes ownership of the handles that the parent moved into this process
/// with [`send_handles_to`], named by `part` (`own=<handle>:<handle>...`).
///
/// Values that are not distinct open handles of this process are refused
/// before any is taken.
///
/// # Safety
///
/// `part` must be the handle part returned by the parent's
/// [`send_handles_to`] for this very process, received over a channel only
/// the parent can write to, and used once: the handles it names must be
/// owned by nothing else in this process.
pub unsafe fn take_own_handles(part: &str, count: usize) -> Result<Vec<OwnedHandle>> {
    let bad = || Error::invalid_input("bad handle part of a pushed handoff token");
    let rest = part.strip_prefix("own=").ok_or_else(bad)?;
    let values: Vec<usize> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(':')
            .map(|h| h.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?
    };
    if values.len() != count {
        return Err(bad());
    }
    for (i, &v) in values.iter().enumerate() {
        let mut flags = 0u32;
        // SAFETY: GetHandleInformation only reads this process's handle
        // table; an invalid value fails the call, and `flags` outlives it.
        let open = unsafe { GetHandleInformation(v as HANDLE, &mut flags) } != 0;
        if v == 0 || v as HANDLE == INVALID_HANDLE_VALUE || !open || values[..i].contains(&v) {
            return Err(bad());
        }
    }
    Ok(values
        .into_iter()
        // SAFETY: each value is a distinct open handle of this process that
        // the parent moved here for this token and that nothing else owns
        // (the caller's contract).
        .map(|v| unsafe { OwnedHandle::from_raw_handle(v as _) })
        .collect())
}

/// Duplicates the handles named by a token's handle part out of the parent,
/// closing the parent's copies.
pub fn receive_handles(part: &str, count: usize) -> Result<Vec<OwnedHandle>> {
    let bad = || Error::invalid_input("bad handle part");
    let rest = part.strip_prefix("pid=").ok_or_else(bad)?;
    let mut items = rest.split(':');
    let pid: u32 = items.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let values: Vec<usize> = items
        .map(|h| h.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    if values.len() != count {
        return Err(bad());
    }
    let stale = || {
        Error::invalid_input(format!(
            "stale handoff token: it names process {pid}, which is not this process's parent \
             (was the variable inherited from an ancestor or copied?); a process can adopt \
             only what its own parent handed to it, once"
        ))
    };
    if parent_pid()? != pid {
        return Err(stale());
    }
    // SAFETY: OpenProcess has no memory-safety preconditions; a null result is checked.
    let parent = unsafe {
        OpenProcess(
            PROCESS_DUP_HANDLE | PROCESS_QUERY_LIMITED_INFORMATION,
            0,
            pid,
        )
    };
    // SAFETY: the return value of the OpenProcess call just made; a process
    // handle nobody else owns.
    let parent = unsafe { owned(parent) }.map_err(|e| {
        Error::from_io(
            "cannot open the parent process to take the handed handles",
            e,
        )
    })?;
    // The parent may have exited and its pid been reused by a younger process.
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    let me = unsafe { GetCurrentProcess() };
    match (created(parent.as_raw_handle() as HANDLE), created(me)) {
        (Some(theirs), Some(ours)) if theirs <= ours => {}
        _ => return Err(stale()),
    }
    let mut out = Vec::with_capacity(count);
    for value in values {
        let mut dup: HANDLE = std::ptr::null_mut();
        // SAFETY: all handles are valid process handles or the parent's handle
        // value from the token (an invalid value fails the call; it cannot touch
        // our memory); `dup` outlives the call.
        let ok = unsafe {
            DuplicateHandle(
                parent.as_raw_handle() as HANDLE,
                value as HANDLE,
                GetCurrentProcess(),
                &mut dup,
                0,
                0,
                DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE,
            )
        };
        if ok == 0 {
            return Err(Error::from_io(
                "cannot duplicate a handed handle out of the parent (already adopted, or the parent exited?)",
                last_error(),
            ));
        }
        // SAFETY: DuplicateHandle succeeded, so `dup` is a new handle we own.
        out.push(unsafe { OwnedHandle::from_raw_handle(dup as _) });
    }
    Ok(out)
}

/// This process's parent's pid, from a toolhelp snapshot of the processes.
fn parent_pid() -> Result<u32> {
    // SAFETY: no preconditions; the result is checked.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    // SAFETY: the return value of the CreateToolhelp32Snapshot call just
    // made; a snapshot handle nobody else owns.
    let snap = unsafe { owned(snap) }
        .map_err(|e| Error::from_io("cannot list processes to find this process's parent", e))?;
    // SAFETY: GetCurrentProcessId has no preconditions.
    let me = unsafe { GetCurrentProcessId() };
    let mut entry = PROCESSENTRY32W {
        dwSize: std::mem::size_of::<PROCESSENTRY32W>() as u32,
        ..Default::default()
    };
    // SAFETY: the snapshot handle is valid and `entry` is a PROCESSENTRY32W
    // with `dwSize` set, as both calls require; they write only into it.
    let mut ok = unsafe { Process32FirstW(snap.as_raw_handle() as HANDLE, &mut entry) };
    while ok != 0 {
        if entry.th32ProcessID == me {
            return Ok(entry.th32ParentProcessID);
        }
        // SAFETY: as above.
        ok = unsafe { Process32NextW(snap.as_raw_handle() as HANDLE, &mut entry) };
    }
    Err(Error::invalid_input(
        "this process is missing from the process list: cannot check the handoff token",
    ))
}

/// A process's creation time (100 ns units), or `None` if it cannot be read.
fn created(process: HANDLE) -> Option<u64> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
    // SAFETY: `process` is a valid process handle (with query access, or the
    // current-process pseudo-handle); the four out-pointers outlive the call.
    let ok = unsafe { GetProcessTimes(process, &mut c, &mut e, &mut k, &mut u) };
    (ok != 0).then(|| (u64::from(c.dwHighDateTime) << 32) | u64::from(c.dwLowDateTime))
}

/// Creates a non-inheritable pipe with 1 MiB buffers, both ends opened
/// for overlapped I/O (so that a wait can watch a zero-byte read and a
/// write can stay in flight; anonymous pipes cannot do overlapped I/O):
/// `(read end, write end)`. A named pipe with one instance under a name
/// unique to this process (pid, counter, clock), connected at once by the
/// write end; if someone else took the name or the instance first, another
/// name is tried.
pub fn pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..4 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // SAFETY: GetCurrentProcessId has no preconditions.
        let pid = unsafe { GetCurrentProcessId() };
        let name: Vec<u16> = format!(r"\\.\pipe\conduit-anon-{pid}-{n}-{t:x}")
            .encode_utf16()
            .chain(std::iter::once(0))
            .collect();
        // SAFETY: `name` is NUL-terminated and outlives the call; null
        // security attributes (the default DACL, not inheritable); one
        // instance, local clients only. The result is checked by `owned`.
        let server = unsafe {
            CreateNamedPipeW(
                name.as_ptr(),
                PIPE_ACCESS_INBOUND | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                1,
                1 << 20,
                1 << 20,
                0,
                std::ptr::null(),
            )
        };
        // SAFETY: the return value of the call just made, owned by nobody else.
        let server = match unsafe { owned(server) } {
            Ok(h) => h,
            Err(e) => {
                last = e;
                continue;
            }
        };
        // SAFETY: as above; write access only, no sharing, the existing
        // pipe, overlapped. The result is checked by `owned`.
        let client = unsafe {
            CreateFileW(
                name.as_ptr(),
                FILE_GENERIC_WRITE,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: as above.
        let client = match unsafe { owned(client) } {
            Ok(h) => h,
            Err(e) => {
                // Someone else connected first (the only instance is taken).
                last = e;
                continue;
            }
        };
        return Ok((server, client));
    }
    Err(last)
}

impl OsStream {
    /// Waits until the write in flight (see [`write`](Self::write)) has
    /// completed, or `deadline` passes (false). True at once when none is.
    pub fn wait_writable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let Some(aio) = self.aio.as_ref() else {
            return Ok(true);
        };
        if lock(&aio.state).write.is_none() {
            return Ok(true);
        }
        let ms = deadline.map_or(u32::MAX, |d| {
            d.saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(u32::MAX - 1)) as u32
        });
        // SAFETY: the event is open for the lifetime of `aio`.
        match unsafe { WaitForSingleObject(aio.write_event.as_raw_handle() as HANDLE, ms) } {
            WAIT_OBJECT_0 => Ok(true),
            WAIT_TIMEOUT => Ok(false),
            _ => Err(last_error()),
        }
    }

    /// Reads always block; a no-op.
    pub fn set_nonblocking(&self, _on: bool) -> io::Result<()> {
        Ok(())
    }

    /// Non-blocking writes: see [`write`](Self::write).
    pub fn set_nonblocking_writes(&mut self, on: bool) -> io::Result<()> {
        self.nonblocking_writes = on && self.aio.is_some();
        Ok(())
    }
}

impl OsStream {
    /// Nothing to do on Windows: a stream's write end is its own pipe
    /// handle, and closing it tells the peer.
    pub fn shutdown_write(&self) {}
}
