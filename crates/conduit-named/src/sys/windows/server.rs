//! The server: a [`Listener`] keeps one instance of the rendezvous pipe
//! waiting for a client, and sets each connection up on a thread of its own.
//!
//! The waiting instance has an overlapped `ConnectNamedPipe` in flight from
//! the first look at it on (`accept`, `client_waiting`) until a client
//! connected; its manual-reset event, [`Listener::wait_handles`]' first
//! handle, stays signalled while a connected client waits to be taken, so
//! `conduit::wait` and the async listener watch it, and a wait that ends
//! (a deadline, a dropped future) leaves the operation in flight instead of
//! cancelling it.
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
//! call; while there are any, the second wait handle (a manual-reset event)
//! is signalled. At most [`crate::MAX_PENDING`] set-ups run at once; `accept` waits
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
    GetLastError, SetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_BROKEN_PIPE,
    ERROR_IO_PENDING, ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED, WAIT_FAILED,
    WAIT_OBJECT_0,
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
    CreateEventW, ResetEvent, SetEvent, WaitForMultipleObjects, WaitForSingleObject, INFINITE,
};

use conduit_core::stream::{StreamReceiver, StreamSender, HANDSHAKE_LEN};
use conduit_core::transport::sys::OsStream;
use conduit_core::{Error, ErrorKind, FrameConfig, Result};

use crate::sys::Accepted;

use super::overlapped::{read_exact, write_all, OvBox, Wake};
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
    /// Held for a whole `accept`: concurrent calls take turns.
    turn: Mutex<()>,
    /// The instance waiting for the next client (locked briefly: never
    /// while waiting).
    pending: Mutex<Pending>,
    /// Manual-reset event of the `ConnectNamedPipe` in flight on the
    /// pending instance: signalled while a client is connected to it and
    /// not taken yet (or while `Listener::advance` has more to look at).
    connected: OwnedHandle,
    /// The connections being set up on their own threads.
    set_ups: Arc<SetUps>,
}

/// The instance of the rendezvous pipe waiting for the next client. It
/// exists from `bind` to drop (the next one is created before a connected
/// one is taken out), so the name never disappears while the listener
/// lives; only a failure to create the next one leaves `inst` empty, and
/// the next look claims the name anew.
#[derive(Default)]
struct Pending {
    inst: Option<OwnedHandle>,
    /// The `ConnectNamedPipe` started on `inst` whose outcome has not been
    /// looked at yet (its OVERLAPPED signals `Listener::connected`).
    op: Option<OvBox>,
    /// A client is connected to `inst`.
    ready: bool,
}

/// The most clients that came and went before they were seen that one
/// look at the pending instance replaces (each costs a new instance).
const MAX_SKIPS: usize = 16;

/// What the set-up threads share with the listener.
struct SetUps {
    state: Mutex<SetUpState>,
    /// Auto-reset event, set when a set-up thread ends (with a connection
    /// or without): wakes `accept`'s wait for a client.
    ended: OwnedHandle,
    /// Manual-reset event, signalled exactly while `done` is not empty
    /// (set and reset under the state lock): what `conduit::wait` and the
    /// async listener watch for finished set-ups.
    queued: OwnedHandle,
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

fn reset(event: &OwnedHandle) {
    // SAFETY: `event` is a valid event handle; resetting it has no other
    // effect.
    unsafe { ResetEvent(raw(event)) };
}

impl SetUps {
    fn new() -> io::Result<SetUps> {
        Ok(SetUps {
            state: Mutex::new(SetUpState::default()),
            ended: event(false)?,
            queued: event(true)?,
            abort: event(true)?,
        })
    }

    /// The oldest finished set-up, if any.
    fn take_done(&self) -> Option<Accepted> {
        let mut state = lock(&self.state);
        let a = state.done.pop_front();
        if state.done.is_empty() {
            reset(&self.queued);
        }
        a
    }

    /// True when a finished set-up is queued.
    fn any_done(&self) -> bool {
        !lock(&self.state).done.is_empty()
    }

    /// True when `MAX_PENDING` set-ups run: `accept` takes no more clients
    /// until one ends.
    fn full(&self) -> bool {
        lock(&self.state).running >= crate::MAX_PENDING
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
                set(&self.queued);
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
        // The connect in flight ends before its instance (and OVERLAPPED)
        // go away.
        let pending = std::mem::take(&mut *lock(&self.pending));
        if let (Some(op), Some(inst)) = (pending.op, &pending.inst) {
            op.finish(inst);
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
        let events = |e| Error::from_io("cannot create the listener's events", e);
        let set_ups = SetUps::new().map_err(events)?;
        let listener = Listener {
            pipe,
            sd,
            turn: Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            connected: event(true).map_err(events)?,
            set_ups: Arc::new(set_ups),
        };
        let first = listener.instance(true).map_err(|e| {
            if is(&e, ERROR_ACCESS_DENIED) || is(&e, ERROR_PIPE_BUSY) {
                in_use(name, &listener.pipe)
            } else {
                Error::from_io(&format!("cannot create the pipe {}", listener.pipe), e)
            }
        })?;
        lock(&listener.pending).inst = Some(first);
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

    /// What `conduit::wait` and the async listener watch: the event of
    /// the connect in flight on the pending instance (signalled while a
    /// client is connected to it), and the event signalled while finished
    /// set-ups are queued.
    pub fn wait_handles(&self) -> Vec<conduit_core::WaitHandle<'_>> {
        use std::os::windows::io::AsHandle;
        vec![self.connected.as_handle(), self.set_ups.queued.as_handle()]
    }

    /// True when `accept` cannot take the next client until a set-up ends
    /// ([`crate::MAX_PENDING`] run), which the wait handles do not signal:
    /// an async accept looks again after a short pause then.
    pub fn handshakes_in_progress(&self) -> bool {
        self.set_ups.full()
    }

    /// True when a client is connected to the pending instance or a
    /// finished set-up is queued, without waiting; starts the connect that
    /// the first wait handle watches.
    pub fn client_waiting(&self) -> Result<bool> {
        if self.set_ups.any_done() {
            return Ok(true);
        }
        self.advance(&mut lock(&self.pending))
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
        let _turn = lock(&self.turn);
        loop {
            if let Some(a) = self.set_ups.take_done() {
                return Ok(a);
            }
            // Joins the set-up threads that ended.
            self.set_ups.reap();
            let full = self.set_ups.full();
            if !full {
                let client = {
                    let mut pending = lock(&self.pending);
                    if self.advance(&mut pending)? {
                        self.take_client(&mut pending)
                    } else {
                        None
                    }
                };
                if let Some(inst) = client {
                    self.set_up(inst, cfg, crate::deadline_within(None, handshake_timeout));
                    continue;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(self.set_ups.take_done().unwrap_or(Accepted::TimedOut));
            }
            // Wait for a client (unless MAX_PENDING set-ups run) or for a
            // set-up to end; the connect stays in flight either way.
            let events = [raw(&self.set_ups.ended), raw(&self.connected)];
            let count = if full { 1 } else { 2 };
            let ms = deadline.map_or(INFINITE, millis_until);
            // SAFETY: the first `count` entries are valid event handles,
            // owned by `self` for the whole call.
            let woke = unsafe { WaitForMultipleObjects(count, events.as_ptr(), 0, ms) };
            if woke == WAIT_FAILED {
                return Err(Error::from_io(
                    &format!("waiting for a client on {} failed", self.pipe),
                    io::Error::last_os_error(),
                ));
            }
        }
    }

    /// Looks at the pending instance: creates one if there is none, starts
    /// a connect on it if none is in flight, and replaces it when its
    /// client came and went before it was seen. True when a client is
    /// connected to it; false when the connect is in flight (the
    /// `connected` event then signals the change).
    fn advance(&self, p: &mut Pending) -> Result<bool> {
        for _ in 0..MAX_SKIPS {
            let inst = match &p.inst {
                Some(h) => h,
                None => {
                    // An earlier failure left no instance: claim the name
                    // anew.
                    let h = self.instance(true).map_err(|e| {
                        Error::from_io(&format!("cannot create the pipe {}", self.pipe), e)
                    })?;
                    p.inst.insert(h)
                }
            };
            if p.ready {
                return Ok(true);
            }
            let outcome = match &p.op {
                Some(op) => match op.outcome(inst, false) {
                    None => return Ok(false),
                    Some(r) => r.map(|_| ()),
                },
                None => {
                    reset(&self.connected);
                    let op = OvBox::new(&self.connected);
                    // SAFETY: `inst` is an overlapped pipe instance. A
                    // connect left pending is kept in `p.op` (with `inst`)
                    // until its outcome was seen, and the listener's drop
                    // cancels and waits for it (`OvBox::finish`); any other
                    // answer means nothing is in flight, and `op` is
                    // dropped unused.
                    let ok = unsafe { ConnectNamedPipe(raw(inst), op.0) };
                    let code = if ok != 0 {
                        0
                    } else {
                        // SAFETY: GetLastError has no preconditions.
                        unsafe { GetLastError() }
                    };
                    match code {
                        ERROR_IO_PENDING => {
                            p.op = Some(op);
                            continue;
                        }
                        // Connected before (or as) the call: nothing in
                        // flight, the event is ours to set.
                        0 | ERROR_PIPE_CONNECTED => Ok(()),
                        code => Err(io::Error::from_raw_os_error(code as i32)),
                    }
                }
            };
            p.op = None;
            match outcome {
                Ok(()) => {
                    p.ready = true;
                    set(&self.connected);
                    return Ok(true);
                }
                // The client came and went before we saw it: the next
                // instance.
                Err(e) if is(&e, ERROR_NO_DATA) || is(&e, ERROR_BROKEN_PIPE) => {
                    p.inst = self.instance(false).ok();
                }
                Err(e) => {
                    p.inst = self.instance(false).ok();
                    return Err(Error::from_io(
                        &format!("waiting for a client on {} failed", self.pipe),
                        e,
                    ));
                }
            }
        }
        // Many clients came and went: have the waiter look again.
        set(&self.connected);
        Ok(false)
    }

    /// Takes the connected client's instance out, leaving a new instance
    /// (created before the connected one leaves, so the name stays taken)
    /// for the next client.
    fn take_client(&self, p: &mut Pending) -> Option<OwnedHandle> {
        if !p.ready {
            return None;
        }
        p.ready = false;
        reset(&self.connected);
        let next = self.instance(false).ok();
        std::mem::replace(&mut p.inst, next)
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
