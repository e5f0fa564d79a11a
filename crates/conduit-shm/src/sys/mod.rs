//! Platform layer of `conduit-shm`. Every backend provides:
//!
//! - `Segment`: a shared-memory object mapped read-write into this process,
//!   page-aligned. `Segment::create(len)` makes a new zero-filled one that is
//!   reachable only through its handle (no global name, or a random one that
//!   is removed at once), accessible to the current user only and not
//!   inheritable. `Segment::open(handle, len)` maps a handed-over one and fails
//!   with `Protocol` when it is smaller than `len` or could shrink under us
//!   (a shrinking object would turn our loads into `SIGBUS`).
//!   `as_ptr()`, `len()`, `clone_handle()`.
//! - `Link`: what one side of a ring needs besides the memory.
//!   `Link::pair()` gives the sender's and the receiver's link;
//!   `wait(word, expected, timeout)` parks until woken, until `word` no longer
//!   holds `expected`, or until `timeout` (returning `true` on timeout;
//!   spurious returns are allowed); `wake(word)` wakes the peer parked on
//!   `word` (a wake-up sent before the peer parks must not be lost: either the
//!   OS compares `word` atomically, like a futex, or the wake-up latches, like
//!   an auto-reset event); `peer_alive()` tells whether the other side's
//!   process still holds its link; `into_handles()`, `from_handles(handles)`
//!   and `HANDLES` (how many handles a link is made of) serve the handoff.
//!
//! Apart from `crate::mem`, this is the only place with `unsafe` code.

#![allow(unsafe_code)]

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod imp;

pub use imp::{Link, Segment};
