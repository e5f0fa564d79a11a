//! Typed endpoints: [`Sender<T>`], [`Receiver<T>`] and [`Duplex<S, R>`] over
//! any byte-level transport.
//!
//! All methods take `&self`: an endpoint can be shared between threads (each
//! message is sent whole; a receive in one thread waits for another thread's
//! receive to finish).

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{FrameReceiver, FrameSender};
use crate::codec::{decode_message, decode_message_owned, encode_message, is_raw, Cbor, Codec};
use crate::error::{Error, ErrorKind, Result};
use crate::handoff::{Endpoint, Halves, Role};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The deadline `timeout` from now, as the `deadline` arguments of this
/// crate take it: `None` (wait forever) when the timeout is too large for an
/// `Instant`.
pub fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

pub(crate) struct SendState {
    pub(crate) raw: Box<dyn FrameSender>,
    buf: Vec<u8>,
}

/// The sending end of a typed channel.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = conduit::channel::<String>()?;
/// tx.send(&"hello".to_string())?;
/// assert_eq!(rx.recv()?, "hello");
/// # Ok(()) }
/// ```
pub struct Sender<T, C: Codec = Cbor> {
    pub(crate) state: Mutex<SendState>,
    pub(crate) transport: &'static str,
    _marker: PhantomData<fn(&T, C)>,
}

impl<T, C: Codec> fmt::Debug for Sender<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + 'static, C: Codec> Sender<T, C> {
    /// Wraps a byte-level sender.
    pub fn from_raw(raw: Box<dyn FrameSender>) -> Self {
        let transport = raw.transport();
        Sender {
            state: Mutex::new(SendState {
                raw,
                buf: Vec::new(),
            }),
            transport,
            _marker: PhantomData,
        }
    }

    /// Serializes `msg` and sends it as one message, blocking while the channel
    /// is full. Fails with `Disconnected` once the receiver is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::channel::<(u32, String)>()?;
    /// tx.send(&(1, "one".into()))?;
    /// drop(rx);
    /// assert!(tx.send(&(2, "two".into())).unwrap_err().is_disconnected());
    /// # Ok(()) }
    /// ```
    pub fn send(&self, msg: &T) -> Result<()> {
        self.send_until(msg, None)
    }

    /// Sends `msg` if the channel has room for it now, else fails with
    /// [`ErrorKind::Full`] and sends nothing (crossbeam's `try_send`).
    ///
    /// A message is never sent in part. On stream transports a message
    /// larger than the channel's free space (more than 4 KiB, the size the
    /// OS writes atomically) can fit only partly: it is then accepted
    /// (`Ok`), and its rest goes out first thing in the next call on this
    /// sender, or when the sender is dropped (which then waits for room
    /// like [`send`](Self::send)); a later `try_send` fails with `Full`
    /// until the rest fit. On the shm transport a message larger than half
    /// the ring, once its first piece is in, is finished like `send`. On
    /// Windows stream transports (pipe, socketpair, named) the free space
    /// cannot be queried and this blocks like `send`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::channel::<u32>()?;
    /// tx.try_send(&1)?;
    /// assert_eq!(rx.recv()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn try_send(&self, msg: &T) -> Result<()> {
        self.send_until(msg, Some(Instant::now()))
    }

    /// Like [`send`](Self::send), but gives up with [`ErrorKind::Timeout`]
    /// (nothing sent) when the channel has no room for the message within
    /// `timeout`. See [`try_send`](Self::try_send) for messages larger than
    /// the free space and for Windows.
    pub fn send_timeout(&self, msg: &T, timeout: Duration) -> Result<()> {
        self.send_deadline_opt(msg, deadline_after(timeout))
    }

    /// Like [`send_timeout`](Self::send_timeout) with a deadline.
    pub fn send_deadline(&self, msg: &T, deadline: Instant) -> Result<()> {
        self.send_deadline_opt(msg, Some(deadline))
    }

    fn send_deadline_opt(&self, msg: &T, deadline: Option<Instant>) -> Result<()> {
        self.send_until(msg, deadline).map_err(|e| {
            if e.kind() == ErrorKind::Full {
                Error::timeout(
                    "the channel had no room for the message before the deadline; nothing was sent",
                )
            } else {
                e
            }
        })
    }

    fn send_until(&self, msg: &T, deadline: Option<Instant>) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(bytes) = (msg as &dyn Any).downcast_ref::<Vec<u8>>() {
            // The raw path: the bytes are the frame, no copy.
            return st.raw.send_frame_until(bytes, deadline);
        }
        let SendState { raw, buf } = &mut *st;
        buf.clear();
        encode_message::<T, C>(msg, buf)?;
        let res = raw.send_frame_until(buf, deadline);
        if buf.capacity() > 1 << 20 {
            // Do not keep a huge buffer alive after one huge message.
            *buf = Vec::new();
        }
        res
    }

    /// Sends `bytes` as one message as they are, without encoding them
    /// (Python's `Connection.send_bytes`): the raw path of a
    /// `Sender<Vec<u8>>` for a caller that does not own a `Vec<u8>`. Blocks
    /// like [`send`](Self::send).
    ///
    /// The receiver gets the bytes back with
    /// [`Receiver::recv_bytes_into`] (or `recv` on a `Receiver<Vec<u8>>`);
    /// a typed receiver decodes them with its codec, so on a typed channel
    /// they must be one value encoded with `C` (a frame encoded elsewhere,
    /// say).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::channel::<Vec<u8>>()?;
    /// let data = [1u8, 2, 3, 4];
    /// tx.send_bytes(&data[1..])?;
    /// assert_eq!(rx.recv()?, [2, 3, 4]);
    /// # Ok(()) }
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        lock(&self.state).raw.send_frame_until(bytes, None)
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// The byte-level sender under this endpoint.
    pub fn into_raw(self) -> Box<dyn FrameSender> {
        self.state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .raw
    }
}

/// The receiving end of a typed channel.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let (tx, rx) = conduit::channel::<u64>()?;
/// assert!(!rx.poll(Duration::ZERO)?);
/// tx.send(&7)?;
/// assert!(rx.poll(Duration::from_secs(1))?);
/// assert_eq!(rx.try_recv()?, 7);
/// assert_eq!(rx.try_recv().unwrap_err().kind(), conduit::ErrorKind::Empty);
/// # Ok(()) }
/// ```
pub struct Receiver<T, C: Codec = Cbor> {
    pub(crate) raw: Mutex<Box<dyn FrameReceiver>>,
    pub(crate) transport: &'static str,
    _marker: PhantomData<fn() -> (T, C)>,
}

impl<T, C: Codec> fmt::Debug for Receiver<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + 'static, C: Codec> Receiver<T, C> {
    /// Wraps a byte-level receiver.
    pub fn from_raw(raw: Box<dyn FrameReceiver>) -> Self {
        let transport = raw.transport();
        Receiver {
            raw: Mutex::new(raw),
            transport,
            _marker: PhantomData,
        }
    }

    /// Blocks until a message arrives. Fails with `Disconnected` once the
    /// sender is gone and every message it sent has been received.
    pub fn recv(&self) -> Result<T> {
        self.recv_until(None)
    }

    /// Like [`recv`](Self::recv) but gives up with `Timeout` after `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let (_tx, rx) = conduit::channel::<u8>()?;
    /// let err = rx.recv_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok(()) }
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_until(deadline_after(timeout))
    }

    /// Like [`recv`](Self::recv) but gives up with `Timeout` at `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T> {
        self.recv_until(Some(deadline))
    }

    /// Receives a message if one is ready, else fails with `Empty` at once.
    pub fn try_recv(&self) -> Result<T> {
        self.recv_until(Some(Instant::now())).map_err(|e| {
            if e.is_timeout() {
                Error::new(ErrorKind::Empty, "no message is ready")
            } else {
                e
            }
        })
    }

    /// Receives the next message's bytes as they arrived, without decoding
    /// them, into `buf` (its contents are replaced, its memory reused), and
    /// returns their length (Python's `Connection.recv_bytes_into`). Blocks
    /// like [`recv`](Self::recv) and fails like it.
    ///
    /// On a typed channel the bytes are the message encoded with `C`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::channel::<Vec<u8>>()?;
    /// tx.send_bytes(b"one")?;
    /// tx.send_bytes(b"three")?;
    /// let mut buf = Vec::new();
    /// assert_eq!(rx.recv_bytes_into(&mut buf)?, 3);
    /// assert_eq!(buf, b"one");
    /// assert_eq!(rx.recv_bytes_into(&mut buf)?, 5);
    /// assert_eq!(buf, b"three");
    /// # Ok(()) }
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut Vec<u8>) -> Result<usize> {
        lock(&self.raw).recv_frame(buf, None)?;
        Ok(buf.len())
    }

    /// True when a [`recv`](Self::recv) would not block, waiting up to
    /// `timeout` for that (Python's `Connection.poll`): a whole message is
    /// ready, or the sender is gone (or an error closed the channel) and the
    /// next receive reports it, as Python's `poll` returns `True` at EOF and
    /// `conduit::wait` counts a gone peer as ready. `Duration::MAX` waits as
    /// long as it takes.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        lock(&self.raw).poll_frame(deadline_after(timeout))
    }

    /// An iterator over received messages that ends when the sender is gone.
    /// It yields other errors (then ends), so nothing fails silently.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::channel::<u32>()?;
    /// for i in 0..3 { tx.send(&i)?; }
    /// drop(tx);
    /// let got: Vec<u32> = rx.iter().collect::<Result<_, _>>()?;
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn iter(&self) -> Iter<'_, T, C> {
        Iter {
            rx: self,
            done: false,
        }
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// The byte-level receiver under this endpoint.
    pub fn into_raw(self) -> Box<dyn FrameReceiver> {
        self.raw
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T> {
        let mut raw = lock(&self.raw);
        if is_raw::<T>() {
            let mut frame = Vec::new();
            raw.recv_frame(&mut frame, deadline)?;
            return decode_message_owned::<T, C>(frame);
        }
        // Decode straight from the transport's buffer.
        let mut out = None;
        raw.recv_with(deadline, &mut |frame| {
            out = Some(decode_message::<T, C>(frame))
        })?;
        out.unwrap_or_else(|| Err(Error::protocol("the transport returned no frame")))
    }
}

/// Iterator returned by [`Receiver::iter`] and [`Duplex::iter`].
pub struct Iter<'a, T, C: Codec = Cbor> {
    rx: &'a Receiver<T, C>,
    done: bool,
}

impl<T: DeserializeOwned + 'static, C: Codec> Iterator for Iter<'_, T, C> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(v) => Some(Ok(v)),
            Err(e) if e.is_disconnected() => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Both ends of a two-way connection: sends `S`, receives `R`.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = conduit::duplex::<String, usize>()?;
/// a.send(&"four".to_string())?;
/// let s = b.recv()?;
/// b.send(&s.len())?;
/// assert_eq!(a.recv()?, 4);
/// # Ok(()) }
/// ```
pub struct Duplex<S, R, C: Codec = Cbor> {
    pub(crate) tx: Sender<S, C>,
    pub(crate) rx: Receiver<R, C>,
}

impl<S, R, C: Codec> fmt::Debug for Duplex<S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplex")
            .field("transport", &self.tx.transport)
            .finish_non_exhaustive()
    }
}

impl<S: Serialize + 'static, R: DeserializeOwned + 'static, C: Codec> Duplex<S, R, C> {
    /// Joins a sender and a receiver into one duplex endpoint.
    pub fn from_parts(tx: Sender<S, C>, rx: Receiver<R, C>) -> Self {
        Duplex { tx, rx }
    }

    /// Sends a message (see [`Sender::send`]).
    pub fn send(&self, msg: &S) -> Result<()> {
        self.tx.send(msg)
    }

    /// See [`Sender::try_send`].
    pub fn try_send(&self, msg: &S) -> Result<()> {
        self.tx.try_send(msg)
    }

    /// See [`Sender::send_timeout`].
    pub fn send_timeout(&self, msg: &S, timeout: Duration) -> Result<()> {
        self.tx.send_timeout(msg, timeout)
    }

    /// See [`Sender::send_deadline`].
    pub fn send_deadline(&self, msg: &S, deadline: Instant) -> Result<()> {
        self.tx.send_deadline(msg, deadline)
    }

    /// See [`Sender::send_bytes`].
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.tx.send_bytes(bytes)
    }

    /// See [`Receiver::recv_bytes_into`].
    pub fn recv_bytes_into(&self, buf: &mut Vec<u8>) -> Result<usize> {
        self.rx.recv_bytes_into(buf)
    }

    /// Receives a message (see [`Receiver::recv`]).
    pub fn recv(&self) -> Result<R> {
        self.rx.recv()
    }

    /// See [`Receiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R> {
        self.rx.recv_timeout(timeout)
    }

    /// See [`Receiver::recv_deadline`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<R> {
        self.rx.recv_deadline(deadline)
    }

    /// See [`Receiver::try_recv`].
    pub fn try_recv(&self) -> Result<R> {
        self.rx.try_recv()
    }

    /// See [`Receiver::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.rx.poll(timeout)
    }

    /// See [`Receiver::iter`].
    #[must_use]
    pub fn iter(&self) -> Iter<'_, R, C> {
        self.rx.iter()
    }

    /// Splits into the sending and the receiving half, for use from different
    /// threads or processes.
    #[must_use]
    pub fn split(self) -> (Sender<S, C>, Receiver<R, C>) {
        (self.tx, self.rx)
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.tx.transport()
    }
}

fn wrong_halves(role: Role) -> Error {
    Error::invalid_input(format!(
        "the handed endpoint does not have the halves of a {role:?}"
    ))
}

impl<T, C: Codec> crate::handoff::sealed::Sealed for Sender<T, C> {}
impl<T, C: Codec> crate::handoff::sealed::Sealed for Receiver<T, C> {}
impl<S, R, C: Codec> crate::handoff::sealed::Sealed for Duplex<S, R, C> {}

/// Checks that a half adopted as an endpoint with codec `C` was made for
/// `C` in the parent (a mismatch would otherwise surface only at the first
/// message, or never for a side that only sends).
fn check_codec<C: Codec>(half: Option<u8>) -> Result<()> {
    match half {
        Some(id) if id != C::ID => Err(Error::protocol(format!(
            "the parent made this endpoint for codec id {id} ({}), this process adopts it with \
             codec id {} ({}): adopt it with the codec the parent used",
            crate::codec::codec_name(id),
            C::ID,
            C::NAME
        ))),
        _ => Ok(()),
    }
}

impl<T: Serialize + 'static, C: Codec> Endpoint for Sender<T, C> {
    const ROLE: Role = Role::Sender;
    fn into_halves(self) -> Halves {
        (Some(self.into_raw()), None)
    }
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self> {
        match (tx, rx) {
            (Some(tx), None) => {
                check_codec::<C>(tx.codec())?;
                Ok(Sender::from_raw(tx))
            }
            _ => Err(wrong_halves(Self::ROLE)),
        }
    }
}

impl<T: DeserializeOwned + 'static, C: Codec> Endpoint for Receiver<T, C> {
    const ROLE: Role = Role::Receiver;
    fn into_halves(self) -> Halves {
        (None, Some(self.into_raw()))
    }
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self> {
        match (tx, rx) {
            (None, Some(rx)) => {
                check_codec::<C>(rx.codec())?;
                Ok(Receiver::from_raw(rx))
            }
            _ => Err(wrong_halves(Self::ROLE)),
        }
    }
}

impl<S: Serialize + 'static, R: DeserializeOwned + 'static, C: Codec> Endpoint for Duplex<S, R, C> {
    const ROLE: Role = Role::Duplex;
    fn into_halves(self) -> Halves {
        (Some(self.tx.into_raw()), Some(self.rx.into_raw()))
    }
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self> {
        match (tx, rx) {
            (Some(tx), Some(rx)) => {
                check_codec::<C>(tx.codec())?;
                check_codec::<C>(rx.codec())?;
                Ok(Duplex::from_parts(
                    Sender::from_raw(tx),
                    Receiver::from_raw(rx),
                ))
            }
            _ => Err(wrong_halves(Self::ROLE)),
        }
    }
}

/// A receiver's part in a `conduit::wait`: holds its lock for the wait.
struct RxWait<'a> {
    raw: MutexGuard<'a, Box<dyn FrameReceiver>>,
}

impl crate::wait::WaitSource for RxWait<'_> {
    fn arm(&mut self) -> Result<bool> {
        self.raw.wait_arm()
    }

    fn handles<'a>(&'a self, out: &mut Vec<crate::wait::WaitHandle<'a>>) {
        self.raw.wait_handles(out);
    }
}

impl Drop for RxWait<'_> {
    fn drop(&mut self) {
        self.raw.wait_disarm();
    }
}

/// Ready when a [`recv`](Receiver::recv) would not block: a whole message
/// is ready or the sender is gone (see [`crate::wait`]).
impl<T, C: Codec> crate::wait::Waitable for Receiver<T, C> {
    fn wait_source(&self) -> Result<Box<dyn crate::wait::WaitSource + '_>> {
        Ok(Box::new(RxWait {
            raw: lock(&self.raw),
        }))
    }
}

/// Ready when a [`recv`](Duplex::recv) would not block (see
/// [`crate::wait`]).
impl<S, R, C: Codec> crate::wait::Waitable for Duplex<S, R, C> {
    fn wait_source(&self) -> Result<Box<dyn crate::wait::WaitSource + '_>> {
        self.rx.wait_source()
    }
}
