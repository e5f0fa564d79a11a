//! Unix backend: streams over file descriptors (rustix), handles passed to the
//! child with `SCM_RIGHTS` over a private socket pair.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::StreamKind;
use crate::error::{Error, Result};

/// The owned OS handle type: a file descriptor.
pub type OsHandle = OwnedFd;

/// A blocking byte stream over a pipe or socket descriptor.
#[derive(Debug)]
pub struct OsStream {
    fd: OwnedFd,
    kind: StreamKind,
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
        OsStream { fd, kind }
    }

    /// Reads what is available, blocking until at least one byte or EOF (0).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| rustix::io::read(&self.fd, &mut *buf))
    }

    /// Writes some of `buf`, blocking while the stream is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self.kind {
            StreamKind::Pipe => retry(|| rustix::io::write(&self.fd, buf)),
            StreamKind::Socket => retry(|| rustix::net::send(&self.fd, buf, SEND_FLAGS)),
        }
    }

    /// Writes some of `bufs` in one system call.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.kind {
            StreamKind::Pipe => retry(|| rustix::io::writev(&self.fd, bufs)),
            StreamKind::Socket => retry(|| {
                rustix::net::sendmsg(
                    &self.fd,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SEND_FLAGS,
                )
            }),
        }
    }

    /// Waits until the stream is readable (data, EOF or error) or `deadline`
    /// passes; returns false on timeout.
    pub fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        poll_fd(self.fd.as_fd(), PollFlags::IN, deadline)
    }

    /// Gives back the descriptor.
    pub fn into_handle(self) -> OwnedFd {
        self.fd
    }

    /// Borrows the descriptor.
    pub fn handle(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
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

/// Makes the handles travel to the child `cmd` will spawn; returns the token's
/// handle part (`fd=<carrier descriptor number in the child>`).
///
/// The descriptors are sent at once with `SCM_RIGHTS` into a fresh socket pair
/// and the parent's copies are dropped; only the carrier socket's child end is
/// inherited, by this child only (its close-on-exec flag is cleared after
/// `fork`, in the child).
pub fn send_handles(cmd: &mut Command, handles: Vec<OwnedFd>) -> Result<String> {
    let (ours, theirs) =
        socketpair().map_err(|e| Error::from_io("cannot create the handoff socket pair", e))?;
    let borrowed: Vec<BorrowedFd<'_>> = handles.iter().map(|h| h.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if borrowed.len() > 16 || !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(Error::invalid_input("too many handles for one handoff"));
    }
    let count = [borrowed.len() as u8];
    retry(|| rustix::net::sendmsg(&ours, &[IoSlice::new(&count)], &mut control, SEND_FLAGS))
        .map_err(|e| Error::from_io("cannot pass descriptors to the handoff socket", e))?;
    drop(handles);
    drop(ours);
    let raw = theirs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec; it only calls
    // fcntl(F_SETFD), which is async-signal-safe, on a descriptor the closure
    // owns (so it is open in the parent at fork time and thus in the child).
    unsafe {
        cmd.pre_exec(move || {
            rustix::io::fcntl_setfd(&theirs, FdFlags::empty()).map_err(io::Error::from)
        });
    }
    Ok(format!("fd={raw}"))
}

/// Takes the handles announced by a token's handle part.
pub fn receive_handles(part: &str, count: usize) -> Result<Vec<OwnedFd>> {
    let raw: RawFd = part
        .strip_prefix("fd=")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Error::invalid_input("bad descriptor part"))?;
    // SAFETY: `raw` is only borrowed for the duration of the fstat below, which
    // is harmless whatever the number refers to (an unopened number gives EBADF).
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let stat = rustix::fs::fstat(borrowed)
        .map_err(|_| Error::invalid_input("the carrier descriptor is not open (was this process spawned with the Command the endpoint was handed to?)"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(Error::invalid_input(
            "the carrier descriptor is not a socket",
        ));
    }
    // SAFETY: the descriptor is open and is a socket, the token says the parent
    // made it for us, and `adopt_with` lets each key be adopted once per
    // process, so nothing else owns it.
    let carrier = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = RecvFlags::empty();
    let got = retry(|| {
        rustix::net::recvmsg(
            &carrier,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            flags,
        )
    })
    .map_err(|e| Error::from_io("cannot receive the handed descriptors", e))?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes != 1 || fds.len() != count || byte[0] as usize != count {
        return Err(Error::protocol(format!(
            "expected {count} handed descriptors, received {} (was the endpoint already adopted by another process?)",
            fds.len()
        )));
    }
    for fd in &fds {
        set_cloexec(fd).map_err(|e| Error::from_io("cannot set close-on-exec", e))?;
    }
    Ok(fds)
}

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
    #[cfg(not(target_vendor = "apple"))]
    let flags = SocketFlags::CLOEXEC;
    // macOS has no SOCK_CLOEXEC; see `pipe` for the consequence.
    #[cfg(target_vendor = "apple")]
    let flags = SocketFlags::empty();
    let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
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
}
