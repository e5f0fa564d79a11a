//! The receiving half of a framed stream.

use std::time::Instant;

use crate::channel::{FrameConfig, FrameReceiver};
use crate::error::{Error, ErrorKind, Result};
use crate::handoff::Package;
use crate::sys::{OsStream, StreamKind};

use super::{
    check_handshake, meta, parse_meta, take_one, BODY_CHUNK, BODY_KEEP, HANDSHAKE_LEN, HEADER_LEN,
    READ_BUF,
};

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

    fn wait_handles<'a>(&'a self, out: &mut Vec<crate::WaitHandle<'a>>) {
        out.extend(self.io.wait_handle());
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    fn codec(&self) -> Option<u8> {
        Some(self.cfg.codec)
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
