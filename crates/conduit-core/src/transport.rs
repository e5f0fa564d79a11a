//! What a transport crate provides, for the facade's registry — an
//! **unstable** interface between conduit's own crates, not for
//! applications (it may change in any release).
//!
//! Each transport crate describes itself once, in a `pub const DESCRIPTOR:
//! Descriptor`: its name (as it appears in handoff tokens and
//! `transport()`), how to make an anonymous channel and duplex connection
//! (if it can), and how to rebuild a handed-over sender or receiver. The
//! facade builds one `cfg`-gated table of these descriptors; adding a
//! transport is one crate, one table row and its feature lines (see
//! `docs/architecture.md`).

use crate::channel::{FrameConfig, FrameReceiver, FrameSender};
use crate::error::Result;

pub use crate::handoff::{Halves, Package, Resolver, Role};

/// Endpoints inside the arguments of `conduit::Process::spawn`: the
/// thread-local contexts in which the typed endpoints serialize (moving
/// their halves out) and deserialize.
pub mod spawn_context {
    pub use crate::spawn_context::{
        export_endpoint, export_scope, import_endpoint, import_scope, Exported,
    };
}

/// The platform layer transport crates build on: OS handles, byte streams
/// over them, close-on-exec pipes and socket pairs (see the `sys` module
/// docs in `conduit-core`).
pub mod sys {
    pub use crate::sys::*;
}

/// A boxed byte-level sender.
pub type BoxSender = Box<dyn FrameSender>;
/// A boxed byte-level receiver.
pub type BoxReceiver = Box<dyn FrameReceiver>;
/// One end of a boxed byte-level duplex connection.
pub type BoxDuplexEnd = (BoxSender, BoxReceiver);

/// How a transport makes anonymous pairs of endpoints (pipe, socketpair,
/// shm; named endpoints have none).
#[derive(Clone, Copy, Debug)]
pub struct Pairs {
    /// A one-way channel with `cfg`.
    pub channel: fn(FrameConfig) -> Result<(BoxSender, BoxReceiver)>,
    /// A two-way connection with `cfg`.
    pub duplex: fn(FrameConfig) -> Result<(BoxDuplexEnd, BoxDuplexEnd)>,
}

/// A transport's description of itself.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// The name in handoff tokens, `transport()` and the cargo feature.
    pub name: &'static str,
    /// Anonymous pairs, if the transport makes them.
    pub pairs: Option<Pairs>,
    /// Rebuilds a sender handed over by `conduit::handoff`.
    pub import_sender: fn(Package) -> Result<BoxSender>,
    /// Rebuilds a receiver handed over by `conduit::handoff`.
    pub import_receiver: fn(Package) -> Result<BoxReceiver>,
}

/// Boxes the halves of a concrete channel (for [`Pairs::channel`]).
pub fn boxed_channel<S: FrameSender, R: FrameReceiver>(pair: (S, R)) -> (BoxSender, BoxReceiver) {
    (Box::new(pair.0), Box::new(pair.1))
}

/// Boxes both ends of a concrete duplex connection (for [`Pairs::duplex`]).
pub fn boxed_duplex<S: FrameSender, R: FrameReceiver>(
    ends: ((S, R), (S, R)),
) -> (BoxDuplexEnd, BoxDuplexEnd) {
    (boxed_channel(ends.0), boxed_channel(ends.1))
}

/// Declares a transport crate's `pub const DESCRIPTOR` from its own
/// functions in scope: `channel(FrameConfig)`, `duplex(FrameConfig)` (unless
/// `no_pairs`), `import_sender(Package)` and `import_receiver(Package)`.
///
/// ```ignore
/// conduit_core::describe_transport!(TRANSPORT);            // pipe, socketpair
/// conduit_core::describe_transport!(TRANSPORT, no_pairs);  // named
/// ```
#[macro_export]
#[doc(hidden)]
macro_rules! describe_transport {
    ($name:expr) => {
        $crate::describe_transport!($name, pairs: Some($crate::transport::Pairs {
            channel: |cfg| channel(cfg).map($crate::transport::boxed_channel),
            duplex: |cfg| duplex(cfg).map($crate::transport::boxed_duplex),
        }));
    };
    ($name:expr, no_pairs) => {
        $crate::describe_transport!($name, pairs: None);
    };
    ($name:expr, pairs: $pairs:expr) => {
        /// This transport for the facade's registry (an unstable interface,
        /// see `conduit_core::transport`).
        pub const DESCRIPTOR: $crate::transport::Descriptor = $crate::transport::Descriptor {
            name: $name,
            pairs: $pairs,
            import_sender: |p| Ok(Box::new(import_sender(p)?)),
            import_receiver: |p| Ok(Box::new(import_receiver(p)?)),
        };
    };
}
