//! Anonymous-pipe transport for [conduit](https://docs.rs/conduit).
//!
//! A one-way channel is one OS pipe; a duplex connection is two. Frames use the
//! stream framing of [`conduit_core::stream`]. Pipes are created close-on-exec
//! (Unix) / non-inheritable (Windows); on Linux the pipe buffer is raised to
//! 1 MiB when the system allows, which lets a fast sender run further ahead.
//!
//! Applications use `conduit::pipe::{channel, duplex}`; this crate gives the
//! byte-level endpoints.

#![deny(unsafe_code)]

use conduit_core::stream::{StreamReceiver, StreamSender};
use conduit_core::transport::sys::{OsStream, StreamKind};
use conduit_core::transport::Package;
use conduit_core::{Error, FrameConfig, Result};

mod sys;

/// The transport's name, as it appears in handoff tokens and `transport()`.
pub const TRANSPORT: &str = "pipe";

conduit_core::describe_transport!(TRANSPORT);

/// A byte-level duplex endpoint: a sender and a receiver over two pipes.
pub type DuplexEnd = (StreamSender, StreamReceiver);

/// Creates a one-way byte-level channel over one pipe.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameConfig, FrameReceiver, FrameSender};
/// let (mut tx, mut rx) = conduit_pipe::channel(FrameConfig::default()).unwrap();
/// tx.send_frame(b"hi").unwrap();
/// let mut buf = Vec::new();
/// rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"hi");
/// ```
pub fn channel(cfg: FrameConfig) -> Result<(StreamSender, StreamReceiver)> {
    let (read, write) = sys::pipe().map_err(|e| Error::from_io("cannot create a pipe", e))?;
    Ok((
        StreamSender::new(OsStream::new(write, StreamKind::Pipe), TRANSPORT, cfg),
        StreamReceiver::new(OsStream::new(read, StreamKind::Pipe), TRANSPORT, cfg),
    ))
}

/// Creates a duplex byte-level connection over two pipes.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameConfig, FrameReceiver, FrameSender};
/// let ((mut a_tx, _a_rx), (_b_tx, mut b_rx)) = conduit_pipe::duplex(FrameConfig::default()).unwrap();
/// a_tx.send_frame(b"ping").unwrap();
/// let mut buf = Vec::new();
/// b_rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"ping");
/// ```
pub fn duplex(cfg: FrameConfig) -> Result<(DuplexEnd, DuplexEnd)> {
    let (a_tx, b_rx) = channel(cfg)?;
    let (b_tx, a_rx) = channel(cfg)?;
    Ok(((a_tx, a_rx), (b_tx, b_rx)))
}

/// Rebuilds a sender handed over by `conduit::handoff`.
pub fn import_sender(package: Package) -> Result<StreamSender> {
    StreamSender::import(package, StreamKind::Pipe, TRANSPORT)
}

/// Rebuilds a receiver handed over by `conduit::handoff`.
pub fn import_receiver(package: Package) -> Result<StreamReceiver> {
    StreamReceiver::import(package, StreamKind::Pipe, TRANSPORT)
}
