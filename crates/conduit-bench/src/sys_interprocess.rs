//! `interprocess`: a local socket stream (a Unix domain socket, a named pipe
//! on Windows). It moves bytes, not messages, so the bench frames them the
//! way a user would: a `u32` little-endian length, then the payload; typed
//! messages are CBOR from ciborium in the same frames. The `interprocess
//! tokio` row makes the parent's end interprocess's tokio stream, driven like
//! the conduit async rows (`sys_conduit::run_async`).

use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{prelude::*, Stream as TokioStream};
use interprocess::local_socket::{
    prelude::*, GenericFilePath, GenericNamespaced, ListenerNonblockingMode, ListenerOptions, Name,
    Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::link::{self, BytesLink, Sample, TypedLink};
use crate::plan::Workload;
use crate::proc::{self, Spawned};
use crate::stats::Rep;
use crate::sys_conduit::run_async;
use crate::{err, Ctx, Res};

/// Set in the child: the socket name to connect to.
const NAME_ENV: &str = "CONDUIT_BENCH_SOCKET";

/// Frames up to this size are written with one `write` (header copied in
/// front); larger ones with two, without copying the payload.
const COALESCE: usize = 4096;

struct Framed {
    s: Stream,
    scratch: Vec<u8>,
    frame: Vec<u8>,
}

impl Framed {
    fn new(s: Stream) -> Framed {
        Framed {
            s,
            scratch: Vec::new(),
            frame: Vec::new(),
        }
    }

    fn send_frame(&mut self, payload: &[u8]) -> Res<()> {
        let len = u32::try_from(payload.len())?.to_le_bytes();
        if payload.len() <= COALESCE {
            self.scratch.clear();
            self.scratch.extend_from_slice(&len);
            self.scratch.extend_from_slice(payload);
            self.s.write_all(&self.scratch)?;
        } else {
            self.s.write_all(&len)?;
            self.s.write_all(payload)?;
        }
        Ok(())
    }

    /// Reads one frame into `buf`; `Ok(false)` at end of stream.
    fn recv_frame(s: &mut Stream, buf: &mut Vec<u8>) -> Res<bool> {
        let mut len = [0u8; 4];
        match s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 << 20 {
            return Err(err(format!("frame of {len} bytes is too large")));
        }
        buf.resize(len, 0);
        s.read_exact(buf)?;
        Ok(true)
    }
}

impl BytesLink for Framed {
    fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
        self.send_frame(msg)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
        Framed::recv_frame(&mut self.s, buf)
    }
}

impl TypedLink for Framed {
    fn send(&mut self, msg: &Sample) -> Res<()> {
        let mut enc = std::mem::take(&mut self.frame);
        enc.clear();
        ciborium::into_writer(msg, &mut enc)?;
        let res = self.send_frame(&enc);
        self.frame = enc;
        res
    }

    fn recv(&mut self) -> Res<Option<Sample>> {
        let mut buf = std::mem::take(&mut self.frame);
        let got = Framed::recv_frame(&mut self.s, &mut buf)?;
        let res = if got {
            Some(ciborium::from_reader(buf.as_slice())?)
        } else {
            None
        };
        self.frame = buf;
        Ok(res)
    }
}

/// The parent's end of the `interprocess tokio` row: the tokio stream on a
/// current-thread runtime, each operation polled once and waited for with
/// `block_on` only when it is pending (as the conduit async rows).
struct TokioFramed<'rt> {
    s: TokioStream,
    scratch: Vec<u8>,
    rt: &'rt tokio::runtime::Runtime,
}

impl BytesLink for TokioFramed<'_> {
    fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
        let len = u32::try_from(msg.len())?.to_le_bytes();
        let s = &self.s;
        if msg.len() <= COALESCE {
            self.scratch.clear();
            self.scratch.extend_from_slice(&len);
            self.scratch.extend_from_slice(msg);
            let frame = &self.scratch;
            run_async(self.rt, async move { (&mut &*s).write_all(frame).await })?;
        } else {
            run_async(self.rt, async move {
                (&mut &*s).write_all(&len).await?;
                (&mut &*s).write_all(msg).await
            })?;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
        let s = &self.s;
        run_async(self.rt, async move {
            let mut len = [0u8; 4];
            match (&mut &*s).read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > 64 << 20 {
                return Err(err(format!("frame of {len} bytes is too large")));
            }
            buf.resize(len, 0);
            (&mut &*s).read_exact(buf).await?;
            Ok(true)
        })
    }
}

/// A socket name unique to this case: abstract where the OS has them,
/// else a file in the temporary directory.
fn name_string() -> String {
    let base = format!(
        "conduit-bench-{}-{:016x}.sock",
        std::process::id(),
        fastrand::u64(..)
    );
    if GenericNamespaced::is_supported() {
        base
    } else {
        std::env::temp_dir()
            .join(base)
            .to_string_lossy()
            .into_owned()
    }
}

fn to_name(s: &str) -> io::Result<Name<'_>> {
    if GenericNamespaced::is_supported() {
        s.to_ns_name::<GenericNamespaced>()
    } else {
        s.to_fs_name::<GenericFilePath>()
    }
}

/// The parent side of workload `w`.
pub fn parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let name = name_string();
    let listener = ListenerOptions::new()
        .name(to_name(&name)?)
        .nonblocking(ListenerNonblockingMode::Accept)
        .create_sync()?;
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.env(NAME_ENV, &name);
    let timeout = ctx.budget.case_timeout();
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    let res = (|| {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline || child.has_exited() {
                        return Err(err("the child did not connect"));
                    }
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        let mut link = Framed::new(stream);
        if w.typed() {
            link::parent_typed(&mut link, w, &ctx.budget)
        } else {
            link::parent_bytes(&mut link, w, &ctx.budget)
        }
    })();
    drop(listener);
    child.finish(res)
}

/// The parent side of byte workload `w` with interprocess's tokio local
/// socket: listener, accept and stream all async on a current-thread runtime;
/// the child connects with the blocking stream ([`child`]).
pub fn tokio_parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let rt = crate::sys_conduit::current_thread()?;
    let name = name_string();
    let listener = {
        let _guard = rt.enter();
        ListenerOptions::new()
            .name(to_name(&name)?)
            .create_tokio()?
    };
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.env(NAME_ENV, &name);
    let timeout = ctx.budget.case_timeout();
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    let accepted = (|| {
        let deadline = Instant::now() + timeout;
        loop {
            // Made inside the runtime: the timer needs its context.
            let tick =
                async { tokio::time::timeout(Duration::from_millis(50), listener.accept()).await };
            if let Ok(s) = rt.block_on(tick) {
                return Ok(s?);
            }
            if Instant::now() > deadline || child.has_exited() {
                return Err(err("the child did not connect"));
            }
        }
    })();
    drop(listener);
    let res = accepted.and_then(|s| {
        // Entered for the whole workload, as for the conduit async rows.
        let _entered = rt.enter();
        let mut link = TokioFramed {
            s,
            scratch: Vec::new(),
            rt: &rt,
        };
        link::parent_bytes(&mut link, w, &ctx.budget)
    });
    child.finish(res)
}

/// The child side of workload `w`.
pub fn child(w: Workload) -> Res<()> {
    let name = std::env::var(NAME_ENV).map_err(|_| err(format!("{NAME_ENV} is not set")))?;
    let mut link = Framed::new(Stream::connect(to_name(&name)?)?);
    if w.typed() {
        link::child_typed(&mut link)
    } else {
        link::child_bytes(&mut link, w)
    }
}
