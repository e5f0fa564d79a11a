//! Platform layer of the queue. Each backend provides:
//!
//! - `pair(capacity) -> (TxEnd, RxEnd)`: a new queue's first ends;
//! - `TxEnd::send(payload, deadline)` (`Timeout` when the queue stayed full,
//!   `Disconnected` when every consumer is gone), `receivers_gone()`;
//! - `RxEnd::recv(max, deadline)` (`max`: the largest payload allowed) (`Timeout`, or `Disconnected` once the
//!   queue is empty and every producer is gone), `poll(deadline)`,
//!   `senders_gone()`;
//! - `handles()` / `from_handles(handles)` on both, for handoffs: new OS
//!   handles for the same kernel objects, and the checks that handed ones
//!   are what they claim to be.
//!
//! - feature `tokio`: `RecvWatch` (what an async receiver arms and waits on)
//!   and `SendSlot` (an async sender's write in flight, if the platform
//!   lets one stay in flight: Windows).
//!
//! A deadline of `Some(now)` means "do not wait".

#[cfg(all(unix, not(target_os = "linux")))]
#[path = "unix.rs"]
mod imp;
#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;
/// Linux: the messages go through a shared-memory ring; the sockets of
/// `unix.rs` count the participants and carry doorbells.
#[cfg(target_os = "linux")]
#[path = "unix.rs"]
#[allow(dead_code)]
mod sock;

/// The async glue of the Unix backends (a send is whole or nothing).
#[cfg(all(unix, feature = "tokio"))]
mod whole;

pub(crate) use imp::{pair, RxEnd, TxEnd};
#[cfg(all(windows, feature = "tokio"))]
pub(crate) use imp::{RecvWatch, SendSlot, SendTry};
#[cfg(all(unix, feature = "tokio"))]
pub(crate) use whole::{RecvWatch, SendSlot, SendTry};
