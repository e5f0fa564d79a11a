//! Platform layer of `conduit-named`. Every backend provides:
//!
//! - `KIND`: the [`StreamKind`](conduit_core::sys::StreamKind) of a connection's handles;
//! - `Listener::bind(name)`: claims the (already validated) name for the
//!   current user, failing with an `AddrInUse` source when a live server
//!   holds it; dropping the listener releases the name;
//! - `Listener::accept(deadline) -> Accepted`: waits for the next client
//!   until `deadline` and returns its connection as a sending and a receiving
//!   handle, `Skip` for a client that was dropped (another user, gone during
//!   set-up), or `TimedOut`; the per-connection set-up is bounded by
//!   `crate::HANDSHAKE_TIMEOUT`;
//! - `Listener::endpoint()`: the socket path or pipe name, for messages;
//! - `connect(name, deadline) -> (send handle, recv handle)`: see
//!   [`crate::connect`] for the waiting rules;
//! - `endpoint(name)`: where a name lives.
//!
//! The handles are owned, close-on-exec / non-inheritable, blocking, and
//! usable from two threads at once (one sending, one receiving).
//!
//! `unsafe` in this crate is confined to these files.

#![allow(unsafe_code)]

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod imp;

pub use imp::*;

/// What `Listener::accept` found.
#[derive(Debug)]
pub enum Accepted {
    /// A client, set up and ready for the handshake.
    Conn {
        /// The handle this side sends on.
        send: conduit_core::sys::OsHandle,
        /// The handle this side receives on.
        recv: conduit_core::sys::OsHandle,
    },
    /// A client that was dropped during set-up; keep waiting.
    Skip,
    /// The deadline passed.
    TimedOut,
}
