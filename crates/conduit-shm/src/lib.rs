//! Shared-memory transport for [conduit](https://docs.rs/conduit): one
//! single-producer, single-consumer ring of variable-length messages per
//! direction, with blocking wake-ups and prompt detection of a dead peer.
//!
//! Applications use `conduit::shm::{channel, duplex, channel_with,
//! duplex_with}`; this crate gives the byte-level endpoints
//! ([`ShmSender`], [`ShmReceiver`]) and their configuration ([`ShmConfig`]).
//!
//! # The segment
//!
//! A one-way channel is one segment (a duplex connection is two). It is
//! created without a global name where the OS allows: a sealed `memfd` on
//! Linux, an `shm_open` object whose random name is unlinked right after
//! creation on macOS, an unnamed pagefile-backed section on Windows. It is
//! readable and writable by the current user only (mode 0600; on Windows it
//! has no name and is reachable only through handles), is not inherited by
//! any child, and is handed to a child as a handle by `conduit::handoff`.
//!
//! Layout (offsets in bytes; every control word is a `u32` in the machine's
//! byte order, accessed atomically; each group sits on its own 128-byte line
//! so that the sender's and the receiver's hot words never share a cache
//! line):
//!
//! | offset | word | written by | meaning |
//! |-------:|------|------------|---------|
//! | 0 | magic | creator | `"CNDS"` |
//! | 4 | version | creator | 4 |
//! | 8 | codec | creator | codec id ([`conduit_core::Codec::ID`]: 1 = CBOR, 2 = postcard) |
//! | 12 | max frame | creator | largest message, bytes |
//! | 16 | capacity | creator | ring bytes, a power of two |
//! | 20 | data offset | creator | 1024 |
//! | 128 | (reserved) | | the tail index of protocol v1, unused |
//! | 256 | head | receiver | bytes ever consumed, mod 2³² |
//! | 384 | rx wait | receiver | park episode; odd while the receiver is parked |
//! | 388 | rx bell | sender | bumped before waking the receiver, which parks on it |
//! | 392 | rx closed | receiver | 1 once the receiver is gone |
//! | 396 | rx door | receiver sets, sender clears | 1 while the receiver waits on its lifeline descriptor (doorbell, below) |
//! | 512 | tx wait | sender | park episode; odd while the sender waits for space |
//! | 516 | tx bell | receiver | bumped before waking the sender, which parks on it |
//! | 520 | tx closed | sender | 1 once the sender is gone |
//! | 524 | tx door | sender sets, receiver clears | 1 while the sender waits on its lifeline descriptor for room |
//! | 1024 | data | sender | `capacity` bytes of records |
//!
//! A record starts at a ring position that is a multiple of 16 and never
//! wraps around the end of the ring. Its 16-byte header is `len` (payload
//! bytes), `kind`, `total` and `pos` (the ring position the record was
//! written at: bytes ever written before it, mod 2³²), followed by the
//! payload padded to a multiple of 16. Kinds: 0 = empty (not written yet); 1 = a whole
//! message; 2/3/4 = first/middle/last piece of a message streamed in pieces
//! (the first carries the message's `total` length); 5 = padding up to the
//! end of the ring.
//!
//! **Publication.** There is no shared tail index: the sender writes a
//! record's payload, `len` and `total`, then stores its `kind` (a
//! sequentially consistent store), and that store publishes it. Before that,
//! it stores `kind = 0` in the slot right after the record, where the next
//! record will go, so the receiver, having consumed this record, finds an
//! empty slot rather than what an earlier lap of the ring left there. (When a
//! record goes to the start of the ring after padding, the record is
//! complete before the padding that leads to it is published.) The receiver
//! watches the `kind` word at its head: one cache line carries both the
//! "something arrived" signal and the start of the message, which saves a
//! cache-line transfer per message against a separate tail word (protocol
//! v1) and is what the 64-byte round trip pays for. Messages whose
//! record fits in half the ring are written whole; larger ones, up to `max_frame` whatever the ring size, are streamed in
//! pieces of at most a quarter of the ring and reassembled by the receiver.
//!
//! # Invariants, and how they are enforced
//!
//! The mapping is untrusted input: the peer may be buggy or hostile, and may
//! write anything anywhere at any time. So:
//!
//! 1. Each side keeps its own index (sender: tail, receiver: head) in a local
//!    variable, which is authoritative; the receiver only ever *stores* its
//!    head to the segment, the sender keeps its tail to itself. Index
//!    arithmetic uses the capacity from this side's own configuration, never
//!    the one in the segment.
//! 2. The sender loads the receiver's head once, then checks it: it may only
//!    move forward, and not past the tail. A violation is `Protocol` and
//!    closes the channel.
//! 3. A record header is loaded word by word with atomic loads into locals and
//!    checked before use: a known kind; `len` (or a first piece's `total`) at
//!    most `max_frame`, else `TooLarge` — before anything is allocated; the
//!    whole record inside the ring (a record that would run past the ring's
//!    end is `Protocol`); pieces in order and adding up exactly to `total`.
//!    The reassembly buffer is allocated only after `total` passed the
//!    `max_frame` check.
//! 4. Every access to the data area goes through `mem::Region`, which
//!    bounds-checks offset and length against the capacity, so no value read
//!    from the segment can make this process touch memory outside the
//!    mapping. The segment cannot shrink under the mapping (Linux: the memfd
//!    is sealed and the seal is checked on import; macOS and Windows cannot
//!    resize such objects), so accesses cannot fault.
//! 5. The header words are compared with this side's configuration whenever
//!    the receiver looks at the ring; a mismatch (wrong magic, version, codec,
//!    `max_frame` or capacity) is `Protocol`.
//! 6. Nothing is read twice. A record counts as published at the head only
//!    when its kind is not `EMPTY` *and* its `pos` word equals the head; the
//!    head only moves forward (by whole records, or by padding to the ring's
//!    end — padding at the ring's start is `Protocol`), so a record left from
//!    an earlier lap, which a killed or hostile sender can expose, is "not
//!    published yet" and the receiver waits (and notices a dead sender)
//!    instead of delivering it again.
//! 7. Every loop over shared state is bounded: each turn consumes a record
//!    or waits, the deadline is checked every 64 turns, and a wait always
//!    ends by the deadline or the liveness interval.
//! 8. No Rust reference to peer-writable memory is formed: payloads are
//!    copied out through raw pointers (`mem::Region::copy_out`) before
//!    anything reads them, also for `recv_with`, which lends the private
//!    copy (a `&[u8]` over bytes another process may write is undefined
//!    behaviour, and a hostile peer would write them).
//!
//! A hostile peer can therefore make this side fail with `Protocol`,
//! `TooLarge` or `Disconnected`, deliver garbage (a `Decode` error in the
//! typed layer), or wait until its deadline — never read or write out of
//! bounds, allocate more than `max_frame`, loop, or panic.
//!
//! # Blocking and waking
//!
//! A side that finds nothing to do spins for [`ShmConfig::spin`], then parks:
//! on Linux on a shared futex, on macOS with `__ulock_wait` (the same
//! mechanism, cross-process), on Windows on an auto-reset event handed over
//! with the segment. The parked side sets its own "wait" word to an odd
//! episode number, reads its bell, looks at the ring once more and parks on
//! the bell. The other side, after publishing (a record's kind word or the
//! head, a sequentially consistent store), reads that word and, if it shows an episode it has not
//! woken yet, bumps the bell and wakes it. Only the sleeper ever writes its
//! wait word, so a late waker cannot erase a later park (the classic lost
//! wake-up), and a busy stream of messages costs no system call unless the
//! peer actually sleeps.
//!
//! # Doorbell: `conduit::wait` and async
//!
//! A futex cannot be watched by `poll(2)` or a reactor, so a receiver that
//! waits with `conduit::wait` (or an async receiver about to sleep) watches
//! its lifeline socket instead (Unix; see *Peer death*). On Windows the
//! doorbell is the event the receiver parks on, which a wait can watch: a
//! ring sets it (the event latches until a wait consumes it), and, since
//! the lifeline pipes signal no handle, such waits end every 100 ms to
//! look at them. Before it waits it
//! drains the socket, sets its "door" word to 1 (sequentially consistent)
//! and looks at the ring once more; a sender, after publishing, loads that
//! word and, if it is 1, swaps it to 0 and writes one byte to the socket
//! (non-blocking: a full socket is readable already). The swap makes it one
//! byte per registration, so a busy stream costs no system call unless the
//! receiver actually waits; the same store/load order as parking rules out a
//! lost ring. A sender that closes its end rings too, and a dead sender's
//! end of the socket reads end-of-file. The sender's "tx door" works the
//! same way for an async sender waiting for room. A hostile peer can only
//! make the other side wake up for nothing, or stop ringing (then the
//! waiting side sees nothing new until its deadline, as with parking).
//!
//! # Peer death
//!
//! Besides the segment, the two sides share a lifeline: one socket pair on
//! Unix, two anonymous pipes on Windows. Nobody writes to it but the
//! doorbell (Unix; a side tells doorbell bytes from end-of-file); the OS closes
//! a process's end when it exits or is killed. A park lasts at most
//! [`ShmConfig::liveness_interval`] (100 ms by default); when it times out,
//! the side checks the lifeline without blocking and, if the peer is gone,
//! returns `Disconnected` (after delivering every message the peer published
//! before). That check is off the hot path: it only runs after a whole
//! interval of idleness, costing an idle receiver two system calls every
//! 100 ms. Calls that never park check the lifeline themselves, at most
//! every 5 ms: a `try_recv` or short `recv_timeout` that finds nothing, and
//! a send into a ring with room, which reads the clock every 16 sends (so
//! sends to a killed receiver succeed for at most 5 ms or 16 sends after
//! its death, whichever is more). A peer that drops its endpoint sets its "closed" word and
//! wakes this side at once.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The longest an async endpoint spins before it waits on the reactor: the
/// configured spin, capped so that one endpoint cannot hold a runtime
/// thread for long.
const ASYNC_SPIN_MAX: Duration = Duration::from_micros(20);

use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit_core::transport::{self, Package};
#[cfg(any(test, feature = "testing"))]
use conduit_core::TestHooks;
use conduit_core::{
    Codec, Error, FrameConfig, FrameReceiver, FrameSender, Result, DEFAULT_MAX_FRAME,
};

mod layout;
mod mem;
mod ring;
mod sys;

use layout::{DATA_OFFSET, MAX_CAPACITY, MIN_CAPACITY};
use mem::Region;
use ring::{Consumer, Params, Producer};
use sys::{Link, Segment};

/// Shared-memory segments for conduit's other crates (the queue keeps its
/// counters in one). Not a stable API.
#[doc(hidden)]
pub mod segment {
    pub use crate::sys::Segment;
}

/// The transport's name, as it appears in handoff tokens and `transport()`.
pub const TRANSPORT: &str = "shm";

// Anonymous pairs with the default ShmConfig for a FrameConfig.
conduit_core::describe_transport!(TRANSPORT, pairs: Some(transport::Pairs {
    channel: |cfg| channel(ShmConfig::from(cfg)).map(transport::boxed_channel),
    duplex: |cfg| duplex(ShmConfig::from(cfg)).map(transport::boxed_duplex),
}));

/// Version of the handoff parameters (the first meta number).
const META_VERSION: u64 = 1;

/// Configuration of a shared-memory channel.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use conduit_shm::ShmConfig;
/// let cfg = ShmConfig::default()
///     .with_capacity(256 << 10)
///     .with_max_frame(16 << 20)
///     .with_spin(Duration::from_micros(20));
/// assert_eq!(cfg.capacity, 256 << 10);
/// use conduit_core::{FrameReceiver, FrameSender};
/// let (mut tx, mut rx) = conduit_shm::channel(cfg).unwrap();
/// // Larger than the ring: streamed in pieces while the receiver takes them.
/// let sender = std::thread::spawn(move || tx.send_frame(&vec![7; 1 << 20]));
/// let mut out = Vec::new();
/// rx.recv_frame(&mut out, None).unwrap();
/// assert_eq!(out.len(), 1 << 20);
/// sender.join().unwrap().unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShmConfig {
    /// Bytes of ring per direction, rounded up to a power of two between
    /// 4 KiB and 1 GiB (default 4 MiB). Messages up to half of it are written
    /// whole; larger ones are streamed through it in pieces. Pages are
    /// allocated as the ring first cycles through them, so a busy channel
    /// ends up holding the whole capacity: lower it when you open many
    /// channels of small messages (1 MiB messages still move at about half of
    /// `memcpy` speed with a 1 MiB ring, and at `memcpy` speed with 4 MiB).
    pub capacity: usize,
    /// The largest message in bytes (default 64 MiB); both ends must agree.
    pub max_frame: u32,
    /// The codec id, from the [`FrameConfig`] this config was made from
    /// (CBOR by default); private so that it cannot disagree with the
    /// typed endpoints' codec.
    codec: u8,
    /// How long a side spins before it parks (default 50 µs). Spinning
    /// avoids the cost of a wake-up (tens of µs across cores) when the peer
    /// answers quickly; zero parks at once.
    pub spin: Duration,
    /// The longest a parked side sleeps before it checks that the peer's
    /// process is still alive (default 100 ms; at least 1 ms): the bound on
    /// how late a killed peer is noticed by a blocked call. Calls that do
    /// not park (sends while the ring has room, receives whose deadline has
    /// passed) check every 5 ms.
    pub liveness_interval: Duration,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            capacity: 4 << 20,
            max_frame: DEFAULT_MAX_FRAME,
            codec: <conduit_core::Cbor as Codec>::ID,
            spin: Duration::from_micros(50),
            liveness_interval: Duration::from_millis(100),
        }
    }
}

impl From<FrameConfig> for ShmConfig {
    /// The default shared-memory configuration with `cfg`'s maximum frame
    /// size and codec.
    fn from(cfg: FrameConfig) -> Self {
        ShmConfig {
            max_frame: cfg.max_frame,
            codec: cfg.codec(),
            ..ShmConfig::default()
        }
    }
}

impl ShmConfig {
    /// The codec id both ends check.
    pub fn codec(&self) -> u8 {
        self.codec
    }

    /// Returns the config with another ring capacity.
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Returns the config with another maximum frame size.
    #[must_use]
    pub fn with_max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Returns the config with another spin bound.
    #[must_use]
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Returns the config with another liveness interval.
    #[must_use]
    pub fn with_liveness_interval(mut self, interval: Duration) -> Self {
        self.liveness_interval = interval;
        self
    }

    fn params(&self) -> Result<Params> {
        let cap = self
            .capacity
            .max(MIN_CAPACITY as usize)
            .checked_next_power_of_two()
            .filter(|c| *c <= MAX_CAPACITY as usize)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "shm ring capacity {} is above the limit of {MAX_CAPACITY} bytes",
                    self.capacity
                ))
            })?;
        Ok(Params {
            cap: cap as u32,
            max_frame: self.max_frame,
            codec: self.codec,
            spin: self.spin,
            tick: self.liveness_interval.max(Duration::from_millis(1)),
        })
    }
}

fn new_ring(p: &Params) -> Result<(Region, Link, Link)> {
    let seg = Segment::create(DATA_OFFSET + p.cap as usize)?;
    let region = Region::new(Arc::new(seg), p.cap)?;
    ring::init_header(&region, p);
    let (tx_link, rx_link) = Link::pair()?;
    Ok((region, tx_link, rx_link))
}

/// Creates a one-way byte-level channel over a new segment.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameReceiver, FrameSender};
/// let (mut tx, mut rx) = conduit_shm::channel(Default::default()).unwrap();
/// tx.send_frame(b"hi").unwrap();
/// let mut got = Vec::new();
/// rx.recv_with(None, &mut |frame| got.extend_from_slice(frame)).unwrap();
/// assert_eq!(got, b"hi");
/// ```
pub fn channel(cfg: ShmConfig) -> Result<(ShmSender, ShmReceiver)> {
    let p = cfg.params()?;
    let (region, tx_link, rx_link) = new_ring(&p)?;
    Ok((
        ShmSender {
            inner: Some(Producer::new(region.clone(), tx_link, p, 0)),
        },
        ShmReceiver {
            inner: Some(Consumer::new(region, rx_link, p, 0)),
        },
    ))
}

/// A byte-level duplex endpoint: the sender of one ring, the receiver of the other.
pub type DuplexEnd = (ShmSender, ShmReceiver);

/// Creates a duplex byte-level connection over two segments.
///
/// # Examples
///
/// ```
/// use conduit_core::{FrameReceiver, FrameSender};
/// let ((mut a_tx, _a_rx), (_b_tx, mut b_rx)) = conduit_shm::duplex(Default::default()).unwrap();
/// a_tx.send_frame(b"ping").unwrap();
/// let mut buf = Vec::new();
/// b_rx.recv_frame(&mut buf, None).unwrap();
/// assert_eq!(buf, b"ping");
/// ```
pub fn duplex(cfg: ShmConfig) -> Result<(DuplexEnd, DuplexEnd)> {
    let (a_tx, b_rx) = channel(cfg)?;
    let (b_tx, a_rx) = channel(cfg)?;
    Ok(((a_tx, a_rx), (b_tx, b_rx)))
}

fn gone() -> Error {
    Error::disconnected("the endpoint was handed off")
}

/// The sending half of a shared-memory channel.
#[derive(Debug)]
pub struct ShmSender {
    /// `None` once exported.
    inner: Option<Producer>,
}

/// The receiving half of a shared-memory channel.
#[derive(Debug)]
pub struct ShmReceiver {
    /// `None` once exported.
    inner: Option<Consumer>,
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        if let Some(p) = &mut self.inner {
            p.close();
        }
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if let Some(c) = &mut self.inner {
            c.close_on_drop();
        }
    }
}

fn package(region: &Region, link: Link, p: &Params, index: u32) -> Result<Package> {
    let seg = region
        .segment()
        .clone_handle()
        .map_err(|e| Error::from_io("cannot duplicate the shm segment handle", e))?;
    let mut handles = vec![seg];
    handles.extend(link.into_handles());
    Ok(Package {
        transport: TRANSPORT.to_string(),
        handles,
        meta: vec![
            META_VERSION,
            u64::from(p.cap),
            u64::from(p.max_frame),
            u64::from(p.codec),
            u64::try_from(p.spin.as_nanos()).unwrap_or(u64::MAX),
            u64::try_from(p.tick.as_nanos()).unwrap_or(u64::MAX),
            0, // reserved (was: zero-copy lending, removed)
            u64::from(index),
        ],
    })
}

/// Rebuilds the shared parts of an endpoint from a handoff package.
fn unpack(package: Package) -> Result<(Region, Link, Params, u32)> {
    let bad = || Error::invalid_input("bad shm parameters in handoff token");
    let (p, index) = match package.meta[..] {
        [META_VERSION, cap, max, codec, spin, tick, 0, index, ..]
            if u32::try_from(cap).is_ok_and(|c| {
                c.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&c)
            }) && max <= u64::from(u32::MAX)
                && codec <= 255
                && tick >= 1_000_000
                && index <= u64::from(u32::MAX) =>
        {
            (
                Params {
                    cap: cap as u32,
                    max_frame: max as u32,
                    codec: codec as u8,
                    spin: Duration::from_nanos(spin),
                    tick: Duration::from_nanos(tick),
                },
                index as u32,
            )
        }
        _ => return Err(bad()),
    };
    if package.handles.len() != 1 + Link::HANDLES {
        return Err(Error::invalid_input(format!(
            "an shm endpoint is made of {} handles, the token has {}",
            1 + Link::HANDLES,
            package.handles.len()
        )));
    }
    let mut handles = package.handles.into_iter();
    let seg = handles.next().ok_or_else(bad)?;
    let link = Link::from_handles(handles.collect())?;
    let seg = Segment::open(seg, DATA_OFFSET + p.cap as usize)?;
    let region = Region::new(Arc::new(seg), p.cap)?;
    ring::check_header(&region, &p)?;
    Ok((region, link, p, index))
}

/// Rebuilds a sender handed over by `conduit::handoff`.
pub fn import_sender(package: Package) -> Result<ShmSender> {
    let (region, link, p, tail) = unpack(package)?;
    Ok(ShmSender {
        inner: Some(Producer::new(region, link, p, tail)),
    })
}

/// Rebuilds a receiver handed over by `conduit::handoff`.
pub fn import_receiver(package: Package) -> Result<ShmReceiver> {
    let (region, link, p, head) = unpack(package)?;
    if head % layout::RECORD_HEADER != 0 {
        return Err(Error::invalid_input(
            "bad shm receiver position in handoff token",
        ));
    }
    Ok(ShmReceiver {
        inner: Some(Consumer::new(region, link, p, head)),
    })
}

#[cfg(any(test, feature = "testing"))]
fn poke(region: &Region, offset: u64, bytes: &[u8]) -> Result<u64> {
    region.poke(offset, bytes)?;
    Ok(region.segment_len() as u64)
}

impl FrameSender for ShmSender {
    fn send_frame_until(&mut self, frame: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.inner.as_mut().ok_or_else(gone)?.send(frame, deadline)
    }

    fn spin_hint(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |p| p.spin().min(ASYNC_SPIN_MAX))
    }

    fn send_wait_arm(&mut self) {
        if let Some(p) = &mut self.inner {
            p.wait_arm();
        }
    }

    fn send_wait_disarm(&mut self) {
        if let Some(p) = &mut self.inner {
            p.wait_disarm();
        }
    }

    fn send_wait_handles<'a>(
        &'a self,
        out: &mut Vec<(conduit_core::WaitHandle<'a>, conduit_core::WaitFor)>,
    ) {
        if let Some(h) = self.inner.as_ref().and_then(|p| p.wait_handle()) {
            out.push((h, conduit_core::WaitFor::Read));
        }
    }

    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn codec(&self) -> Option<u8> {
        self.inner.as_ref().map(|p| p.params().codec)
    }

    fn export(mut self: Box<Self>) -> Result<Package> {
        let producer = self.inner.take().ok_or_else(gone)?;
        if let Some(e) = producer.broken() {
            return Err(Error::new(
                e.kind(),
                format!(
                    "cannot hand off a sender whose channel is closed: {}",
                    e.message()
                ),
            ));
        }
        let (region, link, p, tail) = producer.into_parts();
        package(&region, link, &p, tail)
    }

    #[cfg(any(test, feature = "testing"))]
    fn test_hooks(&mut self) -> Option<&mut dyn TestHooks> {
        Some(self)
    }
}

#[cfg(any(test, feature = "testing"))]
impl TestHooks for ShmSender {
    /// Copies `bytes` verbatim into the ring at the tail and publishes them.
    fn send_unframed(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.as_mut().ok_or_else(gone)?.send_raw(bytes)
    }

    fn poke_shared(&mut self, offset: u64, bytes: &[u8]) -> Result<u64> {
        poke(
            self.inner.as_ref().ok_or_else(gone)?.region(),
            offset,
            bytes,
        )
    }
}

impl FrameReceiver for ShmReceiver {
    fn recv_frame(&mut self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        self.inner
            .as_mut()
            .ok_or_else(gone)?
            .recv_frame(out, deadline)
    }

    fn recv_with(&mut self, deadline: Option<Instant>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.inner.as_mut().ok_or_else(gone)?.recv_with(deadline, f)
    }

    fn poll_frame(&mut self, deadline: Option<Instant>) -> Result<bool> {
        self.inner.as_mut().ok_or_else(gone)?.poll(deadline)
    }

    fn spin_hint(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |c| c.spin().min(ASYNC_SPIN_MAX))
    }

    fn wait_arm(&mut self) -> Result<bool> {
        self.inner.as_mut().ok_or_else(gone)?.wait_arm()
    }

    fn wait_disarm(&mut self) {
        if let Some(c) = &mut self.inner {
            c.wait_disarm();
        }
    }

    fn wait_handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        if let Some(c) = &self.inner {
            out.extend(c.wait_handle());
        }
    }

    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn codec(&self) -> Option<u8> {
        self.inner.as_ref().map(|c| c.params().codec)
    }

    fn export(mut self: Box<Self>) -> Result<Package> {
        let consumer = self.inner.take().ok_or_else(gone)?;
        let (region, link, p, head) = consumer.into_parts()?;
        package(&region, link, &p, head)
    }

    #[cfg(any(test, feature = "testing"))]
    fn test_hooks(&mut self) -> Option<&mut dyn TestHooks> {
        Some(self)
    }
}

#[cfg(any(test, feature = "testing"))]
impl TestHooks for ShmReceiver {
    fn poke_shared(&mut self, offset: u64, bytes: &[u8]) -> Result<u64> {
        poke(
            self.inner.as_ref().ok_or_else(gone)?.region(),
            offset,
            bytes,
        )
    }
}

#[cfg(test)]
mod tests;
