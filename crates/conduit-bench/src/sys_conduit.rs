//! conduit's transports, through the public typed API: a `Duplex<Vec<u8>,
//! Vec<u8>>` (the raw byte path) or a `Duplex<Sample, Sample>` (CBOR), handed
//! to the child with `conduit::handoff` — or, for `conduit::named`, a
//! listener the child connects to by name.

use std::time::Duration;

use conduit::{Codec, Duplex, FrameConfig, Postcard, Transport};

use crate::link::{self, BytesLink, Sample, TypedLink};
use crate::plan::Workload;
use crate::proc::{self, Spawned};
use crate::stats::Rep;
use crate::{err, Ctx, Res};

/// The handoff key of the child's endpoint.
const KEY: &str = "bench";

/// A byte duplex as a [`BytesLink`].
pub struct Bytes(pub Duplex<Vec<u8>, Vec<u8>>);

impl BytesLink for Bytes {
    fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
        Ok(self.0.send_bytes(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
        // Python's recv_bytes_into: the buffer's memory is reused.
        match self.0.recv_bytes_into(buf) {
            Ok(_) => Ok(true),
            Err(e) if e.is_disconnected() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A typed duplex as a [`TypedLink`] (CBOR unless `C` says otherwise).
pub struct Typed<C: Codec = conduit::Cbor>(pub Duplex<Sample, Sample, C>);

impl<C: Codec> TypedLink for Typed<C> {
    fn send(&mut self, msg: &Sample) -> Res<()> {
        Ok(self.0.send(msg)?)
    }

    fn recv(&mut self) -> Res<Option<Sample>> {
        match self.0.recv() {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_disconnected() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The parent side of workload `w` on transport `t`.
pub fn parent(t: Transport, sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    let timeout = ctx.budget.case_timeout();
    if w.typed() {
        let (mine, theirs) = t.duplex::<Sample, Sample>()?;
        conduit::handoff(&mut cmd, KEY, theirs)?;
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        drop(cmd);
        let mut link = Typed(mine);
        let res = link::parent_typed(&mut link, w, &ctx.budget);
        drop(link);
        child.finish(res)
    } else {
        let (mine, theirs) = t.duplex::<Vec<u8>, Vec<u8>>()?;
        conduit::handoff(&mut cmd, KEY, theirs)?;
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        drop(cmd);
        let mut link = Bytes(mine);
        let res = link::parent_bytes(&mut link, w, &ctx.budget);
        drop(link);
        child.finish(res)
    }
}

/// The parent side of a typed workload with the postcard codec.
pub fn postcard_parent(t: Transport, sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    let timeout = ctx.budget.case_timeout();
    let (mine, theirs) = t.duplex_codec::<Sample, Sample, Postcard>(FrameConfig::default())?;
    conduit::handoff(&mut cmd, KEY, theirs)?;
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    drop(cmd);
    let mut link = Typed(mine);
    let res = link::parent_typed(&mut link, w, &ctx.budget);
    drop(link);
    child.finish(res)
}

/// The child side of a typed workload with the postcard codec.
pub fn postcard_child() -> Res<()> {
    link::child_typed(&mut Typed::<Postcard>(conduit::adopt(KEY)?))
}

/// The child side: adopts the endpoint (whatever its transport) and serves.
pub fn child(w: Workload) -> Res<()> {
    if w.typed() {
        link::child_typed(&mut Typed::<conduit::Cbor>(conduit::adopt(KEY)?))
    } else {
        link::child_bytes(&mut Bytes(conduit::adopt(KEY)?), w)
    }
}

/// Set in the child of a named case: the name to connect to.
const NAME_ENV: &str = "CONDUIT_BENCH_NAMED";

/// A `conduit::named` name unique to this case.
fn fresh_name() -> String {
    format!(
        "conduit-bench-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// The parent side of workload `w` over `conduit::named`: binds a fresh name,
/// starts the child, accepts its connection.
pub fn named_parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let name = fresh_name();
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.env(NAME_ENV, &name);
    let timeout = ctx.budget.case_timeout();
    if w.typed() {
        let listener = conduit::named::Listener::<Sample, Sample>::bind(&name)?;
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        let res = listener
            .accept_timeout(timeout)
            .map_err(Into::into)
            .and_then(|conn| link::parent_typed(&mut Typed(conn), w, &ctx.budget));
        drop(listener);
        child.finish(res)
    } else {
        let listener = conduit::named::Listener::<Vec<u8>, Vec<u8>>::bind(&name)?;
        let child = Spawned::spawn(&mut cmd, timeout, false)?;
        let res = listener
            .accept_timeout(timeout)
            .map_err(Into::into)
            .and_then(|conn| link::parent_bytes(&mut Bytes(conn), w, &ctx.budget));
        drop(listener);
        child.finish(res)
    }
}

/// The child side of a named case: connects by name and serves.
pub fn named_child(w: Workload) -> Res<()> {
    let name = std::env::var(NAME_ENV).map_err(|_| err(format!("{NAME_ENV} is not set")))?;
    let wait = Duration::from_secs(30);
    if w.typed() {
        link::child_typed(&mut Typed(conduit::named::connect_timeout(&name, wait)?))
    } else {
        link::child_bytes(&mut Bytes(conduit::named::connect_timeout(&name, wait)?), w)
    }
}

/// An async byte duplex as a [`BytesLink`]. Each call polls the operation's
/// future once (the async path: a non-blocking attempt); only when that is
/// `Pending` does it wait through `block_on` on a current-thread runtime
/// (the reactor). A `block_on` per message would measure tokio's entry cost
/// rather than conduit's async path. The caller holds the runtime entered
/// (`Runtime::enter`) for the whole workload, as a task runs inside it.
pub struct AsyncBytes<'rt> {
    rt: &'rt tokio::runtime::Runtime,
    conn: conduit::AsyncDuplex<Vec<u8>, Vec<u8>>,
}

/// Polls `fut` once; waits for it on `rt` if it is not ready. The caller
/// has entered `rt` (entering it per operation cost ~5 ns, an Arc clone
/// and drop, that no task pays).
pub fn run_async<F: std::future::Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => rt.block_on(fut),
    }
}

impl BytesLink for AsyncBytes<'_> {
    fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
        Ok(run_async(self.rt, self.conn.send(msg))?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> Res<bool> {
        match run_async(self.rt, self.conn.recv()) {
            Ok(v) => {
                *buf = v;
                Ok(true)
            }
            Err(e) if e.is_disconnected() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The parent side of workload `w` on transport `t`, the parent's end async.
pub fn async_parent(t: Transport, sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    let timeout = ctx.budget.case_timeout();
    let (mine, theirs) = t.duplex::<Vec<u8>, Vec<u8>>()?;
    conduit::handoff(&mut cmd, KEY, theirs)?;
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    drop(cmd);
    let res = async_parent_bytes(mine, w, ctx);
    child.finish(res)
}

/// Makes `mine` async on a fresh current-thread runtime and runs the parent
/// side of byte workload `w` over it.
fn async_parent_bytes(mine: Duplex<Vec<u8>, Vec<u8>>, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let rt = current_thread()?;
    let _entered = rt.enter();
    let conn = mine.into_async()?;
    let mut link = AsyncBytes { rt: &rt, conn };
    link::parent_bytes(&mut link, w, &ctx.budget)
}

/// The runtime of the async rows: current-thread, I/O and timers enabled.
pub fn current_thread() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The parent side of byte workload `w` over `conduit::named`, the accepted
/// connection made async (the child connects with the blocking API).
pub fn async_named_parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let name = fresh_name();
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.env(NAME_ENV, &name);
    let timeout = ctx.budget.case_timeout();
    let listener = conduit::named::Listener::<Vec<u8>, Vec<u8>>::bind(&name)?;
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    let res = listener
        .accept_timeout(timeout)
        .map_err(Into::into)
        .and_then(|conn| async_parent_bytes(conn, w, ctx));
    drop(listener);
    child.finish(res)
}
