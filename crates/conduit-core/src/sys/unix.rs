//! Unix backend: streams over file descriptors (rustix), handles passed to the
//! child with `SCM_RIGHTS` over a private socket pair.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendFlags, SocketFlags, SocketType};

use super::StreamKind;

/// The owned OS handle type: a file descriptor.
pub type OsHandle = OwnedFd;

/// A blocking byte stream over a pipe or socket descriptor.
///
/// No write raises `SIGPIPE`, whatever the signal's disposition: a write to a
/// gone reader is `EPIPE` (hence `Disconnected`) only. Sockets are written with
/// `MSG_NOSIGNAL` (Linux) or have `SO_NOSIGPIPE` (macOS). Pipes have no such
/// flag on Linux: each pipe write runs with `SIGPIPE` blocked in the calling
/// thread, and a `SIGPIPE` that the write raised is consumed before the mask
/// is restored (see [`without_sigpipe`]); on macOS the pipe gets
/// `F_SETNOSIGPIPE` instead.
#[derive(Debug)]
pub struct OsStream {
    fd: OwnedFd,
    kind: StreamKind,
    /// The descriptor itself never raises `SIGPIPE` (macOS flags).
    quiet: bool,
    /// Socket writes of this stream do not block (`MSG_DONTWAIT`; see
    /// [`OsStream::set_nonblocking_writes`]).
    nowait: bool,
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: SendFlags = SendFlags::empty();

impl OsStream {
    /// Wraps a descriptor.
    pub fn new(fd: OwnedFd, kind: StreamKind) -> OsStream {
        let quiet = quiet_descriptor(&fd, kind);
        OsStream {
            fd,
            kind,
            quiet,
            nowait: false,
        }
    }

    /// Reads what is available, blocking until at least one byte or EOF (0).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| rustix::io::read(&self.fd, &mut *buf))
    }

    /// Writes some of `buf`, blocking while the stream is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self.kind {
            StreamKind::Pipe if self.quiet => retry(|| rustix::io::write(&self.fd, buf)),
            StreamKind::Pipe => without_sigpipe(|| retry(|| rustix::io::write(&self.fd, buf))),
            StreamKind::Socket => retry(|| rustix::net::send(&self.fd, buf, self.send_flags())),
        }
    }

    /// Writes some of `bufs` in one system call.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.kind {
            StreamKind::Pipe if self.quiet => retry(|| rustix::io::writev(&self.fd, bufs)),
            StreamKind::Pipe => without_sigpipe(|| retry(|| rustix::io::writev(&self.fd, bufs))),
            StreamKind::Socket => retry(|| {
                rustix::net::sendmsg(
                    &self.fd,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    self.send_flags(),
                )
            }),
        }
    }

    /// Waits until the stream is readable (data, EOF or error) or `deadline`
    /// passes; returns false on timeout.
    pub fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        poll_fd(self.fd.as_fd(), PollFlags::IN, deadline)
    }

    /// Gives back the descriptor (blocking again, if a pipe write end was
    /// made non-blocking: whoever gets it next expects a plain pipe).
    pub fn into_handle(self) -> OwnedFd {
        if self.nowait && self.kind == StreamKind::Pipe {
            let _ = self.set_nonblocking(false);
        }
        self.fd
    }

    /// The descriptor `conduit::wait` polls for input.
    pub fn wait_handle(&self) -> Option<WaitHandle<'_>> {
        Some(self.fd.as_fd())
    }

    /// The descriptor an async sender polls for room (the same one).
    pub fn send_wait_handle(&self) -> Option<WaitHandle<'_>> {
        Some(self.fd.as_fd())
    }

    /// Borrows the descriptor.
    pub fn handle(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Asks the descriptor itself not to raise `SIGPIPE` where the OS can
/// (macOS: `F_SETNOSIGPIPE` on pipes, `SO_NOSIGPIPE` on sockets, which also
/// covers sockets made elsewhere and handed in); true when that is done.
#[cfg(target_vendor = "apple")]
fn quiet_descriptor(fd: &OwnedFd, kind: StreamKind) -> bool {
    match kind {
        // SAFETY: F_SETNOSIGPIPE takes an int argument and changes only a flag
        // of the open file description we own.
        StreamKind::Pipe => unsafe {
            libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::F_SETNOSIGPIPE, 1) == 0
        },
        StreamKind::Socket => rustix::net::sockopt::set_socket_nosigpipe(fd, true).is_ok(),
    }
}

/// Linux and the other Unixes: sockets use `MSG_NOSIGNAL`, pipes need
/// [`without_sigpipe`].
#[cfg(not(target_vendor = "apple"))]
fn quiet_descriptor(_fd: &OwnedFd, kind: StreamKind) -> bool {
    kind == StreamKind::Socket
}

/// Whether `SIGPIPE` is pending for this thread (or the process).
fn sigpipe_pending() -> bool {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set we pass; sigismember reads it only
    // once sigpending succeeded.
    unsafe {
        libc::sigpending(set.as_mut_ptr()) == 0
            && libc::sigismember(set.as_ptr(), libc::SIGPIPE) == 1
    }
}

/// Whether `SIGPIPE` is ignored (`SIG_IGN`, the Rust runtime's default).
fn sigpipe_ignored() -> bool {
    let mut action = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: with a null new action, sigaction only writes the current one
    // into the buffer we pass; it is read only when the call succeeded.
    unsafe {
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), action.as_mut_ptr()) == 0
            && action.assume_init_ref().sa_sigaction == libc::SIG_IGN
    }
}

/// How long a thread trusts an earlier "`SIGPIPE` is ignored" answer.
const IGNORED_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    /// Until when this thread trusts that `SIGPIPE` is ignored.
    static IGNORED_UNTIL: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// [`sigpipe_ignored`], with an "ignored" answer trusted for
/// [`IGNORED_TRUSTED_FOR`] by the calling thread: the `sigaction` query
/// cost ~45% of the 64-byte pipe message rate in `cargo xtask bench`
/// (a system call per write), the clock read ~25 ns. Only the answer that
/// lets a write skip the guard is kept; "not ignored" is asked again each
/// time.
fn sigpipe_ignored_recently() -> bool {
    let now = Instant::now();
    let trusted = IGNORED_UNTIL
        .try_with(|until| until.get().is_some_and(|t| now < t))
        .unwrap_or(false);
    if trusted {
        return true;
    }
    let ignored = sigpipe_ignored();
    let _ = IGNORED_UNTIL.try_with(|until| until.set(ignored.then(|| now + IGNORED_TRUSTED_FOR)));
    ignored
}

/// Runs `write` (one write to a pipe) so that it cannot raise `SIGPIPE` in
/// this process whatever the signal's disposition. When `SIGPIPE` is ignored
/// (the Rust runtime's default) the write runs as is. Otherwise `SIGPIPE` is
/// blocked in the calling thread around the write; if the write failed with `EPIPE` and no
/// `SIGPIPE` was pending before, the one it raised (directed at this thread)
/// is taken with `sigwait` (it is pending, so that returns at once); then the
/// thread's mask is restored. If the caller had `SIGPIPE` blocked already,
/// the mask is left alone and only a signal raised by this write is taken.
///
/// Cost per write (measured on the 2-vCPU VM: a system call is ~0.2 µs
/// there, a 64-byte pipe write to a reading thread ~0.9 µs): a clock read
/// when `SIGPIPE` is ignored (one `sigaction` query per thread and
/// millisecond); else two `pthread_sigmask` calls more (one more
/// `sigpending` when the caller blocks `SIGPIPE` itself, two more on
/// `EPIPE`).
///
/// Windows of doubt: a program that changes `SIGPIPE` from ignored to
/// default while another thread writes is protected only after at most
/// `IGNORED_TRUSTED_FOR` (1 ms) in each writing thread, so a write that
/// fails with `EPIPE` in that millisecond could still kill the process
/// (programs set the disposition once at start-up, before any channel
/// exists, which is safe); a `SIGPIPE` sent to the process by someone else
/// between a failing write and the `sigwait` is merged with ours and
/// consumed.
pub fn without_sigpipe<T>(write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if sigpipe_ignored_recently() {
        return write();
    }
    let mut pipe_only = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset/sigaddset initialise and edit the set we own;
    // pthread_sigmask reads it and writes the previous mask into `old`; it
    // changes this thread's mask only.
    let blocked = unsafe {
        libc::sigemptyset(pipe_only.as_mut_ptr());
        libc::sigaddset(pipe_only.as_mut_ptr(), libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, pipe_only.as_ptr(), old.as_mut_ptr()) == 0
    };
    if !blocked {
        // Cannot happen with valid arguments; write unguarded rather than not at all.
        return write();
    }
    // SAFETY: pthread_sigmask succeeded, so it filled `old`.
    let was_blocked = unsafe { libc::sigismember(old.as_ptr(), libc::SIGPIPE) == 1 };
    let pending_before = was_blocked && sigpipe_pending();
    let out = write();
    if matches!(&out, Err(e) if e.kind() == io::ErrorKind::BrokenPipe)
        && !pending_before
        && sigpipe_pending()
    {
        let mut sig = 0;
        // SAFETY: the set holds SIGPIPE only, which is blocked in this thread
        // and pending, so sigwait returns at once; it writes the signal
        // number into `sig`.
        unsafe { libc::sigwait(pipe_only.as_ptr(), &mut sig) };
    }
    if !was_blocked {
        // SAFETY: restores this thread's mask from the copy taken above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    }
    out
}

/// Polls one descriptor for `flags` until `deadline`; true when ready (or hung up).
pub fn poll_fd(
    fd: BorrowedFd<'_>,
    flags: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let mut fds = [PollFd::new(&fd, flags)];
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec {
                    tv_sec: left.as_secs().min(i32::MAX as u64) as _,
                    tv_nsec: left.subsec_nanos() as _,
                })
            }
        };
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `conduit::wait` watches on Unix: a descriptor, polled for input.
pub type WaitHandle<'a> = BorrowedFd<'a>;

/// Waits until one of `fds` is readable (or hung up, or in error) or
/// `deadline` passes; returns the indices of those that are (empty on
/// timeout or interruption). One `poll(2)` call: no `FD_SETSIZE` limit.
pub fn wait_any(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: left.as_secs().min(i32::MAX as u64) as _,
            tv_nsec: left.subsec_nanos() as _,
        }
    });
    match rustix::event::poll(&mut pfds, timeout.as_ref()) {
        Ok(0) | Err(Errno::INTR) => Ok(Vec::new()),
        Ok(_) => Ok(pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(i, _)| i)
            .collect()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(feature = "tokio")]
#[path = "unix/reactor.rs"]
pub mod reactor;

#[path = "unix/handoff.rs"]
mod handoff;
pub use handoff::{receive_handles, send_handles};

/// Creates a close-on-exec pipe: `(read end, write end)`.
#[cfg(not(target_vendor = "apple"))]
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Creates a close-on-exec pipe: `(read end, write end)`.
///
/// macOS has no `pipe2`: the flag is set right after creation, so a `fork`
/// racing in another thread could inherit the descriptors until its `exec`
/// (the same limitation as std's own pipes there).
#[cfg(target_vendor = "apple")]
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    set_cloexec(&read)?;
    set_cloexec(&write)?;
    Ok((read, write))
}

/// Creates a connected, close-on-exec `AF_UNIX` stream socket pair.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair_of(SocketType::STREAM)
}

/// Creates a connected, close-on-exec `AF_UNIX` socket pair of type `ty`
/// (that does not raise `SIGPIPE` on macOS).
pub fn socketpair_of(ty: SocketType) -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    let flags = SocketFlags::CLOEXEC;
    // macOS has no SOCK_CLOEXEC; see `pipe` for the consequence.
    #[cfg(target_vendor = "apple")]
    let flags = SocketFlags::empty();
    let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, ty, flags, None)?;
    #[cfg(target_vendor = "apple")]
    {
        set_cloexec(&a)?;
        set_cloexec(&b)?;
        // No MSG_NOSIGNAL on macOS: ask the socket not to raise SIGPIPE.
        rustix::net::sockopt::set_socket_nosigpipe(&a, true)?;
        rustix::net::sockopt::set_socket_nosigpipe(&b, true)?;
    }
    Ok((a, b))
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC)?)
}

impl OsStream {
    /// Waits until the stream can take at least one byte (or is broken) or
    /// `deadline` passes; false on timeout.
    pub fn wait_writable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        poll_fd(self.fd.as_fd(), PollFlags::OUT, deadline)
    }

    /// Makes writes fail with `WouldBlock` instead of blocking (`true`), or
    /// block again (`false`).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        Ok(rustix::io::ioctl_fionbio(&self.fd, on)?)
    }

    /// Like [`set_nonblocking`](Self::set_nonblocking) for this stream's
    /// writes only: a socket gets `MSG_DONTWAIT` on each write (no system
    /// call here, and the receiving half that may share the socket keeps
    /// blocking). A pipe's write end belongs to this stream alone, so it is
    /// switched with `FIONBIO` once and stays non-blocking (`false` then
    /// does nothing): the writers wait for room with `poll` on `WouldBlock`
    /// anyway, and a deadline send saves two system calls.
    /// [`into_handle`](Self::into_handle) makes it blocking again.
    pub fn set_nonblocking_writes(&mut self, on: bool) -> io::Result<()> {
        match self.kind {
            StreamKind::Socket => {
                self.nowait = on;
                Ok(())
            }
            StreamKind::Pipe if on && !self.nowait => {
                self.set_nonblocking(true)?;
                self.nowait = true;
                Ok(())
            }
            StreamKind::Pipe => Ok(()),
        }
    }

    fn send_flags(&self) -> SendFlags {
        if self.nowait {
            SEND_FLAGS | SendFlags::DONTWAIT
        } else {
            SEND_FLAGS
        }
    }
}

impl OsStream {
    /// Tells the peer that nothing more will be written, even while another
    /// descriptor of the same socket stays open for reading (a socketpair
    /// duplex end holds the socket twice). Pipes: nothing to do, closing
    /// the write end is enough.
    pub fn shutdown_write(&self) {
        if self.kind == StreamKind::Socket {
            // Best effort: a socket whose peer is gone cannot be shut down,
            // and then there is nobody to tell.
            let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
        }
    }
}
