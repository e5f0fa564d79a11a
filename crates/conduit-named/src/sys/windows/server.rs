//! The server: a [`Listener`] keeps one instance of the rendezvous pipe
//! waiting for a client, and sets each connection up on a thread of its own.
//!
//! As soon as an instance is connected, `accept` creates the next one (so
//! the next client can connect at once) and hands the connected instance,
//! with the connection's own deadline (`handshake_timeout` from now), to a
//! *set-up thread*: the rendezvous (hello, the client's answer) and the
//! conduit handshake run there, side by side with those of other clients,
//! and the ready connection (or a handshake mismatch) is queued for
//! `accept`, which returns the first one queued. A silent client delays
//! nobody else: its thread drops it when its deadline passes. Connections
//! whose set-up ends while nobody is in `accept` are returned by the next
//! call. At most [`crate::MAX_PENDING`] set-ups run at once; `accept` waits
//! for one to end before it takes one more client.
//!
//! Every wait of a set-up thread also watches the listener's *abort* event,
//! which its drop sets before it joins the threads: no thread, and no
//! rendezvous instance (which would keep the name taken), outlives the
//! listener.

use std::collections::VecDeque;
use std::io;
use std::os::windows::io::OwnedHandle;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    GetLastError, SetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_NO_DATA,
    ERROR_PIPE_BUSY, WAIT_FAILED, WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAGS_AND_ATTRIBUTES, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
    PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND, PIPE_ACCESS_OUTBOUND,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeHandleStateW, PeekNamedPipe,
    PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES,
    PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, SetEvent, WaitForSingleObject, INFINITE,
};

use conduit_core::stream::{StreamReceiver, StreamSender, HANDSHAKE_LEN};
use conduit_core::transport::sys::OsStream;
use conduit_core::{Error, ErrorKind, FrameConfig, Result};

use crate::sys::Accepted;

use super::overlapped::{overlapped, read_exact, write_all, Wake};
use super::security::{user_sid, SecurityDescriptor};
use super::{
    is, lock, millis_until, owned, pipe_name, random_id, raw, wide, ACK, DATA_BUF, HELLO_LEN,
    HELLO_MAGIC, HELLO_VERSION, KIND, RENDEZVOUS_BUF,
};

fn in_use(name: &str, pipe: &str) -> Error {
    Error::with_source(
        ErrorKind::Io,
        format!(
            "conduit name {name:?} is already in use: the pipe {pipe} exists (a running server, or another process that created it first)"
        ),
        io::Error::from(io::ErrorKind::AddrInUse),
    )
}

/// A bound name.
pub struct Listener {
    pipe: String,
    sd: SecurityDescriptor,
    /// The instance waiting for the next client. It exists from `bind` to
    /// drop (the next one is created before a connected one is taken out),
    /// so the name never disappears while the listener lives. Its lock is
    /// held for a whole `accept`: concurrent calls take turns.
    pending: Mutex<Option<OwnedHandle>>,
    /// The connections being set up on their own threads.
    set_ups: Arc<SetUps>,
}

/// What the set-up threads share with the listener.
struct SetUps {
    state: Mutex<SetUpState>,
    /// Auto-reset event, set when a set-up thread ends (with a connection
    /// or without): wakes `accept`'s wait for a client.
    ended: OwnedHandle,
    /// Manual-reset event, set when the listener is dropped: every set-up
    /// stops at once.
    abort: OwnedHandle,
}

#[derive(Default)]
struct SetUpState {
    /// Set-ups that ended with a connection (`Ready`) or a mismatch, oldest
    /// first.
    done: VecDeque<Accepted>,
    /// The set-up threads, joined once they have ended (or on drop).
    threads: Vec<JoinHandle<()>>,
    /// Set-ups that have not finished yet (a thread counts as finished
    /// from its last step, `SetUps::finish`, on).
    running: usize,
}

/// A new unnamed event (`manual` reset or auto-reset), not set.
fn event(manual: bool) -> io::Result<OwnedHandle> {
    // SAFETY: no security attributes or name.
    let h = unsafe { CreateEventW(std::ptr::null(), i32::from(manual), 0, std::ptr::null()) };
    // SAFETY: the return value of the CreateEventW call just made, a new
    // handle nobody else owns.
    unsafe { owned(h) }
}

fn set(event: &OwnedHandle) {
    // SAFETY: `event` is a valid event handle; setting it has no other effect.
    unsafe { SetEvent(raw(event)) };
}

impl SetUps {
    fn new() -> io::Result<SetUps> {
        Ok(SetUps {
            state: Mutex::new(SetUpState::default()),
            ended: event(false)?,
            abort: event(true)?,
        })
    }

    /// The oldest finished set-up, if any.
    fn take_done(&self) -> Option<Accepted> {
        lock(&self.state).done.pop_front()
    }

    /// Joins the threads that have ended; returns how many set-ups still
    /// run.
    fn reap(&self) -> usize {
        let mut state = lock(&self.state);
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut state.threads)
            .into_iter()
            .partition(JoinHandle::is_finished);
        state.threads = running;
        let count = state.running;
        drop(state);
        for t in ended {
            let _ = t.join();
        }
        count
    }

    /// What a set-up thread does last: queue its outcome, wake `accept`.
    fn finish(&self, outcome: Option<Accepted>) {
        {
            let mut state = lock(&self.state);
            state.running = state.running.saturating_sub(1);
            if let Some(a) = outcome {
                state.done.push_back(a);
            }
        }
        set(&self.ended);
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("pipe", &self.pipe)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Every wait of a set-up thread watches `abort`: they all end now.
        set(&self.set_ups.abort);
        let threads = std::mem::take(&mut lock(&self.set_ups.state).threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Listener {
    /// Creates the first instance of the rendezvous pipe.
    pub fn bind(name: &str) -> Result<Listener> {
        let sid = user_sid()?;
        let pipe = pipe_name(&sid, name);
        let sd = SecurityDescriptor::user_only(&sid)
            .map_err(|e| Error::from_io("cannot build the pipe's security descriptor", e))?;
        let set_ups =
            SetUps::new().map_err(|e| Error::from_io("cannot create the listener's events", e))?;
        let listener = Listener {
            pipe,
            sd,
            pending: Mutex::new(None),
            set_ups: Arc::new(set_ups),
        };
        let first = listener.instance(true).map_err(|e| {
            if is(&e, ERROR_ACCESS_DENIED) || is(&e, ERROR_PIPE_BUSY) {
                in_use(name, &listener.pipe)
            } else {
                Error::from_io(&format!("cannot create the pipe {}", listener.pipe), e)
            }
        })?;
        *lock(&listener.pending) = Some(first);
        Ok(listener)
    }

    fn instance(&self, first: bool) -> io::Result<OwnedHandle> {
        let mut mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
        if first {
            mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
        }
        create_pipe(
            &self.pipe,
            mode,
            PIPE_UNLIMITED_INSTANCES,
            RENDEZVOUS_BUF,
            &self.sd,
        )
    }

    /// What `conduit::wait` would watch: nothing yet on Windows.
    pub fn wait_handle(&self) -> Option<conduit_core::WaitHandle<'_>> {
        None
    }

    /// True while a handshake is in progress (not tracked on Windows yet).
    pub fn handshakes_in_progress(&self) -> bool {
        false
    }

    /// True when a client is waiting (not known on Windows yet).
    pub fn client_waiting(&self) -> Result<bool> {
        Ok(false)
    }

    /// The rendezvous pipe name.
    pub fn endpoint(&self) -> &str {
        &self.pipe
    }

    /// Waits until `deadline` for the next client that completes its set-up
    /// and handshake; each connection is set up on its own thread within
    /// `handshake_timeout` of its arrival (see the module docs).
    ///
    /// Concurrent calls from several threads take turns.
    pub fn accept(
        &self,
        cfg: FrameConfig,
        handshake_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Accepted> {
        let mut pending = lock(&self.pending);
        let ended = Some(Wake(&self.set_ups.ended));
        loop {
            if let Some(a) = self.set_ups.take_done() {
                return Ok(a);
            }
            if self.set_ups.reap() >= crate::MAX_PENDING {
                // Wait for a set-up to end before taking one more client.
                let ms = deadline.map_or(INFINITE, millis_until);
                // SAFETY: `ended` is a valid event handle.
                let woke = unsafe { WaitForSingleObject(raw(&self.set_ups.ended), ms) };
                if woke == WAIT_FAILED {
                    return Err(Error::from_io(
                        "waiting for a client's set-up to end failed",
                        io::Error::last_os_error(),
                    ));
                }
                if woke != WAIT_OBJECT_0 && deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(self.set_ups.take_done().unwrap_or(Accepted::TimedOut));
                }
                continue;
            }
            let inst = match pending.take() {
                Some(h) => h,
                // An earlier failure left no instance: claim the name anew.
                None => self.instance(true).map_err(|e| {
                    Error::from_io(&format!("cannot create the pipe {}", self.pipe), e)
                })?,
            };
            // SAFETY: `inst` is an overlapped pipe instance; the OVERLAPPED
            // is supplied and kept alive by `overlapped`.
            match overlapped(&inst, deadline, ended, |ov| unsafe {
                ConnectNamedPipe(raw(&inst), ov)
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    *pending = Some(inst);
                    return Ok(self.set_ups.take_done().unwrap_or(Accepted::TimedOut));
                }
                // A set-up ended: look at the queue, then wait again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    *pending = Some(inst);
                    continue;
                }
                // The client came and went before we saw it.
                Err(e) if is(&e, ERROR_NO_DATA) => {
                    *pending = self.instance(false).ok();
                    return Ok(Accepted::Skip);
                }
                Err(e) => {
                    *pending = self.instance(false).ok();
                    return Err(Error::from_io(
                        &format!("waiting for a client on {} failed", self.pipe),
                        e,
                    ));
                }
            }
            // The next instance exists before this one leaves the listener.
            *pending = self.instance(false).ok();
            self.set_up(inst, cfg, crate::deadline_within(None, handshake_timeout));
        }
    }

    /// Starts the set-up of the client connected to `inst` on a thread of
    /// its own, which must finish by `deadline`. A client that cannot be
    /// set up (no data pipes, no thread) is dropped.
    fn set_up(&self, inst: OwnedHandle, cfg: FrameConfig, deadline: Instant) {
        let Ok((id, up, down)) = self.data_pipes() else {
            return;
        };
        let set_ups = Arc::clone(&self.set_ups);
        // Counted before the thread starts, which may finish at once.
        lock(&self.set_ups.state).running += 1;
        let thread = std::thread::Builder::new()
            .name("conduit-named-setup".into())
            .spawn(move || {
                let outcome = set_up(&inst, &id, up, down, cfg, deadline, &set_ups.abort);
                drop(inst);
                set_ups.finish(outcome);
            });
        let mut state = lock(&self.set_ups.state);
        match thread {
            Ok(t) => state.threads.push(t),
            // Without a thread the closure, and with it the client, is
            // dropped.
            Err(_) => state.running = state.running.saturating_sub(1),
        }
    }

    fn data_pipes(&self) -> io::Result<(String, OwnedHandle, OwnedHandle)> {
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..4 {
            let id = random_id()?;
            let base = format!("{}@{id}", self.pipe);
            let one = |suffix: &str, access| {
                create_pipe(
                    &format!("{base}-{suffix}"),
                    access | FILE_FLAG_FIRST_PIPE_INSTANCE | FILE_FLAG_OVERLAPPED,
                    1,
                    DATA_BUF,
                    &self.sd,
                )
            };
            // Someone else created a pipe of that name first: another id.
            let taken = |e: &io::Error| is(e, ERROR_ACCESS_DENIED) || is(e, ERROR_PIPE_BUSY);
            let up = match one("up", PIPE_ACCESS_INBOUND) {
                Ok(h) => h,
                Err(e) if taken(&e) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let down = match one("down", PIPE_ACCESS_OUTBOUND) {
                Ok(h) => h,
                Err(e) if taken(&e) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return Ok((id, up, down));
        }
        Err(last)
    }
}

/// One client's set-up, on its own thread: the rendezvous on `inst` (hello
/// with the data pipes' `id`, the client's answer once it opened them),
/// then the conduit handshake over the data pipes, all by `deadline` and
/// stopped when `abort` is set. `None` when the client is dropped (silent,
/// gone, or aborted).
fn set_up(
    inst: &OwnedHandle,
    id: &str,
    up: OwnedHandle,
    down: OwnedHandle,
    cfg: FrameConfig,
    deadline: Instant,
    abort: &OwnedHandle,
) -> Option<Accepted> {
    let wake = Some(Wake(abort));
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&HELLO_MAGIC);
    hello.push(HELLO_VERSION);
    hello.extend_from_slice(id.as_bytes());
    write_all(inst, &hello, deadline, wake).ok()?;
    let mut ack = [0u8; 1];
    read_exact(inst, &mut ack, deadline, wake).ok()?;
    if ack[0] != ACK {
        return None;
    }
    // As `crate::establish`, with a wait for the client's handshake that
    // `abort` can end.
    let mut tx = StreamSender::new(OsStream::new(down, KIND), crate::TRANSPORT, cfg);
    tx.send_handshake().ok()?;
    if !handshake_arrived(&up, deadline, abort) {
        return None;
    }
    let mut rx = StreamReceiver::new(OsStream::new(up, KIND), crate::TRANSPORT, cfg);
    match rx.recv_handshake(Some(deadline)) {
        Ok(()) => Some(Accepted::Ready(Box::new((tx, rx)))),
        Err(e) if e.kind() == ErrorKind::Protocol => Some(Accepted::Mismatch(e)),
        Err(_) => None,
    }
}

/// Waits until a whole handshake can be read from the synchronous pipe
/// `up` without blocking (or the pipe is broken, which the read then
/// reports): true; false when `deadline` passes or `abort` is set first.
/// Synchronous pipes have no waitable readiness, so this checks with
/// `PeekNamedPipe` and pauses up to 5 ms on `abort` in between.
fn handshake_arrived(up: &OwnedHandle, deadline: Instant, abort: &OwnedHandle) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        let mut avail = 0u32;
        // SAFETY: `up` is open; only the `avail` out-pointer is given.
        let ok = unsafe {
            PeekNamedPipe(
                raw(up),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut avail,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 || avail as usize >= HANDSHAKE_LEN {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = millis_until(Instant::now() + pause.min(left));
        // SAFETY: `abort` is a valid event handle.
        if unsafe { WaitForSingleObject(raw(abort), ms) } == WAIT_OBJECT_0 {
            return false;
        }
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Creates a pipe instance with the user-only descriptor. With
/// `FILE_FLAG_FIRST_PIPE_INSTANCE` in `open_mode` it fails with
/// `ERROR_ACCESS_DENIED` when the pipe exists already.
fn create_pipe(
    name: &str,
    open_mode: FILE_FLAGS_AND_ATTRIBUTES,
    max_instances: u32,
    buf: u32,
    sd: &SecurityDescriptor,
) -> io::Result<OwnedHandle> {
    let name = wide(name);
    let sa = sd.attributes();
    // SAFETY: SetLastError has no preconditions.
    unsafe { SetLastError(0) };
    // SAFETY: `name` is NUL-terminated; `sa` and the descriptor it points
    // to outlive the call.
    let h = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            open_mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            max_instances,
            buf,
            buf,
            0,
            &sa,
        )
    };
    // SAFETY: GetLastError has no preconditions.
    let opened_existing = unsafe { GetLastError() } == ERROR_ALREADY_EXISTS;
    // SAFETY: the return value of the CreateNamedPipeW call just made
    // (GetLastError in between does not change the last error), a new
    // handle nobody else owns.
    let pipe = unsafe { owned(h) }?;
    // Windows refuses a second "first" instance with ERROR_ACCESS_DENIED.
    // Wine ignores FILE_FLAG_FIRST_PIPE_INSTANCE and joins the existing
    // pipe; newer Wine says so with ERROR_ALREADY_EXISTS, and every version
    // counts the other instances. Refuse the same way there (on Windows
    // neither check can fire).
    if open_mode & FILE_FLAG_FIRST_PIPE_INSTANCE != 0 && (opened_existing || other_instances(&pipe))
    {
        return Err(io::Error::from_raw_os_error(ERROR_ACCESS_DENIED as i32));
    }
    Ok(pipe)
}

/// True when the pipe of instance `h` has other instances (best effort: a
/// failed query says false).
fn other_instances(h: &OwnedHandle) -> bool {
    let mut instances = 0u32;
    // SAFETY: `h` is open; only the instance count is asked for, the other
    // out-pointers are null and the user name buffer is empty.
    let ok = unsafe {
        GetNamedPipeHandleStateW(
            raw(h),
            std::ptr::null_mut(),
            &mut instances,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    ok != 0 && instances > 1
}
