//! Unix backend: a name is a Unix domain socket in a private per-user
//! directory, guarded by an `flock`ed lock file.
//!
//! What comes from `interprocess` and what is written here, and why:
//!
//! * `interprocess::local_socket` creates the listening socket (with its file
//!   mode set by `fchmod` before `bind(2)` where the kernel honours that, as
//!   Linux does, so the socket is never reachable with a wider mode;
//!   close-on-exec also on macOS, which lacks `SOCK_CLOEXEC`; non-blocking
//!   accept) and reads the peer's credentials (`SO_PEERCRED` on Linux,
//!   `LOCAL_PEERCRED` on macOS and the BSDs) behind one portable call.
//! * Written by hand: choosing, creating and checking the private directory
//!   (interprocess binds any path it is given); the lock file that tells a
//!   live server from a stale socket file, and the removal of a stale file
//!   only after a connection attempt is refused (interprocess's
//!   `try_overwrite` unlinks a *live* server's socket too); the `chmod 0600`
//!   after `bind` where `fchmod` before it is not supported; removing, on
//!   drop, only the files this listener created (interprocess's name
//!   reclamation unlinks whatever is at the path by then); and waiting for a
//!   server to appear before a deadline (a plain `connect(2)` loop: its
//!   timed connect polls for writability, which `AF_UNIX` does not report
//!   for a full backlog).
//!
//! Every bind and connect re-checks the directory (owner, mode, not a
//! symbolic link), so a directory swapped or loosened after creation is
//! noticed at the next use.

use std::env;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use conduit_core::stream::{StreamReceiver, StreamSender};
use conduit_core::sys::StreamKind;
use conduit_core::{Error, ErrorKind, FrameConfig, Result};
use interprocess::local_socket::traits::{Listener as _, Stream as _, StreamCommon as _};
use interprocess::local_socket::{
    GenericFilePath, ListenerNonblockingMode, ListenerOptions, ToFsName as _,
};
use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
use interprocess::os::unix::uds_local_socket::{Listener as UdsListener, Stream as UdsStream};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::Accepted;

/// Connections are stream sockets (sends use `MSG_NOSIGNAL` / `SO_NOSIGPIPE`).
pub const KIND: StreamKind = StreamKind::Socket;

/// The environment variable that overrides the socket directory.
pub const DIR_ENV: &str = "CONDUIT_NAMED_DIR";

/// The socket file name of `name`.
pub fn socket_file(name: &str) -> String {
    format!("{name}.sock")
}

fn lock_file(name: &str) -> String {
    format!("{name}.lock")
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn refuse(dir: &Path, why: String) -> Error {
    Error::with_source(
        ErrorKind::Io,
        format!(
            "refusing to use the socket directory {}: {why}",
            dir.display()
        ),
        io::Error::from(io::ErrorKind::PermissionDenied),
    )
}

/// The private socket directory: `$CONDUIT_NAMED_DIR`, else
/// `$XDG_RUNTIME_DIR/conduit`, else `<temp dir>/conduit-<uid>`; created with
/// mode `0700` if missing, and checked.
pub fn socket_dir() -> Result<PathBuf> {
    let uid = euid();
    let (dir, origin) = match env::var_os(DIR_ENV).filter(|v| !v.is_empty()) {
        Some(d) => (PathBuf::from(d), DIR_ENV),
        None => match env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
        {
            Some(x) => (x.join("conduit"), "XDG_RUNTIME_DIR"),
            None => (
                env::temp_dir().join(format!("conduit-{uid}")),
                "the temp dir",
            ),
        },
    };
    if !dir.is_absolute() {
        return Err(Error::invalid_input(format!(
            "{DIR_ENV} must be an absolute path, not {:?}",
            dir
        )));
    }
    ensure_private(&dir, origin, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode `0700`) if it does not exist and checks that only
/// user `uid` can reach what is inside.
fn ensure_private(dir: &Path, origin: &str, uid: u32) -> Result<()> {
    check_ancestors(dir, uid)?;
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask can only have removed bits; make it exactly 0700.
            let _ = fs::set_permissions(dir, Permissions::from_mode(0o700));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::from_io(
                &format!(
                    "cannot create the socket directory {} (chosen from {origin}); create it with mode 0700 or set {DIR_ENV} to a directory of your own",
                    dir.display()
                ),
                e,
            ))
        }
    }
    let md = fs::symlink_metadata(dir).map_err(|e| {
        Error::from_io(
            &format!("cannot inspect the socket directory {}", dir.display()),
            e,
        )
    })?;
    if md.file_type().is_symlink() {
        return Err(refuse(
            dir,
            format!("it is a symbolic link, not a directory owned by this user; remove it or set {DIR_ENV} to another directory"),
        ));
    }
    if !md.is_dir() {
        return Err(refuse(
            dir,
            format!("it is not a directory; remove it or set {DIR_ENV} to another directory"),
        ));
    }
    if md.uid() != uid {
        return Err(refuse(
            dir,
            format!(
                "it is owned by uid {}, not by this user (uid {uid}), who could intercept connections; remove it or set {DIR_ENV} to a directory of your own",
                md.uid()
            ),
        ));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(
            dir,
            format!(
                "its mode is {mode:04o}, which lets other users reach the sockets in it; it must be 0700 (owner only): run `chmod 700 {}`",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses `dir` when another user could rename it (or a directory above
/// it) away and put one of theirs in its place: every ancestor must be owned
/// by this user or root, and writable by nobody else unless its sticky bit
/// is set (as on `/tmp`, where others cannot rename entries they do not
/// own). Ancestors that cannot be inspected are skipped: `dir` is then
/// unreachable anyway, which the checks of `dir` itself report.
fn check_ancestors(dir: &Path, uid: u32) -> Result<()> {
    for parent in dir.ancestors().skip(1) {
        let Ok(pm) = fs::metadata(parent) else {
            continue;
        };
        let owner = pm.uid();
        let mode = pm.mode() & 0o7777;
        if owner != uid && owner != 0 {
            return Err(refuse(
                dir,
                format!(
                    "{} above it is owned by uid {owner}, who could replace it (only this user, uid {uid}, or root may own the directories above the socket directory); set {DIR_ENV} to a directory in a safe place",
                    parent.display()
                ),
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            let who = if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            };
            return Err(refuse(
                dir,
                format!(
                    "{} above it is writable by {who} (mode {mode:04o}, no sticky bit), so another user could replace it; run `chmod go-w {}` or set {DIR_ENV} to a directory in a safe place",
                    parent.display(),
                    parent.display()
                ),
            ));
        }
    }
    Ok(())
}

fn check_len(path: &Path) -> Result<()> {
    if SocketAddr::from_pathname(path).is_err() {
        return Err(Error::invalid_input(format!(
            "the socket path {} is too long for a Unix domain socket; use a shorter name or set {DIR_ENV} to a shorter directory",
            path.display()
        )));
    }
    Ok(())
}

/// Where `name` lives: its socket path.
pub fn endpoint(name: &str) -> Result<String> {
    Ok(socket_dir()?
        .join(socket_file(name))
        .to_string_lossy()
        .into_owned())
}

fn in_use(name: &str, pid: Option<u32>) -> Error {
    let by = pid.map_or(String::new(), |p| format!(" (pid {p})"));
    Error::with_source(
        ErrorKind::Io,
        format!(
            "conduit name {name:?} is already in use by a running server{by}: stop that server or choose another name"
        ),
        io::Error::from(io::ErrorKind::AddrInUse),
    )
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Takes the lock that says "a live server holds this name". The kernel
/// drops it when the holder dies, which is what makes a left-over socket
/// file recognisably stale.
fn lock_name(lock_path: &Path, name: &str) -> Result<File> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut contended = 0u32;
    for _ in 0..16 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(lock_path)
            .map_err(|e| {
                Error::from_io(
                    &format!("cannot open the lock file {}", lock_path.display()),
                    e,
                )
            })?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                // The holder may be a live server, or only passing through:
                // a server that is stopping, or another bind sweeping a
                // stale name (both unlink the file, then unlock it, within
                // microseconds). Look again a few times before calling the
                // name taken.
                let replaced = match (file.metadata(), fs::symlink_metadata(lock_path)) {
                    (Ok(ours), Ok(there)) => !same_file(&ours, &there),
                    _ => true,
                };
                if replaced {
                    continue;
                }
                if contended < LOCK_RETRIES {
                    std::thread::sleep(Duration::from_millis(1 << contended));
                    contended += 1;
                    continue;
                }
                return Err(in_use(name, read_pid(&file)));
            }
            Err(Errno::INTR) => continue,
            Err(e) => {
                return Err(Error::from_io(
                    &format!("cannot lock {}", lock_path.display()),
                    e.into(),
                ))
            }
        }
        // A previous holder unlinks the file before it unlocks it: if we
        // locked a file that is no longer at the path, try again.
        if let (Ok(ours), Ok(there)) = (file.metadata(), fs::symlink_metadata(lock_path)) {
            if same_file(&ours, &there) {
                return Ok(file);
            }
        }
    }
    Err(Error::with_source(
        ErrorKind::Io,
        format!(
            "cannot take the lock file {}: it keeps being replaced",
            lock_path.display()
        ),
        io::Error::from(io::ErrorKind::AddrInUse),
    ))
}

/// How many times `lock_name` looks again at a held lock (after 1, 2, 4
/// and 8 ms) before it reports the name in use.
const LOCK_RETRIES: u32 = 4;

/// Removes the `.sock`/`.lock` pairs that servers killed without cleaning
/// up left in `dir`, except those of `except` (the name being bound, whose
/// own stale socket `remove_stale` handles). A pair is stale when nobody
/// holds the lock: the sweep takes the lock itself, so that no server can
/// bind the name meanwhile, removes the socket after a connection attempt
/// is refused (as for the name being bound), then unlinks the lock file
/// before it unlocks it, as a stopping server does. Best effort: whatever
/// cannot be inspected or removed is left alone.
fn sweep_stale(dir: &Path, except: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(".lock")) else {
            continue;
        };
        if name != except && crate::check_name(name).is_ok() {
            sweep_one(dir, name);
        }
    }
}

fn sweep_one(dir: &Path, name: &str) {
    let lock_path = dir.join(lock_file(name));
    // Non-blocking, so that a FIFO planted under that name cannot stall us.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&lock_path)
    else {
        return;
    };
    let Ok(ours) = file.metadata() else {
        return;
    };
    if !ours.is_file() {
        return;
    }
    // Held: a live server (or a bind in progress) owns the name.
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    // Someone else swept or re-created it since we opened it.
    match fs::symlink_metadata(&lock_path) {
        Ok(there) if same_file(&ours, &there) => {}
        _ => return,
    }
    // We hold the name now: nobody can bind it until `file` is closed.
    if remove_stale(&dir.join(socket_file(name)), name).is_ok() {
        let _ = fs::remove_file(&lock_path);
    }
}

fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Removes a socket file left behind by a server that died, after checking
/// that nobody listens on it.
fn remove_stale(path: &Path, name: &str) -> Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::from_io(
                &format!("cannot inspect {}", path.display()),
                e,
            ))
        }
    };
    if !md.file_type().is_socket() {
        return Err(Error::with_source(
            ErrorKind::Io,
            format!(
                "{} exists and is not a socket: remove it or choose another name",
                path.display()
            ),
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    match UnixStream::connect(path) {
        // Someone listens there without holding the lock (a server whose
        // lock file was deleted by hand, or another program).
        Ok(_) => Err(in_use(name, None)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::from_io(
                    &format!("cannot remove the stale socket {}", path.display()),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::from_io(
            &format!("cannot check whether {} is stale", path.display()),
            e,
        )),
    }
}

fn listen(path: &Path) -> io::Result<UdsListener> {
    let options = || -> io::Result<ListenerOptions<'_>> {
        Ok(ListenerOptions::new()
            .name(path.to_fs_name::<GenericFilePath>()?)
            .nonblocking(ListenerNonblockingMode::Accept)
            .reclaim_name(false)
            .try_overwrite(false))
    };
    match options()?.mode(0o600).create_sync_as::<UdsListener>() {
        // This OS cannot set a socket's mode before bind: chmod after it.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            options()?.create_sync_as::<UdsListener>()
        }
        other => other,
    }
}

/// A bound name.
#[derive(Debug)]
pub struct Listener {
    sock: UdsListener,
    path: PathBuf,
    display: String,
    /// The socket file this listener created, as (device, inode).
    file: fs::Metadata,
    lock: File,
    lock_path: PathBuf,
    /// Connections whose handshake is in progress, between `accept` calls.
    pending: Mutex<Vec<Pending>>,
}

impl Listener {
    /// Claims `name`: lock, stale-file removal, bind, `chmod 0600`.
    pub fn bind(name: &str) -> Result<Listener> {
        let dir = socket_dir()?;
        let path = dir.join(socket_file(name));
        check_len(&path)?;
        let lock_path = dir.join(lock_file(name));
        let mut lock = lock_name(&lock_path, name)?;
        sweep_stale(&dir, name);
        remove_stale(&path, name)?;
        let sock = listen(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                in_use(name, None)
            } else {
                Error::from_io(&format!("cannot listen on {}", path.display()), e)
            }
        })?;
        let finish = || -> io::Result<fs::Metadata> {
            fs::set_permissions(&path, Permissions::from_mode(0o600))?;
            fs::symlink_metadata(&path)
        };
        let file = match finish() {
            Ok(md) => md,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(Error::from_io(
                    &format!("cannot restrict {} to this user", path.display()),
                    e,
                ));
            }
        };
        // For the "in use by pid N" message of a second server; best effort.
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        Ok(Listener {
            sock,
            display: path.to_string_lossy().into_owned(),
            path,
            file,
            lock,
            lock_path,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The socket path.
    pub fn endpoint(&self) -> &str {
        &self.display
    }

    /// Waits until `deadline` for the next client that completes its
    /// handshake (see [`Pending`] for how handshakes run side by side).
    ///
    /// Concurrent calls from several threads each take the connections in
    /// progress at the time of the call and put back those still in
    /// progress when they return.
    pub fn accept(
        &self,
        cfg: FrameConfig,
        handshake_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Accepted> {
        let mut mine = std::mem::take(&mut *lock(&self.pending));
        let out = self.accept_among(&mut mine, cfg, handshake_timeout, deadline);
        let mut pending = lock(&self.pending);
        pending.append(&mut mine);
        let excess = pending.len().saturating_sub(crate::MAX_PENDING);
        pending.drain(..excess);
        out
    }

    fn accept_among(
        &self,
        pending: &mut Vec<Pending>,
        cfg: FrameConfig,
        handshake_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Accepted> {
        loop {
            // Silent clients go when their own time is up; a handshake that
            // arrived in time while nobody was in `accept` still counts.
            let now = Instant::now();
            let mut i = 0;
            while i < pending.len() {
                if pending[i].deadline > now {
                    i += 1;
                    continue;
                }
                let mut p = pending.remove(i);
                match p.step() {
                    Step::Done => return Ok(Accepted::Ready(Box::new((p.tx, p.rx)))),
                    Step::Mismatch(e) => return Ok(Accepted::Mismatch(e)),
                    Step::Wait | Step::Gone => {}
                }
            }
            let wake = pending.iter().map(|p| p.deadline).min();
            let until = match (deadline, wake) {
                (Some(d), Some(w)) => Some(d.min(w)),
                (d, w) => d.or(w),
            };
            let (listener_ready, ready) = self.wait(pending, until)?;
            // Connections with input (or hung up), oldest first.
            let mut removed = 0;
            for i in ready {
                let i = i - removed;
                match pending[i].step() {
                    Step::Done => {
                        let p = pending.remove(i);
                        return Ok(Accepted::Ready(Box::new((p.tx, p.rx))));
                    }
                    Step::Wait => {}
                    Step::Mismatch(e) => {
                        pending.remove(i);
                        return Ok(Accepted::Mismatch(e));
                    }
                    Step::Gone => {
                        pending.remove(i);
                        removed += 1;
                    }
                }
            }
            if listener_ready {
                self.take_new(pending, cfg, handshake_timeout)?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Accepted::TimedOut);
            }
        }
    }

    /// Polls the listening socket and the connections in progress until
    /// `until`; returns whether the listener is readable and which
    /// connections are.
    fn wait(&self, pending: &[Pending], until: Option<Instant>) -> Result<(bool, Vec<usize>)> {
        let mut fds = Vec::with_capacity(pending.len() + 1);
        fds.push(PollFd::new(&self.sock, PollFlags::IN));
        for p in pending {
            fds.push(PollFd::from_borrowed_fd(
                p.rx.stream().handle(),
                PollFlags::IN,
            ));
        }
        let timeout = until.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                return Err(Error::from_io(
                    "waiting for clients failed",
                    io::Error::from(e),
                ))
            }
        }
        let listener_ready = !fds[0].revents().is_empty();
        let ready = fds[1..]
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        Ok((listener_ready, ready))
    }

    /// Accepts the clients queued on the listening socket and starts their
    /// handshakes.
    fn take_new(
        &self,
        pending: &mut Vec<Pending>,
        cfg: FrameConfig,
        handshake_timeout: Duration,
    ) -> Result<()> {
        // A bounded batch, so that a flood of connections cannot keep the
        // connections in progress from being looked at.
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.sock.accept() {
                Ok(s) => s,
                // Nothing more queued, or another thread took it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The client gave up already.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(Error::from_io(
                        &format!("cannot accept a connection on {}", self.display),
                        e,
                    ))
                }
            };
            if let Some(p) = start(stream, cfg, handshake_timeout) {
                if pending.len() >= crate::MAX_PENDING {
                    pending.remove(0);
                }
                pending.push(p);
            }
        }
        Ok(())
    }
}

/// How many queued clients one round of `accept` takes from the listening
/// socket before it looks at the connections in progress again.
const ACCEPT_BATCH: usize = 16;

/// A connection whose handshake is in progress.
///
/// `accept` keeps these (in the listener, between calls), polls them
/// together with the listening socket, and reads whatever part of a
/// client's handshake has arrived without waiting for the rest (the
/// receiver keeps partial input), so one silent or slow client never holds
/// up another. Each is dropped when its own deadline passes.
#[derive(Debug)]
struct Pending {
    tx: StreamSender,
    rx: StreamReceiver,
    deadline: Instant,
}

/// Where a connection's handshake stands after [`Pending::step`].
enum Step {
    /// Complete and matching: the connection is ready.
    Done,
    /// Not all of it has arrived yet.
    Wait,
    /// It does not match ours.
    Mismatch(Error),
    /// The client went away, or its socket failed.
    Gone,
}

impl Pending {
    /// Reads whatever part of the client's handshake has arrived, without
    /// waiting for the rest (a deadline of now: the receiver keeps partial
    /// input between calls and reads nothing past the handshake).
    fn step(&mut self) -> Step {
        match self.rx.recv_handshake(Some(Instant::now())) {
            Ok(()) => Step::Done,
            Err(e) if e.kind() == ErrorKind::Timeout => Step::Wait,
            Err(e) if e.kind() == ErrorKind::Protocol => Step::Mismatch(e),
            Err(_) => Step::Gone,
        }
    }
}

/// Checks a newly accepted client and sends it our handshake; `None` when
/// it is dropped (another user, or the socket failed).
fn start(stream: UdsStream, cfg: FrameConfig, handshake_timeout: Duration) -> Option<Pending> {
    // BSDs and macOS pass the listener's O_NONBLOCK on to accepted sockets.
    stream.set_nonblocking(false).ok()?;
    // Only our own user can reach the directory, but root can reach
    // anything: refuse peers that are not us.
    match peer_euid(&stream) {
        Ok(Some(uid)) if uid != euid() => return None,
        Ok(_) => {}
        Err(_) => return None,
    }
    let (send, recv) = halves(stream).ok()?;
    let (mut tx, rx) = crate::wrap(send, recv, cfg);
    // Twelve bytes into an empty socket buffer: this does not block.
    tx.send_handshake().ok()?;
    Some(Pending {
        tx,
        rx,
        deadline: crate::deadline_within(None, handshake_timeout),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket only if it is still the one we bound (a server
        // started after someone removed ours by hand keeps its own).
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if same_file(&md, &self.file) {
                let _ = fs::remove_file(&self.path);
            }
        }
        // We hold the lock, so the lock file at the path is ours; it is
        // unlinked before the lock is released (when `lock` is closed after
        // this function), which `lock_name` relies on.
        if let (Ok(there), Ok(ours)) = (fs::symlink_metadata(&self.lock_path), self.lock.metadata())
        {
            if same_file(&there, &ours) {
                let _ = fs::remove_file(&self.lock_path);
            }
        }
    }
}

fn peer_euid(stream: &UdsStream) -> io::Result<Option<u32>> {
    Ok(stream.peer_creds()?.euid())
}

/// The sending and the receiving descriptor of a connected socket.
fn halves(stream: UdsStream) -> io::Result<(OwnedFd, OwnedFd)> {
    let fd = OwnedFd::from(stream);
    #[cfg(target_vendor = "apple")]
    {
        // No MSG_NOSIGNAL on macOS: ask the socket not to raise SIGPIPE.
        rustix::net::sockopt::set_socket_nosigpipe(&fd, true)?;
    }
    // try_clone duplicates with F_DUPFD_CLOEXEC.
    let recv = fd.try_clone()?;
    Ok((fd, recv))
}

/// Connects to the server of `name`; see `crate::connect` for the waiting rules.
pub fn connect(name: &str, deadline: Option<Instant>) -> Result<(OwnedFd, OwnedFd)> {
    let dir = socket_dir()?;
    let path = dir.join(socket_file(name));
    check_len(&path)?;
    let mut pause = Duration::from_millis(1);
    let stream = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                let Some(deadline) = deadline else {
                    return Err(Error::with_source(
                        ErrorKind::Io,
                        format!(
                            "no server is listening on conduit name {name:?} ({})",
                            path.display()
                        ),
                        e,
                    ));
                };
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no server was listening on conduit name {name:?} ({}) before the deadline",
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Error::from_io(
                    &format!("cannot connect to {}", path.display()),
                    e,
                ))
            }
        }
    };
    let stream = UdsStream::from(stream);
    let me = euid();
    match peer_euid(&stream) {
        Ok(Some(uid)) if uid != me => {
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "the server of conduit name {name:?} runs as uid {uid}, not as this user (uid {me}); refusing to talk to it"
                ),
                io::Error::from(io::ErrorKind::PermissionDenied),
            ))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(Error::from_io(
                "cannot read the credentials of the server",
                e,
            ))
        }
    }
    halves(stream).map_err(|e| Error::from_io("cannot set up the connection", e))
}
