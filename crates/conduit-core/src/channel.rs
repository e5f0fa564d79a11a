//! The byte-level channel traits every transport implements.
//!
//! A transport endpoint moves whole frames: [`FrameSender::send_frame`] takes a
//! `&[u8]`, [`FrameReceiver::recv_frame`] fills a `Vec<u8>`. Receiving blocks
//! until a frame, the deadline, or peer death ([`ErrorKind::Disconnected`]).
//! A duplex endpoint is simply a sender and a receiver that belong together;
//! splitting it hands them out separately.
//!
//! Endpoints are handed to child processes by [`FrameSender::export`] /
//! [`FrameReceiver::export`], which turn them into a [`Package`] of OS handles
//! plus a few numbers, and by a transport-specific import function on the other
//! side (the facade's `adopt` picks it by the transport name in the package).
//!
//! [`ErrorKind::Disconnected`]: crate::ErrorKind::Disconnected

use std::time::{Duration, Instant};

use crate::error::Result;
#[cfg(feature = "testing")]
use crate::error::{Error, ErrorKind};
use crate::handoff::Package;
use crate::wait::{WaitFor, WaitHandle};

/// Hooks for conformance tests that play a misbehaving peer (feature
/// `testing`, enabled only by the test harness): not part of the supported
/// API, hidden, and may change in any release.
///
/// Reach them through [`FrameSender::test_hooks`] /
/// [`FrameReceiver::test_hooks`], or call them on a `dyn FrameSender` /
/// `dyn FrameReceiver` directly (this trait is implemented for both).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub trait TestHooks {
    /// Writes `bytes` to the underlying channel without framing or
    /// handshake (shm: copies them into the ring at the tail and publishes
    /// them).
    fn send_unframed(&mut self, bytes: &[u8]) -> Result<()> {
        let _ = bytes;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this endpoint cannot write unframed bytes",
        ))
    }

    /// Overwrites `bytes.len()` bytes of the transport's shared memory at
    /// byte `offset` of the segment, bypassing every rule of the protocol,
    /// and returns the segment's length (poke no bytes to only learn it).
    /// Transports without shared memory fail with `Unsupported`.
    fn poke_shared(&mut self, offset: u64, bytes: &[u8]) -> Result<u64> {
        let _ = (offset, bytes);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this transport has no shared memory to poke",
        ))
    }
}

#[cfg(feature = "testing")]
fn no_hooks() -> Error {
    Error::new(ErrorKind::Unsupported, "this endpoint has no test hooks")
}

#[cfg(feature = "testing")]
impl TestHooks for dyn FrameSender {
    fn send_unframed(&mut self, bytes: &[u8]) -> Result<()> {
        self.test_hooks().ok_or_else(no_hooks)?.send_unframed(bytes)
    }

    fn poke_shared(&mut self, offset: u64, bytes: &[u8]) -> Result<u64> {
        self.test_hooks()
            .ok_or_else(no_hooks)?
            .poke_shared(offset, bytes)
    }
}

#[cfg(feature = "testing")]
impl TestHooks for dyn FrameReceiver {
    fn poke_shared(&mut self, offset: u64, bytes: &[u8]) -> Result<u64> {
        self.test_hooks()
            .ok_or_else(no_hooks)?
            .poke_shared(offset, bytes)
    }
}

/// The sending half of a byte-level channel.
pub trait FrameSender: Send + 'static {
    /// Sends one frame, blocking while the channel is full. A frame larger than
    /// the channel's maximum fails with `TooLarge` and leaves the channel usable.
    fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.send_frame_until(frame, None)
    }

    /// Sends one frame, waiting for room until `deadline` (`None`: as long
    /// as it takes; a deadline in the past makes this a non-blocking
    /// attempt). When the deadline passes before any of the frame was sent
    /// the error is `Full` and nothing was sent. A frame is never sent in
    /// part: once its first byte is in the channel, the rest follows even
    /// past the deadline (the receiver would otherwise see a broken frame).
    fn send_frame_until(&mut self, frame: &[u8], deadline: Option<Instant>) -> Result<()>;

    /// Finishes a frame that a deadline send left partly written (see
    /// [`send_frame_until`](Self::send_frame_until)), waiting for room until
    /// `deadline`; `Full` when the rest still does not fit then.
    fn flush_until(&mut self, deadline: Option<Instant>) -> Result<()> {
        let _ = deadline;
        Ok(())
    }

    /// How long an async sender may spin on a full channel before it
    /// waits on the reactor (shm: a short spin saves a doorbell round trip
    /// through the kernel, as the blocking send's spin saves a park). Zero:
    /// no spinning.
    fn spin_hint(&self) -> Duration {
        Duration::ZERO
    }

    /// For async senders: asks to be told (through
    /// [`send_wait_handles`](Self::send_wait_handles)) when room may have
    /// appeared, until [`send_wait_disarm`](Self::send_wait_disarm) (shm:
    /// the receiver rings a doorbell). A send attempt must follow before
    /// waiting.
    fn send_wait_arm(&mut self) {}

    /// Ends what [`send_wait_arm`](Self::send_wait_arm) started.
    fn send_wait_disarm(&mut self) {}

    /// The handles that signal room (or a gone peer), and what to wait for
    /// on each. Pushes nothing when the endpoint cannot be waited on.
    fn send_wait_handles<'a>(&'a self, out: &mut Vec<(WaitHandle<'a>, WaitFor)>) {
        let _ = out;
    }

    /// The transport's name (`"pipe"`, `"socketpair"`, ...).
    fn transport(&self) -> &'static str;

    /// The codec id this half was made for (its handshake's), when the
    /// transport records one; the typed endpoints check it when they are
    /// built from adopted halves.
    fn codec(&self) -> Option<u8> {
        None
    }

    /// Turns the endpoint into handles and parameters for a child process.
    fn export(self: Box<Self>) -> Result<Package>;

    /// The test hooks (feature `testing`; see [`TestHooks`]).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    fn test_hooks(&mut self) -> Option<&mut dyn TestHooks> {
        None
    }
}

/// The receiving half of a byte-level channel.
pub trait FrameReceiver: Send + 'static {
    /// Receives one frame into `out` (replacing its contents). Blocks until a
    /// frame is complete or `deadline` passes (`Timeout`); a deadline in the
    /// past makes this a non-blocking attempt.
    ///
    /// The default copies the frame [`recv_with`](Self::recv_with) lends;
    /// transports that can hand over their own buffer instead override it.
    fn recv_frame(&mut self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        self.recv_with(deadline, &mut |frame| {
            out.clear();
            out.extend_from_slice(frame);
        })
    }

    /// Receives one frame and lends it to `f` in place, without copying it out
    /// of the channel's buffer when the transport allows.
    fn recv_with(&mut self, deadline: Option<Instant>, f: &mut dyn FnMut(&[u8])) -> Result<()>;

    /// True when a whole frame is ready to be received; waits for one until
    /// `deadline` (`None`: as long as it takes). Fails with `Disconnected` when
    /// the peer is gone and nothing is left to read.
    fn poll_frame(&mut self, deadline: Option<Instant>) -> Result<bool>;

    /// Prepares a wait on [`wait_handles`](Self::wait_handles) (for
    /// `conduit::wait` and async receivers) and says whether a receive would
    /// not block now: a whole frame is ready, or the channel is closed (the
    /// next receive reports it). Never blocks.
    ///
    /// Transports that must be asked to signal a descriptor (shm: the
    /// sender rings a doorbell only while the receiver is registered) start
    /// asking here, until [`wait_disarm`](Self::wait_disarm). Calling it again
    /// after the handles turned readable consumes what signalled them.
    fn wait_arm(&mut self) -> Result<bool> {
        self.poll_frame(Some(Instant::now()))
    }

    /// How long an async receiver may spin on an empty channel before it
    /// waits on the reactor (see [`FrameSender::spin_hint`]).
    fn spin_hint(&self) -> Duration {
        Duration::ZERO
    }

    /// Ends what [`wait_arm`](Self::wait_arm) started (shm: the sender stops
    /// ringing the doorbell).
    fn wait_disarm(&mut self) {}

    /// The descriptors (Unix) or handles (Windows) that turn readable or
    /// signalled when [`wait_arm`](Self::wait_arm) may have something new to
    /// report. Pushes nothing when the endpoint cannot be waited on.
    fn wait_handles<'a>(&'a self, out: &mut Vec<WaitHandle<'a>>) {
        let _ = out;
    }

    /// The transport's name.
    fn transport(&self) -> &'static str;

    /// The codec id this half was made for (its handshake's), when the
    /// transport records one; the typed endpoints check it when they are
    /// built from adopted halves.
    fn codec(&self) -> Option<u8> {
        None
    }

    /// Turns the endpoint into handles and parameters for a child process.
    fn export(self: Box<Self>) -> Result<Package>;

    /// The test hooks (feature `testing`; see [`TestHooks`]).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    fn test_hooks(&mut self) -> Option<&mut dyn TestHooks> {
        None
    }
}

/// Parameters both ends of a stream connection agree on in the handshake.
///
/// # Examples
///
/// ```
/// use conduit_core::FrameConfig;
/// let cfg = FrameConfig::default().with_max_frame(1 << 20);
/// assert_eq!(cfg.max_frame, 1 << 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    /// The largest frame payload, in bytes (default 64 MiB, at most `u32::MAX`).
    pub max_frame: u32,
    /// The codec id: set only from a [`Codec`](crate::Codec) type, so that a
    /// config cannot name another codec than the typed endpoints use.
    pub(crate) codec: u8,
}

/// The default maximum frame size: 64 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            max_frame: DEFAULT_MAX_FRAME,
            codec: <crate::codec::Cbor as crate::codec::Codec>::ID,
        }
    }
}

impl FrameConfig {
    /// The default config for messages encoded with `C`.
    #[must_use]
    pub fn for_codec<C: crate::Codec>() -> Self {
        FrameConfig {
            max_frame: DEFAULT_MAX_FRAME,
            codec: C::ID,
        }
    }

    /// The codec id sent in the handshake (see [`Codec::ID`](crate::Codec::ID)).
    pub fn codec(&self) -> u8 {
        self.codec
    }

    /// Returns the config with another maximum frame size.
    #[must_use]
    pub fn with_max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self
    }
}
