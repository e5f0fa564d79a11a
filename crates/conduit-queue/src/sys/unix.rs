//! Unix: one datagram socket pair carries the messages, one stream socket
//! pair counts the participants.
//!
//! - **Data.** `SOCK_SEQPACKET` on Linux, `SOCK_DGRAM` on macOS (which has no
//!   `AF_UNIX` seqpacket). Every producer holds a descriptor of the same
//!   sending socket, every consumer one of the same receiving socket. The
//!   kernel moves each datagram whole and takes it off the queue for exactly
//!   one `recvmsg`, so a process killed in `sendmsg` either sent its message
//!   or did not, and one killed in `recvmsg` either took one message or none:
//!   there is no lock and no shared index to leave half-updated. The
//!   capacity is the sending socket's buffer (`SO_SNDBUF`).
//! - **Large messages.** A datagram carries at most [`INLINE_MAX`] payload
//!   bytes; a larger message is written to an anonymous memory file (a
//!   `memfd` on Linux, an unlinked private file on macOS) whose descriptor
//!   travels inside its datagram (`SCM_RIGHTS`), so it still arrives whole
//!   or not at all. The receiver checks that it is a regular file of the
//!   announced size and copies it out with `pread`.
//! - **Presence.** Producers hold one end of a stream socket pair, consumers
//!   the other; nobody writes to it. When the last producer's descriptor
//!   closes (drop, exit or kill), the consumers' end reads end-of-file, and
//!   the other way round. A receiver that finds the queue empty and the
//!   producers gone drains once more and reports `Disconnected`.
//!
//! Waiting is `poll` on the data and presence descriptors with the caller's
//! deadline; every consumer wakes for a message and the ones that lose the
//! race go back to waiting.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use conduit_core::transport::sys as core_sys;
use conduit_core::{Error, ErrorKind, Result};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};

use crate::wire::{self, Header, HEADER_LEN};

/// The largest payload sent inside a datagram; larger ones are spilled.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// What a producer holds.
#[derive(Debug)]
pub(crate) struct TxEnd {
    // Dropped first, so consumers see the end on the presence socket and
    // drain the data socket before reporting it.
    presence: OwnedFd,
    data: OwnedFd,
    /// Payloads above this go through a memory file (`INLINE_MAX`, or less
    /// when the socket buffer is smaller).
    inline_max: usize,
}

/// What a consumer holds.
#[derive(Debug)]
pub(crate) struct RxEnd {
    presence: OwnedFd,
    data: OwnedFd,
}

#[cfg(not(target_vendor = "apple"))]
const DATA_TYPE: SocketType = SocketType::SEQPACKET;
#[cfg(target_vendor = "apple")]
const DATA_TYPE: SocketType = SocketType::DGRAM;

#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT.union(SendFlags::NOSIGNAL);
// macOS has no MSG_NOSIGNAL; the sockets are made with SO_NOSIGPIPE.
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT;

#[cfg(not(target_vendor = "apple"))]
const RECV_FLAGS: RecvFlags = RecvFlags::DONTWAIT.union(RecvFlags::CMSG_CLOEXEC);
#[cfg(target_vendor = "apple")]
const RECV_FLAGS: RecvFlags = RecvFlags::DONTWAIT;

fn io_err(what: &str, e: impl Into<io::Error>) -> Error {
    Error::from_io(what, e.into())
}

/// A new queue: the producers' and the consumers' first ends.
pub(crate) fn pair(capacity: usize) -> Result<(TxEnd, RxEnd)> {
    let (data_tx, data_rx) = core_sys::socketpair_of(DATA_TYPE)
        .map_err(|e| io_err("cannot create the queue's socket pair", e))?;
    let (pres_tx, pres_rx) = core_sys::socketpair()
        .map_err(|e| io_err("cannot create the queue's presence sockets", e))?;
    // The kernel may round or cap the sizes (Linux caps at
    // net.core.wmem_max); the datagram limit follows from what it kept.
    let size = capacity.min(i32::MAX as usize);
    rustix::net::sockopt::set_socket_send_buffer_size(&data_tx, size)
        .map_err(|e| io_err("cannot size the queue's buffer", e))?;
    // Best effort: on Linux a unix datagram's room is the sender's buffer;
    // macOS also checks the receiver's.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&data_rx, size);
    let tx = TxEnd::new(data_tx, pres_tx)?;
    Ok((
        tx,
        RxEnd {
            data: data_rx,
            presence: pres_rx,
        },
    ))
}

impl TxEnd {
    fn new(data: OwnedFd, presence: OwnedFd) -> Result<TxEnd> {
        let buf = rustix::net::sockopt::socket_send_buffer_size(&data)
            .map_err(|e| io_err("cannot read the queue's buffer size", e))?;
        // Leave room for the kernel's per-datagram overhead.
        let inline_max = INLINE_MAX.min(buf / 2).max(256);
        Ok(TxEnd {
            data,
            presence,
            inline_max,
        })
    }

    /// Sends one message, waiting for room until `deadline` (`Some(now)`:
    /// not at all). `Timeout` when no room came in time; nothing was sent.
    pub(crate) fn send(&self, payload: &[u8], deadline: Option<Instant>) -> Result<()> {
        let spilled = if payload.len() > self.inline_max {
            Some(spill(payload)?)
        } else {
            None
        };
        let header = Header::new(payload.len(), spilled.is_some()).encode();
        let body: &[u8] = if spilled.is_some() { &[] } else { payload };
        match self.send_until(&header, body, spilled.as_ref(), deadline)? {
            Ok(()) => Ok(()),
            // The kernel kept a smaller buffer than it reported: spill this one.
            Err(Errno::MSGSIZE | Errno::NOBUFS) if spilled.is_none() => {
                let file = spill(payload)?;
                let header = Header::new(payload.len(), true).encode();
                self.send_until(&header, &[], Some(&file), deadline)?
                    .map_err(|e| io_err("cannot send to the queue", e))
            }
            Err(e) => Err(io_err("cannot send to the queue", e)),
        }
    }

    /// Sends one datagram, waiting for room until `deadline`. The outer
    /// error is a crate error (timeout, receivers gone, wait failure); the
    /// inner one an errno of `sendmsg` for the caller to judge.
    fn send_until(
        &self,
        header: &[u8; HEADER_LEN],
        body: &[u8],
        file: Option<&OwnedFd>,
        deadline: Option<Instant>,
    ) -> Result<std::result::Result<(), Errno>> {
        loop {
            match send_datagram(self.data.as_fd(), header, body, file) {
                Ok(()) => return Ok(Ok(())),
                Err(Errno::AGAIN) => {}
                Err(Errno::PIPE | Errno::CONNREFUSED | Errno::NOTCONN | Errno::CONNRESET) => {
                    return Err(receivers_gone());
                }
                Err(e) => return Ok(Err(e)),
            }
            if !self.wait(PollFlags::OUT, deadline)? {
                return Err(Error::timeout("the queue stayed full until the deadline"));
            }
        }
    }

    /// Waits until the data socket has room or the consumers are gone; false
    /// at the deadline.
    fn wait(&self, flags: PollFlags, deadline: Option<Instant>) -> Result<bool> {
        match wait_two(self.data.as_fd(), flags, self.presence.as_fd(), deadline)? {
            Ready::Data => Ok(true),
            Ready::Presence => {
                if peer_gone(self.presence.as_fd())? {
                    Err(receivers_gone())
                } else {
                    Ok(true)
                }
            }
            Ready::Timeout => Ok(false),
        }
    }

    /// An async sender's attempt that does not wait: one non-blocking
    /// datagram.
    #[cfg(feature = "tokio")]
    pub(crate) fn send_now(&self, payload: &[u8]) -> Result<()> {
        self.send(payload, crate::no_wait())
    }

    /// The descriptors an async sender waits on: room on the data socket,
    /// and the presence socket (end-of-file once every consumer is gone).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_handles<'a>(
        &'a self,
        out: &mut Vec<(conduit_core::WaitHandle<'a>, conduit_core::WaitFor)>,
    ) {
        out.push((self.data.as_fd(), conduit_core::WaitFor::Write));
        out.push((self.presence.as_fd(), conduit_core::WaitFor::Read));
    }

    /// True once every consumer's end is closed.
    pub(crate) fn receivers_gone(&self) -> Result<bool> {
        peer_gone(self.presence.as_fd())
    }

    /// New descriptors for a handoff: `[data, presence]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedFd>> {
        Ok(vec![self.data.try_clone()?, self.presence.try_clone()?])
    }

    /// Rebuilds a producer's end from [`TxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedFd>) -> Result<TxEnd> {
        let [data, presence]: [OwnedFd; 2] = handles
            .try_into()
            .map_err(|_| Error::protocol("a queue sender is made of 2 descriptors"))?;
        check_socket(&data, DATA_TYPE)?;
        check_socket(&presence, SocketType::STREAM)?;
        TxEnd::new(data, presence)
    }
}

thread_local! {
    /// Receive buffer, one per thread: several threads may receive from one
    /// end at once without sharing (or waiting for) a buffer.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl RxEnd {
    /// Receives one message, waiting until `deadline` (`Some(now)`: not at
    /// all). `Timeout` when none came; `Disconnected` once the queue is
    /// empty and every producer is gone.
    pub(crate) fn recv(&self, _max: usize, deadline: Option<Instant>) -> Result<Vec<u8>> {
        BUF.with(|buf| self.recv_with(&mut buf.borrow_mut(), deadline))
    }

    fn recv_with(&self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Vec<u8>> {
        loop {
            if let Some(msg) = self.take(buf)? {
                return Ok(msg);
            }
            if peer_gone(self.presence.as_fd())? {
                // Producers send before they close: whatever they sent is
                // queued by now. Drain it, then report the end.
                return match self.take(buf)? {
                    Some(msg) => Ok(msg),
                    None => Err(senders_gone()),
                };
            }
            match wait_two(
                self.data.as_fd(),
                PollFlags::IN,
                self.presence.as_fd(),
                deadline,
            )? {
                Ready::Timeout => return Err(Error::timeout("no message arrived in time")),
                Ready::Data | Ready::Presence => {}
            }
        }
    }

    /// True when a receive would not block (a message or the end is there),
    /// waiting up to `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> Result<bool> {
        loop {
            let mut fds = [
                PollFd::new(&self.data, PollFlags::IN),
                PollFd::new(&self.presence, PollFlags::IN),
            ];
            poll_until(&mut fds, Some(Instant::now()))?;
            if !fds[0].revents().is_empty() || peer_gone(self.presence.as_fd())? {
                return Ok(true);
            }
            match wait_two(
                self.data.as_fd(),
                PollFlags::IN,
                self.presence.as_fd(),
                deadline,
            )? {
                Ready::Timeout => return Ok(false),
                Ready::Data | Ready::Presence => {}
            }
        }
    }

    /// The descriptors `conduit::wait` watches: the data socket and the
    /// presence socket (end-of-file once every producer is gone).
    pub(crate) fn wait_handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        out.push(self.data.as_fd());
        out.push(self.presence.as_fd());
    }

    /// One datagram if one is queued.
    fn take(&self, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
        buf.resize(HEADER_LEN + INLINE_MAX + 1, 0);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let (n, truncated) = loop {
            let mut iov = [IoSliceMut::new(buf)];
            match rustix::net::recvmsg(&self.data, &mut iov, &mut control, RECV_FLAGS) {
                Ok(r) => break (r.bytes, r.flags.contains(rustix::net::ReturnFlags::TRUNC)),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_err("cannot receive from the queue", e)),
            }
        };
        // Take every descriptor that came along, so that none leaks, and
        // keep the first.
        let mut files: Vec<OwnedFd> = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                files.extend(rights);
            }
        }
        if n == 0 {
            // Linux seqpacket: end of file (every producer is gone; the
            // caller confirms with the presence socket). conduit never sends
            // an empty datagram; one from a misbehaving participant is
            // dropped here.
            return Ok(None);
        }
        if truncated {
            return Err(Error::protocol(format!(
                "a datagram larger than {} bytes arrived on the queue; a participant is misbehaving",
                HEADER_LEN + INLINE_MAX
            )));
        }
        let header = Header::decode(&buf[..n])?;
        if !header.spilled {
            return wire::inline_payload(&header, &buf[HEADER_LEN..n]).map(Some);
        }
        match (files.len(), files.pop()) {
            (1, Some(file)) => unspill(file, header.len).map(Some),
            _ => Err(Error::protocol(format!(
                "a spilled queue message came with {} descriptors instead of 1",
                files.len() + 1
            ))),
        }
    }

    /// New descriptors for a handoff: `[data, presence]`.
    pub(crate) fn handles(&self) -> io::Result<Vec<OwnedFd>> {
        Ok(vec![self.data.try_clone()?, self.presence.try_clone()?])
    }

    /// Rebuilds a consumer's end from [`RxEnd::handles`].
    pub(crate) fn from_handles(handles: Vec<OwnedFd>) -> Result<RxEnd> {
        let [data, presence]: [OwnedFd; 2] = handles
            .try_into()
            .map_err(|_| Error::protocol("a queue receiver is made of 2 descriptors"))?;
        check_socket(&data, DATA_TYPE)?;
        check_socket(&presence, SocketType::STREAM)?;
        Ok(RxEnd { data, presence })
    }
}

/// Doorbells for the Linux shared-memory ring (`sys/linux.rs`): the data
/// socket pair carries no messages there, only one-byte datagrams that
/// wake async and `conduit::wait` waiters (the pair is two-way: producers
/// ring consumers on it, consumers ring producers waiting for room).
#[cfg(target_os = "linux")]
pub(crate) mod bells {
    use super::*;

    /// Rings the other side: one byte, never waiting (a full socket has
    /// rung already; a gone side needs no ringing).
    pub(crate) fn ring(data: BorrowedFd<'_>) {
        let _ = rustix::net::send(data, &[1], SEND_FLAGS);
    }

    /// Takes every waiting doorbell off `data`.
    pub(crate) fn drain(data: BorrowedFd<'_>) {
        let mut b = [0u8; 16];
        // Bounded: a participant that keeps ringing cannot hold us here.
        for _ in 0..1024 {
            match rustix::net::recv(data, &mut b, RecvFlags::DONTWAIT) {
                Ok((n, _)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// True once the other side's presence socket is closed everywhere.
    pub(crate) fn gone(presence: BorrowedFd<'_>) -> Result<bool> {
        peer_gone(presence)
    }

    /// Waits until `data` or `presence` is readable (true) or `deadline`
    /// passes (false).
    pub(crate) fn wait_readable(
        data: BorrowedFd<'_>,
        presence: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        Ok(!matches!(
            wait_two(data, PollFlags::IN, presence, deadline)?,
            Ready::Timeout
        ))
    }

    /// Checks a handed data or presence socket.
    pub(crate) fn check(fd: &OwnedFd, stream: bool) -> Result<()> {
        check_socket(
            fd,
            if stream {
                SocketType::STREAM
            } else {
                DATA_TYPE
            },
        )
    }

    /// A new queue's data and presence socket pairs: `((data, presence)
    /// for producers, (data, presence) for consumers)`.
    pub(crate) fn sockets() -> Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd))> {
        let (data_tx, data_rx) = core_sys::socketpair_of(DATA_TYPE)
            .map_err(|e| io_err("cannot create the queue's socket pair", e))?;
        let (pres_tx, pres_rx) = core_sys::socketpair()
            .map_err(|e| io_err("cannot create the queue's presence sockets", e))?;
        Ok(((data_tx, pres_tx), (data_rx, pres_rx)))
    }
}

fn receivers_gone() -> Error {
    Error::disconnected("every receiver of the queue is gone (dropped, exited or killed)")
}

fn senders_gone() -> Error {
    Error::disconnected("the queue is empty and every sender is gone (dropped, exited or killed)")
}

fn check_socket(fd: &OwnedFd, ty: SocketType) -> Result<()> {
    match rustix::net::sockopt::socket_type(fd) {
        Ok(t) if t == ty => Ok(()),
        _ => Err(Error::protocol(
            "a handed queue descriptor is not the expected kind of socket",
        )),
    }
}

fn send_datagram(
    fd: BorrowedFd<'_>,
    header: &[u8],
    body: &[u8],
    file: Option<&OwnedFd>,
) -> std::result::Result<(), Errno> {
    let iov = [IoSlice::new(header), IoSlice::new(body)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let borrowed;
    if let Some(file) = file {
        borrowed = [file.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(Errno::NOBUFS);
        }
    }
    loop {
        match rustix::net::sendmsg(fd, &iov, &mut control, SEND_FLAGS) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The other side's presence socket is closed everywhere (reads EOF).
fn peer_gone(presence: BorrowedFd<'_>) -> Result<bool> {
    let mut byte = [0u8; 1];
    match rustix::net::recv(presence, &mut byte, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
        Ok((0, _)) => Ok(true),
        // Nobody writes to a presence socket; a participant that does is
        // misbehaving, but the other side is still there.
        Ok(_) => Ok(false),
        Err(Errno::AGAIN | Errno::INTR) => Ok(false),
        Err(Errno::CONNRESET) => Ok(true),
        Err(e) => Err(io_err("cannot check the queue's presence socket", e)),
    }
}

enum Ready {
    Data,
    Presence,
    Timeout,
}

fn wait_two(
    data: BorrowedFd<'_>,
    flags: PollFlags,
    presence: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<Ready> {
    let mut fds = [
        PollFd::new(&data, flags),
        PollFd::new(&presence, PollFlags::IN),
    ];
    if !poll_until(&mut fds, deadline)? {
        return Ok(Ready::Timeout);
    }
    if !fds[0].revents().is_empty() {
        Ok(Ready::Data)
    } else {
        Ok(Ready::Presence)
    }
}

/// Polls until something is ready (true) or the deadline passes (false).
fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> Result<bool> {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        match rustix::event::poll(fds, timeout.as_ref()) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("cannot wait on the queue", e)),
        }
    }
}

/// Writes a large payload into an anonymous memory file.
fn spill(payload: &[u8]) -> Result<OwnedFd> {
    let file = memory_file().map_err(|e| io_err("cannot create a file for a large message", e))?;
    let mut done = 0;
    while done < payload.len() {
        match rustix::io::pwrite(&file, &payload[done..], done as u64) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "cannot write a large queue message to its file: no space left",
                ))
            }
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("cannot write a large queue message to its file", e)),
        }
    }
    Ok(file)
}

#[cfg(not(target_vendor = "apple"))]
fn memory_file() -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        "conduit-queue",
        rustix::fs::MemfdFlags::CLOEXEC,
    )?)
}

/// macOS has no `memfd`: a private file in the temporary directory, unlinked
/// at once, under a random name so that nobody can predict or squat it.
#[cfg(target_vendor = "apple")]
fn memory_file() -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    let name: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let path = std::env::temp_dir().join(format!("conduit-queue-{name}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(OwnedFd::from(file))
}

/// Copies a spilled payload out of the file a producer sent.
fn unspill(file: OwnedFd, len: usize) -> Result<Vec<u8>> {
    let stat = rustix::fs::fstat(&file)
        .map_err(|e| io_err("cannot inspect the file of a large queue message", e))?;
    let is_file =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    if !is_file || u64::try_from(stat.st_size).ok() != Some(len as u64) {
        return Err(Error::protocol(
            "a large queue message's file is not a regular file of the announced size; \
             a participant is misbehaving",
        ));
    }
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match rustix::io::pread(&file, &mut out[done..], done as u64) {
            Ok(0) => {
                return Err(Error::protocol(
                    "a large queue message's file shrank while it was read",
                ))
            }
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("cannot read a large queue message", e)),
        }
    }
    Ok(out)
}
