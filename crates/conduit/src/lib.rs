//! Typed, fast message passing between OS processes — Python's
//! `multiprocessing.Pipe` for Rust, with a choice of transport.
//!
//! # Hello, child process
//!
//! ```no_run
//! use std::process::Command;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // parent
//! let (tx, rx) = conduit::channel::<String>()?;
//! let mut cmd = Command::new(std::env::current_exe()?);
//! conduit::handoff(&mut cmd, "greetings", rx)?;   // only this child gets it
//! let mut child = cmd.spawn()?;
//! tx.send(&"hello".to_string())?;
//! drop(tx);                                          // the child's iter() ends
//! child.wait()?;
//!
//! // child (same or another binary)
//! let rx: conduit::Receiver<String> = conduit::adopt("greetings")?;
//! for msg in rx.iter() {
//!     println!("got {}", msg?);
//! }
//! # Ok(()) }
//! ```
//!
//! # Disconnection
//!
//! When the other side closes its end, exits or is killed, every blocked
//! `recv` or `send` returns an error of kind [`ErrorKind::Disconnected`]; it
//! never hangs. Messages sent before are still delivered first.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, rx) = conduit::channel::<u32>()?;
//! tx.send(&1)?;
//! drop(tx);
//! assert_eq!(rx.recv()?, 1);
//! assert!(rx.recv().unwrap_err().is_disconnected());
//! # Ok(()) }
//! ```
//!
//! # Blocking, timeouts and polling
//!
//! [`Receiver::recv`] blocks; [`Receiver::recv_timeout`] fails with
//! [`ErrorKind::Timeout`]; [`Receiver::try_recv`] fails with
//! [`ErrorKind::Empty`]; [`Receiver::poll`] tells whether a message is ready.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let (a, b) = conduit::duplex::<u8, u8>()?;
//! assert!(!b.poll(Duration::from_millis(1))?);
//! a.send(&9)?;
//! assert_eq!(b.recv_timeout(Duration::from_secs(5))?, 9);
//! assert!(a.try_recv().is_err());
//! # Ok(()) }
//! ```
//!
//! # Choosing a transport
//!
//! Each transport is a module behind a cargo feature, with the same shape:
//! `channel::<T>()`, `duplex::<S, R>()`, `channel_with(cfg)`, `duplex_with(cfg)`.
//! [`channel`] and [`duplex`] pick the best enabled one; [`Transport`] lets a
//! program choose at run time.
//!
//! | feature | module | what it is |
//! |---|---|---|
//! | `pipe` (default) | [`pipe`] | anonymous pipes; duplex = two pipes |
//! | `socketpair` (default) | [`socketpair`] | `socketpair(2)` on Unix; a pipe pair on Windows |
//! | `named` | [`named`] | named endpoints for unrelated processes: Unix domain sockets in a private per-user directory; Windows named pipes |
//! | `shm` | [`shm`] | shared-memory ring buffers with blocking wake-ups; config [`shm::ShmConfig`] |
//! | `all-transports` | | every transport above |
//! | `queue` (default) | [`queue`] | many-producer, many-consumer queue across processes ([`QueueSender`], [`QueueReceiver`]) |
//! | `tokio` | | async endpoints: `into_async()` on every endpoint, `Process::join_async`, `named::connect_async` (Unix; `Unsupported` on Windows for now) |
//!
//! [`wait`] waits on many receivers, queue receivers, processes and named
//! listeners at once (Python's `multiprocessing.connection.wait`).
//!
//! Messages are encoded with CBOR (serde + ciborium). A `Vec<u8>` message
//! travels as raw bytes; byte fields in your own types should be marked
//! `#[serde(with = "conduit::serde_bytes")]`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate docs link to items of optional features (`shm`, `named`,
// `postcard`); they resolve when those are on, as on docs.rs
// (all-features). Without them a link is left as text, not an error.
#![cfg_attr(
    not(all(feature = "shm", feature = "named", feature = "postcard")),
    allow(rustdoc::broken_intra_doc_links)
)]

use std::process::Command;

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::transport::{BoxReceiver, BoxSender, Descriptor, Package, Resolver};
#[cfg(feature = "postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "postcard")))]
pub use conduit_core::Postcard;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use conduit_core::TestHooks;
pub use conduit_core::{
    serde_bytes, Cbor, Codec, Duplex, Endpoint, Error, ErrorKind, FrameConfig, FrameReceiver,
    FrameSender, Iter, Receiver, Result, Sender, DEFAULT_MAX_FRAME,
};
pub use conduit_core::{wait, WaitFor, WaitHandle, WaitSource, Waitable};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use conduit_core::{AsyncDuplex, AsyncReceiver, AsyncSender};

mod registry;
pub use registry::Transport;

mod process;
pub use conduit_process::{
    OnWorkerDeath, Pool, PoolBuilder, PoolIter, PoolTask, Process, ProcessBuilder,
};
pub use process::init;

/// A many-producer, many-consumer queue across processes, safe against
/// crashes (Python's `multiprocessing.Queue` and `JoinableQueue`; feature
/// `queue`, on by default). See [`queue`] and the design notes of
/// [`conduit_queue`].
#[cfg(feature = "queue")]
#[cfg_attr(docsrs, doc(cfg(feature = "queue")))]
pub use conduit_queue::{queue, queue_with, QueueConfig, QueueReceiver, QueueSender};
/// The async queue ends (features `queue` and `tokio`).
#[cfg(all(feature = "queue", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "queue", feature = "tokio"))))]
pub use conduit_queue::{AsyncQueueReceiver, AsyncQueueSender};

/// Wraps byte-level endpoints into a typed one-way channel.
fn typed_channel<T>(tx: BoxSender, rx: BoxReceiver) -> (Sender<T>, Receiver<T>)
where
    T: Serialize + DeserializeOwned + 'static,
{
    (Sender::from_raw(tx), Receiver::from_raw(rx))
}

/// Wraps a byte-level sender and receiver into one typed end of a connection.
fn typed_duplex<S, R>(tx: BoxSender, rx: BoxReceiver) -> Duplex<S, R>
where
    S: Serialize + 'static,
    R: DeserializeOwned + 'static,
{
    Duplex::from_parts(Sender::from_raw(tx), Receiver::from_raw(rx))
}

/// Declares a transport module with the common constructor shape.
macro_rules! transport_module {
    ($feature:literal, $name:ident, $krate:ident, $doc:literal) => {
        #[doc = $doc]
        #[cfg(feature = $feature)]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        pub mod $name {
            use super::*;

            /// Creates a one-way channel with the default [`FrameConfig`].
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let (tx, rx) = conduit::", stringify!($name), "::channel::<u32>().unwrap();")]
            /// tx.send(&42).unwrap();
            /// assert_eq!(rx.recv().unwrap(), 42);
            /// ```
            pub fn channel<T: Serialize + DeserializeOwned + 'static>() -> Result<(Sender<T>, Receiver<T>)> {
                channel_with(FrameConfig::default())
            }

            /// Creates a one-way channel with `cfg`.
            ///
            /// # Examples
            ///
            /// ```
            /// let cfg = conduit::FrameConfig::default().with_max_frame(1024);
            #[doc = concat!("let (tx, _rx) = conduit::", stringify!($name), "::channel_with::<Vec<u8>>(cfg).unwrap();")]
            /// let err = tx.send(&vec![0; 2048]).unwrap_err();
            /// assert_eq!(err.kind(), conduit::ErrorKind::TooLarge);
            /// ```
            pub fn channel_with<T: Serialize + DeserializeOwned + 'static>(
                cfg: FrameConfig,
            ) -> Result<(Sender<T>, Receiver<T>)> {
                let (tx, rx) = conduit_core::transport::boxed_channel($krate::channel(cfg)?);
                Ok(typed_channel(tx, rx))
            }

            /// Creates a two-way connection with the default [`FrameConfig`].
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let (a, b) = conduit::", stringify!($name), "::duplex::<String, u32>().unwrap();")]
            /// a.send(&"hi".to_string()).unwrap();
            /// assert_eq!(b.recv().unwrap(), "hi");
            /// b.send(&2).unwrap();
            /// assert_eq!(a.recv().unwrap(), 2);
            /// ```
            pub fn duplex<S, R>() -> Result<(Duplex<S, R>, Duplex<R, S>)>
            where
                S: Serialize + DeserializeOwned + 'static,
                R: Serialize + DeserializeOwned + 'static,
            {
                duplex_with(FrameConfig::default())
            }

            /// Creates a two-way connection with `cfg`.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let (a, b) = conduit::", stringify!($name), "::duplex_with::<u8, u8>(conduit::FrameConfig::default()).unwrap();")]
            /// a.send(&1).unwrap();
            /// assert_eq!(b.recv().unwrap(), 1);
            /// ```
            pub fn duplex_with<S, R>(cfg: FrameConfig) -> Result<(Duplex<S, R>, Duplex<R, S>)>
            where
                S: Serialize + DeserializeOwned + 'static,
                R: Serialize + DeserializeOwned + 'static,
            {
                let ((a_tx, a_rx), (b_tx, b_rx)) =
                    conduit_core::transport::boxed_duplex($krate::duplex(cfg)?);
                Ok((typed_duplex(a_tx, a_rx), typed_duplex(b_tx, b_rx)))
            }
        }
    };
}

transport_module!(
    "pipe",
    pipe,
    conduit_pipe,
    "Anonymous pipes (feature `pipe`): a duplex connection is two pipes."
);
transport_module!(
    "socketpair",
    socketpair,
    conduit_socketpair,
    "Connected socket pairs (feature `socketpair`): `socketpair(2)` on Unix, a pipe pair on Windows."
);

#[cfg(feature = "named")]
#[cfg_attr(docsrs, doc(cfg(feature = "named")))]
pub mod named;

#[cfg(feature = "shm")]
#[cfg_attr(docsrs, doc(cfg(feature = "shm")))]
pub mod shm;

/// Creates a one-way channel on the best enabled transport.
///
/// # Examples
///
/// ```
/// let (tx, rx) = conduit::channel::<Vec<u8>>().unwrap();
/// tx.send(&vec![1, 2, 3]).unwrap();
/// assert_eq!(rx.recv().unwrap(), [1, 2, 3]);
/// ```
pub fn channel<T: Serialize + DeserializeOwned + 'static>() -> Result<(Sender<T>, Receiver<T>)> {
    Transport::best_channel()?.channel()
}

/// Creates a two-way connection on the best enabled transport.
///
/// # Examples
///
/// ```
/// let (a, b) = conduit::duplex::<u32, String>().unwrap();
/// a.send(&5).unwrap();
/// b.send(&format!("got {}", b.recv().unwrap())).unwrap();
/// assert_eq!(a.recv().unwrap(), "got 5");
/// ```
pub fn duplex<S, R>() -> Result<(Duplex<S, R>, Duplex<R, S>)>
where
    S: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    Transport::best_duplex()?.duplex()
}

/// Hands `endpoint` to the child process that `cmd` will spawn, under `key`
/// (1–64 ASCII letters, digits or `_`). The child calls [`adopt`] with the
/// same key.
///
/// Only that child gets the endpoint's handles: they are never inheritable by
/// other children spawned at the same time. The parent's copy is closed (on
/// Unix right away, on Windows when the child adopts it), so when the child
/// exits the parent's side sees [`ErrorKind::Disconnected`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = conduit::channel::<u32>()?;
/// let mut cmd = std::process::Command::new("true");
/// conduit::handoff(&mut cmd, "numbers", rx)?;
/// assert!(cmd.get_envs().any(|(k, _)| k == "CONDUIT_HANDOFF_numbers"));
/// # drop(tx); Ok(()) }
/// ```
pub fn handoff<E: Endpoint>(cmd: &mut Command, key: &str, endpoint: E) -> Result<()> {
    conduit_core::handoff::handoff(cmd, key, endpoint)
}

/// Adopts the endpoint the parent handed to this process under `key` with
/// [`handoff`]. The transport is read from the token; if it is not compiled
/// into this binary the error is [`ErrorKind::Unsupported`] and names the
/// cargo feature to enable.
///
/// # Examples
///
/// ```
/// let err = conduit::adopt::<conduit::Receiver<u32>>("not_handed").unwrap_err();
/// assert_eq!(err.kind(), conduit::ErrorKind::InvalidInput);
/// ```
pub fn adopt<E: Endpoint>(key: &str) -> Result<E> {
    conduit_core::handoff::adopt_with(key, &Registry)
}

/// Rebuilds handed-over halves with the registry's import functions.
struct Registry;

impl Resolver for Registry {
    fn check(&self, transport: &str) -> Result<()> {
        registry::descriptor(transport).map(|_| ())
    }

    fn sender(&self, package: Package) -> Result<Box<dyn FrameSender>> {
        let d: &Descriptor = registry::descriptor(&package.transport)?;
        (d.import_sender)(package)
    }

    fn receiver(&self, package: Package) -> Result<Box<dyn FrameReceiver>> {
        let d: &Descriptor = registry::descriptor(&package.transport)?;
        (d.import_receiver)(package)
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
