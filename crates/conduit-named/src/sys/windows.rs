//! Windows backend: named pipes, written by hand on `windows-sys`.
//!
//! # How a connection is made
//!
//! A name is the pipe `\\.\pipe\conduit-<user SID>-<name>` (the
//! *rendezvous* pipe). The listener always keeps one instance of it waiting
//! for a client, created with `FILE_FLAG_OVERLAPPED` so that `accept` can
//! wait on `ConnectNamedPipe` with a deadline and cancel it (`CancelIoEx`).
//! When a client connects:
//!
//! 1. the server creates two one-way pipes for this connection only,
//!    `<rendezvous>@<id>-up` (client to server) and `<rendezvous>@<id>-down`
//!    (server to client), `id` being 32 random hex digits, each with
//!    `FILE_FLAG_FIRST_PIPE_INSTANCE` and at most one instance;
//! 2. it sends the client `b"CNDN"`, a version byte (1) and the id over the
//!    rendezvous instance;
//! 3. the client opens both pipes and answers one byte (1); the server then
//!    drops the rendezvous instance, and both sides exchange the conduit
//!    handshake over the two pipes.
//!
//! The rendezvous traffic uses overlapped I/O with the connection's
//! deadline. The data pipes are synchronous handles, as `conduit-core`'s
//! `OsStream` expects, and they are separate kernel file objects for the two
//! directions: the I/O manager serializes synchronous I/O per file object,
//! so over one duplex pipe handle a receive blocked in `ReadFile` would
//! block every send of the same connection, and a `Duplex` used from two
//! threads would deadlock.
//!
//! # Security
//!
//! Every pipe gets a security descriptor whose owner is the current user's
//! SID and whose protected DACL allows that SID only (SDDL
//! `O:<sid>D:P(A;;GA;;;<sid>)`); `PIPE_REJECT_REMOTE_CLIENTS` rejects
//! clients on other machines. Binding uses `FILE_FLAG_FIRST_PIPE_INSTANCE`,
//! so it fails (`AddrInUse`) rather than joining a pipe that exists already,
//! whoever created it. Before it sends anything, a client checks that the
//! rendezvous pipe's owner is its own SID: a squatter running as another
//! user cannot create a pipe owned by someone else without
//! `SeRestorePrivilege`. The data pipes need no such check: they are created
//! before their names are announced, as the only allowed instance, so no one
//! else can own them. Clients open pipes with
//! `SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION`: a server can learn who
//! a client is, never act as it.
//!
//! # Why not `interprocess` here
//!
//! Its named-pipe listener calls a blocking `ConnectNamedPipe` that no
//! deadline can interrupt (short of its `PIPE_NOWAIT` mode, which makes
//! accept a polling loop), does not let a client check the server's owner,
//! and the two halves of its streams share one synchronous handle — the
//! serialization described above. What it would still give (building the
//! security descriptor from SDDL) is one call here.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use windows_sys::core::{BOOL, PWSTR};
use windows_sys::Win32::Foundation::{
    GetLastError, LocalFree, SetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS,
    ERROR_BROKEN_PIPE, ERROR_FILE_NOT_FOUND, ERROR_IO_PENDING, ERROR_NO_DATA,
    ERROR_OPERATION_ABORTED, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED, ERROR_SUCCESS, GENERIC_READ,
    GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo,
    SDDL_REVISION_1, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, WriteFile, FILE_FLAGS_AND_ATTRIBUTES, FILE_FLAG_FIRST_PIPE_INSTANCE,
    FILE_FLAG_OVERLAPPED, OPEN_EXISTING, PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND,
    PIPE_ACCESS_OUTBOUND, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeHandleStateW, WaitNamedPipeW,
    NMPWAIT_WAIT_FOREVER, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE,
    PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, OpenProcessToken, WaitForSingleObject, INFINITE,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use conduit_core::sys::StreamKind;
use conduit_core::{Error, ErrorKind, FrameConfig, Result};

use super::Accepted;

/// Connections run over pipes.
pub const KIND: StreamKind = StreamKind::Pipe;

/// What the server sends first on the rendezvous pipe.
const HELLO_MAGIC: [u8; 4] = *b"CNDN";
/// The rendezvous protocol version.
const HELLO_VERSION: u8 = 1;
/// Hex digits in a connection id.
const ID_LEN: usize = 32;
const HELLO_LEN: usize = HELLO_MAGIC.len() + 1 + ID_LEN;
/// The client's answer once it opened both data pipes.
const ACK: u8 = 1;
/// Buffer size hint of the data pipes (the kernel charges only what is buffered).
const DATA_BUF: u32 = 1 << 20;
/// Buffer size of the rendezvous pipe (a few dozen bytes travel on it).
const RENDEZVOUS_BUF: u32 = 512;

// ---------------------------------------------------------------- helpers

/// The one checked-call helper: a `BOOL`-returning Win32 call's result.
fn check(ok: BOOL) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes ownership of a handle returned by a `Create*` call.
fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call that returned `h` succeeded, so it is a new handle
    // that nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as _) })
}

fn raw(h: &OwnedHandle) -> HANDLE {
    h.as_raw_handle() as HANDLE
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn is(e: &io::Error, code: u32) -> bool {
    e.raw_os_error() == Some(code as i32)
}

/// Milliseconds until `deadline`, rounded up, below `INFINITE`.
fn millis_until(deadline: Instant) -> u32 {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.min(u128::from(INFINITE - 1)) as u32
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- identity

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
///
/// `p` must point to a readable, NUL-terminated UTF-16 string.
unsafe fn read_wide(p: *const u16) -> String {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL terminator within the allocation.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the `n` units before the terminator are readable.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The string form (`S-1-5-...`) of a SID.
///
/// # Safety
///
/// `sid` must point to a valid SID.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text: PWSTR = std::ptr::null_mut();
    // SAFETY: `sid` is valid (caller); `text` receives a LocalAlloc'ed string.
    check(unsafe { ConvertSidToStringSidW(sid, &mut text) })?;
    // SAFETY: on success `text` is a NUL-terminated string.
    let out = unsafe { read_wide(text) };
    // SAFETY: `text` was allocated by ConvertSidToStringSidW with LocalAlloc
    // and is not used after this.
    unsafe { LocalFree(text.cast()) };
    Ok(out)
}

/// The current user's SID as a string, looked up once.
fn user_sid() -> Result<String> {
    static SID: OnceLock<String> = OnceLock::new();
    if let Some(sid) = SID.get() {
        return Ok(sid.clone());
    }
    let sid = query_user_sid()
        .map_err(|e| Error::from_io("cannot find out the current user's SID", e))?;
    Ok(SID.get_or_init(|| sid).clone())
}

fn query_user_sid() -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo handle that is always
    // valid; `token` outlives the call.
    check(unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) })?;
    let token = owned(token)?;
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 only asks for the needed size.
    unsafe { GetTokenInformation(raw(&token), TokenUser, std::ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 storage keeps the TOKEN_USER at the start of the buffer aligned.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` is writable for at least `len` bytes; `len` outlives the call.
    check(unsafe {
        GetTokenInformation(
            raw(&token),
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    })?;
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID
    // points into the same buffer, which is alive until the end of this
    // function.
    unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        sid_string(user.User.Sid)
    }
}

/// A security descriptor from `ConvertStringSecurityDescriptorToSecurityDescriptorW`.
struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is a LocalAlloc'ed block that is only read after
// its creation and freed once, on drop; sharing the pointer between threads
// is as safe as sharing any immutable memory.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: see `Send`; no method mutates the descriptor.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    /// Owner `sid`, and a protected DACL that allows `sid` everything and
    /// everyone else nothing.
    fn user_only(sid: &str) -> io::Result<SecurityDescriptor> {
        let sddl = wide(&format!("O:{sid}D:P(A;;GA;;;{sid})"));
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'ed
        // descriptor that we own; the size out-pointer may be null.
        check(unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(SecurityDescriptor(sd))
    }

    /// Non-inheritable security attributes that point at this descriptor.
    fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        }
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor was LocalAlloc'ed by the conversion call
        // and is freed exactly once, here.
        unsafe { LocalFree(self.0) };
    }
}

/// True when the owner of the kernel object `h` is `sid`.
fn owned_by(h: &OwnedHandle, sid: &str) -> io::Result<bool> {
    let mut owner: PSID = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `h` is open; the out-pointers are valid; on success `sd` is a
    // LocalAlloc'ed descriptor that `owner` points into.
    let code = unsafe {
        GetSecurityInfo(
            raw(h),
            SE_KERNEL_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if code != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(code as i32));
    }
    let found = if owner.is_null() {
        Ok(String::new())
    } else {
        // SAFETY: `owner` points to the owner SID inside `sd`, still alive.
        unsafe { sid_string(owner) }
    };
    // SAFETY: `sd` was allocated by GetSecurityInfo and is not used after this.
    unsafe { LocalFree(sd) };
    Ok(found? == sid)
}

// ---------------------------------------------------------------- names

fn pipe_name(sid: &str, name: &str) -> String {
    format!(r"\\.\pipe\conduit-{sid}-{name}")
}

/// Where `name` lives: its rendezvous pipe name.
pub fn endpoint(name: &str) -> Result<String> {
    Ok(pipe_name(&user_sid()?, name))
}

/// 32 hex digits that no other connection of this process used, and that
/// other processes cannot predict.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut id = String::with_capacity(ID_LEN);
    for half in 0..2u8 {
        // RandomState is seeded from the OS's random source.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u8(half);
        h.write_u32(std::process::id());
        h.write_u128(nanos);
        id.push_str(&format!("{:016x}", h.finish()));
    }
    id
}

// ---------------------------------------------------------------- pipes

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
    let pipe = owned(h)?;
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

/// Opens the client end of a pipe (never inheritable; identification only).
fn open_pipe(name: &str, access: u32, flags: FILE_FLAGS_AND_ATTRIBUTES) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated; null security attributes make the
    // handle non-inheritable; no template file.
    let h = unsafe {
        CreateFileW(
            name.as_ptr(),
            access,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            flags | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    owned(h)
}

/// Runs one overlapped operation on `file` (started by `start` with the
/// OVERLAPPED to use) and waits for it until `deadline`, cancelling it then
/// (`TimedOut`). Returns the number of bytes transferred.
fn overlapped(
    file: &OwnedHandle,
    deadline: Option<Instant>,
    start: impl FnOnce(*mut OVERLAPPED) -> BOOL,
) -> io::Result<u32> {
    // SAFETY: no security attributes or name; a manual-reset event, not set.
    let event = owned(unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) })?;
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
        ERROR_OPERATION_ABORTED => Err(io::Error::from(io::ErrorKind::TimedOut)),
        code => Err(io::Error::from_raw_os_error(code as i32)),
    }
}

fn read_exact(file: &OwnedHandle, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let len = rest.len() as u32;
        let ptr = rest.as_mut_ptr();
        // SAFETY: `ptr` is valid for `len` bytes until `overlapped` returns,
        // which is after the read has completed; the count comes from
        // GetOverlappedResult, so the out-pointer may be null.
        let n = overlapped(file, Some(deadline), |ov| unsafe {
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

fn write_all(file: &OwnedHandle, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let len = buf.len() as u32;
        let ptr = buf.as_ptr();
        // SAFETY: as in `read_exact`, for reading `len` bytes at `ptr`.
        let n = overlapped(file, Some(deadline), |ov| unsafe {
            WriteFile(raw(file), ptr, len, std::ptr::null_mut(), ov)
        })?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[(n as usize).min(buf.len())..];
    }
    Ok(())
}

// ---------------------------------------------------------------- server

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
            let id = random_id();
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

// ---------------------------------------------------------------- client

/// Connects to the server of `name`; see `crate::connect` for the waiting rules.
pub fn connect(name: &str, deadline: Option<Instant>) -> Result<(OwnedHandle, OwnedHandle)> {
    let sid = user_sid()?;
    let pipe = pipe_name(&sid, name);
    let timed_out = || {
        Error::new(
            ErrorKind::Timeout,
            format!("no server accepted a connection on conduit name {name:?} ({pipe}) before the deadline"),
        )
    };
    let mut pause = Duration::from_millis(1);
    let rendezvous = loop {
        let e = match open_pipe(&pipe, GENERIC_READ | GENERIC_WRITE, FILE_FLAG_OVERLAPPED) {
            Ok(h) => break h,
            Err(e) => e,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
        if is(&e, ERROR_PIPE_BUSY) {
            // Every instance is taken: wait for the server to offer the
            // next one, then race the other clients for it.
            let ms = deadline.map_or(NMPWAIT_WAIT_FOREVER, |d| millis_until(d).max(1));
            let w = wide(&pipe);
            // SAFETY: `w` is NUL-terminated. A failure (timeout, pipe gone)
            // shows up at the next attempt.
            unsafe { WaitNamedPipeW(w.as_ptr(), ms) };
        } else if is(&e, ERROR_FILE_NOT_FOUND) {
            let Some(d) = deadline else {
                return Err(Error::with_source(
                    ErrorKind::Io,
                    format!("no server is listening on conduit name {name:?} ({pipe})"),
                    e,
                ));
            };
            std::thread::sleep(pause.min(d.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(20));
        } else if is(&e, ERROR_ACCESS_DENIED) {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the pipe {pipe} exists but does not let this user in: it was not created by a server of this user (is another user squatting the name?)"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        } else {
            return Err(Error::from_io(&format!("cannot connect to {pipe}"), e));
        }
    };
    match owned_by(&rendezvous, &sid) {
        Ok(true) => {}
        Ok(false) => {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the pipe {pipe} is not owned by this user: another user created it to intercept connections; refusing to talk to it"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ))
        }
        Err(e) => {
            return Err(Error::from_io(
                &format!("cannot check who owns the pipe {pipe}"),
                e,
            ))
        }
    }
    let set_up = crate::handshake_deadline(deadline);
    let fail = |e: io::Error| {
        match e.kind() {
        io::ErrorKind::TimedOut => Error::new(
            ErrorKind::Timeout,
            format!("the server of {name:?} did not set the connection up in time"),
        ),
        io::ErrorKind::UnexpectedEof => Error::disconnected(format!(
            "the server of {name:?} closed the connection during set-up"
        )),
        io::ErrorKind::InvalidData => Error::protocol(format!(
            "the server of {name:?} sent a malformed set-up message: it is not a conduit server of a compatible version"
        )),
        _ => Error::from_io(&format!("setting up the connection to {pipe} failed"), e),
    }
    };
    let mut hello = [0u8; HELLO_LEN];
    read_exact(&rendezvous, &mut hello, set_up).map_err(fail)?;
    let (magic, rest) = hello.split_at(HELLO_MAGIC.len());
    let (version, id) = rest.split_at(1);
    let id_ok = id
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if magic != HELLO_MAGIC || version[0] != HELLO_VERSION || !id_ok {
        return Err(fail(io::Error::from(io::ErrorKind::InvalidData)));
    }
    let id = String::from_utf8_lossy(id);
    let base = format!("{pipe}@{id}");
    let up = open_pipe(&format!("{base}-up"), GENERIC_WRITE, 0).map_err(fail)?;
    let down = open_pipe(&format!("{base}-down"), GENERIC_READ, 0).map_err(fail)?;
    write_all(&rendezvous, &[ACK], set_up).map_err(fail)?;
    Ok((up, down))
}
