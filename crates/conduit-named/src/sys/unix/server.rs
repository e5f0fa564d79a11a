//! The server: binding a name and the accept state machine, which runs the
//! handshakes of several connecting clients side by side.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use conduit_core::stream::{StreamReceiver, StreamSender};
use conduit_core::{Error, ErrorKind, FrameConfig, Result};
use interprocess::local_socket::traits::{Listener as _, Stream as _};
use interprocess::local_socket::{
    GenericFilePath, ListenerNonblockingMode, ListenerOptions, ToFsName as _,
};
use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
use interprocess::os::unix::uds_local_socket::{Listener as UdsListener, Stream as UdsStream};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::Accepted;

use super::dir::{check_len, socket_dir};
use super::stale::{in_use, lock_name, remove_stale, same_file, sweep_stale};
use super::{euid, halves, lock, lock_file, peer_euid, socket_file};

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

    /// The descriptor `conduit::wait` watches: the listening socket.
    pub fn wait_handles(&self) -> Vec<conduit_core::WaitHandle<'_>> {
        use std::os::fd::AsFd;
        vec![self.sock.as_fd()]
    }

    /// True while a connection taken by `accept` is still in its handshake.
    pub fn handshakes_in_progress(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// True when a client is queued on the listening socket or a
    /// connection taken by an earlier `accept` has input, without waiting.
    pub fn client_waiting(&self) -> Result<bool> {
        let (listener_ready, ready) = self.wait(&lock(&self.pending), Some(Instant::now()))?;
        Ok(listener_ready || !ready.is_empty())
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
