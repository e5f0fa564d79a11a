//! Platform layer of `conduit-core`: byte streams over OS handles and handing
//! handles to a child process. Every backend provides:
//!
//! - `OsHandle`: the owned handle type (`OwnedFd` / `OwnedHandle`);
//! - `OsStream`: a blocking byte stream over one handle with `new(handle, kind)`,
//!   `read`, `write`, `write_vectored`, `wait_readable(deadline) -> bool` and
//!   `into_handle`; reads and writes retry on interruption;
//! - `pipe() -> (read, write)`: a non-inheritable anonymous pipe;
//! - `send_handles(cmd, handles) -> token part` and
//!   `receive_handles(token part, count) -> handles` (see [`crate::handoff`]);
//!   after the child is spawned the parent must hold no copy of what it
//!   handed (Unix: the carrier registry and its watcher thread in
//!   `unix.rs`; Windows: the child's `DUPLICATE_CLOSE_SOURCE`);
//! - Windows only: `send_handles_to(child process, handles) -> token part`
//!   and `unsafe take_own_handles(token part, count) -> handles`, which push
//!   the handles into a child whose process handle the caller has (see
//!   `handoff::Outgoing`).
//!
//! `unsafe` in `conduit-core` is confined to these files.

#![allow(unsafe_code)]

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod imp;

pub use imp::*;

/// What kind of OS object a stream runs over (sockets avoid `SIGPIPE` by flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A pipe (or a Windows named pipe).
    Pipe,
    /// A connected stream socket.
    Socket,
}
