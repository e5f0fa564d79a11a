//! Unix: `socketpair(AF_UNIX, SOCK_STREAM)`, close-on-exec (from core).

use std::io;
use std::os::fd::OwnedFd;

use conduit_core::transport::sys::StreamKind;

/// Streams are sockets (sends use `MSG_NOSIGNAL` / `SO_NOSIGPIPE`).
pub const KIND: StreamKind = StreamKind::Socket;

/// Two connected ends; each end's socket is held twice (send, receive).
#[allow(clippy::type_complexity)]
pub fn pair() -> io::Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd))> {
    let (a, b) = conduit_core::transport::sys::socketpair()?;
    // try_clone duplicates with F_DUPFD_CLOEXEC.
    let a2 = a.try_clone()?;
    let b2 = b.try_clone()?;
    Ok(((a, a2), (b, b2)))
}
