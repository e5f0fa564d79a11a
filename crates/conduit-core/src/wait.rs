//! [`wait`]: waiting on many endpoints at once, and the [`Waitable`] trait
//! behind it.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A borrowed OS object [`wait`] watches: a file descriptor on Unix, a
/// waitable handle on Windows.
pub use crate::sys::WaitHandle;

/// What a waiting endpoint waits for on one of its handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// The handle turns readable (Unix) or signalled.
    Read,
    /// The handle turns writable (Unix): room to send.
    Write,
}

/// Something [`wait`] can wait on: receivers, duplex endpoints, queue
/// receivers, processes, named listeners.
///
/// Implementations come with conduit's types; implementing it for a type of
/// your own means providing a [`WaitSource`].
pub trait Waitable {
    /// Starts one wait on this object. The source may hold the object's
    /// lock until it is dropped.
    fn wait_source(&self) -> Result<Box<dyn WaitSource + '_>>;
}

/// One object's part in one [`wait`] call. Dropping it ends the
/// registration (see [`FrameReceiver::wait_disarm`](crate::FrameReceiver::wait_disarm)).
pub trait WaitSource {
    /// Registers for wake-ups and says whether the object is ready now.
    /// Called once at the start, and again each time one of its handles
    /// signalled; it must not block.
    fn arm(&mut self) -> Result<bool>;

    /// The handles that signal when [`arm`](Self::arm) may have something
    /// new to report (none: the object cannot be waited on here).
    fn handles<'a>(&'a self, out: &mut Vec<WaitHandle<'a>>);
}

/// Waits until at least one of `objects` is ready, or `timeout` passes
/// (`None`: as long as it takes), and returns the indices of the ready
/// ones in increasing order — an empty `Vec` on timeout.
///
/// Like Python's `multiprocessing.connection.wait`. A message another
/// thread or process takes first (a queue shared by several receivers) can
/// make a ready object block again.
/// An object is *ready* when the call it is waited for would not block:
/// a receiver (or duplex, or queue receiver) holds a whole message or its
/// peer is gone (the next receive reports `Disconnected`), a process has
/// exited, a named listener has a client waiting. Messages already in a
/// receiver's own buffer count without asking the OS.
///
/// On Unix the objects' descriptors are watched with one `poll(2)` call
/// (no `FD_SETSIZE` limit: thousands of objects work). The shared-memory
/// transport has no descriptor of its own for data: while a receiver is
/// registered for a wait, its sender rings a doorbell (one byte on the
/// ring's lifeline socket) at the next message, and only then.
///
/// # Threads
///
/// While [`wait`] runs it holds each receiver's lock (the one its `recv`
/// takes), so a `recv` on the same receiver in another thread waits for
/// `wait` to return. Waits on several threads are safe: the locks are taken
/// in one global order.
///
/// # Windows
///
/// On Windows the objects' handles are waited on with
/// `WaitForMultipleObjects` (up to 64 handles; more are looked at in groups
/// of 64, pausing 1 ms, then up to 5 ms between rounds): stream receivers
/// and queue receivers keep a zero-byte read in flight on their
/// (overlapped) pipe, shm endpoints watch the event they park on (their
/// doorbell), processes their process handle, named listeners the event of
/// the `ConnectNamedPipe` they keep in flight on their waiting pipe
/// instance (and one signalled while connections whose set-up finished
/// wait for `accept`). Every object is looked at again at least every
/// 100 ms (the shm lifelines signal no handle when the peer dies). An
/// object of your own that offers no handle makes `wait` look at every
/// object in rounds (1 ms, backing off to 5 ms).
///
/// # Errors
///
/// `Unsupported` when an object cannot be waited on on this platform (see
/// the transport's docs), `Io` when the OS wait fails, `InvalidInput` for
/// no objects and no timeout (that wait would never end; with a timeout it
/// sleeps it out and returns an empty `Vec`).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use conduit::Waitable;
/// let (tx1, rx1) = conduit::channel::<u32>()?;
/// let (_tx2, rx2) = conduit::channel::<u32>()?;
/// let objects: [&dyn Waitable; 2] = [&rx1, &rx2];
/// assert!(conduit::wait(&objects, Some(Duration::from_millis(10)))?.is_empty());
/// tx1.send(&7)?;
/// assert_eq!(conduit::wait(&objects, None)?, [0]);
/// assert_eq!(rx1.recv()?, 7);
/// # Ok(()) }
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    // No deadline: as long as it takes (also for a timeout too large for an
    // `Instant`).
    let deadline = timeout.and_then(crate::deadline_after);
    wait_deadline(objects, deadline)
}

fn wait_deadline(objects: &[&dyn Waitable], deadline: Option<Instant>) -> Result<Vec<usize>> {
    if objects.is_empty() {
        // Nothing can become ready: wait out the timeout, but never for ever.
        let d = deadline.ok_or_else(|| {
            Error::invalid_input("wait on no objects without a timeout would never return")
        })?;
        std::thread::sleep(d.saturating_duration_since(Instant::now()));
        return Ok(Vec::new());
    }
    // Take the sources (and the locks they hold) in one global order, by
    // address, so that two waits over the same objects cannot deadlock.
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by_key(|&i| addr(objects[i]));
    order.dedup_by_key(|&mut i| addr(objects[i]));
    let mut sources: Vec<(usize, Box<dyn WaitSource + '_>)> = Vec::with_capacity(order.len());
    for &i in &order {
        sources.push((i, objects[i].wait_source()?));
    }
    // Every object once; afterwards only those whose handles signalled.
    let mut to_arm: Vec<usize> = (0..sources.len()).collect();
    let mut pause = Duration::from_millis(1);
    loop {
        let mut ready = Vec::new();
        for &s in &to_arm {
            let (i, src) = &mut sources[s];
            if src.arm()? {
                ready.push(*i);
            }
        }
        if !ready.is_empty() {
            // A duplicate of a ready object is ready too.
            let ready_addrs: Vec<usize> = ready.iter().map(|&i| addr(objects[i])).collect();
            let mut all: Vec<usize> = (0..objects.len())
                .filter(|&i| ready_addrs.contains(&addr(objects[i])))
                .collect();
            all.sort_unstable();
            return Ok(all);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Vec::new());
        }
        let mut handles = Vec::with_capacity(sources.len());
        let mut owners = Vec::with_capacity(sources.len());
        let mut pollable = true;
        for (s, (_, src)) in sources.iter().enumerate() {
            let before = handles.len();
            src.handles(&mut handles);
            pollable &= handles.len() > before;
            owners.resize(handles.len(), s);
        }
        to_arm.clear();
        if !pollable {
            // An object without a handle to wait on (one whose event could
            // not be made, or a `Waitable` of the user's): look at every
            // object again after a short pause.
            drop(handles);
            poll_pause(&mut pause, deadline);
            to_arm.extend(0..sources.len());
            continue;
        }
        let fired = crate::sys::wait_any(&handles, deadline)
            .map_err(|e| Error::from_io("waiting on the objects failed", e))?;
        to_arm.extend(fired.into_iter().map(|h| owners[h]));
        to_arm.dedup();
    }
}

/// Sleeps for `pause` (not past `deadline`), then doubles it up to
/// [`MAX_POLL_PAUSE`].
fn poll_pause(pause: &mut Duration, deadline: Option<Instant>) {
    let left = deadline.map_or(*pause, |d| d.saturating_duration_since(Instant::now()));
    std::thread::sleep((*pause).min(left));
    *pause = (*pause * 2).min(MAX_POLL_PAUSE);
}

/// The longest pause between two looks at objects that have no handle to
/// wait on: the latency `wait` adds on Windows, where the stream
/// transports' own blocking waits poll the same way.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(5);

fn addr(w: &dyn Waitable) -> usize {
    (w as *const dyn Waitable).cast::<u8>() as usize
}
