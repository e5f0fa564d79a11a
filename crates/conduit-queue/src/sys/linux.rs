//! Linux: the messages go through a shared-memory ring (`crate::ring`: one
//! byte ring behind two process-shared locks), so a message costs
//! no system call when nobody waits; the sockets of `unix.rs` stay for
//! what the kernel does best:
//!
//! - **Presence**: producers hold one end of a stream socket pair,
//!   consumers the other; end-of-file on it means every end of the other
//!   side is closed (dropped, exited or killed).
//! - **Doorbells** for async ends and `conduit::wait`: while a consumer is
//!   registered (the ring's `rx_armed` count), every send also puts one
//!   byte on the data socket pair, which makes the consumers' descriptor
//!   readable; while a producer waits for room the same way (`tx_armed`),
//!   every receive rings back. Blocking calls sleep on futexes in the ring
//!   instead.
//!
//! Handles of an end: `[data, presence, ring]`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use conduit_core::{Error, ErrorKind, Result};

use super::sock::bells;
use crate::ring::Ring;

/// What a producer holds.
#[derive(Debug)]
pub(crate) struct TxEnd {
    // Dropped first, so that consumers see the end and drain the ring.
    presence: OwnedFd,
    data: OwnedFd,
    /// The consumers' end of the doorbell pair: a producer that leaves the
    /// producer lock rings the other producers with it.
    others: OwnedFd,
    ring: Arc<Ring>,
    /// Registrations of this end (async senders), undone on drop.
    armed: Registrations,
    /// When the consumers' presence was last looked at (ns since `EPOCH`).
    checked: AtomicU64,
}

/// How stale a producer's belief that consumers exist may get: a send
/// looks at the presence socket (a system call) at most this often unless
/// the count of consumer ends says zero. Consumers killed while the ring
/// has room are so noticed within this bound.
const PRESENCE_EVERY: Duration = Duration::from_millis(5);

/// A coarse monotonic clock in ns (the kernel's tick-granular clock read
/// through the vDSO: a few ns, where `Instant::now` costs ~20 per send).
fn since_epoch() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// What a consumer holds.
#[derive(Debug)]
pub(crate) struct RxEnd {
    presence: OwnedFd,
    data: OwnedFd,
    /// The producers' end of the doorbell pair: a consumer that leaves
    /// messages in the ring rings the other consumers with it.
    others: OwnedFd,
    ring: Arc<Ring>,
    /// Registrations of this end (async receivers, `conduit::wait`),
    /// undone on drop.
    armed: Registrations,
}

/// A new queue: the producers' and the consumers' first ends.
pub(crate) fn pair(capacity: usize) -> Result<(TxEnd, RxEnd)> {
    let ((data_tx, pres_tx), (data_rx, pres_rx)) = bells::sockets()?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| Error::from_io("cannot duplicate the queue's doorbell", e))
    };
    let others = dup(&data_tx)?;
    let producers = dup(&data_rx)?;
    let ring = Arc::new(Ring::create(capacity)?);
    Ok((
        TxEnd {
            presence: pres_tx,
            data: data_tx,
            others: producers,
            ring: Arc::clone(&ring),
            armed: Registrations::default(),
            checked: AtomicU64::new(0),
        },
        RxEnd::new(pres_rx, data_rx, others, ring),
    ))
}

fn from_handles(
    mut handles: Vec<OwnedFd>,
    who: &str,
    n: usize,
) -> Result<(OwnedFd, OwnedFd, Arc<Ring>, Option<OwnedFd>)> {
    if handles.len() != n {
        return Err(Error::protocol(format!(
            "a queue {who} is made of {n} descriptors"
        )));
    }
    let others = (n == 4).then(|| handles.remove(3));
    let [data, presence, ring]: [OwnedFd; 3] = handles
        .try_into()
        .map_err(|_| Error::protocol(format!("a queue {who} is made of {n} descriptors")))?;
    bells::check(&data, false)?;
    bells::check(&presence, true)?;
    if let Some(o) = &others {
        bells::check(o, false)?;
    }
    Ok((data, presence, Arc::new(Ring::open(ring)?), others))
}

impl TxEnd {
    /// Sends one message, waiting for room until `deadline` (`Some(now)`:
    /// not at all). `Timeout` when no room came in time; nothing was sent.
    pub(crate) fn send(&self, payload: &[u8], deadline: Option<Instant>) -> Result<()> {
        let gone = || bells::gone(self.presence.as_fd());
        // Every consumer gone: nobody would read the ring. The count of
        // consumer ends says so at once for dropped ones; the presence
        // socket, looked at every few milliseconds, for killed ones.
        let now = since_epoch();
        let last = self.checked.load(SeqCst);
        if self.ring.rx_ends() == 0 || now.saturating_sub(last) >= PRESENCE_EVERY.as_nanos() as u64
        {
            self.checked.store(now, SeqCst);
            if gone()? {
                return Err(Error::disconnected(
                    "every receiver of the queue is gone (dropped, exited or killed)",
                ));
            }
        }
        let bell = || bells::ring(self.data.as_fd());
        match self.ring.send_with(payload, deadline, &gone, &bell) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Full => {
                return Err(Error::timeout("the queue stayed full until the deadline"))
            }
            Err(e) if e.is_disconnected() => {
                return Err(Error::disconnected(
                    "every receiver of the queue is gone (dropped, exited or killed)",
                ))
            }
            Err(e) => return Err(e),
        }
        // An async sender may have lost the producer lock to this send
        // after its doorbell rang: pass it on.
        if self.ring.tx_armed() > 0 {
            bells::ring(self.others.as_fd());
        }
        Ok(())
    }

    /// Registers an async sender (consumers ring when they free room).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn arm(&self) {
        self.armed.arm(|on| self.ring.arm_tx(on));
    }

    /// Ends a registration made with [`arm`](Self::arm).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn disarm(&self) {
        self.armed.disarm(|on| self.ring.arm_tx(on));
    }

    /// Takes the doorbells rung for this side (async senders, before they
    /// look for room).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn drain(&self) {
        bells::drain(self.data.as_fd());
    }

    /// An async sender's attempt that does not wait. The doorbells are
    /// taken first, so that room freed after this attempt rings anew.
    #[cfg(feature = "tokio")]
    pub(crate) fn send_now(&self, payload: &[u8]) -> Result<()> {
        self.drain();
        self.send(payload, crate::no_wait())
    }

    /// The descriptors an async sender waits on: the doorbell (readable
    /// when a consumer freed room) and the presence socket.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_handles<'a>(
        &'a self,
        out: &mut Vec<(conduit_core::WaitHandle<'a>, conduit_core::WaitFor)>,
    ) {
        out.push((self.data.as_fd(), conduit_core::WaitFor::Read));
        out.push((self.presence.as_fd(), conduit_core::WaitFor::Read));
    }

    /// True once every consumer's end is closed.
    pub(crate) fn receivers_gone(&self) -> Result<bool> {
        bells::gone(self.presence.as_fd())
    }

    /// New descriptors for a handoff: `[data, presence, ring, others]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedFd>> {
        handoff_fds(&self.data, &self.presence, &self.ring, &self.others)
    }

    /// Rebuilds a producer's end from [`TxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedFd>) -> Result<TxEnd> {
        let (data, presence, ring, others) = from_handles(handles, "sender", 4)?;
        let others =
            others.ok_or_else(|| Error::protocol("a queue sender without its doorbell"))?;
        Ok(TxEnd {
            presence,
            data,
            others,
            ring,
            armed: Registrations::default(),
            checked: AtomicU64::new(0),
        })
    }
}

impl Drop for TxEnd {
    fn drop(&mut self) {
        self.armed.clear(|on| self.ring.arm_tx(on));
    }
}

impl RxEnd {
    fn new(presence: OwnedFd, data: OwnedFd, others: OwnedFd, ring: Arc<Ring>) -> RxEnd {
        ring.count_rx(true);
        RxEnd {
            presence,
            data,
            others,
            ring,
            armed: Registrations::default(),
        }
    }

    /// Receives one message, waiting until `deadline` (`Some(now)`: not at
    /// all). `Timeout` when none came; `Disconnected` once the queue is
    /// empty and every producer is gone.
    pub(crate) fn recv(&self, max: usize, deadline: Option<Instant>) -> Result<Vec<u8>> {
        if self.armed.any() {
            bells::drain(self.data.as_fd());
        }
        let gone = || bells::gone(self.presence.as_fd());
        let bell = || bells::ring(self.data.as_fd());
        let msg = self.ring.recv_with(deadline, &gone, max as u64, &bell)?;
        // Messages left behind while other consumers may sleep on the
        // doorbell (one that found the consumer lock taken, say): pass it
        // on.
        if self.ring.rx_armed() > 0 && self.ring.used() > 0 {
            bells::ring(self.others.as_fd());
        }
        Ok(msg)
    }

    /// True when a receive would not block (a message is queued, or the
    /// queue is empty and every sender is gone), waiting up to `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> Result<bool> {
        let ready =
            || -> Result<bool> { Ok(self.ring.used() > 0 || bells::gone(self.presence.as_fd())?) };
        if ready()? || deadline.is_some_and(|d| d <= Instant::now()) {
            return ready();
        }
        self.arm();
        let out = loop {
            bells::drain(self.data.as_fd());
            match ready() {
                Ok(true) => break Ok(true),
                Err(e) => break Err(e),
                Ok(false) => {}
            }
            match bells::wait_readable(self.data.as_fd(), self.presence.as_fd(), deadline) {
                Ok(true) => {}
                Ok(false) => break ready(),
                Err(e) => break Err(e),
            }
        };
        self.disarm();
        out
    }

    /// Registers an async receiver or a `conduit::wait` (producers ring the
    /// doorbell at each message while any is registered).
    pub(crate) fn arm(&self) {
        self.armed.arm(|on| self.ring.arm_rx(on));
    }

    /// Ends a registration made with [`arm`](Self::arm).
    pub(crate) fn disarm(&self) {
        self.armed.disarm(|on| self.ring.arm_rx(on));
    }

    /// The descriptors `conduit::wait` and async receivers watch: the
    /// doorbell and the presence socket.
    pub(crate) fn wait_handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        out.push(self.data.as_fd());
        out.push(self.presence.as_fd());
    }

    /// New descriptors for a handoff: `[data, presence, ring, others]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedFd>> {
        handoff_fds(&self.data, &self.presence, &self.ring, &self.others)
    }

    /// Rebuilds a consumer's end from [`RxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedFd>) -> Result<RxEnd> {
        let (data, presence, ring, others) = from_handles(handles, "receiver", 4)?;
        let others =
            others.ok_or_else(|| Error::protocol("a queue receiver without its doorbell"))?;
        Ok(RxEnd::new(presence, data, others, ring))
    }
}

impl Drop for RxEnd {
    fn drop(&mut self) {
        self.ring.count_rx(false);
        self.armed.clear(|on| self.ring.arm_rx(on));
    }
}

/// An end's doorbell registrations, counted here as in the ring (through
/// `count`), so that dropping the end takes back every one it made.
#[derive(Debug, Default)]
struct Registrations(AtomicU32);

impl Registrations {
    fn arm(&self, count: impl Fn(bool)) {
        self.0.fetch_add(1, SeqCst);
        count(true);
    }

    /// Undoes one registration, if this end has any.
    fn disarm(&self, count: impl Fn(bool)) {
        if self
            .0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            count(false);
        }
    }

    /// Undoes them all.
    fn clear(&self, count: impl Fn(bool)) {
        for _ in 0..self.0.swap(0, SeqCst) {
            count(false);
        }
    }

    fn any(&self) -> bool {
        self.0.load(SeqCst) > 0
    }
}

/// New descriptors of an end for a handoff: `[data, presence, ring,
/// others]`, the order `from_handles` reads.
fn handoff_fds(
    data: &OwnedFd,
    presence: &OwnedFd,
    ring: &Ring,
    others: &OwnedFd,
) -> io::Result<Vec<OwnedFd>> {
    Ok(vec![
        data.try_clone()?,
        presence.try_clone()?,
        ring.handle()?,
        others.try_clone()?,
    ])
}
