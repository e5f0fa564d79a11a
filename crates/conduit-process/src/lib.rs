//! Run a Rust function in a child process — Python's
//! `multiprocessing.Process` for Rust. Applications use it through the
//! `conduit` facade: [`conduit::init`], [`conduit::Process`],
//! [`conduit::ProcessBuilder`].
//!
//! [`conduit::init`]: https://docs.rs/conduit/latest/conduit/fn.init.html
//! [`conduit::Process`]: https://docs.rs/conduit/latest/conduit/struct.Process.html
//! [`conduit::ProcessBuilder`]: https://docs.rs/conduit/latest/conduit/struct.ProcessBuilder.html
//!
//! ```no_run
//! fn square(n: u64) -> u64 {
//!     n * n
//! }
//!
//! fn main() -> Result<(), conduit::Error> {
//!     conduit::init(); // first line: a spawned child runs `square` here and exits
//!     let mut p = conduit::Process::spawn(square, 7)?;
//!     assert_eq!(p.join()?, 49);
//!     Ok(())
//! }
//! ```
//!
//! # How the child finds the function
//!
//! A child is a fresh `exec` of the parent's executable
//! ([`std::env::current_exe`]) with no arguments; its `main` must call
//! `conduit::init()` first, which sees the control channel handed to it
//! (with `conduit_core::handoff`, so only that child gets it) and runs the
//! target instead of returning.
//!
//! The target `f: F` must be a zero-sized `Fn(A) -> R + Copy` (a `fn` item
//! or a closure that captures nothing); anything else is refused at compile
//! time. The parent sends over the control channel:
//!
//! - the address of `trampoline::<F, A, R>` (one monomorphized function per
//!   target, which decodes `A`, calls `F`, encodes `R`) as an **offset** from
//!   an anchor function of this crate (offsets inside one image survive
//!   ASLR);
//! - the **identity of the running executable** (Unix: device, inode, size,
//!   modification time of `/proc/self/exe` or `current_exe()`; Windows:
//!   size, creation and write times) and the offset of a **second known
//!   function** from the anchor;
//! - `std::any::type_name` of `F`, `A` and `R`;
//! - the CBOR-encoded arguments.
//!
//! The child follows the offset only after its own executable identity and
//! second-function offset equal the parent's, so a rebuilt or replaced
//! binary is a clear [`ErrorKind::Protocol`] error, never a jump to a wrong
//! address. Inside the trampoline (proven to be the parent's function), the
//! type names are compared before anything is decoded.
//!
//! Limits: the anchor and the trampoline must be in the same image, which
//! holds when crates are linked statically (Rust's default); a `dylib`
//! crate or `-C prefer-dynamic` between them is not supported. The target
//! runs in a new process, not a fork: statics start fresh, and the child
//! gets no command-line arguments (`main` must not need any before
//! `conduit::init()`).
//!
//! # Endpoints inside the arguments
//!
//! `Sender`, `Receiver` and `Duplex` (of every transport) may sit anywhere
//! inside `args`: fields, `Vec` elements, `Option`s. While `spawn` encodes
//! the arguments, a thread-local *spawn context* is active
//! (`conduit_core::transport::spawn_context`): serializing an endpoint moves
//! its byte-level halves into the context (the value left in the parent
//! answers `Disconnected`) and writes its index; each collected endpoint is
//! then handed to this one child (exact inheritance: no other child, even
//! one spawned at the same time from another thread, gets its handles):
//! on Unix with `handoff` to the child's `Command`; on Windows by pushing
//! the handles into the child once it is spawned (`DuplicateHandle` into
//! its process with `DUPLICATE_CLOSE_SOURCE`, as Python's multiprocessing
//! does) and sending their values in the request. Either way the parent
//! keeps no copy: a child that exits before adopting them (its `main` does
//! not call `conduit::init()`, or it dies early) releases them, and the
//! parent's ends see `Disconnected`. The child adopts them before decoding
//! and the endpoints' `Deserialize` takes them back by index. Serializing
//! an endpoint outside
//! `spawn` (to JSON, to a file) fails with an error instead of copying it.
//!
//! # Tests
//!
//! A test binary's `main` is libtest's, which does not call
//! `conduit::init()`. Put process tests in a test target with
//! `harness = false` whose `main` calls `conduit::init()` first and then runs
//! the tests (with `libtest-mimic`, which works under `cargo test` and
//! `cargo nextest`); see `tests/process.rs` in the conduit repository.
//!
//! # Errors
//!
//! `join` fails with [`ErrorKind::ChildFailed`] when the target panicked
//! (message and location of the panic), the child exited or was killed
//! before returning (exit code, or signal name on Unix), or never ran the
//! target (its `main` does not call `conduit::init()` first); with
//! [`ErrorKind::Decode`] when the result does not decode as `R`.
//!
//! [`ErrorKind::Protocol`]: conduit_core::ErrorKind::Protocol
//! [`ErrorKind::ChildFailed`]: conduit_core::ErrorKind::ChildFailed
//! [`ErrorKind::Decode`]: conduit_core::ErrorKind::Decode

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]

use std::sync::OnceLock;

use conduit_core::handoff::Resolver;
use conduit_core::transport::BoxDuplexEnd;
use conduit_core::{Error, Result};

mod builder;
mod child;
mod pool;
mod process;
mod request;
mod sys;

pub use builder::ProcessBuilder;
pub use pool::{OnWorkerDeath, Pool, PoolBuilder, PoolIter, PoolTask};
pub use process::Process;
pub(crate) use request::{
    encode, trampoline, Ended, FailKind, FromChild, Names, Request, Trampoline,
};

/// The handoff key of the control channel.
pub(crate) const CTL_KEY: &str = "conduit_process";
/// The handoff key of the `i`-th endpoint inside the arguments (Unix; on
/// Windows they are pushed into the child, see `sys`).
#[cfg(unix)]
pub(crate) fn endpoint_key(i: usize) -> String {
    format!("conduit_process_{i}")
}

/// Bumped when [`Request`] or [`FromChild`] change.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// What the facade supplies: how to make the control channel and how to
/// rebuild handed-over endpoints. Not a stable interface.
#[doc(hidden)]
pub struct Runtime {
    /// Rebuilds handed-over endpoints (the facade's transport registry).
    pub resolver: &'static (dyn Resolver + Sync),
    /// Makes a duplex connection for the control channel.
    pub duplex: fn() -> Result<(BoxDuplexEnd, BoxDuplexEnd)>,
    /// Makes the link between a pool and one of its workers (the fastest
    /// duplex transport compiled in).
    pub link_duplex: fn() -> Result<(BoxDuplexEnd, BoxDuplexEnd)>,
}

static RUNTIME: OnceLock<&'static Runtime> = OnceLock::new();

/// What `conduit::init()` does: in a child started by [`Process::spawn`],
/// runs the target and exits; elsewhere records `rt` and returns at once.
#[doc(hidden)]
pub fn init_with(rt: &'static Runtime) {
    let rt = *RUNTIME.get_or_init(|| rt);
    if std::env::var_os(conduit_core::handoff::env_var(CTL_KEY)).is_some() {
        child::run(rt);
    }
}

pub(crate) fn runtime() -> Result<&'static Runtime> {
    RUNTIME.get().copied().ok_or_else(|| {
        Error::invalid_input(
            "conduit::init() has not run in this process: call it as the first line of main \
             (a spawned child starts there); in tests use a harness = false test target whose \
             main calls conduit::init() first",
        )
    })
}
