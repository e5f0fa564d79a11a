//! Async queue ends on tokio (feature `tokio`): [`AsyncQueueSender`] and
//! [`AsyncQueueReceiver`], made with `into_async()` inside a runtime.
//!
//! On Unix they wait on the same descriptors as the blocking ends (the
//! data socket and the presence socket), registered with the runtime's
//! reactor. Cancellation: a datagram is taken or sent whole by one
//! non-blocking call, so a dropped `recv` future loses no message and a
//! dropped `send` future sent the message or nothing.
//!
//! On Windows (a message-mode pipe, overlapped) the OS thread pool watches
//! events (see `conduit_core::transport::sys::reactor`): an async receiver
//! keeps a zero-byte read in flight, which completes without taking
//! anything when a message is queued or every sender is gone; a receive is
//! still one whole message taken in the poll that returns it. A message
//! the pipe cannot take at once stays in flight, whole, in the kernel,
//! with its buffer owned by the async sender until the write completes: a
//! dropped `send` future leaves it to be delivered (the next `send` waits
//! for it first), and dropping the sender cancels it (delivered whole or
//! not at all: readers take whole messages).

use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use conduit_core::codec::{decode_message_owned, encode_message};
use conduit_core::transport::sys::reactor::Registration;
use conduit_core::{Cbor, Error, ErrorKind, Result, WaitFor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::{RecvWatch, SendSlot, SendTry};
use crate::{QueueReceiver, QueueSender, RxInner, TxInner};

/// Attempts per poll before yielding to the runtime.
const TRIES_PER_POLL: u32 = 32;

fn reactor_error(e: std::io::Error) -> Error {
    Error::from_io("the async runtime cannot watch this queue end", e)
}

fn unsupported() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "async queue ends are not available on this platform",
    )
}

/// The receiving end of a queue, async (see [`QueueReceiver::into_async`]).
pub struct AsyncQueueReceiver<T> {
    inner: Arc<RxInner>,
    /// Dropped before `watch` (field order): the runtime stops watching
    /// the handles first.
    reg: Registration,
    watch: RecvWatch,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for AsyncQueueReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncQueueReceiver").finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + 'static> QueueReceiver<T> {
    /// An async receiver of the same queue on the current tokio runtime
    /// (feature `tokio`). `Io` outside a runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = conduit::queue::<u32>()?;
    /// let mut rx = rx.into_async()?;
    /// tx.send(&5)?;
    /// assert_eq!(rx.recv().await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn into_async(self) -> Result<AsyncQueueReceiver<T>> {
        let watch = RecvWatch::new(&self.inner.end).map_err(reactor_error)?;
        let mut handles = Vec::new();
        watch.wait_handles(&self.inner.end, &mut handles);
        if handles.is_empty() {
            return Err(unsupported());
        }
        let handles: Vec<_> = handles.into_iter().map(|h| (h, WaitFor::Read)).collect();
        let reg = Registration::new(&handles).map_err(reactor_error)?;
        drop(handles);
        #[cfg(target_os = "linux")]
        self.inner.end.arm();
        Ok(AsyncQueueReceiver {
            inner: self.inner,
            reg,
            watch,
            done: false,
            _t: PhantomData,
        })
    }
}

impl<T: DeserializeOwned + 'static> AsyncQueueReceiver<T> {
    /// Waits for the next message; `Disconnected` once the queue is empty
    /// and every sender is gone. Cancellation-safe.
    pub async fn recv(&mut self) -> Result<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (the poll behind [`recv`](Self::recv)).
    /// Spends tokio's cooperative budget, like the channels' async ends.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        conduit_core::cooperative(cx, |cx| self.poll_recv_inner(cx))
    }

    fn poll_recv_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        for _ in 0..TRIES_PER_POLL {
            match self.inner.recv_bytes(crate::no_wait()) {
                Err(e) if e.is_timeout() => {}
                Err(e) => return Poll::Ready(Err(e)),
                Ok(bytes) => return Poll::Ready(decode_message_owned::<T, Cbor>(bytes)),
            }
            // Windows: a zero-byte read in flight signals a message (Unix:
            // nothing to arm). True: one may have come meanwhile.
            match self.watch.arm() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(reactor_error(e))),
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

    /// Marks one received message done (see [`QueueReceiver::task_done`]).
    pub fn task_done(&self) -> Result<()> {
        self.inner.counters.task_done()
    }
}

/// The messages until every sender is gone; other errors are yielded, then
/// the stream ends.
impl<T: DeserializeOwned + 'static> futures_core::Stream for AsyncQueueReceiver<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.poll_recv(cx);
        conduit_core::stream_item(&mut this.done, polled)
    }
}

/// The sending end of a queue, async (see [`QueueSender::into_async`]).
pub struct AsyncQueueSender<T> {
    inner: Arc<TxInner>,
    /// Dropped before `slot` (field order).
    reg: Registration,
    slot: SendSlot,
    _t: PhantomData<fn(&T)>,
}

/// The doorbell registrations (Linux) end with the async ends.
impl<T> Drop for AsyncQueueReceiver<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        self.inner.end.disarm();
    }
}

impl<T> fmt::Debug for AsyncQueueSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncQueueSender").finish_non_exhaustive()
    }
}

impl<T: Serialize + 'static> QueueSender<T> {
    /// An async sender of the same queue on the current tokio runtime
    /// (feature `tokio`); errors as for [`QueueReceiver::into_async`].
    pub fn into_async(self) -> Result<AsyncQueueSender<T>> {
        let slot = SendSlot::new(&self.inner.end).map_err(reactor_error)?;
        let mut handles = Vec::new();
        slot.wait_handles(&self.inner.end, &mut handles);
        if handles.is_empty() {
            return Err(unsupported());
        }
        let reg = Registration::new(&handles).map_err(reactor_error)?;
        drop(handles);
        #[cfg(target_os = "linux")]
        self.inner.end.arm();
        Ok(AsyncQueueSender {
            inner: self.inner,
            reg,
            slot,
            _t: PhantomData,
        })
    }
}

impl<T: Serialize + 'static> AsyncQueueSender<T> {
    /// Sends `msg`, waiting while the queue is full; `Disconnected` when
    /// every receiver is gone. Cancellation: the message or nothing (on
    /// Windows a message the pipe could not take at once stays whole in
    /// the kernel until it can: a dropped future leaves it to be sent, the
    /// next `send` waits for it first, and dropping the sender cancels it,
    /// whole).
    pub async fn send(&mut self, msg: &T) -> Result<()> {
        let mut buf = Vec::with_capacity(64);
        encode_message::<T, Cbor>(msg, &mut buf)?;
        self.inner.check_len(buf.len())?;
        let mut queued = false;
        poll_fn(|cx| {
            conduit_core::cooperative(cx, |cx| self.poll_send_bytes(cx, &buf, &mut queued))
        })
        .await
    }

    /// `queued`: this send's message is in flight (see [`SendSlot`]).
    fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        queued: &mut bool,
    ) -> Poll<Result<()>> {
        for _ in 0..TRIES_PER_POLL {
            // A message in flight (this send's, or one a dropped send
            // left) finishes first.
            match self.slot.poll_queued() {
                None => match self.reg.poll_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(reactor_error(e))),
                    Poll::Pending => return Poll::Pending,
                },
                Some(r) => {
                    if r.is_err() {
                        self.inner.counters.not_sent();
                    }
                    if std::mem::take(queued) {
                        return Poll::Ready(r);
                    }
                    // Another send's failure says the receivers are gone:
                    // this one fails when it tries.
                }
            }
            self.inner.counters.sending();
            match self.slot.try_send(&self.inner.end, bytes) {
                Ok(SendTry::Sent) => return Poll::Ready(Ok(())),
                Ok(SendTry::Queued) => {
                    *queued = true;
                    continue;
                }
                Ok(SendTry::Full) => self.inner.counters.not_sent(),
                Err(e) => {
                    self.inner.counters.not_sent();
                    return Poll::Ready(Err(e));
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
}

impl<T> Drop for AsyncQueueSender<T> {
    fn drop(&mut self) {
        // A message a dropped send left in flight (Windows): sent whole, or
        // cancelled whole and then counted as not sent.
        if let Some(Err(_)) = self.slot.cancel_queued() {
            self.inner.counters.not_sent();
        }
        // The doorbell registration (Linux) ends with the async end.
        #[cfg(target_os = "linux")]
        self.inner.end.disarm();
    }
}
