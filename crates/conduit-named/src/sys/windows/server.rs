//! The server: a [`Listener`] keeps one instance of the rendezvous pipe
//! waiting for a client, and sets each connection's data pipes up.

use std::io;
use std::os::windows::io::OwnedHandle;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    GetLastError, SetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_NO_DATA,
    ERROR_PIPE_BUSY,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAGS_AND_ATTRIBUTES, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
    PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND, PIPE_ACCESS_OUTBOUND,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeHandleStateW, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

use conduit_core::{Error, ErrorKind, FrameConfig, Result};

use crate::sys::Accepted;

use super::overlapped::{overlapped, read_exact, write_all};
use super::security::{user_sid, SecurityDescriptor};
use super::{
    is, lock, owned, pipe_name, random_id, raw, wide, ACK, DATA_BUF, HELLO_LEN, HELLO_MAGIC,
    HELLO_VERSION, RENDEZVOUS_BUF,
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
    /// so the name never disappears while the listener lives.
    pending: Mutex<Option<OwnedHandle>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("pipe", &self.pipe)
            .finish()
    }
}

impl Listener {
    /// Creates the first instance of the rendezvous pipe.
    pub fn bind(name: &str) -> Result<Listener> {
        let sid = user_sid()?;
        let pipe = pipe_name(&sid, name);
        let sd = SecurityDescriptor::user_only(&sid)
            .map_err(|e| Error::from_io("cannot build the pipe's security descriptor", e))?;
        let listener = Listener {
            pipe,
            sd,
            pending: Mutex::new(None),
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

    /// The rendezvous pipe name.
    pub fn endpoint(&self) -> &str {
        &self.pipe
    }

    /// Waits for the next client until `deadline`, sets its connection up
    /// and exchanges the handshakes (within `handshake_timeout`).
    ///
    /// Concurrent calls from several threads take turns waiting. One
    /// client's set-up runs before the next client is looked at, so a silent
    /// client delays the others by up to `handshake_timeout`.
    pub fn accept(
        &self,
        cfg: FrameConfig,
        handshake_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Accepted> {
        let inst = {
            let mut pending = lock(&self.pending);
            let inst = match pending.take() {
                Some(h) => h,
                // An earlier failure left no instance: claim the name anew.
                None => self.instance(true).map_err(|e| {
                    Error::from_io(&format!("cannot create the pipe {}", self.pipe), e)
                })?,
            };
            // SAFETY: `inst` is an overlapped pipe instance; the OVERLAPPED
            // is supplied and kept alive by `overlapped`.
            match overlapped(&inst, deadline, |ov| unsafe {
                ConnectNamedPipe(raw(&inst), ov)
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    *pending = Some(inst);
                    return Ok(Accepted::TimedOut);
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
            inst
        };
        let set_up = crate::deadline_within(deadline, handshake_timeout);
        let passed = || deadline.is_some_and(|d| Instant::now() >= d);
        let (send, recv) = match self.rendezvous(&inst, set_up) {
            Ok(handles) => handles,
            Err(_) if passed() => return Ok(Accepted::TimedOut),
            Err(_) => return Ok(Accepted::Skip),
        };
        match crate::establish(send, recv, cfg, set_up) {
            Ok(conn) => Ok(Accepted::Ready(Box::new(conn))),
            Err(e) if e.kind() == ErrorKind::Protocol => Ok(Accepted::Mismatch(e)),
            Err(_) if passed() => Ok(Accepted::TimedOut),
            // The client went away or stalled: wait for the next one.
            Err(_) => Ok(Accepted::Skip),
        }
    }

    /// Creates the connection's data pipes, tells the client their id and
    /// waits for it to open them. Returns (send handle, receive handle).
    fn rendezvous(
        &self,
        inst: &OwnedHandle,
        deadline: Instant,
    ) -> io::Result<(OwnedHandle, OwnedHandle)> {
        let (id, up, down) = self.data_pipes()?;
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(&HELLO_MAGIC);
        hello.push(HELLO_VERSION);
        hello.extend_from_slice(id.as_bytes());
        write_all(inst, &hello, deadline)?;
        let mut ack = [0u8; 1];
        read_exact(inst, &mut ack, deadline)?;
        if ack[0] != ACK {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        Ok((down, up))
    }

    fn data_pipes(&self) -> io::Result<(String, OwnedHandle, OwnedHandle)> {
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..4 {
            let id = random_id()?;
            let base = format!("{}@{id}", self.pipe);
            let one = |suffix: &str, access| {
                create_pipe(
                    &format!("{base}-{suffix}"),
                    access | FILE_FLAG_FIRST_PIPE_INSTANCE,
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
