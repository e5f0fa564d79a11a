//! The sending half of a framed stream.

use std::io::IoSlice;
use std::time::Instant;

use crate::channel::{FrameConfig, FrameSender};
use crate::error::{Error, Result};
use crate::handoff::Package;
use crate::sys::{OsStream, StreamKind};

use super::{handshake, meta, parse_meta, take_one, COALESCE_LIMIT, HANDSHAKE_LEN, HEADER_LEN};

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

    fn os_mut(&mut self) -> Result<&mut OsStream> {
        self.io
            .as_mut()
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
        self.os_mut()?
            .set_nonblocking_writes(true)
            .map_err(|e| Error::from_io("cannot make the stream non-blocking", e))?;
        let res = self.write_nonblocking(bufs, deadline);
        // Best effort: should this fail, later blocking writes still wait
        // for room on `WouldBlock`.
        let _ = self.os_mut().map(|io| io.set_nonblocking_writes(false));
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
    /// ends the wait with an error, which is ignored here. Then tells the
    /// peer that this direction ended, also where the socket stays open for
    /// this side's receiving half (not after a handoff: `io` is gone then).
    fn drop(&mut self) {
        if !self.pending.is_empty() && !self.broken {
            let pending = std::mem::take(&mut self.pending);
            if let Some(io) = &mut self.io {
                let _ = io.set_nonblocking_writes(false);
            }
            let _ = self.write_some([&pending, &[]], None);
        }
        if let Some(io) = &self.io {
            io.shutdown_write();
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

    fn flush_until(&mut self, deadline: Option<Instant>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write_all([&[], &[]], deadline)
    }

    fn send_wait_handles<'a>(&'a self, out: &mut Vec<(crate::WaitHandle<'a>, crate::WaitFor)>) {
        if let Some(h) = self.io.as_ref().and_then(|io| io.send_wait_handle()) {
            out.push((h, crate::WaitFor::Write));
        }
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    fn codec(&self) -> Option<u8> {
        Some(self.cfg.codec)
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

    #[cfg(feature = "testing")]
    fn test_hooks(&mut self) -> Option<&mut dyn crate::channel::TestHooks> {
        Some(self)
    }
}

#[cfg(feature = "testing")]
impl crate::channel::TestHooks for StreamSender {
    fn send_unframed(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all([bytes, &[]], None)
    }
}
