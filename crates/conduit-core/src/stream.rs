//! Framing for stream transports (pipes, sockets, named pipes).
//!
//! Each direction of a connection starts with a 12-byte handshake written by
//! the sender before its first frame:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..4  | magic `b"CNDT"` |
//! | 4..6  | protocol version, `u16` little-endian (currently 1) |
//! | 6     | codec id (1 = CBOR) |
//! | 7     | flags, must be 0 |
//! | 8..12 | maximum frame size, `u32` little-endian |
//!
//! then frames: a `u32` little-endian payload length and the payload. The
//! receiver checks every handshake field against its own configuration and
//! checks each length against its maximum *before* allocating; any mismatch
//! closes the channel with `Protocol` or `TooLarge`. See `docs/wire-format.md`.

use std::io::IoSlice;
use std::time::Instant;

use crate::channel::{FrameConfig, FrameReceiver, FrameSender};
use crate::error::{Error, ErrorKind, Result};
use crate::handoff::Package;
use crate::sys::{OsStream, StreamKind};

/// The handshake magic.
pub const MAGIC: [u8; 4] = *b"CNDT";
/// The wire protocol version.
pub const VERSION: u16 = 1;
/// Length of the handshake in bytes.
pub const HANDSHAKE_LEN: usize = 12;
const HEADER_LEN: usize = 4;
/// Frames up to this size are copied behind their header and written with one
/// `write`; larger ones are written with a gather write and no copy.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Size of the receive buffer: several small frames are read per system call.
const READ_BUF: usize = 64 * 1024;
/// The most a receiver sets aside for a frame body before its bytes arrive;
/// larger bodies grow (doubling) as they arrive, so a header announcing a
/// huge frame commits no memory for bytes that never come.
const BODY_CHUNK: usize = 1 << 20;
/// A body buffer above this capacity is released once its frame has been
/// delivered, so one large message does not pin its memory.
const BODY_KEEP: usize = 2 << 20;

/// Encodes the handshake for `cfg`.
pub fn handshake(cfg: FrameConfig) -> [u8; HANDSHAKE_LEN] {
    let mut h = [0u8; HANDSHAKE_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6] = cfg.codec;
    h[7] = 0;
    h[8..12].copy_from_slice(&cfg.max_frame.to_le_bytes());
    h
}

/// Checks a peer's handshake against our configuration.
pub fn check_handshake(h: &[u8; HANDSHAKE_LEN], cfg: FrameConfig) -> Result<()> {
    if h[0..4] != MAGIC {
        return Err(Error::protocol(format!(
            "bad handshake: magic {:02x?} is not {:?}; the peer is not a conduit endpoint",
            &h[0..4],
            "CNDT"
        )));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(Error::protocol(format!(
            "the peer speaks conduit wire protocol v{version}, this side v{VERSION}: build both with the same conduit version"
        )));
    }
    if h[6] != cfg.codec {
        return Err(Error::protocol(format!(
            "the peer encodes messages with codec id {}, this side expects codec id {}: use the same codec on both sides",
            h[6], cfg.codec
        )));
    }
    if h[7] != 0 {
        return Err(Error::protocol(format!(
            "unknown handshake flags {:#04x}",
            h[7]
        )));
    }
    let max = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if max != cfg.max_frame {
        return Err(Error::protocol(format!(
            "the peer's maximum frame size is {max} bytes, ours is {}: configure both ends with the same max_frame",
            cfg.max_frame
        )));
    }
    Ok(())
}

fn meta(cfg: FrameConfig, handshake_done: bool) -> Vec<u64> {
    vec![
        cfg.max_frame as u64,
        cfg.codec as u64,
        handshake_done as u64,
    ]
}

/// Reads `[max_frame, codec, handshake_done]` back from a package's meta.
fn parse_meta(meta: &[u64]) -> Result<(FrameConfig, bool)> {
    match meta {
        [max, codec, done, ..] if *max <= u32::MAX as u64 && *codec <= 255 && *done <= 1 => Ok((
            FrameConfig {
                max_frame: *max as u32,
                codec: *codec as u8,
            },
            *done == 1,
        )),
        _ => Err(Error::invalid_input(
            "bad stream parameters in handoff token",
        )),
    }
}

fn take_one(package: Package) -> Result<(crate::sys::OsHandle, Vec<u64>)> {
    let Package {
        mut handles, meta, ..
    } = package;
    if handles.len() != 1 {
        return Err(Error::invalid_input(
            "a stream endpoint is made of exactly one handle",
        ));
    }
    Ok((handles.remove(0), meta))
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct StreamSender {
    /// `None` only once handed off (the `Drop` impl needs it optional).
    io: Option<OsStream>,
    transport: &'static str,
    cfg: FrameConfig,
    handshake_sent: bool,
    broken: bool,
    buf: Vec<u8>,
    /// The unwritten rest of a frame that a deadline send started.
    pending: Vec<u8>,
}

impl StreamSender {
    /// Wraps a stream; the handshake goes out with the first frame.
    pub fn new(io: OsStream, transport: &'static str, cfg: FrameConfig) -> Self {
        StreamSender {
            io: Some(io),
            transport,
            cfg,
            handshake_sent: false,
            broken: false,
            buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Rebuilds a sender from a handoff package (see [`FrameSender::export`]).
    pub fn import(package: Package, kind: StreamKind, transport: &'static str) -> Result<Self> {
        let (handle, meta) = take_one(package)?;
        let (cfg, done) = parse_meta(&meta)?;
        let mut s = StreamSender::new(OsStream::new(handle, kind), transport, cfg);
        s.handshake_sent = done;
        Ok(s)
    }

    /// The underlying stream (`None` once handed off).
    pub fn stream(&self) -> Option<&OsStream> {
        self.io.as_ref()
    }

    fn os(&self) -> Result<&OsStream> {
        self.io
            .as_ref()
            .ok_or_else(|| Error::disconnected("the sender was handed off"))
    }

    /// Writes the handshake now instead of with the first frame (for
    /// connections that check both directions up front, such as named ones).
    pub fn send_handshake(&mut self) -> Result<()> {
        if !self.handshake_sent {
            self.write_all([&handshake(self.cfg), &[]], None)?;
            self.handshake_sent = true;
        }
        Ok(())
    }

    /// Writes `bufs` (one frame, or the handshake) whole.
    ///
    /// Without a deadline this blocks until everything is written. With a
    /// deadline the stream is non-blocking for the call: when no room
    /// appears before the deadline the error is `Full` and nothing of
    /// `bufs` was written. When only part fits, the rest is kept in
    /// `pending` and the call succeeds (the frame is committed: a frame is
    /// never left half-written by choice); every later write first
    /// completes it, and so does dropping the sender.
    fn write_all(&mut self, bufs: [&[u8]; 2], deadline: Option<Instant>) -> Result<()> {
        if self.broken {
            return Err(Error::disconnected(
                "an earlier send failed part-way; the channel is closed",
            ));
        }
        if deadline.is_none() {
            let pending = std::mem::take(&mut self.pending);
            let res = self
                .write_some([&pending, &[]], None)
                .and_then(|_| self.write_some(bufs, None));
            self.recycle_pending(pending);
            return res.map(|_| ());
        }
        self.os()?
            .set_nonblocking(true)
            .map_err(|e| Error::from_io("cannot make the stream non-blocking", e))?;
        let res = self.write_nonblocking(bufs, deadline);
        // Best effort: should this fail, later blocking writes still wait
        // for room on `WouldBlock`.
        let _ = self.os().map(|io| io.set_nonblocking(false));
        res
    }

    fn write_nonblocking(&mut self, bufs: [&[u8]; 2], deadline: Option<Instant>) -> Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let res = self.write_some([&pending, &[]], deadline);
            match res {
                Ok(n) if n == pending.len() => self.recycle_pending(pending),
                Ok(n) => {
                    self.pending = pending;
                    self.pending.drain(..n);
                    return Err(Error::full());
                }
                Err(e) => return Err(e),
            }
        }
        let total = bufs[0].len() + bufs[1].len();
        let n = self.write_some(bufs, deadline)?;
        if n == 0 && total > 0 {
            return Err(Error::full());
        }
        let mut rest = n;
        for b in bufs {
            let k = rest.min(b.len());
            self.pending.extend_from_slice(&b[k..]);
            rest -= k;
        }
        Ok(())
    }

    /// Keeps the pending buffer's allocation unless it is large.
    fn recycle_pending(&mut self, mut pending: Vec<u8>) {
        if pending.capacity() <= COALESCE_LIMIT {
            pending.clear();
            self.pending = pending;
        }
    }

    /// Writes as much of `bufs` as it can and returns how much. Blocking
    /// streams write everything. Non-blocking ones wait for room until
    /// `deadline` while nothing has been written, and return at the first
    /// `WouldBlock` after that.
    fn write_some(&mut self, mut bufs: [&[u8]; 2], deadline: Option<Instant>) -> Result<usize> {
        let mut written = 0;
        while !bufs[0].is_empty() || !bufs[1].is_empty() {
            let io = self.os()?;
            let res = if bufs[0].is_empty() {
                io.write(bufs[1])
            } else if bufs[1].is_empty() {
                io.write(bufs[0])
            } else {
                io.write_vectored(&[IoSlice::new(bufs[0]), IoSlice::new(bufs[1])])
            };
            let mut n = match res {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::disconnected("the peer stopped reading"));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if written > 0 {
                        return Ok(written);
                    }
                    let room = self
                        .os()?
                        .wait_writable(deadline)
                        .map_err(|e| Error::from_io("wait failed", e))?;
                    if !room {
                        return Ok(0);
                    }
                    continue;
                }
                Err(e) => {
                    self.broken = true;
                    return Err(Error::from_io("send failed", e));
                }
            };
            written += n;
            for b in bufs.iter_mut() {
                let k = n.min(b.len());
                *b = &b[k..];
                n -= k;
            }
        }
        Ok(written)
    }
}

impl Drop for StreamSender {
    /// Completes a frame that a deadline send left partly written, blocking
    /// (as `send` would have): the message was reported sent. A gone peer
    /// ends the wait with an error, which is ignored here.
    fn drop(&mut self) {
        if !self.pending.is_empty() && !self.broken {
            let pending = std::mem::take(&mut self.pending);
            if let Some(io) = &self.io {
                let _ = io.set_nonblocking(false);
            }
            let _ = self.write_some([&pending, &[]], None);
        }
    }
}

impl FrameSender for StreamSender {
    fn send_frame_until(&mut self, frame: &[u8], deadline: Option<Instant>) -> Result<()> {
        if frame.len() > self.cfg.max_frame as usize {
            return Err(Error::frame_too_large(frame.len(), self.cfg.max_frame));
        }
        let mut head = [0u8; HANDSHAKE_LEN + HEADER_LEN];
        let mut head_len = 0;
        if !self.handshake_sent {
            head[..HANDSHAKE_LEN].copy_from_slice(&handshake(self.cfg));
            head_len = HANDSHAKE_LEN;
        }
        head[head_len..head_len + HEADER_LEN].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        head_len += HEADER_LEN;
        if frame.len() <= COALESCE_LIMIT {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.extend_from_slice(&head[..head_len]);
            buf.extend_from_slice(frame);
            let res = self.write_all([&buf, &[]], deadline);
            self.buf = buf;
            res?;
        } else {
            self.write_all([&head[..head_len], frame], deadline)?;
        }
        self.handshake_sent = true;
        Ok(())
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    fn export(mut self: Box<Self>) -> Result<Package> {
        if self.broken {
            return Err(Error::disconnected(
                "cannot hand off a sender whose channel is closed",
            ));
        }
        // A frame started by a deadline send is finished first: the child
        // starts at a frame boundary.
        self.write_all([&[], &[]], None)?;
        let io = self.io.take().ok_or_else(|| {
            Error::disconnected("cannot hand off a sender that was handed off already")
        })?;
        Ok(Package {
            transport: self.transport.to_string(),
            meta: meta(self.cfg, self.handshake_sent),
            handles: vec![io.into_handle()],
        })
    }

    fn send_unframed(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all([bytes, &[]], None)
    }
}

/// Where the receiver is within the stream.
#[derive(Debug)]
enum State {
    /// Waiting for the handshake.
    Handshake,
    /// Waiting for a frame header.
    Header,
    /// Collecting a frame body of `len` bytes into `body`.
    Body { len: usize },
    /// A frame lies at `buf[start..start + len]`.
    ReadyInBuf { len: usize },
    /// A frame is complete in `body`.
    ReadyInBody,
    /// The channel is closed for good.
    Closed(ErrorKind, String),
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct StreamReceiver {
    io: OsStream,
    transport: &'static str,
    cfg: FrameConfig,
    state: State,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The frame body being collected: `body[..body_got]` has arrived; the
    /// rest of `body` is initialized room for what comes next.
    body: Vec<u8>,
    body_got: usize,
    /// An error met by `poll_frame`, reported by the next receive.
    pending: Option<Error>,
}

impl StreamReceiver {
    /// Wraps a stream; the peer's handshake is checked on the first receive.
    pub fn new(io: OsStream, transport: &'static str, cfg: FrameConfig) -> Self {
        StreamReceiver {
            io,
            transport,
            cfg,
            state: State::Handshake,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            body: Vec::new(),
            body_got: 0,
            pending: None,
        }
    }

    /// Rebuilds a receiver from a handoff package (see [`FrameReceiver::export`]).
    pub fn import(package: Package, kind: StreamKind, transport: &'static str) -> Result<Self> {
        let (handle, meta) = take_one(package)?;
        let (cfg, done) = parse_meta(&meta)?;
        let mut r = StreamReceiver::new(OsStream::new(handle, kind), transport, cfg);
        if done {
            r.state = State::Header;
        }
        Ok(r)
    }

    /// The underlying stream.
    pub fn stream(&self) -> &OsStream {
        &self.io
    }

    /// Reads and checks the peer's handshake now (instead of on the first
    /// receive), waiting until `deadline`. Nothing after the handshake is
    /// read, so the receiver can still be handed off afterwards.
    pub fn recv_handshake(&mut self, deadline: Option<Instant>) -> Result<()> {
        loop {
            self.advance_handshake()?;
            if !matches!(self.state, State::Handshake) {
                return Ok(());
            }
            self.wait(deadline)?;
            self.fill(HANDSHAKE_LEN - (self.end - self.start))?;
        }
    }

    fn advance_handshake(&mut self) -> Result<()> {
        if matches!(self.state, State::Handshake) && self.end - self.start >= HANDSHAKE_LEN {
            // advance() stops after the handshake when no header is buffered,
            // and never consumes a frame it cannot complete.
            self.advance()?;
        }
        Ok(())
    }

    /// Waits until the stream is readable or `deadline` passes (`Timeout`);
    /// without a deadline the next read blocks instead.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<()> {
        if let Some(d) = deadline {
            let readable = self
                .io
                .wait_readable(Some(d))
                .map_err(|e| Error::from_io("wait failed", e))?;
            if !readable {
                return Err(Error::timeout("no message arrived before the deadline"));
            }
        }
        Ok(())
    }

    /// Closes the receiver for good: later calls fail with `kind`.
    fn close_as(&mut self, kind: ErrorKind, message: &str) {
        self.state = State::Closed(kind, message.to_string());
    }

    fn close(&mut self, err: Error) -> Error {
        self.close_as(err.kind(), err.message());
        err
    }

    /// The peer closed the stream: closed as `Disconnected` for later calls;
    /// `now` is what this call reports.
    fn peer_closed(&mut self, now: Error) -> Error {
        self.close_as(ErrorKind::Disconnected, "the peer closed the channel");
        now
    }

    /// Advances the state machine over buffered bytes; true when a frame is ready.
    fn advance(&mut self) -> Result<bool> {
        loop {
            let avail = self.end - self.start;
            match self.state {
                State::ReadyInBuf { .. } | State::ReadyInBody => return Ok(true),
                State::Closed(kind, ref msg) => return Err(Error::closed(kind, msg)),
                State::Handshake => {
                    if avail < HANDSHAKE_LEN {
                        return Ok(false);
                    }
                    let mut h = [0u8; HANDSHAKE_LEN];
                    h.copy_from_slice(&self.buf[self.start..self.start + HANDSHAKE_LEN]);
                    self.start += HANDSHAKE_LEN;
                    if let Err(e) = check_handshake(&h, self.cfg) {
                        return Err(self.close(e));
                    }
                    self.state = State::Header;
                }
                State::Header => {
                    if avail < HEADER_LEN {
                        return Ok(false);
                    }
                    let mut l = [0u8; HEADER_LEN];
                    l.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
                    let len = u32::from_le_bytes(l) as usize;
                    if len > self.cfg.max_frame as usize {
                        let e = Error::too_large(format!(
                            "the peer announced a frame of {len} bytes, above the maximum of {} bytes; the channel is closed",
                            self.cfg.max_frame
                        ));
                        return Err(self.close(e));
                    }
                    self.start += HEADER_LEN;
                    if avail - HEADER_LEN >= len {
                        self.state = State::ReadyInBuf { len };
                    } else {
                        // Allocation happens only after the length was
                        // checked, and only as the bytes arrive.
                        self.body.clear();
                        self.body_got = 0;
                        self.state = State::Body { len };
                    }
                }
                State::Body { len } => {
                    let k = avail.min(len - self.body_got);
                    self.grow_body(len, self.body_got + k);
                    self.body[self.body_got..self.body_got + k]
                        .copy_from_slice(&self.buf[self.start..self.start + k]);
                    self.body_got += k;
                    self.start += k;
                    if self.body_got == len {
                        self.state = State::ReadyInBody;
                    } else {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Reads once from the stream (blocking), at most `max` bytes into the
    /// receive buffer. Large frame bodies are read straight into the body
    /// buffer.
    fn fill(&mut self, max: usize) -> Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let n = if let State::Body { len } = self.state {
            if self.start == self.end && len - self.body_got >= self.buf.len() / 2 {
                let n = self.read_into_body(len)?;
                self.body_got += n;
                if self.body_got == len {
                    self.state = State::ReadyInBody;
                }
                return Ok(());
            }
            self.read_into_buf(max)?
        } else {
            self.read_into_buf(max)?
        };
        if n == 0 {
            let err = match self.state {
                State::Header if self.start == self.end => {
                    Error::disconnected("the peer closed the channel")
                }
                State::Handshake if self.start == self.end => {
                    Error::disconnected("the peer closed the channel before sending anything")
                }
                _ => truncated(),
            };
            return Err(self.peer_closed(err));
        }
        Ok(())
    }

    /// Makes `body[..need]` initialized room for a frame of `len` bytes:
    /// at least `BODY_CHUNK` (or `len`) at first, then doubling, never past
    /// `len`, so memory is committed as bytes arrive.
    fn grow_body(&mut self, len: usize, need: usize) {
        if self.body.len() < need {
            let grown = need.max(self.body.len() * 2).max(BODY_CHUNK).min(len);
            self.body.resize(grown, 0);
        }
    }

    fn read_into_body(&mut self, len: usize) -> Result<usize> {
        self.grow_body(len, self.body_got + 1);
        let room = self.body.len();
        let n = self
            .io
            .read(&mut self.body[self.body_got..room])
            .map_err(|e| Error::from_io("receive failed", e))?;
        if n == 0 {
            return Err(self.peer_closed(truncated()));
        }
        Ok(n)
    }

    fn read_into_buf(&mut self, max: usize) -> Result<usize> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let stop = self.buf.len().min(self.end.saturating_add(max));
        let n = self
            .io
            .read(&mut self.buf[self.end..stop])
            .map_err(|e| Error::from_io("receive failed", e))?;
        self.end += n;
        Ok(n)
    }

    /// Makes a frame ready, waiting until `deadline`.
    fn ready(&mut self, deadline: Option<Instant>) -> Result<()> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        while !self.advance()? {
            self.wait(deadline)?;
            self.fill(usize::MAX)?;
        }
        Ok(())
    }

    /// Hands the body buffer's memory back after a large frame.
    fn release_large_body(&mut self) {
        if self.body.capacity() > BODY_KEEP {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
        self.body_got = 0;
    }
}

fn truncated() -> Error {
    Error::protocol(
        "truncated frame: the peer closed the channel in the middle of a frame (did it crash while sending?)",
    )
}

impl FrameReceiver for StreamReceiver {
    fn recv_frame(&mut self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        self.ready(deadline)?;
        match self.state {
            State::ReadyInBuf { len } => {
                out.clear();
                out.extend_from_slice(&self.buf[self.start..self.start + len]);
                self.start += len;
            }
            _ => {
                std::mem::swap(out, &mut self.body);
                self.release_large_body();
            }
        }
        self.state = State::Header;
        Ok(())
    }

    fn recv_with(&mut self, deadline: Option<Instant>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.ready(deadline)?;
        match self.state {
            State::ReadyInBuf { len } => {
                let frame = &self.buf[self.start..self.start + len];
                self.start += len;
                self.state = State::Header;
                f(frame);
            }
            _ => {
                self.state = State::Header;
                f(&self.body);
                self.release_large_body();
            }
        }
        Ok(())
    }

    fn poll_frame(&mut self, deadline: Option<Instant>) -> Result<bool> {
        match self.ready(deadline) {
            Ok(()) => Ok(true),
            Err(e) if e.is_timeout() => Ok(false),
            Err(e) => {
                // The next receive fails at once: that counts as ready.
                self.pending = Some(e);
                Ok(true)
            }
        }
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    fn export(self: Box<Self>) -> Result<Package> {
        let done = match self.state {
            State::Handshake => false,
            State::Header if self.start == self.end => true,
            State::Closed(kind, ref msg) => {
                return Err(Error::new(kind, format!("cannot hand off a closed receiver: {msg}")))
            }
            _ => {
                return Err(Error::invalid_input(
                    "cannot hand off a receiver that has already buffered data from the peer; hand it off before receiving",
                ))
            }
        };
        Ok(Package {
            transport: self.transport.to_string(),
            meta: meta(self.cfg, done),
            handles: vec![self.io.into_handle()],
        })
    }
}
