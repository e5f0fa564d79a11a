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
//! Waiting with a deadline on a synchronous pipe handle has no blocking
//! primitive, so `wait_readable` checks `PeekNamedPipe` with a backoff of up to
//! 5 ms between checks; blocking receives without a deadline use a plain
//! blocking `ReadFile` and cost no CPU while idle.

use std::io::{self, IoSlice};
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, IntoRawHandle, OwnedHandle,
};
use std::process::Command;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    DuplicateHandle, GetHandleInformation, GetLastError, DUPLICATE_CLOSE_SOURCE,
    DUPLICATE_SAME_ACCESS, ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED, FILETIME,
    HANDLE, INVALID_HANDLE_VALUE, WAIT_ABANDONED_0, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Pipes::{CreatePipe, PeekNamedPipe};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentProcessId, GetProcessTimes, OpenProcess, WaitForMultipleObjects,
    WaitForSingleObject, PROCESS_DUP_HANDLE, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::StreamKind;
use crate::error::{Error, Result};

/// The owned OS handle type.
pub type OsHandle = OwnedHandle;

/// A blocking byte stream over a pipe handle.
#[derive(Debug)]
pub struct OsStream {
    handle: OwnedHandle,
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

impl OsStream {
    /// Wraps a handle (the kind does not matter on Windows).
    pub fn new(handle: OwnedHandle, _kind: StreamKind) -> OsStream {
        OsStream { handle }
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Reads what is available, blocking until at least one byte or EOF (0).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let mut got = 0u32;
        // SAFETY: the handle is open for the lifetime of `self`, `buf` is valid
        // for `len` bytes, `got` outlives the call, and no OVERLAPPED is used.
        let ok = unsafe {
            ReadFile(
                self.raw(),
                buf.as_mut_ptr(),
                len,
                &mut got,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            // SAFETY: GetLastError has no preconditions.
            let code = unsafe { GetLastError() };
            if code == ERROR_BROKEN_PIPE {
                return Ok(0);
            }
            return Err(last_error_from(code));
        }
        Ok(got as usize)
    }

    /// Writes some of `buf`, blocking while the pipe is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let mut put = 0u32;
        // SAFETY: as in `read`, with `buf` valid for reads of `len` bytes.
        let ok = unsafe {
            WriteFile(
                self.raw(),
                buf.as_ptr(),
                len,
                &mut put,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(last_error());
        }
        Ok(put as usize)
    }

    /// Writes the first non-empty buffer (pipes have no gather write).
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.write(b),
            None => Ok(0),
        }
    }

    /// Waits until data is available or the pipe is broken, or `deadline`
    /// passes (false).
    pub fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let Some(deadline) = deadline else {
            return Ok(true);
        };
        let mut pause = Duration::from_micros(50);
        loop {
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
            if ok == 0 || avail > 0 {
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

    /// Gives back the handle.
    pub fn into_handle(self) -> OwnedHandle {
        self.handle
    }

    /// What `conduit::wait` would watch: nothing yet (a pipe handle is not
    /// signalled by arriving data).
    pub fn wait_handle(&self) -> Option<WaitHandle<'_>> {
        None
    }

    /// Borrows the handle.
    pub fn handle(&self) -> BorrowedHandle<'_> {
        self.handle.as_handle()
    }
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

/// Creates a non-inheritable anonymous pipe with a 1 MiB buffer hint:
/// `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    let mut read: HANDLE = std::ptr::null_mut();
    let mut write: HANDLE = std::ptr::null_mut();
    // SAFETY: both out-pointers are valid; a null SECURITY_ATTRIBUTES makes the
    // handles non-inheritable.
    let ok = unsafe { CreatePipe(&mut read, &mut write, std::ptr::null(), 1 << 20) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CreatePipe succeeded, so both handles are new and owned by us.
    unsafe {
        Ok((
            OwnedHandle::from_raw_handle(read as _),
            OwnedHandle::from_raw_handle(write as _),
        ))
    }
}

impl OsStream {
    /// Windows anonymous pipes cannot report free space: always true, and
    /// the next write blocks while the pipe is full.
    pub fn wait_writable(&self, _deadline: Option<Instant>) -> io::Result<bool> {
        Ok(true)
    }

    /// Writes on these pipes always block: a no-op (send deadlines are not
    /// honoured on Windows stream transports; see `docs/design-notes.md`).
    pub fn set_nonblocking(&self, _on: bool) -> io::Result<()> {
        Ok(())
    }

    /// As [`set_nonblocking`](Self::set_nonblocking): a no-op.
    pub fn set_nonblocking_writes(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }
}

impl OsStream {
    /// Nothing to do on Windows: a stream's write end is its own pipe
    /// handle, and closing it tells the peer.
    pub fn shutdown_write(&self) {}
}
