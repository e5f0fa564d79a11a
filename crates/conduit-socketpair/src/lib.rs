//! Socket-pair transport for [conduit](https://docs.rs/conduit).
//!
//! On Unix a connection is one `socketpair(AF_UNIX, SOCK_STREAM)`; a duplex
//! end holds the socket twice (a sending and a receiving descriptor of the same
//! socket) so that it can be split. Sends use `MSG_NOSIGNAL` where available.
//!
//! On Windows, where `socketpair` does not exist and AF_UNIX sockets need a
//! path in the file system (and are missing under Wine), a connection is made
//! of two anonymous pipes: the same guarantees (ordered, reliable, peer death
//! seen as end of stream, handles non-inheritable), different kernel object.

#![deny(unsafe_code)]

use conduit_core::stream::{StreamReceiver, StreamSender};
use conduit_core::transport::sys::OsStream;
use conduit_core::transport::Package;
use conduit_core::{Error, FrameConfig, Result};

mod sys;

/// The transport's name, as it appears in handoff tokens and `transport()`.
pub const TRANSPORT: &str = "socketpair";

conduit_core::describe_transport!(TRANSPORT);

/// A byte-level duplex endpoint.
pub type DuplexEnd = (StreamSender, StreamReceiver);

fn end(
    send: conduit_core::transport::sys::OsHandle,
    recv: conduit_core::transport::sys::OsHandle,
    cfg: FrameConfig,
) -> DuplexEnd {
    (
        StreamSender::new(OsStream::new(send, sys::KIND), TRANSPORT, cfg),
        StreamReceiver::new(OsStream::new(recv, sys::KIND), TRANSPORT, cfg),
    )
}

/// Creates a duplex byte-level connection.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameConfig, FrameReceiver, FrameSender};
/// let ((mut a_tx, _a_rx), (_b_tx, mut b_rx)) = conduit_socketpair::duplex(FrameConfig::default()).unwrap();
/// a_tx.send_frame(b"ping").unwrap();
/// let mut buf = Vec::new();
/// b_rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"ping");
/// ```
pub fn duplex(cfg: FrameConfig) -> Result<(DuplexEnd, DuplexEnd)> {
    let ((a_send, a_recv), (b_send, b_recv)) =
        sys::pair().map_err(|e| Error::from_io("cannot create a socket pair", e))?;
    Ok((end(a_send, a_recv, cfg), end(b_send, b_recv, cfg)))
}

/// Creates a one-way byte-level channel.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameConfig, FrameReceiver, FrameSender};
/// let (mut tx, mut rx) = conduit_socketpair::channel(FrameConfig::default()).unwrap();
/// tx.send_frame(b"hi").unwrap();
/// let mut buf = Vec::new();
/// rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"hi");
/// ```
pub fn channel(cfg: FrameConfig) -> Result<(StreamSender, StreamReceiver)> {
    let ((a_send, _a_recv), (_b_send, b_recv)) =
        sys::pair().map_err(|e| Error::from_io("cannot create a socket pair", e))?;
    Ok((
        StreamSender::new(OsStream::new(a_send, sys::KIND), TRANSPORT, cfg),
        StreamReceiver::new(OsStream::new(b_recv, sys::KIND), TRANSPORT, cfg),
    ))
}

/// Rebuilds a sender handed over by `conduit::handoff`.
pub fn import_sender(package: Package) -> Result<StreamSender> {
    StreamSender::import(package, sys::KIND, TRANSPORT)
}

/// Rebuilds a receiver handed over by `conduit::handoff`.
pub fn import_receiver(package: Package) -> Result<StreamReceiver> {
    StreamReceiver::import(package, sys::KIND, TRANSPORT)
}
