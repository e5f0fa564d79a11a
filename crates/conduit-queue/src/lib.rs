//! A many-producer, many-consumer queue across processes, safe against
//! crashes: conduit's `multiprocessing.Queue` and `JoinableQueue`.
//!
//! Use it through the facade: `conduit::queue`, `conduit::queue_with`,
//! `conduit::QueueSender`, `conduit::QueueReceiver`.
//!
//! ```
//! # fn main() -> Result<(), conduit_core::Error> {
//! let (tx, rx) = conduit_queue::queue::<String>()?;
//! let tx2 = tx.clone(); // any number of producers, in any processes
//! tx.send(&"one".to_string())?;
//! tx2.send(&"two".to_string())?;
//! assert_eq!(rx.recv()?, "one");
//! assert_eq!(rx.recv()?, "two");
//! rx.task_done()?;
//! rx.task_done()?;
//! tx.join()?; // every sent message was marked done
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **Linux: shared memory.** The messages go through one byte ring in a
//!   sealed `memfd` behind two process-shared locks that survive their
//!   holder's death (the lock word holds the holder's pid): one serializes
//!   producers, the other consumers, and between the two holders the ring
//!   is single-producer single-consumer (module `ring`). A message costs no
//!   system call unless a side has to sleep (futexes in the ring); messages
//!   longer than a quarter of the ring stream through it in pieces.
//! - **macOS**: a datagram socket pair (`SOCK_DGRAM`). Producers hold
//!   descriptors of its sending socket, consumers of its receiving socket.
//!   Each message is one datagram; messages above 64 KiB travel as an
//!   anonymous memory file whose descriptor is inside the datagram.
//! - **Windows**: a message-mode pipe. Producers hold handles of its client
//!   (writing) end, consumers of its server (reading) end; each message is
//!   one pipe message.
//! - A **presence** object per side (Unix: a stream socket pair nobody
//!   writes to; Windows: the pipe's own ends) tells each side when the
//!   other side's last handle closed. On Linux the data socket pair stays
//!   too, as the doorbell of async ends and `conduit::wait` (one byte per
//!   message while one is registered).
//! - A **counters page** (shared memory, atomics only) holds the
//!   approximate length and the number of unfinished tasks.
//!
//! Invariants, and why a crash cannot break them:
//!
//! 1. *A message is queued whole or not at all.* Linux: a producer writes a
//!    record, then moves the ring's tail; a streamed message is ended by an
//!    abort record when its producer dies part-way (the next holder of the
//!    producer lock, which finds its holder's process gone, writes it; a
//!    consumer waiting for the next piece takes that lock itself). Elsewhere
//!    the kernel appends a datagram (pipe message) in one step.
//! 2. *A queued message is taken by exactly one receive, whole.* Linux: a
//!    consumer copies a message out under the consumer lock, then moves the
//!    head; one killed before moving it leaves the message to the next
//!    consumer (it never returned it), one killed part-way through a
//!    streamed message makes the next consumer skip the rest of it.
//!    Elsewhere the kernel removes a datagram in one step for one reader.
//! 3. *Per-producer order.* The ring (socket, pipe) is FIFO and a
//!    producer's sends are ordered; messages of different producers
//!    interleave, never mix.
//! 4. *Disconnection counts ends across processes.* The kernel closes a
//!    process's handles when it exits or is killed, so the presence objects
//!    see the last producer (consumer) go within microseconds, whatever the
//!    cause. (Linux: a producer looks at the presence socket when the
//!    count of consumer ends in the ring says zero, and every 5 ms.)
//!
//! What a kill loses: a producer killed inside `send` loses the message it
//! was sending if it was not published yet (nothing else); a consumer
//! killed inside `recv` (or after it, before handling the message) loses
//! at most the one message it was taking. Every other message of every
//! live producer is delivered exactly once. The counters may be off by one
//! per such kill: `len()` is approximate (like Python's `qsize()`), and a
//! killed consumer's message is never marked done, so `join` waits for it:
//! use `join_timeout` when consumers may die.
//!
//! A participant that scribbles on the shared memory can make the others'
//! calls fail (`Protocol` errors: every position and length is checked) or
//! stall them as a participant that never sends would; never undefined
//! behaviour.
//!
//! Messages up to [`QueueConfig::max_message`] (default 64 MiB) are
//! delivered; a larger one is refused up front with `TooLarge`, nothing
//! sent. On Windows a message is also limited by the pipe's buffer
//! ([`QueueConfig::capacity_bytes`]); larger ones are refused with
//! `TooLarge` (see the platform notes in the README).
//!
//! Waiting: a blocked `recv` or `send` sleeps and uses no CPU. Linux: a
//! bounded spin, then a futex in the ring; the consumer lock's holder is
//! the only consumer waiting on the ring (the others sleep in the lock), so
//! one consumer wakes per message. macOS: `poll` on the data and presence
//! sockets (every waiting consumer wakes; the ones that lose the race sleep
//! again). Windows: an event.

#![deny(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit_core::codec::{decode_message_owned, encode_message};
use conduit_core::handoff::sealed::Sealed;
use conduit_core::handoff::OsHandle;
use conduit_core::transport::spawn_context::{export_endpoint, import_endpoint};
use conduit_core::transport::{Halves, Package, Role};
use conduit_core::{
    deadline_after, Cbor, Endpoint, Error, ErrorKind, FrameReceiver, FrameSender, Result,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod counters;
#[cfg(target_os = "linux")]
mod ring;
mod sys;
mod wire;

#[cfg(feature = "tokio")]
mod asynch;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use asynch::{AsyncQueueReceiver, AsyncQueueSender};
use counters::Counters;
use sys::{RxEnd, TxEnd};

/// The name of queue ends in handoff tokens.
pub const TRANSPORT: &str = "queue";

conduit_core::describe_transport!(TRANSPORT, no_pairs);

/// Version of the handoff package (`meta[0]`).
const PACKAGE_VERSION: u64 = 1;

/// Settings of a queue, for [`queue_with`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), conduit_core::Error> {
/// use conduit_queue::{queue_with, QueueConfig};
/// let cfg = QueueConfig::default().capacity_bytes(1 << 20).max_message(1 << 20);
/// let (tx, rx) = queue_with::<Vec<u8>>(cfg)?;
/// tx.send(&vec![7; 100_000])?; // above 64 KiB: passed as a memory file on Unix
/// assert_eq!(rx.recv()?.len(), 100_000);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    capacity: usize,
    max_message: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 1 << 20,
            max_message: conduit_core::DEFAULT_MAX_FRAME as usize,
        }
    }
}

impl QueueConfig {
    /// How many bytes of messages may wait in the queue before `send`
    /// blocks (default 1 MiB). The OS may round it or cap it (Linux caps a
    /// socket buffer at `net.core.wmem_max`, often 208 KiB, doubled); a
    /// large message spilled to a memory file counts only a few hundred
    /// bytes here.
    #[must_use]
    pub fn capacity_bytes(mut self, bytes: usize) -> Self {
        self.capacity = bytes.max(4096);
        self
    }

    /// The largest message (encoded) that `send` accepts (default 64 MiB,
    /// at most 4 GiB - 1); larger ones fail with `TooLarge`, nothing sent.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.min(u32::MAX as usize);
        self
    }
}

/// A new queue with the default [`QueueConfig`].
pub fn queue<T: Serialize + DeserializeOwned + 'static>(
) -> Result<(QueueSender<T>, QueueReceiver<T>)> {
    queue_with(QueueConfig::default())
}

/// A new queue with `cfg`.
pub fn queue_with<T: Serialize + DeserializeOwned + 'static>(
    cfg: QueueConfig,
) -> Result<(QueueSender<T>, QueueReceiver<T>)> {
    let (tx, rx) = sys::pair(cfg.capacity)?;
    let counters = Arc::new(Counters::create()?);
    let tx = TxInner {
        end: tx,
        counters: Arc::clone(&counters),
        max_message: cfg.max_message,
    };
    let rx = RxInner {
        end: rx,
        counters,
        max_message: cfg.max_message,
    };
    Ok((
        QueueSender::new(Arc::new(tx)),
        QueueReceiver::new(Arc::new(rx)),
    ))
}

#[derive(Debug)]
struct TxInner {
    end: TxEnd,
    counters: Arc<Counters>,
    max_message: usize,
}

#[derive(Debug)]
struct RxInner {
    end: RxEnd,
    counters: Arc<Counters>,
    max_message: usize,
}

impl TxInner {
    fn send_bytes(&self, payload: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.check_len(payload.len())?;
        self.counters.sending();
        let out = self.end.send(payload, deadline);
        if out.is_err() {
            self.counters.not_sent();
        }
        out
    }

    /// `TooLarge` for a payload above the queue's maximum.
    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_message {
            return Err(Error::too_large(format!(
                "a {len}-byte message exceeds the queue's maximum of {} bytes \
                 (QueueConfig::max_message); nothing was sent",
                self.max_message
            )));
        }
        Ok(())
    }

    fn package(&self) -> Result<Package> {
        pack(self.end.handles(), &self.counters, self.max_message)
    }

    fn from_package(p: Package) -> Result<TxInner> {
        let (handles, counters, max_message) = unpack(p)?;
        Ok(TxInner {
            end: TxEnd::from_handles(handles)?,
            counters,
            max_message,
        })
    }
}

impl RxInner {
    fn recv_bytes(&self, deadline: Option<Instant>) -> Result<Vec<u8>> {
        let msg = self.end.recv(self.max_message, deadline)?;
        self.counters.received();
        if msg.len() > self.max_message {
            return Err(Error::too_large(format!(
                "a {}-byte message arrived on a queue whose maximum is {} bytes; \
                 the sender uses another QueueConfig",
                msg.len(),
                self.max_message
            )));
        }
        Ok(msg)
    }

    fn package(&self) -> Result<Package> {
        pack(self.end.handles(), &self.counters, self.max_message)
    }

    fn from_package(p: Package) -> Result<RxInner> {
        let (handles, counters, max_message) = unpack(p)?;
        Ok(RxInner {
            end: RxEnd::from_handles(handles)?,
            counters,
            max_message,
        })
    }
}

/// A package of an end's handles (`handles`, then the counters page's).
fn pack(
    handles: std::io::Result<Vec<OsHandle>>,
    counters: &Counters,
    max_message: usize,
) -> Result<Package> {
    let mut handles =
        handles.map_err(|e| Error::from_io("cannot duplicate the queue's handles", e))?;
    handles.push(
        counters
            .handle()
            .map_err(|e| Error::from_io("cannot duplicate the queue's counters", e))?,
    );
    Ok(Package {
        transport: TRANSPORT.to_string(),
        handles,
        meta: vec![PACKAGE_VERSION, max_message as u64],
    })
}

/// The end's handles, its counters and the maximum message of a package.
fn unpack(p: Package) -> Result<(Vec<OsHandle>, Arc<Counters>, usize)> {
    let (mut handles, max_message) = unpack_meta(p)?;
    let counters = handles
        .pop()
        .ok_or_else(|| Error::protocol("a queue package has no counters"))?;
    Ok((handles, Arc::new(Counters::open(counters)?), max_message))
}

fn unpack_meta(p: Package) -> Result<(Vec<OsHandle>, usize)> {
    if p.transport != TRANSPORT {
        return Err(Error::protocol(format!(
            "expected a queue end, got a `{}` endpoint",
            p.transport
        )));
    }
    match p.meta[..] {
        [PACKAGE_VERSION, max] => Ok((p.handles, usize::try_from(max).unwrap_or(usize::MAX))),
        _ => Err(Error::protocol(
            "a handed queue end was made by another version of conduit",
        )),
    }
}

/// A deadline that has passed: "do not wait", without reading the clock
/// (a clock read was a measurable part of a `try_recv` on the Linux ring).
pub(crate) fn no_wait() -> Option<Instant> {
    static PAST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Some(*PAST.get_or_init(Instant::now))
}

fn full_or(e: Error) -> Error {
    if e.is_timeout() {
        Error::full()
    } else {
        e
    }
}

/// The sending end of a queue: `Clone`, `Send` and `Sync`; clones, and ends
/// handed to other processes, are all producers of the same queue.
pub struct QueueSender<T> {
    inner: Arc<TxInner>,
    _t: PhantomData<fn(&T)>,
}

/// The receiving end of a queue: `Clone`, `Send` and `Sync`; each message
/// goes to exactly one receive among all clones and processes.
pub struct QueueReceiver<T> {
    inner: Arc<RxInner>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender::new(Arc::clone(&self.inner))
    }
}

impl<T> Clone for QueueReceiver<T> {
    fn clone(&self) -> Self {
        QueueReceiver::new(Arc::clone(&self.inner))
    }
}

impl<T> fmt::Debug for QueueSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for QueueReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueReceiver").finish_non_exhaustive()
    }
}

impl<T> QueueSender<T> {
    fn new(inner: Arc<TxInner>) -> Self {
        QueueSender {
            inner,
            _t: PhantomData,
        }
    }

    /// Approximate number of messages in the queue (Python's `qsize()`):
    /// other processes change it at any moment, and a participant killed
    /// inside `send` or `recv` can leave it off by one.
    pub fn len(&self) -> usize {
        self.inner.counters.queued()
    }

    /// `len() == 0`, as approximate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every message ever sent to this queue was marked done
    /// with [`QueueReceiver::task_done`] (Python's `JoinableQueue.join`).
    /// Fails with `Disconnected` when messages are unfinished and every
    /// receiver is gone (nobody is left to finish them).
    pub fn join(&self) -> Result<()> {
        self.join_until(None)
    }

    /// [`join`](Self::join) for at most `timeout`, then `Timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(deadline_after(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        // The count lives in shared memory with no kernel wait attached:
        // check it with a backoff from 50 µs to 5 ms (at most 200 checks a
        // second while waiting long).
        let mut pause = Duration::from_micros(50);
        loop {
            let left = self.inner.counters.unfinished();
            if left == 0 {
                return Ok(());
            }
            if self.inner.end.receivers_gone()? {
                return Err(Error::disconnected(format!(
                    "{left} messages are not marked done and every receiver of the queue is gone"
                )));
            }
            let now = Instant::now();
            if let Some(d) = deadline {
                if now >= d {
                    return Err(Error::timeout(format!(
                        "{left} messages were still not marked done (task_done) at the deadline"
                    )));
                }
                pause = pause.min(d - now);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

impl<T: Serialize + 'static> QueueSender<T> {
    fn send_until(&self, msg: &T, deadline: Option<Instant>) -> Result<()> {
        // Raw bytes go as they are; other messages are encoded into a
        // buffer kept per thread (an allocation per send was measurable
        // next to the shared-memory ring).
        if let Some(bytes) = (msg as &dyn std::any::Any).downcast_ref::<Vec<u8>>() {
            return self.inner.send_bytes(bytes, deadline);
        }
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            // A send from inside a send (a Serialize impl that sends)
            // cannot borrow it: it gets a buffer of its own.
            let mut own = Vec::new();
            let mut held = b.try_borrow_mut();
            let buf = match held.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            buf.clear();
            encode_message::<T, Cbor>(msg, buf)?;
            let out = self.inner.send_bytes(buf, deadline);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            out
        })
    }

    /// Sends `msg`, waiting while the queue is full. `Disconnected` when
    /// every receiver is gone; `TooLarge` above the maximum message size.
    pub fn send(&self, msg: &T) -> Result<()> {
        self.send_until(msg, None)
    }

    /// Sends `msg` if the queue has room now, else fails with `Full`.
    pub fn try_send(&self, msg: &T) -> Result<()> {
        self.send_until(msg, no_wait()).map_err(full_or)
    }

    /// Sends `msg`, waiting at most `timeout` for room, then `Timeout`.
    pub fn send_timeout(&self, msg: &T, timeout: Duration) -> Result<()> {
        self.send_until(msg, deadline_after(timeout))
    }

    /// Sends `msg`, waiting until `deadline` for room, then `Timeout`.
    pub fn send_deadline(&self, msg: &T, deadline: Instant) -> Result<()> {
        self.send_until(msg, Some(deadline))
    }
}

impl<T> QueueReceiver<T> {
    fn new(inner: Arc<RxInner>) -> Self {
        QueueReceiver {
            inner,
            _t: PhantomData,
        }
    }

    /// Approximate number of messages in the queue; see
    /// [`QueueSender::len`].
    pub fn len(&self) -> usize {
        self.inner.counters.queued()
    }

    /// `len() == 0`, as approximate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks one received message done (Python's `task_done`), for
    /// [`QueueSender::join`]. `InvalidInput` when called more times than
    /// messages were sent.
    pub fn task_done(&self) -> Result<()> {
        self.inner.counters.task_done()
    }

    /// True when a `recv` would not block (a message is there, or the queue
    /// is empty and every sender is gone), waiting up to `timeout`. Another
    /// receiver may take the message first.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.inner.end.poll(deadline_after(timeout))
    }
}

/// A queue receiver's part in a `conduit::wait`.
struct QueueWait<'a> {
    end: &'a RxEnd,
    /// Registered for doorbells (Linux: the messages are in shared memory,
    /// the descriptors only signal when producers ring).
    armed: bool,
}

impl conduit_core::WaitSource for QueueWait<'_> {
    fn arm(&mut self) -> Result<bool> {
        #[cfg(target_os = "linux")]
        if !self.armed {
            self.end.arm();
        }
        self.armed = true;
        self.end.poll(Some(Instant::now()))
    }

    fn handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        self.end.wait_handles(out);
    }
}

impl Drop for QueueWait<'_> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.armed {
            self.end.disarm();
        }
    }
}

/// Ready when a message is queued or every sender is gone (see
/// `conduit::wait`); another receiver of the same queue may take the
/// message first.
impl<T> conduit_core::Waitable for QueueReceiver<T> {
    fn wait_source(&self) -> Result<Box<dyn conduit_core::WaitSource + '_>> {
        Ok(Box::new(QueueWait {
            end: &self.inner.end,
            armed: false,
        }))
    }
}

impl<T: DeserializeOwned + 'static> QueueReceiver<T> {
    fn recv_until(&self, deadline: Option<Instant>) -> Result<T> {
        decode_message_owned::<T, Cbor>(self.inner.recv_bytes(deadline)?)
    }

    /// Receives the next message, waiting for one. `Disconnected` once the
    /// queue is empty and every sender is gone.
    pub fn recv(&self) -> Result<T> {
        self.recv_until(None)
    }

    /// Receives a message if one is ready, else fails with `Empty` at once.
    pub fn try_recv(&self) -> Result<T> {
        self.recv_until(no_wait()).map_err(|e| {
            if e.is_timeout() {
                Error::new(ErrorKind::Empty, "the queue is empty")
            } else {
                e
            }
        })
    }

    /// Receives a message, waiting at most `timeout`, then `Timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_until(deadline_after(timeout))
    }

    /// Receives a message, waiting until `deadline`, then `Timeout`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T> {
        self.recv_until(Some(deadline))
    }

    /// Messages until the queue is empty and every sender is gone; another
    /// error ends the iteration after yielding it.
    #[must_use]
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            rx: self,
            done: false,
        }
    }
}

/// Iterator returned by [`QueueReceiver::iter`].
pub struct Iter<'a, T> {
    rx: &'a QueueReceiver<T>,
    done: bool,
}

impl<T: DeserializeOwned + 'static> Iterator for Iter<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(v) => Some(Ok(v)),
            Err(e) => {
                self.done = true;
                (!e.is_disconnected()).then_some(Err(e))
            }
        }
    }
}

// ---- byte-level halves: handoff and Process arguments ----

/// A producer's end as a byte-level sender (for `conduit::handoff`).
struct TxHalf(Arc<TxInner>);

/// A consumer's end as a byte-level receiver.
struct RxHalf(Arc<RxInner>);

impl FrameSender for TxHalf {
    fn send_frame_until(&mut self, frame: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.0.send_bytes(frame, deadline)
    }
    fn transport(&self) -> &'static str {
        TRANSPORT
    }
    fn export(self: Box<Self>) -> Result<Package> {
        self.0.package()
    }
}

impl FrameReceiver for RxHalf {
    fn recv_with(&mut self, deadline: Option<Instant>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let msg = self.0.recv_bytes(deadline)?;
        f(&msg);
        Ok(())
    }
    fn poll_frame(&mut self, deadline: Option<Instant>) -> Result<bool> {
        self.0.end.poll(deadline)
    }
    fn transport(&self) -> &'static str {
        TRANSPORT
    }
    fn export(self: Box<Self>) -> Result<Package> {
        self.0.package()
    }
}

/// Rebuilds a producer's end handed over by `conduit::handoff`.
pub fn import_sender(p: Package) -> Result<impl FrameSender> {
    Ok(TxHalf(Arc::new(TxInner::from_package(p)?)))
}

/// Rebuilds a consumer's end handed over by `conduit::handoff`.
pub fn import_receiver(p: Package) -> Result<impl FrameReceiver> {
    Ok(RxHalf(Arc::new(RxInner::from_package(p)?)))
}

impl<T> Sealed for QueueSender<T> {}
impl<T> Sealed for QueueReceiver<T> {}

/// Handing a queue end to a child gives it a new producer (consumer) of the
/// same queue; this process keeps its own clones.
impl<T: Serialize + 'static> Endpoint for QueueSender<T> {
    const ROLE: Role = Role::Sender;
    fn into_halves(self) -> Halves {
        (Some(Box::new(TxHalf(self.inner))), None)
    }
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self> {
        match (tx, rx) {
            (Some(tx), None) if tx.transport() == TRANSPORT => Ok(QueueSender::new(Arc::new(
                TxInner::from_package(tx.export()?)?,
            ))),
            _ => Err(not_a_queue("QueueSender")),
        }
    }
}

impl<T: DeserializeOwned + 'static> Endpoint for QueueReceiver<T> {
    const ROLE: Role = Role::Receiver;
    fn into_halves(self) -> Halves {
        (None, Some(Box::new(RxHalf(self.inner))))
    }
    fn from_halves(
        tx: Option<Box<dyn FrameSender>>,
        rx: Option<Box<dyn FrameReceiver>>,
    ) -> Result<Self> {
        match (tx, rx) {
            (None, Some(rx)) if rx.transport() == TRANSPORT => Ok(QueueReceiver::new(Arc::new(
                RxInner::from_package(rx.export()?)?,
            ))),
            _ => Err(not_a_queue("QueueReceiver")),
        }
    }
}

fn not_a_queue(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("the handed endpoint is not a queue end; adopt it as the type the parent handed, not as a {what}"),
    )
}

/// Inside the arguments of `conduit::Process::spawn` a queue end is shared
/// with the child (this process keeps it); anywhere else serializing it is
/// an error.
impl<T> Serialize for QueueSender<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let inner = Arc::clone(&self.inner);
        let i = export_endpoint("QueueSender", Role::Sender, || {
            (Some(Box::new(TxHalf(inner))), None)
        })
        .map_err(S::Error::custom)?;
        s.serialize_u64(i)
    }
}

impl<T> Serialize for QueueReceiver<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let inner = Arc::clone(&self.inner);
        let i = export_endpoint("QueueReceiver", Role::Receiver, || {
            (None, Some(Box::new(RxHalf(inner))))
        })
        .map_err(S::Error::custom)?;
        s.serialize_u64(i)
    }
}

impl<'de, T: Serialize + 'static> Deserialize<'de> for QueueSender<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let index = u64::deserialize(d)?;
        let (tx, rx) = import_endpoint::<D::Error>(index, Role::Sender)?;
        QueueSender::from_halves(tx, rx).map_err(D::Error::custom)
    }
}

impl<'de, T: DeserializeOwned + 'static> Deserialize<'de> for QueueReceiver<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let index = u64::deserialize(d)?;
        let (tx, rx) = import_endpoint::<D::Error>(index, Role::Receiver)?;
        QueueReceiver::from_halves(tx, rx).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_every_sender_or_receiver_disconnects_the_other_side() -> Result<()> {
        let (tx, rx) = queue::<u32>()?;
        let tx2 = tx.clone();
        tx.send(&1)?;
        drop(tx);
        tx2.send(&2)?;
        drop(tx2);
        assert_eq!(rx.recv()?, 1);
        assert_eq!(rx.recv()?, 2);
        let e = rx.recv_timeout(Duration::from_secs(5)).err();
        assert!(e.as_ref().is_some_and(Error::is_disconnected), "{e:?}");

        let (tx, rx) = queue::<u32>()?;
        drop(rx);
        let e = tx.send_timeout(&1, Duration::from_secs(5)).err();
        assert!(e.as_ref().is_some_and(Error::is_disconnected), "{e:?}");
        Ok(())
    }

    #[test]
    fn a_handed_end_is_the_same_queue() -> Result<()> {
        let (tx, rx) = queue::<u32>()?;
        let half = TxHalf(Arc::clone(&tx.inner));
        let copy =
            QueueSender::<u32>::new(Arc::new(TxInner::from_package(Box::new(half).export()?)?));
        copy.send(&7)?;
        assert_eq!(rx.recv()?, 7);
        assert_eq!(rx.len(), 0);
        drop(tx);
        drop(copy);
        let e = rx.recv_timeout(Duration::from_secs(5)).err();
        assert!(e.as_ref().is_some_and(Error::is_disconnected), "{e:?}");
        Ok(())
    }
}
