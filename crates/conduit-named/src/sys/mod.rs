//! Platform layer of `conduit-named`. Every backend provides:
//!
//! - `KIND`: the [`StreamKind`](conduit_core::sys::StreamKind) of a connection's handles;
//! - `Listener::bind(name)`: claims the (already validated) name for the
//!   current user, failing with an `AddrInUse` source when a live server
//!   holds it; dropping the listener releases the name;
//! - `Listener::accept(cfg, handshake_timeout, deadline) -> Accepted`: waits
//!   until `deadline` for the next client that completes its set-up and the
//!   conduit handshake (each connection gets `handshake_timeout` for that,
//!   counted from its own arrival), and returns it ready to use; `Mismatch`
//!   for a client whose handshake does not match `cfg`, or `TimedOut`
//!   (clients that are dropped, being another user, or gone or silent
//!   during set-up, are not returned: the wait goes on);
//! - `Listener::wait_handles()`, `client_waiting()`,
//!   `handshakes_in_progress()`: what `conduit::wait` and async listeners
//!   watch, and what they ask when it signals (see [`crate::Listener`]);
//! - `Listener::endpoint()`: the socket path or pipe name, for messages;
//! - `connect(name, deadline) -> (send handle, recv handle)`: see
//!   [`crate::connect`] for the waiting rules;
//! - `endpoint(name)`: where a name lives.
//!
//! The handles are owned, close-on-exec / non-inheritable, blocking, and
//! usable from two threads at once (one sending, one receiving).
//!
//! `unsafe` in this crate is confined to this module: the files under
//! `sys/unix/` on Unix, under `sys/windows/` on Windows.

#![allow(unsafe_code)]

#[cfg_attr(unix, path = "unix/mod.rs")]
#[cfg_attr(windows, path = "windows/mod.rs")]
mod imp;

pub use imp::*;

/// What `Listener::accept` found.
#[derive(Debug)]
pub enum Accepted {
    /// A client that completed the handshake: a ready connection.
    Ready(Box<crate::DuplexEnd>),
    /// A client whose handshake does not match ours (`Protocol`).
    Mismatch(conduit_core::Error),
    /// The deadline passed.
    TimedOut,
}
