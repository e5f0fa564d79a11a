//! The core of [conduit](https://docs.rs/conduit): byte-level channel traits,
//! stream framing with its handshake, codecs, typed endpoints, errors and the
//! handoff of endpoints to child processes.
//!
//! Applications use the `conduit` facade; transport crates build on this one.
//!
//! `unsafe` code is denied here except in the `sys` module, which holds the
//! few OS calls that take ownership of handed-over descriptors and handles,
//! and `handoff::adopt_pushed` (Windows), an `unsafe fn` because the
//! handle values it takes as owned can only be vouched for by its caller.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channel;
pub mod codec;
pub mod error;
pub mod handoff;
mod spawn_context;
pub mod stream;
/// Old path of [`transport::sys`], kept hidden for the crates not moved yet.
#[doc(hidden)]
pub mod sys;
pub mod transport;
mod typed;
#[cfg(feature = "tokio")]
mod typed_async;
mod wait;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub use channel::TestHooks;
pub use channel::{FrameConfig, FrameReceiver, FrameSender, DEFAULT_MAX_FRAME};
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Cbor, Codec};
pub use error::{Error, ErrorKind, Result};
pub use handoff::Endpoint;
pub use typed::{deadline_after, Duplex, Iter, Receiver, Sender};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use typed_async::{cooperative, stream_item, AsyncDuplex, AsyncReceiver, AsyncSender};
pub use wait::{wait, WaitFor, WaitHandle, WaitSource, Waitable};

/// Re-exported so that message types can mark byte fields
/// `#[serde(with = "conduit::serde_bytes")]`.
pub use serde_bytes;
