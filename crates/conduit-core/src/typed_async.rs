//! Async endpoints on tokio (feature `tokio`): [`AsyncSender<T>`],
//! [`AsyncReceiver<T>`] and [`AsyncDuplex<S, R>`], made from the blocking
//! ones with `into_async()` inside a tokio runtime.
//!
//! They run on the same descriptors as [`crate::wait()`], registered with the
//! runtime's reactor (no thread per endpoint, nothing polled while idle):
//! each operation makes a non-blocking attempt and, when it would block,
//! waits for the reactor to report the endpoint's descriptors ready. The
//! shared-memory transport is woken through its doorbell (see the
//! `conduit-shm` crate docs).
//!
//! On Windows the handles are watched by the OS thread pool
//! (`RegisterWaitForSingleObject`, which multiplexes many waits on each of
//! its threads; still no thread per endpoint), whose callback wakes the
//! task; each wait also ends after 100 ms so that a peer whose death
//! signals no handle is noticed. The shm transport's handle is its park
//! event (its doorbell); the stream transports' pipes are overlapped, and
//! a receiver keeps a zero-byte read in flight whose event signals data,
//! a sender a write in flight (see `conduit_core::transport::sys`).
//!
//! # Cancellation
//!
//! - **Receiving**: dropping a [`AsyncReceiver::recv`] future before it
//!   completes loses nothing; the next `recv` gets the message. A message
//!   is taken out of the channel only in the poll that returns it.
//! - **Sending**: dropping a [`AsyncSender::send`] future sends either the
//!   whole message or nothing, never part of a frame. Each poll makes one
//!   non-blocking attempt, which either commits the whole frame or writes
//!   nothing. On stream transports a frame larger than the free space is
//!   committed once its first bytes are in: the sender keeps the rest and
//!   writes it before anything else (the next `send`, [`AsyncSender::flush`],
//!   or dropping the sender, which then blocks until it is written). On the
//!   shm transport a message larger than half the ring, once its first piece
//!   is in, is finished by blocking the thread until the receiver took the
//!   rest.

use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{FrameReceiver, FrameSender};
use crate::codec::{decode_message, decode_message_owned, encode_message, is_raw, Cbor, Codec};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::reactor::Registration;
use crate::typed::{Duplex, Receiver, Sender};
use crate::wait::WaitFor;

/// Attempts per poll before yielding to the runtime: bounds a poll whose
/// readiness keeps firing without progress (a peer ringing for nothing).
const TRIES_PER_POLL: u32 = 32;

fn reactor_error(e: std::io::Error) -> Error {
    Error::from_io("the async runtime cannot watch this endpoint", e)
}

/// The receiving end of an async channel (see [`Receiver::into_async`]).
///
/// It waits on the same descriptors as `conduit::wait`, registered with the
/// tokio runtime's reactor: no thread per endpoint, nothing polled while
/// idle (shm: the sender rings the receiver's doorbell). On Windows the
/// OS thread pool watches the handles (no thread per endpoint either).
///
/// **Cancellation**: dropping a [`recv`](Self::recv) future before it
/// completes loses nothing; the next `recv` gets the message. A message is
/// taken out of the channel only in the poll that returns it.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = conduit::channel::<String>()?;
/// let mut rx = rx.into_async()?;
/// tx.send(&"hello".to_string())?;
/// assert_eq!(rx.recv().await?, "hello");
/// # Ok(()) }
/// ```
pub struct AsyncReceiver<T, C: Codec = Cbor> {
    raw: Box<dyn FrameReceiver>,
    reg: Registration,
    /// A moment in the past: the deadline of a non-blocking attempt that
    /// reads no clock.
    epoch: Instant,
    transport: &'static str,
    done: bool,
    _marker: PhantomData<fn() -> (T, C)>,
}

impl<T, C: Codec> fmt::Debug for AsyncReceiver<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncReceiver")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + 'static, C: Codec> Receiver<T, C> {
    /// Turns this receiver into an async one on the current tokio runtime
    /// (feature `tokio`; call it inside the runtime, which must have its
    /// I/O driver enabled).
    ///
    /// # Errors
    ///
    /// `Unsupported` for endpoints that cannot be waited on; `Io` outside a runtime or when the descriptors cannot be
    /// registered.
    pub fn into_async(self) -> Result<AsyncReceiver<T, C>> {
        AsyncReceiver::from_raw(self.into_raw())
    }
}

impl<T: DeserializeOwned + 'static, C: Codec> AsyncReceiver<T, C> {
    /// Wraps a byte-level receiver (see [`Receiver::into_async`]).
    pub fn from_raw(raw: Box<dyn FrameReceiver>) -> Result<Self> {
        let mut handles = Vec::new();
        raw.wait_handles(&mut handles);
        let handles: Vec<_> = handles.into_iter().map(|h| (h, WaitFor::Read)).collect();
        let reg = register(&handles, raw.transport(), "receiver")?;
        let transport = raw.transport();
        Ok(AsyncReceiver {
            raw,
            reg,
            epoch: Instant::now(),
            transport,
            done: false,
            _marker: PhantomData,
        })
    }

    /// Waits for the next message. Fails with `Disconnected` once the
    /// sender is gone and every message it sent has been received.
    /// Cancellation-safe: see [`AsyncReceiver`].
    pub async fn recv(&mut self) -> Result<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// A message if one is ready now, else `Empty`.
    pub fn try_recv(&mut self) -> Result<T> {
        self.recv_until(self.epoch).map_err(|e| {
            if e.is_timeout() {
                Error::new(ErrorKind::Empty, "no message is ready")
            } else {
                e
            }
        })
    }

    /// Polls for the next message (the poll behind [`recv`](Self::recv)).
    ///
    /// Spends tokio's cooperative budget: once the task has used it up,
    /// this returns `Pending` (and wakes the task) so that a channel that
    /// is always ready cannot starve other tasks and timers; nothing is
    /// taken then.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        cooperative(cx, |cx| self.poll_recv_inner(cx))
    }

    fn poll_recv_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        // A non-blocking attempt first (no clock read); then one that may
        // spin briefly (shm), like a blocking receive before it parks.
        match self.recv_until(self.epoch) {
            Err(e) if e.is_timeout() => {}
            out => return Poll::Ready(out),
        }
        let spin = self.raw.spin_hint();
        let mut deadline = (!spin.is_zero()).then(|| Instant::now() + spin);
        for _ in 0..TRIES_PER_POLL {
            if let Some(d) = deadline.take() {
                match self.recv_until(d) {
                    Err(e) if e.is_timeout() => {}
                    out => return Poll::Ready(out),
                }
            }
            // The next attempt, after the arming or a readiness, does not
            // spin.
            deadline = Some(self.epoch);
            match self.raw.wait_arm() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match self.reg.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(reactor_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One receive that waits at most until `deadline` (a spin, never a
    /// park past it): `Timeout` when nothing is ready.
    fn recv_until(&mut self, deadline: Instant) -> Result<T> {
        let now = Some(deadline);
        if is_raw::<T>() {
            let mut frame = Vec::new();
            self.raw.recv_frame(&mut frame, now)?;
            return decode_message_owned::<T, C>(frame);
        }
        let mut out = None;
        self.raw
            .recv_with(now, &mut |frame| out = Some(decode_message::<T, C>(frame)))?;
        out.unwrap_or_else(|| Err(Error::protocol("the transport returned no frame")))
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.transport
    }
}

impl<T, C: Codec> Drop for AsyncReceiver<T, C> {
    fn drop(&mut self) {
        self.raw.wait_disarm();
    }
}

/// Registers an end's `handles` with the reactor; `Unsupported` when it
/// has none (`what`: "receiver" or "sender", for the message).
fn register(
    handles: &[(crate::WaitHandle<'_>, WaitFor)],
    transport: &str,
    what: &str,
) -> Result<Registration> {
    if handles.is_empty() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("a {transport} {what} cannot be made async on this platform"),
        ));
    }
    Registration::new(handles).map_err(reactor_error)
}

/// Runs one poll of an async end inside tokio's cooperative budget: once
/// the task has used its budget up, `Pending` (the task is woken again)
/// without calling `poll`, so an end that is always ready cannot starve
/// the other tasks and timers of its runtime. A poll that completes spends
/// one unit. Shared with the queue's async ends; not a stable interface.
#[doc(hidden)]
pub fn cooperative<T>(
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
    let out = poll(cx);
    if out.is_ready() {
        coop.made_progress();
    }
    out
}

/// One step of a receiver's `Stream`: a message, or the end of the stream
/// (`Disconnected` ends it quietly, another error is yielded first). Sets
/// `done` once the stream has ended. Shared with the queue's async
/// receiver; not a stable interface.
#[doc(hidden)]
pub fn stream_item<T>(done: &mut bool, polled: Poll<Result<T>>) -> Poll<Option<Result<T>>> {
    match polled {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(v)) => Poll::Ready(Some(Ok(v))),
        Poll::Ready(Err(e)) => {
            *done = true;
            if e.is_disconnected() {
                Poll::Ready(None)
            } else {
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The messages until the sender is gone (`Disconnected` ends the stream);
/// other errors are yielded, then the stream ends.
impl<T: DeserializeOwned + 'static, C: Codec> futures_core::Stream for AsyncReceiver<T, C> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.poll_recv(cx);
        stream_item(&mut this.done, polled)
    }
}

/// The sending end of an async channel (see [`Sender::into_async`]).
///
/// **Cancellation**: dropping a [`send`](Self::send) future sends either the
/// whole message or nothing, never part of a frame. Each poll makes one
/// non-blocking attempt, which commits the whole frame or writes nothing.
/// On stream transports (pipe, socketpair, named) a frame larger than the
/// free space is committed once its first bytes are in: the sender keeps
/// the rest and writes it before anything else (the next `send`,
/// [`flush`](Self::flush), or dropping the sender, which then blocks until
/// it is written). On the shm transport a message larger than half the
/// ring, once its first piece is in, is finished by blocking the thread
/// until the receiver has taken the rest.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = conduit::channel::<u32>()?;
/// let mut tx = tx.into_async()?;
/// tx.send(&7).await?;
/// assert_eq!(rx.recv()?, 7);
/// # Ok(()) }
/// ```
pub struct AsyncSender<T, C: Codec = Cbor> {
    raw: Box<dyn FrameSender>,
    reg: Registration,
    /// `send_wait_arm` was called and not undone yet.
    armed: bool,
    /// A moment in the past: the deadline of a non-blocking attempt that
    /// reads no clock.
    epoch: Instant,
    buf: Vec<u8>,
    transport: &'static str,
    _marker: PhantomData<fn(&T, C)>,
}

impl<T, C: Codec> fmt::Debug for AsyncSender<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSender")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + 'static, C: Codec> Sender<T, C> {
    /// Turns this sender into an async one on the current tokio runtime
    /// (feature `tokio`); errors as for [`Receiver::into_async`].
    pub fn into_async(self) -> Result<AsyncSender<T, C>> {
        AsyncSender::from_raw(self.into_raw())
    }
}

impl<T: Serialize + 'static, C: Codec> AsyncSender<T, C> {
    /// Wraps a byte-level sender (see [`Sender::into_async`]).
    pub fn from_raw(raw: Box<dyn FrameSender>) -> Result<Self> {
        let mut handles = Vec::new();
        raw.send_wait_handles(&mut handles);
        let reg = register(&handles, raw.transport(), "sender")?;
        let transport = raw.transport();
        Ok(AsyncSender {
            raw,
            reg,
            armed: false,
            epoch: Instant::now(),
            buf: Vec::new(),
            transport,
            _marker: PhantomData,
        })
    }

    /// Serializes `msg` and sends it as one message, waiting while the
    /// channel is full. Fails with `Disconnected` once the receiver is
    /// gone. Cancellation: the whole message or nothing (see
    /// [`AsyncSender`]).
    pub async fn send(&mut self, msg: &T) -> Result<()> {
        if let Some(bytes) = (msg as &dyn std::any::Any).downcast_ref::<Vec<u8>>() {
            // Raw bytes go as they are; the encode buffer is not touched
            // (moving it out and back cost ~3 ns a send on shm).
            return poll_fn(|cx| self.poll_send_frame(cx, bytes)).await;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_message::<T, C>(msg, &mut buf)?;
        let frame: &[u8] = &buf;
        let res = poll_fn(|cx| self.poll_send_frame(cx, frame)).await;
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        res
    }

    /// Sends `bytes` as one message as they are (see [`Sender::send_bytes`]).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        poll_fn(|cx| self.poll_send_frame(cx, bytes)).await
    }

    /// Sends `msg` if the channel has room now, else fails with `Full`
    /// (see [`Sender::try_send`]).
    pub fn try_send(&mut self, msg: &T) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_message::<T, C>(msg, &mut buf)?;
        let res = self.raw.send_frame_until(&buf, Some(self.epoch));
        self.buf = buf;
        res
    }

    /// Writes the rest of a message that only partly fitted (stream
    /// transports; see [`AsyncSender`]), waiting for room.
    pub async fn flush(&mut self) -> Result<()> {
        let epoch = self.epoch;
        poll_fn(|cx| self.poll_op(cx, &mut |raw| raw.flush_until(Some(epoch)))).await
    }

    /// Polls one send of `frame`: each attempt commits the whole frame or
    /// nothing.
    ///
    /// Spends tokio's cooperative budget like
    /// [`AsyncReceiver::poll_recv`]: a channel that always has room (a
    /// Windows pipe under Wine never fills) cannot starve the runtime.
    pub fn poll_send_frame(&mut self, cx: &mut Context<'_>, frame: &[u8]) -> Poll<Result<()>> {
        cooperative(cx, |cx| {
            // The common case first, straight: one non-blocking attempt (no
            // clock read, nothing armed).
            if !self.armed {
                match self.raw.send_frame_until(frame, Some(self.epoch)) {
                    Err(e) if e.kind() == ErrorKind::Full => {}
                    out => return Poll::Ready(out),
                }
            }
            self.poll_send_slow(cx, frame)
        })
    }

    /// [`poll_send_frame`](Self::poll_send_frame) once the channel was
    /// full or a wait is armed: tries again, may spin, then arms.
    fn poll_send_slow(&mut self, cx: &mut Context<'_>, frame: &[u8]) -> Poll<Result<()>> {
        // A non-blocking attempt first (no clock read); then one that may
        // spin briefly on a full channel (shm).
        let epoch = self.epoch;
        let spin = self.raw.spin_hint();
        let mut attempt = 0u32;
        self.poll_op(cx, &mut |raw| {
            attempt += 1;
            let d = if attempt == 2 && !spin.is_zero() {
                Instant::now() + spin
            } else {
                epoch
            };
            raw.send_frame_until(frame, Some(d))
        })
    }

    fn poll_op(
        &mut self,
        cx: &mut Context<'_>,
        op: &mut dyn FnMut(&mut dyn FrameSender) -> Result<()>,
    ) -> Poll<Result<()>> {
        for i in 0..TRIES_PER_POLL {
            // The first turn makes two attempts before arming: `op` may
            // spin in the second.
            for _ in 0..if i == 0 { 2 } else { 1 } {
                match op(&mut *self.raw) {
                    Err(e) if e.kind() == ErrorKind::Full => {}
                    out => {
                        self.disarm();
                        return Poll::Ready(out);
                    }
                }
            }
            // Armed, then one more attempt: room that appeared before the
            // arming would ring no doorbell.
            self.raw.send_wait_arm();
            self.armed = true;
            match op(&mut *self.raw) {
                Err(e) if e.kind() == ErrorKind::Full => {}
                out => {
                    self.disarm();
                    return Poll::Ready(out);
                }
            }
            match self.reg.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(reactor_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.transport
    }
}

impl<T, C: Codec> AsyncSender<T, C> {
    /// Ends a doorbell registration, if any (a store to shared memory on
    /// shm: not paid per message while there is room).
    fn disarm(&mut self) {
        if self.armed {
            self.raw.send_wait_disarm();
            self.armed = false;
        }
    }
}

impl<T, C: Codec> Drop for AsyncSender<T, C> {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Both ends of an async two-way connection (see [`Duplex::into_async`]):
/// sends `S`, receives `R`. [`split`](Self::split) it to send and receive
/// from different tasks at once.
pub struct AsyncDuplex<S, R, C: Codec = Cbor> {
    tx: AsyncSender<S, C>,
    rx: AsyncReceiver<R, C>,
}

impl<S, R, C: Codec> fmt::Debug for AsyncDuplex<S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncDuplex")
            .field("transport", &self.tx.transport)
            .finish_non_exhaustive()
    }
}

impl<S: Serialize + 'static, R: DeserializeOwned + 'static, C: Codec> Duplex<S, R, C> {
    /// Turns this endpoint into an async one on the current tokio runtime
    /// (feature `tokio`); errors as for [`Receiver::into_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (a, b) = conduit::duplex::<String, usize>()?;
    /// let mut a = a.into_async()?;
    /// a.send(&"four".to_string()).await?;
    /// let s = b.recv()?;
    /// b.send(&s.len())?;
    /// assert_eq!(a.recv().await?, 4);
    /// # Ok(()) }
    /// ```
    pub fn into_async(self) -> Result<AsyncDuplex<S, R, C>> {
        let (tx, rx) = self.split();
        Ok(AsyncDuplex {
            tx: tx.into_async()?,
            rx: rx.into_async()?,
        })
    }
}

impl<S: Serialize + 'static, R: DeserializeOwned + 'static, C: Codec> AsyncDuplex<S, R, C> {
    /// Sends a message (see [`AsyncSender::send`]).
    pub async fn send(&mut self, msg: &S) -> Result<()> {
        self.tx.send(msg).await
    }

    /// Receives a message (see [`AsyncReceiver::recv`]).
    pub async fn recv(&mut self) -> Result<R> {
        self.rx.recv().await
    }

    /// See [`AsyncReceiver::try_recv`].
    pub fn try_recv(&mut self) -> Result<R> {
        self.rx.try_recv()
    }

    /// See [`AsyncSender::flush`].
    pub async fn flush(&mut self) -> Result<()> {
        self.tx.flush().await
    }

    /// The sending and the receiving half, for different tasks.
    #[must_use]
    pub fn split(self) -> (AsyncSender<S, C>, AsyncReceiver<R, C>) {
        (self.tx, self.rx)
    }

    /// The name of the transport under this endpoint.
    pub fn transport(&self) -> &'static str {
        self.tx.transport()
    }
}

/// The received messages (see [`AsyncReceiver`]'s `Stream`).
impl<S, R: DeserializeOwned + 'static, C: Codec> futures_core::Stream for AsyncDuplex<S, R, C> {
    type Item = Result<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<R>>> {
        Pin::new(&mut self.get_mut().rx).poll_next(cx)
    }
}
