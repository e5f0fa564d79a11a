//! Async queue ends on tokio (feature `tokio`): [`AsyncQueueSender`] and
//! [`AsyncQueueReceiver`], made with `into_async()` inside a runtime.
//!
//! They wait on the same descriptors as the blocking ends (Unix: the data
//! socket and the presence socket), registered with the runtime's reactor.
//! Cancellation: a datagram is taken or sent whole by one non-blocking
//! call, so a dropped `recv` future loses no message and a dropped `send`
//! future sent the message or nothing. Unix only for now: on Windows
//! `into_async` fails with `Unsupported`.

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

use crate::{QueueReceiver, QueueSender, RxInner, TxInner};

/// Attempts per poll before yielding to the runtime.
const TRIES_PER_POLL: u32 = 32;

fn reactor_error(e: std::io::Error) -> Error {
    Error::from_io("the async runtime cannot watch this queue end", e)
}

fn unsupported() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "async queue ends are not available on this platform yet",
    )
}

/// The receiving end of a queue, async (see [`QueueReceiver::into_async`]).
pub struct AsyncQueueReceiver<T> {
    inner: Arc<RxInner>,
    reg: Registration,
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
    /// (feature `tokio`). `Unsupported` on Windows (not yet); `Io` outside
    /// a runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # if cfg!(windows) { return Ok(()); } // async endpoints: Unix only for now
    /// let (tx, rx) = conduit::queue::<u32>()?;
    /// let mut rx = rx.into_async()?;
    /// tx.send(&5)?;
    /// assert_eq!(rx.recv().await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn into_async(self) -> Result<AsyncQueueReceiver<T>> {
        let mut handles = Vec::new();
        self.inner.end.wait_handles(&mut handles);
        if handles.is_empty() {
            return Err(unsupported());
        }
        let handles: Vec<_> = handles.into_iter().map(|h| (h, WaitFor::Read)).collect();
        let reg = Registration::new(&handles).map_err(reactor_error)?;
        #[cfg(target_os = "linux")]
        self.inner.end.arm();
        Ok(AsyncQueueReceiver {
            inner: self.inner,
            reg,
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
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        for _ in 0..TRIES_PER_POLL {
            match self.inner.recv_bytes(crate::no_wait()) {
                Err(e) if e.is_timeout() => {}
                Err(e) => return Poll::Ready(Err(e)),
                Ok(bytes) => return Poll::Ready(decode_message_owned::<T, Cbor>(bytes)),
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
    reg: Registration,
    _t: PhantomData<fn(&T)>,
}

/// The doorbell registrations (Linux) end with the async ends.
impl<T> Drop for AsyncQueueReceiver<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        self.inner.end.disarm();
    }
}

impl<T> Drop for AsyncQueueSender<T> {
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
        let mut handles = Vec::new();
        self.inner.end.wait_handles(&mut handles);
        if handles.is_empty() {
            return Err(unsupported());
        }
        let reg = Registration::new(&handles).map_err(reactor_error)?;
        #[cfg(target_os = "linux")]
        self.inner.end.arm();
        Ok(AsyncQueueSender {
            inner: self.inner,
            reg,
            _t: PhantomData,
        })
    }
}

impl<T: Serialize + 'static> AsyncQueueSender<T> {
    /// Sends `msg`, waiting while the queue is full; `Disconnected` when
    /// every receiver is gone. Cancellation: the message or nothing.
    pub async fn send(&mut self, msg: &T) -> Result<()> {
        let mut buf = Vec::with_capacity(64);
        encode_message::<T, Cbor>(msg, &mut buf)?;
        poll_fn(|cx| self.poll_send_bytes(cx, &buf)).await
    }

    fn poll_send_bytes(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<Result<()>> {
        for _ in 0..TRIES_PER_POLL {
            // Take the doorbells first, so that room freed after this
            // attempt rings anew.
            #[cfg(target_os = "linux")]
            self.inner.end.drain();
            match self.inner.send_bytes(bytes, crate::no_wait()) {
                Err(e) if e.is_timeout() || e.kind() == ErrorKind::Full => {}
                out => return Poll::Ready(out),
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
