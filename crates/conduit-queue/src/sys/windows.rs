//! Windows: a message-mode named pipe with one instance under a random name.
//!
//! The server end (read side) is what consumers hold, the client end (write
//! side) what producers hold; both are duplicated into every participant.
//! Each `WriteFile` is one message and each `ReadFile` takes one whole
//! message for one reader (the kernel keeps message boundaries), so a kill
//! in the middle of either leaves the pipe consistent. Readers always read
//! with a buffer that holds the largest allowed message, so a read never
//! stops part-way through a message (`ERROR_MORE_DATA` would leave the rest
//! for whichever reader comes next): it only happens for an oversized
//! message from a misbehaving participant, and is reported as `Protocol`.
//!
//! Disconnection is the pipe's own: once every producer handle is closed,
//! reads drain what is queued and then fail with `ERROR_BROKEN_PIPE`; once
//! every consumer handle is closed, writes fail with `ERROR_NO_DATA`.
//!
//! All I/O is overlapped so that deadlines hold: a wait that passes its
//! deadline cancels the operation (`CancelIoEx`) and then waits for it to
//! end; an operation that completed before the cancel counts (a message
//! read that way is returned, not lost). A zero deadline (`try_send`)
//! succeeds only when the pipe took the message at once.
//!
//! Readiness (`poll`, `conduit::wait`) is a zero-byte overlapped read that
//! the consumer's end keeps in flight once something waited on it: it
//! completes without taking anything when a message is queued (a zero-byte
//! read of a message only reports that it is there, `ERROR_MORE_DATA`) or
//! when every producer is gone, and its manual-reset event is what `poll`
//! and `conduit::wait` wait on. Async receivers keep one of their own
//! (`RecvWatch`).

#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::time::{Duration, Instant};

use conduit_core::{Error, ErrorKind, Result};
use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_BROKEN_PIPE, ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_MORE_DATA,
    ERROR_NO_DATA, ERROR_OPERATION_ABORTED, ERROR_PIPE_CONNECTED, ERROR_PIPE_NOT_CONNECTED, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, GetFileType, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE,
    FILE_FLAG_OVERLAPPED, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_TYPE_PIPE, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeInfo, PeekNamedPipe, PIPE_READMODE_MESSAGE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_SERVER_END, PIPE_TYPE_MESSAGE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{CreateEventW, WaitForSingleObject, INFINITE};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use crate::wire::{self, Header, HEADER_LEN};

/// What a producer holds: the pipe's client end.
#[derive(Debug)]
pub(crate) struct TxEnd {
    pipe: OwnedHandle,
}

/// What a consumer holds: the pipe's server end.
#[derive(Debug)]
pub(crate) struct RxEnd {
    pipe: OwnedHandle,
    /// What `poll` and `conduit::wait` watch; `None` when its event could
    /// not be made (then `poll` checks every 1 to 5 ms and `wait` looks in
    /// rounds).
    watch: Option<ReadWatch>,
}

/// A zero-byte read kept in flight on the consumer's pipe (see the module
/// docs), shared by the waits on this end; the end's drop cancels it and
/// waits for it.
struct ReadWatch {
    /// Manual reset; signalled when the read completed (a new read resets
    /// it).
    event: OwnedHandle,
    read: std::sync::Mutex<Option<Pending>>,
}

impl std::fmt::Debug for ReadWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadWatch").finish_non_exhaustive()
    }
}

impl RxEnd {
    fn new(pipe: OwnedHandle) -> RxEnd {
        let watch = manual_reset_event().ok().map(|event| ReadWatch {
            event,
            read: std::sync::Mutex::new(None),
        });
        RxEnd { pipe, watch }
    }
}

impl Drop for RxEnd {
    fn drop(&mut self) {
        let read = self.watch.as_mut().and_then(|w| {
            w.read
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        if let Some(p) = read {
            let _ = cancel(&self.pipe, p);
        }
    }
}

fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

fn last_error() -> io::Error {
    // SAFETY: GetLastError has no preconditions.
    io::Error::from_raw_os_error(unsafe { GetLastError() } as i32)
}

fn is(e: &io::Error, code: u32) -> bool {
    e.raw_os_error() == Some(code as i32)
}

fn io_err(what: &str, e: io::Error) -> Error {
    Error::from_io(what, e)
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

/// A new queue: the producers' and the consumers' first ends. `capacity`
/// sizes the pipe's buffer.
pub(crate) fn pair(capacity: usize) -> Result<(TxEnd, RxEnd)> {
    let mut last = None;
    // A random name nobody can predict; retried if (against all odds) it
    // was taken.
    for _ in 0..3 {
        match try_pair(capacity) {
            Ok(p) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    Err(io_err(
        "cannot create the queue's pipe",
        last.unwrap_or_else(|| io::Error::other("no attempt")),
    ))
}

fn try_pair(capacity: usize) -> io::Result<(TxEnd, RxEnd)> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| io::Error::other(e.to_string()))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let name = wide(&format!(
        r"\\.\pipe\conduit-queue-{}-{id}",
        std::process::id()
    ));
    let buf = u32::try_from(capacity).unwrap_or(u32::MAX);
    // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the
    // call; no security attributes (the default DACL: this user, SYSTEM and
    // administrators); one instance only, refusing remote clients.
    let server = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            0,
            buf,
            0,
            std::ptr::null(),
        )
    };
    // SAFETY: the return value of the call just made, a new handle nobody
    // else owns (or INVALID_HANDLE_VALUE, refused by `owned`).
    let server = unsafe { owned(server) }?;
    // SAFETY: as above; the client end is opened for reading too, only so
    // that `PeekNamedPipe` can tell whether the server end is gone (nobody
    // ever writes towards the producers).
    let client = unsafe {
        CreateFileW(
            name.as_ptr(),
            FILE_GENERIC_READ | FILE_GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: as above.
    let client = unsafe { owned(client) }?;
    // The client is connected already; this only completes the server's
    // state (ERROR_PIPE_CONNECTED is the expected answer).
    run_overlapped(
        &server,
        Some(Instant::now() + Duration::from_secs(5)),
        |ov| {
            // SAFETY: `server` is a pipe server handle opened for overlapped
            // I/O and `ov` stays valid until `run_overlapped` has waited for
            // the operation to finish.
            unsafe { ConnectNamedPipe(raw(&server), ov) }
        },
    )?;
    Ok((TxEnd { pipe: client }, RxEnd::new(server)))
}

/// # Safety
///
/// `h` is a handle (or `INVALID_HANDLE_VALUE`/null) that nothing else owns.
unsafe fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(last_error());
    }
    // SAFETY: the caller guarantees `h` is an open handle owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as _) })
}

/// Runs one overlapped operation on `file` (started by `start` with the
/// OVERLAPPED to use) and waits for it until `deadline`, cancelling it then
/// (`TimedOut`). Returns the number of bytes transferred; a read that found
/// a message larger than its buffer fails with `ERROR_MORE_DATA`.
fn run_overlapped(
    file: &OwnedHandle,
    deadline: Option<Instant>,
    start: impl FnOnce(*mut OVERLAPPED) -> BOOL,
) -> io::Result<u32> {
    // SAFETY: no security attributes or name; a manual-reset event, not set.
    let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    // SAFETY: the return value of the call just made, owned by nobody else.
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
            ERROR_PIPE_CONNECTED => return Ok(0),
            code => return Err(io::Error::from_raw_os_error(code as i32)),
        }
    }
    // The operation may be in flight: `ov` and the caller's buffer must
    // stay in place until it completed, so every path below ends in a
    // waiting GetOverlappedResult.
    loop {
        let ms = deadline.map_or(INFINITE, millis_until);
        // SAFETY: `event` is a valid event handle.
        let woke = unsafe { WaitForSingleObject(raw(&event), ms) };
        if woke == WAIT_OBJECT_0 {
            break;
        }
        if woke == WAIT_TIMEOUT && deadline.is_some_and(|d| Instant::now() < d) {
            continue;
        }
        // SAFETY: `ov` identifies our operation on `file`; cancelling one
        // that already completed is harmless.
        unsafe { CancelIoEx(raw(file), ov) };
        break;
    }
    let mut n = 0u32;
    // SAFETY: `ov` belongs to an operation on `file`; with bWait = TRUE this
    // returns only once the operation is complete, after which the system
    // no longer uses `ov` or the buffer.
    let ok = unsafe { GetOverlappedResult(raw(file), ov, &mut n, 1) };
    if ok != 0 {
        return Ok(n);
    }
    // SAFETY: GetLastError has no preconditions.
    match unsafe { GetLastError() } {
        ERROR_OPERATION_ABORTED => Err(io::Error::from(io::ErrorKind::TimedOut)),
        code => Err(io::Error::from_raw_os_error(code as i32)),
    }
}

fn millis_until(deadline: Instant) -> u32 {
    let left = deadline.saturating_duration_since(Instant::now());
    // Round up so that a wait never ends before the deadline.
    let ms = left.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(INFINITE - 1).min(INFINITE - 1)
}

fn gone(e: &io::Error) -> bool {
    is(e, ERROR_BROKEN_PIPE) || is(e, ERROR_NO_DATA) || is(e, ERROR_PIPE_NOT_CONNECTED)
}

fn receivers_gone_error() -> Error {
    Error::disconnected("every receiver of the queue is gone (dropped, exited or killed)")
}

fn senders_gone_error() -> Error {
    Error::disconnected("the queue is empty and every sender is gone (dropped, exited or killed)")
}

/// One queue message: the header, then the payload; smaller than 4 GiB.
fn frame(payload: &[u8]) -> Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
    msg.extend_from_slice(&Header::new(payload.len(), false).encode());
    msg.extend_from_slice(payload);
    if u32::try_from(msg.len()).is_err() {
        return Err(Error::too_large(
            "a queue message must be smaller than 4 GiB",
        ));
    }
    Ok(msg)
}

impl TxEnd {
    /// Sends one message, waiting for room until `deadline` (`Some(now)`:
    /// only if the pipe takes it at once). `Timeout`: nothing was sent.
    pub(crate) fn send(&self, payload: &[u8], deadline: Option<Instant>) -> Result<()> {
        let msg = frame(payload)?;
        let len = msg.len() as u32;
        let ptr = msg.as_ptr();
        let r = run_overlapped(&self.pipe, deadline, |ov| {
            // SAFETY: `ptr` is valid for `len` bytes until `run_overlapped`
            // returns, which is after the write completed or was cancelled;
            // the count comes from GetOverlappedResult.
            unsafe { WriteFile(raw(&self.pipe), ptr, len, std::ptr::null_mut(), ov) }
        });
        match r {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(Error::new(
                ErrorKind::Io,
                format!("the pipe took {n} of a {len}-byte queue message"),
            )),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(Error::timeout("the queue stayed full until the deadline"))
            }
            Err(e) if gone(&e) => Err(receivers_gone_error()),
            Err(e) => Err(io_err("cannot send to the queue", e)),
        }
    }

    /// True once every consumer's end is closed.
    pub(crate) fn receivers_gone(&self) -> Result<bool> {
        let mut avail = 0u32;
        // SAFETY: a valid pipe handle; no buffer (size 0), one out-count.
        let ok = unsafe {
            PeekNamedPipe(
                raw(&self.pipe),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut avail,
                std::ptr::null_mut(),
            )
        };
        if ok != 0 {
            return Ok(false);
        }
        let e = last_error();
        if gone(&e) {
            Ok(true)
        } else {
            Err(io_err("cannot check the queue's pipe", e))
        }
    }

    /// A new handle for a handoff: `[pipe]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedHandle>> {
        Ok(vec![self.pipe.try_clone()?])
    }

    /// Rebuilds a producer's end from [`TxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedHandle>) -> Result<TxEnd> {
        let [pipe]: [OwnedHandle; 1] = handles
            .try_into()
            .map_err(|_| Error::protocol("a queue sender is made of 1 handle"))?;
        check_pipe(&pipe, false)?;
        Ok(TxEnd { pipe })
    }
}

thread_local! {
    /// Receive buffer per thread, grown to the largest message allowed.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl RxEnd {
    /// Receives one message, waiting until `deadline` (`Some(now)`: not at
    /// all). `Timeout` when none came; `Disconnected` once the queue is
    /// empty and every producer is gone. `max` is the largest payload.
    pub(crate) fn recv(&self, max: usize, deadline: Option<Instant>) -> Result<Vec<u8>> {
        if deadline.is_some_and(|d| d <= Instant::now()) && !self.has_message()? {
            return Err(Error::timeout("no message arrived in time"));
        }
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let want = HEADER_LEN.saturating_add(max).saturating_add(1);
            let want = want.min(u32::MAX as usize);
            // Reserved, not filled: only the pages a message touches are
            // ever used.
            buf.clear();
            buf.reserve(want);
            let len = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
            let ptr = buf.as_mut_ptr();
            let r = run_overlapped(&self.pipe, deadline, |ov| {
                // SAFETY: `ptr` is valid for writes of `len` bytes (the
                // buffer's capacity), and the buffer is not touched until
                // `run_overlapped` returns, after the read completed or was
                // cancelled.
                unsafe { ReadFile(raw(&self.pipe), ptr, len, std::ptr::null_mut(), ov) }
            });
            match r {
                Ok(n) => {
                    let n = (n as usize).min(buf.capacity());
                    // SAFETY: the completed read initialized the first `n`
                    // bytes (GetOverlappedResult's count, at most the
                    // capacity passed to ReadFile).
                    unsafe { buf.set_len(n) };
                    let header = Header::decode(&buf)?;
                    if header.spilled {
                        return Err(Error::protocol(
                            "a spilled queue message arrived on Windows, which does not spill",
                        ));
                    }
                    wire::inline_payload(&header, &buf[HEADER_LEN..n])
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    Err(Error::timeout("no message arrived in time"))
                }
                Err(e) if gone(&e) => Err(senders_gone_error()),
                Err(e) if is(&e, ERROR_MORE_DATA) => Err(Error::protocol(format!(
                    "a queue message larger than {max} bytes arrived; a participant is \
                     misbehaving or uses another QueueConfig::max_message"
                ))),
                Err(e) => Err(io_err("cannot receive from the queue", e)),
            }
        })
    }

    /// A message is queued, or the producers are gone (a receive would not
    /// block).
    fn has_message(&self) -> Result<bool> {
        let mut avail = 0u32;
        // SAFETY: a valid pipe handle; no buffer (size 0), one out-count.
        let ok = unsafe {
            PeekNamedPipe(
                raw(&self.pipe),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut avail,
                std::ptr::null_mut(),
            )
        };
        if ok != 0 {
            return Ok(avail > 0);
        }
        let e = last_error();
        if gone(&e) {
            Ok(true)
        } else {
            Err(io_err("cannot check the queue's pipe", e))
        }
    }

    /// What `conduit::wait` watches: the event of the zero-byte read that
    /// [`poll`](Self::poll) keeps in flight.
    pub(crate) fn wait_handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        if let Some(w) = &self.watch {
            out.push(std::os::windows::io::AsHandle::as_handle(&w.event));
        }
    }

    /// True when a receive would not block, waiting until `deadline` on
    /// the zero-byte read's event (`Some(now)`: not at all; it only makes
    /// sure the read is in flight, for `conduit::wait`).
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> Result<bool> {
        let Some(w) = &self.watch else {
            return self.poll_peek(deadline);
        };
        loop {
            if self.ready_now(w)? {
                return Ok(true);
            }
            let ms = match deadline {
                Some(d) if Instant::now() >= d => return Ok(false),
                Some(d) => millis_until(d),
                None => INFINITE,
            };
            // SAFETY: `w.event` is a valid event handle, open while `self`
            // lives.
            if unsafe { WaitForSingleObject(raw(&w.event), ms) } == WAIT_FAILED {
                return Err(io_err("waiting on the queue's pipe failed", last_error()));
            }
        }
    }

    /// Makes sure the zero-byte read is in flight; true when a receive
    /// would not block now.
    fn ready_now(&self, w: &ReadWatch) -> Result<bool> {
        let mut read = w
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each round either finds the read in flight (an answer) or
        // consumes one completion; the bound only guards against a pipe
        // that completes every read at once without showing a message.
        for _ in 0..4 {
            if let Some(p) = read.as_ref() {
                match finished(&self.pipe, p, false) {
                    // In flight: nothing queued (the peek guards against a
                    // read that was overtaken).
                    None => return self.has_message(),
                    // A message came or the producers left: look again
                    // with a new read (another consumer may have taken it).
                    Some(_) => *read = None,
                }
            }
            match zero_read(&self.pipe, &w.event) {
                Ok(Some(p)) => *read = Some(p),
                Ok(None) => return Ok(true),
                Err(e) => return Err(io_err("cannot watch the queue's pipe", e)),
            }
        }
        Ok(true)
    }

    /// `poll` without an event: checks every 1 to 5 ms.
    fn poll_peek(&self, deadline: Option<Instant>) -> Result<bool> {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.has_message()? {
                return Ok(true);
            }
            let now = Instant::now();
            if let Some(d) = deadline {
                if now >= d {
                    return Ok(false);
                }
                pause = pause.min(d - now);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// A new handle for a handoff: `[pipe]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedHandle>> {
        Ok(vec![self.pipe.try_clone()?])
    }

    /// Rebuilds a consumer's end from [`RxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedHandle>) -> Result<RxEnd> {
        let [pipe]: [OwnedHandle; 1] = handles
            .try_into()
            .map_err(|_| Error::protocol("a queue receiver is made of 1 handle"))?;
        check_pipe(&pipe, true)?;
        Ok(RxEnd::new(pipe))
    }
}

/// Checks that a handed handle is a message-mode pipe's server (consumer)
/// or client (producer) end.
fn check_pipe(pipe: &OwnedHandle, server: bool) -> Result<()> {
    // SAFETY: a valid handle; GetFileType only queries it.
    if unsafe { GetFileType(raw(pipe)) } != FILE_TYPE_PIPE {
        return Err(Error::protocol("a handed queue handle is not a pipe"));
    }
    let mut flags = 0u32;
    // SAFETY: a valid pipe handle; only `flags` is asked for.
    let ok = unsafe {
        GetNamedPipeInfo(
            raw(pipe),
            &mut flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io_err("cannot inspect a handed queue pipe", last_error()));
    }
    let is_server = flags & PIPE_SERVER_END != 0;
    if flags & PIPE_TYPE_MESSAGE == 0 || is_server != server {
        return Err(Error::protocol(
            "a handed queue handle is not the expected end of a message pipe",
        ));
    }
    Ok(())
}

/// A heap-allocated `OVERLAPPED` whose address stays fixed while the
/// system writes to it; only raw pointers to it are used.
struct OverlappedBox(*mut OVERLAPPED);

impl OverlappedBox {
    fn new(event: &OwnedHandle) -> OverlappedBox {
        OverlappedBox(Box::into_raw(Box::new(OVERLAPPED {
            hEvent: raw(event),
            ..OVERLAPPED::default()
        })))
    }
}

impl Drop for OverlappedBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw in `new`, and every
        // owner (`Pending`) drops this only once its operation completed
        // (or leaks it with mem::forget when that cannot be established).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

// SAFETY: the OVERLAPPED is only reached through this owner's raw pointer,
// handed to the system for one operation at a time; moving the owner to
// another thread does not move the allocation.
unsafe impl Send for OverlappedBox {}
// SAFETY: `&OverlappedBox` gives nothing but the pointer value.
unsafe impl Sync for OverlappedBox {}

/// One overlapped operation in flight on `pipe`, with the buffer it uses.
struct Pending {
    ov: OverlappedBox,
    /// What the system reads (a write) or writes (a read) until the
    /// operation completes; its heap allocation never moves.
    buf: Vec<u8>,
}

/// The outcome of an operation that was in flight: `None` while it is.
fn finished(pipe: &OwnedHandle, p: &Pending, wait: bool) -> Option<io::Result<u32>> {
    let mut n = 0u32;
    // SAFETY: `p.ov` belongs to an operation started on `pipe`'s file object
    // (a duplicate handle of it is fine); `n` outlives the call.
    let ok = unsafe { GetOverlappedResult(raw(pipe), p.ov.0, &mut n, i32::from(wait)) };
    if ok != 0 {
        return Some(Ok(n));
    }
    let e = last_error();
    if is(&e, ERROR_IO_INCOMPLETE) {
        None
    } else {
        Some(Err(e))
    }
}

/// Ends an operation in flight: cancels it and waits until the system is
/// done with its OVERLAPPED and buffer; returns how it ended. If that
/// cannot be established, both are leaked rather than freed under the
/// system's hands.
fn cancel(pipe: &OwnedHandle, p: Pending) -> Option<io::Result<u32>> {
    // SAFETY: `p.ov` identifies our operation on the pipe's file object;
    // cancelling one that already completed is harmless.
    unsafe { CancelIoEx(raw(pipe), p.ov.0) };
    match finished(pipe, &p, true) {
        Some(r) => Some(r),
        None => {
            std::mem::forget(p);
            None
        }
    }
}

fn manual_reset_event() -> io::Result<OwnedHandle> {
    // SAFETY: no security attributes or name; a manual-reset event, not set.
    let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    // SAFETY: the return value of the call just made, owned by nobody else.
    unsafe { owned(event) }
}

/// An async receiver's readiness (feature `tokio`): a zero-byte overlapped
/// read on the consumer's pipe, which completes when a message is queued
/// (without taking it: a zero-byte read of a message only reports that it
/// is there, `ERROR_MORE_DATA`) or when every producer is gone; its event
/// is what the runtime watches. The read is owned here and cancelled (and
/// waited for) on drop.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct RecvWatch {
    /// A duplicate of the consumer's pipe handle (the same file object).
    pipe: OwnedHandle,
    event: OwnedHandle,
    read: Option<Pending>,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl RecvWatch {
    pub(crate) fn new(end: &RxEnd) -> io::Result<RecvWatch> {
        Ok(RecvWatch {
            pipe: end.pipe.try_clone()?,
            event: manual_reset_event()?,
            read: None,
        })
    }

    /// The handle that signals when [`arm`](Self::arm) may say ready.
    pub(crate) fn wait_handles<'a>(
        &'a self,
        _end: &'a RxEnd,
        out: &mut Vec<conduit_core::WaitHandle<'a>>,
    ) {
        out.push(std::os::windows::io::AsHandle::as_handle(&self.event));
    }

    /// Makes sure a zero-byte read is in flight; true when a receive may
    /// not block now (the read completed: a message is queued, or the
    /// producers are gone; the caller looks).
    pub(crate) fn arm(&mut self) -> io::Result<bool> {
        if let Some(p) = &self.read {
            return match finished(&self.pipe, p, false) {
                None => Ok(false),
                Some(_) => {
                    self.read = None;
                    Ok(true)
                }
            };
        }
        match zero_read(&self.pipe, &self.event)? {
            Some(p) => {
                self.read = Some(p);
                Ok(false)
            }
            None => Ok(true),
        }
    }
}

/// Starts a zero-byte read on the consumer's `pipe` that signals `event`:
/// `Some` while it is in flight (the caller keeps it until it completed,
/// and cancels it with [`cancel`]), `None` when it completed at once (a
/// message is queued, or the producers are gone).
fn zero_read(pipe: &OwnedHandle, event: &OwnedHandle) -> io::Result<Option<Pending>> {
    let p = Pending {
        ov: OverlappedBox::new(event),
        buf: Vec::with_capacity(1),
    };
    // SAFETY: a zero-byte read into `p.buf`'s allocation (valid for 0
    // bytes), with `p.ov` set up for it (its event resets when the read
    // starts). Both are returned to the caller, who keeps them until the
    // read completed (or leaks them, see `cancel`); a read that did not
    // start or completed at once drops them here, unused by the system.
    let ok = unsafe {
        ReadFile(
            raw(pipe),
            p.buf.as_ptr().cast_mut(),
            0,
            std::ptr::null_mut(),
            p.ov.0,
        )
    };
    if ok != 0 {
        return Ok(None);
    }
    let e = last_error();
    if is(&e, ERROR_IO_PENDING) {
        Ok(Some(p))
    } else if is(&e, ERROR_MORE_DATA) || gone(&e) {
        Ok(None)
    } else {
        Err(e)
    }
}

impl Drop for RecvWatch {
    fn drop(&mut self) {
        if let Some(p) = self.read.take() {
            let _ = cancel(&self.pipe, p);
        }
    }
}

/// How an async send attempt went (see [`SendSlot::try_send`]).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) enum SendTry {
    /// The pipe took the message.
    Sent,
    /// The queue is full; nothing was sent (Unix only).
    #[allow(dead_code)]
    Full,
    /// The message is whole in the kernel's hands, still being written:
    /// [`SendSlot::poll_queued`] tells when it is done.
    Queued,
}

/// An async sender's write in flight (feature `tokio`): a message-mode
/// write that the pipe could not take at once stays pending in the
/// kernel, whole, with its buffer owned here until it completes: a
/// dropped send future leaves it to complete (the message is sent whole),
/// and dropping the sender cancels it (sent whole or not at all: readers
/// take whole messages). Its event is what the runtime watches.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct SendSlot {
    pipe: OwnedHandle,
    event: OwnedHandle,
    write: Option<Pending>,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl SendSlot {
    pub(crate) fn new(end: &TxEnd) -> io::Result<SendSlot> {
        Ok(SendSlot {
            pipe: end.pipe.try_clone()?,
            event: manual_reset_event()?,
            write: None,
        })
    }

    /// The handle that signals when a queued write completed.
    pub(crate) fn wait_handles<'a>(
        &'a self,
        _end: &'a TxEnd,
        out: &mut Vec<(conduit_core::WaitHandle<'a>, conduit_core::WaitFor)>,
    ) {
        out.push((
            std::os::windows::io::AsHandle::as_handle(&self.event),
            conduit_core::WaitFor::Write,
        ));
    }

    /// The end of the queued write, if any: `None` while it is in flight,
    /// `Some(Ok)` when none is (any more), `Some(Err)` when it failed.
    pub(crate) fn poll_queued(&mut self) -> Option<Result<()>> {
        let Some(p) = self.write.as_ref() else {
            return Some(Ok(()));
        };
        let r = finished(&self.pipe, p, false)?;
        let len = p.buf.len();
        self.write = None;
        Some(write_result(r, len))
    }

    /// Starts sending `payload` as one message; call only when
    /// [`poll_queued`](Self::poll_queued) said nothing is in flight.
    pub(crate) fn try_send(&mut self, _end: &TxEnd, payload: &[u8]) -> Result<SendTry> {
        let msg = frame(payload)?;
        let len = msg.len() as u32;
        let p = Pending {
            ov: OverlappedBox::new(&self.event),
            buf: msg,
        };
        // SAFETY: `p.buf` is valid for reads of `len` bytes and `p.ov` is
        // set up for this write; both stay in `self.write` until the write
        // completed, and the drop cancels and waits for it (`cancel`).
        let ok = unsafe {
            WriteFile(
                raw(&self.pipe),
                p.buf.as_ptr(),
                len,
                std::ptr::null_mut(),
                p.ov.0,
            )
        };
        if ok != 0 {
            return write_result(
                finished(&self.pipe, &p, true).unwrap_or(Ok(len)),
                p.buf.len(),
            )
            .map(|()| SendTry::Sent);
        }
        let e = last_error();
        if is(&e, ERROR_IO_PENDING) {
            self.write = Some(p);
            return Ok(SendTry::Queued);
        }
        write_result(Err(e), p.buf.len()).map(|()| SendTry::Sent)
    }
}

impl SendSlot {
    /// Cancels the queued write, if any, and says how it ended: `Some(Ok)`
    /// when it completed first (sent), `Some(Err)` when it was cancelled
    /// or failed (not sent), `None` when nothing was in flight.
    pub(crate) fn cancel_queued(&mut self) -> Option<Result<()>> {
        let p = self.write.take()?;
        let len = p.buf.len();
        let r = cancel(&self.pipe, p)?;
        Some(write_result(r, len))
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        let _ = self.cancel_queued();
    }
}

/// A finished write of a `len`-byte message, as the queue reports it.
fn write_result(r: io::Result<u32>, len: usize) -> Result<()> {
    match r {
        Ok(n) if n as usize == len => Ok(()),
        Ok(n) => Err(Error::new(
            ErrorKind::Io,
            format!("the pipe took {n} of a {len}-byte queue message"),
        )),
        Err(e) if gone(&e) => Err(receivers_gone_error()),
        Err(e) => Err(io_err("cannot send to the queue", e)),
    }
}
