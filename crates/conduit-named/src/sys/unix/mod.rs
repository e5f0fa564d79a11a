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
//!
//! # Layout
//!
//! This file holds the file names and the helpers both sides use; `dir`
//! chooses, creates and checks the private socket directory; `stale` the
//! lock that tells a live server from a stale socket file, and the sweep of
//! stale files; `server` the listener and its accept state machine; `client`
//! the `connect` side.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use conduit_core::sys::StreamKind;
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::os::unix::uds_local_socket::Stream as UdsStream;

use super::Accepted;

mod client;
mod dir;
mod server;
mod stale;

pub use client::connect;
pub use dir::{endpoint, socket_dir};
pub use server::Listener;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
