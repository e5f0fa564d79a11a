//! The raw OS limits, written by hand: single-core memcpy, pipe and
//! socketpair with plain `read`/`write` of fixed-size messages (no framing,
//! no encoding), and shared memory with a spin or futex ping-pong and a
//! spinning ring.

use std::fs::File;
use std::io::{self, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::link::{self, BytesLink};
use crate::plan::{Kind, Skip, Workload};
use crate::proc::{self, Spawned};
use crate::stats::Rep;
use crate::{err, Budget, Ctx, Res};

/// Single-core `memcpy` of `w.size()` bytes between two buffers, in process.
pub fn memcpy(w: Workload, b: &Budget) -> Res<Vec<Rep>> {
    let size = w.size();
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; size];
    let every = if size <= 64 << 10 { 16 } else { 1 };
    link::time_streams(b, w, |dur| {
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            n += 1;
            if n.is_multiple_of(every) && start.elapsed() >= dur {
                return Ok((n, start.elapsed()));
            }
        }
    })
}

/// A byte link over a reader and a writer with no framing: each message is
/// exactly as long as both sides expect.
struct FdLink<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> BytesLink for FdLink<R, W> {
    fn send(&mut self, msg: &Vec<u8>) -> Res<()> {
        Ok(self.w.write_all(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> Res<bool> {
        buf.resize(len, 0);
        match self.r.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn only_stream(w: Workload) -> Res<()> {
    if w.typed() || w == Workload::RttUnpinned {
        return Err(Skip("not measured for this system".into()).into());
    }
    Ok(())
}

/// Two pipes; the child's ends become its standard input and output.
pub fn pipe_parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    only_stream(w)?;
    let (child_in, to_child) = io::pipe()?;
    let (from_child, child_out) = io::pipe()?;
    #[cfg(target_os = "linux")]
    {
        // The same 1 MiB buffer conduit's pipe transport asks for (best effort).
        let _ = rustix::pipe::fcntl_setpipe_size(&to_child, 1 << 20);
        let _ = rustix::pipe::fcntl_setpipe_size(&child_out, 1 << 20);
    }
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.stdin(Stdio::from(child_in))
        .stdout(Stdio::from(child_out));
    let child = Spawned::spawn(&mut cmd, ctx.budget.case_timeout(), false)?;
    drop(cmd); // closes this process's copies of the child's ends
    let mut link = FdLink {
        r: from_child,
        w: to_child,
    };
    let res = link::parent_bytes(&mut link, w, &ctx.budget);
    drop(link);
    child.finish(res)
}

/// A socket pair; the child's end becomes its standard input.
#[cfg(unix)]
pub fn socketpair_parent(sys_id: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    only_stream(w)?;
    let (mine, theirs) = UnixStream::pair()?;
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
    let child = Spawned::spawn(&mut cmd, ctx.budget.case_timeout(), false)?;
    drop(cmd);
    let mut link = FdLink {
        r: mine.try_clone()?,
        w: mine,
    };
    let res = link::parent_bytes(&mut link, w, &ctx.budget);
    drop(link);
    child.finish(res)
}

/// Socket pairs are Unix only.
#[cfg(not(unix))]
pub fn socketpair_parent(_sys_id: &str, _w: Workload, _ctx: &Ctx) -> Res<Vec<Rep>> {
    Err(Skip("socketpair(2) is Unix only".into()).into())
}

#[cfg(unix)]
fn dup_stdio(which: i32) -> io::Result<File> {
    use std::os::fd::AsFd;
    let fd = if which == 0 {
        io::stdin().as_fd().try_clone_to_owned()?
    } else {
        io::stdout().as_fd().try_clone_to_owned()?
    };
    Ok(File::from(fd))
}

#[cfg(windows)]
fn dup_stdio(which: i32) -> io::Result<File> {
    use std::os::windows::io::AsHandle;
    let h = if which == 0 {
        io::stdin().as_handle().try_clone_to_owned()?
    } else {
        io::stdout().as_handle().try_clone_to_owned()?
    };
    Ok(File::from(h))
}

/// The child of the pipe case (reads stdin, writes stdout) and of the
/// socketpair case (`duplex_stdin`: reads and writes stdin).
pub fn stdio_child(w: Workload, duplex_stdin: bool) -> Res<()> {
    let r = dup_stdio(0)?;
    let out = if duplex_stdin {
        r.try_clone()?
    } else {
        dup_stdio(1)?
    };
    link::child_bytes(&mut FdLink { r, w: out }, w)
}

// ---------------------------------------------------------------------------
// Shared memory

/// Set in a shared-memory child: the path of the file to map.
const SHM_ENV: &str = "CONDUIT_BENCH_SHM";

/// Layout of the shared file (offsets in bytes; each field on its own cache
/// line). The ring's slots start at `RING`.
mod off {
    /// `u32`: the child has mapped the file (1).
    pub const READY: usize = 0;
    /// `u32`: the parent's ping sequence number.
    pub const PING: usize = 64;
    /// `u32`: the child's pong sequence number.
    pub const PONG: usize = 128;
    /// `u64`: the ring's write index (parent).
    pub const HEAD: usize = 192;
    /// `u64`: the ring's read index (child).
    pub const TAIL: usize = 256;
    /// `u64`: reports written by the child; count and bad messages follow.
    pub const REPORT_GEN: usize = 320;
    /// `u64`: messages the child counted in the last repetition.
    pub const REPORT_COUNT: usize = 328;
    /// `u64`: bad messages in the last repetition.
    pub const REPORT_BAD: usize = 336;
    /// `u32`: 1 = the parent is done; 2 = the child failed.
    pub const STOP: usize = 384;
    /// The ring's first slot.
    pub const RING: usize = 4096;
}
/// Slots in the ring.
const SLOTS: u64 = 1024;
/// Bytes per slot (= message size).
const SLOT: usize = 64;
/// The ring's producer publishes its head, and the consumer its tail, every
/// this many messages (and whenever it is about to wait), so that the two
/// cores do not trade the index cache lines on every message.
const BATCH: u64 = 32;
/// Size of the shared file.
const SHM_SIZE: usize = off::RING + SLOTS as usize * SLOT;

/// A shared file mapped into this process.
struct Shm {
    _map: memmap2::MmapMut,
    base: *mut u8,
    path: std::path::PathBuf,
    owner: bool,
}

impl Shm {
    /// Creates and maps a new file of [`SHM_SIZE`] bytes (in `/dev/shm` when
    /// it exists), readable by the current user only.
    fn create() -> Res<Shm> {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "conduit-bench-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&path)?;
        // Removed on drop, also when mapping fails below.
        let guard = Removal(path);
        file.set_len(SHM_SIZE as u64)?;
        let (map, base) = map(&file)?;
        Ok(Shm {
            _map: map,
            base,
            path: guard.take(),
            owner: true,
        })
    }

    /// Maps the file the parent created.
    fn open(path: std::path::PathBuf) -> Res<Shm> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        if file.metadata()?.len() < SHM_SIZE as u64 {
            return Err(err("the shared file is too small"));
        }
        let (map, base) = map(&file)?;
        Ok(Shm {
            _map: map,
            base,
            path,
            owner: false,
        })
    }

    fn u32_at(&self, offset: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= off::RING);
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the
        // mapping lives as long as `self`; AtomicU32 has the layout of u32
        // and every access to this word, in both processes, is atomic.
        unsafe { &*self.base.add(offset).cast::<std::sync::atomic::AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= off::RING);
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        unsafe { &*self.base.add(offset).cast::<std::sync::atomic::AtomicU64>() }
    }

    /// Copies `msg` into the slot of ring index `idx`. The caller (the only
    /// producer) has seen, with an acquire load of the tail, that the consumer
    /// is done with that slot.
    fn write_slot(&self, idx: u64, msg: &[u8; SLOT]) {
        let offset = off::RING + (idx % SLOTS) as usize * SLOT;
        // SAFETY: offset + SLOT <= SHM_SIZE; the consumer does not touch this
        // slot until the producer's release store of the head publishes it.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), self.base.add(offset), SLOT) }
    }

    /// Copies the slot of ring index `idx` out. The caller (the only consumer)
    /// has seen the slot published with an acquire load of the head.
    fn read_slot(&self, idx: u64, out: &mut [u8; SLOT]) {
        let offset = off::RING + (idx % SLOTS) as usize * SLOT;
        // SAFETY: in bounds as above; the producer does not write this slot
        // again until the consumer's release store of the tail frees it.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), out.as_mut_ptr(), SLOT) }
    }
}

/// Maps the first [`SHM_SIZE`] bytes of `file`, shared.
fn map(file: &File) -> Res<(memmap2::MmapMut, *mut u8)> {
    // SAFETY: the file was created by this bench for these two processes
    // (exclusively, mode 0600) and is at least SHM_SIZE bytes long; no one
    // truncates it while it is mapped. Both processes touch the shared words
    // only through atomics, and the ring's slots only under the head/tail
    // protocol (see `Shm::write_slot`/`Shm::read_slot`).
    let mut map = unsafe { memmap2::MmapOptions::new().len(SHM_SIZE).map_mut(file)? };
    let base = map.as_mut_ptr();
    Ok((map, base))
}

/// Removes a file when dropped, unless taken back.
struct Removal(std::path::PathBuf);

impl Removal {
    fn take(mut self) -> std::path::PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// When waiting must end: a deadline, the STOP word, the peer's death.
struct Watch<'a> {
    deadline: Instant,
    /// The parent watches its child.
    child: Option<&'a Spawned>,
    /// The child watches its parent (Unix: reparenting means it died).
    #[cfg_attr(not(unix), allow(dead_code))]
    ppid: Option<u32>,
}

impl Watch<'_> {
    /// `Ok(true)`: keep waiting; `Ok(false)`: STOP is set or the peer is gone.
    fn keep_waiting(&self, shm: &Shm) -> Res<bool> {
        use std::sync::atomic::Ordering;
        if shm.u32_at(off::STOP).load(Ordering::Acquire) != 0 {
            return Ok(false);
        }
        if Instant::now() > self.deadline {
            return Err(err("timed out waiting for the other process"));
        }
        if let Some(child) = self.child {
            if child.has_exited() {
                return Ok(false);
            }
        }
        #[cfg(unix)]
        if let Some(ppid) = self.ppid {
            if std::os::unix::process::parent_id() != ppid {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Spins until `done()`; every 1024 spins it checks [`Self::keep_waiting`]
    /// and yields the CPU once (so that two unpinned spinners sharing a CPU
    /// still make progress). `Ok(false)`: stopped.
    fn spin(&self, shm: &Shm, mut done: impl FnMut() -> bool) -> Res<bool> {
        let mut n = 0u32;
        loop {
            if done() {
                return Ok(true);
            }
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(1024) {
                if !self.keep_waiting(shm)? {
                    return Ok(false);
                }
                std::thread::yield_now();
            }
        }
    }
}

fn stopped() -> Box<dyn std::error::Error + Send + Sync> {
    err("the child stopped")
}

/// The parent of the shared-memory cases: spin (`futex` false) or futex
/// ping-pong for round trips, the spinning ring for msg/s.
pub fn shm_parent(sys_id: &str, w: Workload, ctx: &Ctx, futex: bool) -> Res<Vec<Rep>> {
    use std::sync::atomic::Ordering;
    if w.typed() || w.kind() == Kind::Bandwidth || (futex && w.kind() != Kind::Latency) {
        return Err(Skip("not measured for this system".into()).into());
    }
    if futex && !cfg!(target_os = "linux") {
        return Err(Skip("futex(2) is Linux only".into()).into());
    }
    let shm = Shm::create()?;
    let mut cmd = proc::child_command(sys_id, w, ctx)?;
    cmd.env(SHM_ENV, &shm.path);
    let timeout = ctx.budget.case_timeout();
    let child = Spawned::spawn(&mut cmd, timeout, false)?;
    let watch = Watch {
        deadline: Instant::now() + timeout,
        child: Some(&child),
        ppid: None,
    };
    let b = &ctx.budget;
    let res = (|| -> Res<Vec<Rep>> {
        let ready = shm.u32_at(off::READY);
        if !watch.spin(&shm, || ready.load(Ordering::Acquire) == 1)? {
            return Err(stopped());
        }
        match (w.kind(), futex) {
            (Kind::Latency, false) => spin_ping(&shm, &watch, b),
            (Kind::Latency, true) => futex_ping(&shm, &watch, b),
            _ => ring_producer(&shm, &watch, w, b),
        }
    })();
    shm.u32_at(off::STOP).store(1, Ordering::Release);
    #[cfg(target_os = "linux")]
    if futex {
        let _ = rustix::thread::futex::wake(
            shm.u32_at(off::PING),
            rustix::thread::futex::Flags::empty(),
            u32::MAX,
        );
    }
    child.finish(res)
}

/// The child of the shared-memory cases.
pub fn shm_child(w: Workload, futex: bool) -> Res<()> {
    use std::sync::atomic::Ordering;
    let path = std::env::var_os(SHM_ENV).ok_or_else(|| err(format!("{SHM_ENV} is not set")))?;
    let shm = Shm::open(path.into())?;
    let watch = Watch {
        deadline: Instant::now() + Duration::from_secs(3600),
        child: None,
        #[cfg(unix)]
        ppid: Some(std::os::unix::process::parent_id()),
        #[cfg(not(unix))]
        ppid: None,
    };
    shm.u32_at(off::READY).store(1, Ordering::Release);
    let res = match (w.kind(), futex) {
        (Kind::Latency, false) => spin_pong(&shm, &watch),
        (Kind::Latency, true) => futex_pong(&shm, &watch),
        _ => ring_consumer(&shm, &watch),
    };
    if res.is_err() {
        shm.u32_at(off::STOP).store(2, Ordering::Release);
    }
    res
}

fn spin_ping(shm: &Shm, watch: &Watch<'_>, b: &Budget) -> Res<Vec<Rep>> {
    use std::sync::atomic::Ordering;
    let (ping, pong) = (shm.u32_at(off::PING), shm.u32_at(off::PONG));
    link::time_round_trips(b, |seq| {
        let s = seq as u32;
        ping.store(s, Ordering::Release);
        if !watch.spin(shm, || pong.load(Ordering::Acquire) == s)? {
            return Err(stopped());
        }
        Ok(())
    })
}

fn spin_pong(shm: &Shm, watch: &Watch<'_>) -> Res<()> {
    use std::sync::atomic::Ordering;
    let (ping, pong) = (shm.u32_at(off::PING), shm.u32_at(off::PONG));
    let mut last = 0u32;
    loop {
        let mut v = last;
        if !watch.spin(shm, || {
            v = ping.load(Ordering::Acquire);
            v != last
        })? {
            return Ok(());
        }
        pong.store(v, Ordering::Release);
        last = v;
    }
}

/// Waits (FUTEX_WAIT, 50 ms at a time) until `pred(word)`; `Ok(None)`: stopped.
#[cfg(target_os = "linux")]
fn futex_wait_until(
    shm: &Shm,
    watch: &Watch<'_>,
    word: &std::sync::atomic::AtomicU32,
    pred: impl Fn(u32) -> bool,
) -> Res<Option<u32>> {
    use rustix::io::Errno;
    use rustix::thread::futex;
    use std::sync::atomic::Ordering;
    let slice = futex::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let v = word.load(Ordering::Acquire);
        if pred(v) {
            return Ok(Some(v));
        }
        if !watch.keep_waiting(shm)? {
            return Ok(None);
        }
        match futex::wait(word, futex::Flags::empty(), v, Some(&slice)) {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::TIMEDOUT) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(target_os = "linux")]
fn futex_ping(shm: &Shm, watch: &Watch<'_>, b: &Budget) -> Res<Vec<Rep>> {
    use rustix::thread::futex;
    use std::sync::atomic::Ordering;
    let (ping, pong) = (shm.u32_at(off::PING), shm.u32_at(off::PONG));
    link::time_round_trips(b, |seq| {
        let s = seq as u32;
        ping.store(s, Ordering::Release);
        futex::wake(ping, futex::Flags::empty(), 1)?;
        futex_wait_until(shm, watch, pong, |v| v == s)?.ok_or_else(stopped)?;
        Ok(())
    })
}

#[cfg(target_os = "linux")]
fn futex_pong(shm: &Shm, watch: &Watch<'_>) -> Res<()> {
    use rustix::thread::futex;
    use std::sync::atomic::Ordering;
    let (ping, pong) = (shm.u32_at(off::PING), shm.u32_at(off::PONG));
    let mut last = 0u32;
    while let Some(v) = futex_wait_until(shm, watch, ping, |v| v != last)? {
        pong.store(v, Ordering::Release);
        futex::wake(pong, futex::Flags::empty(), 1)?;
        last = v;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn futex_ping(_shm: &Shm, _watch: &Watch<'_>, _b: &Budget) -> Res<Vec<Rep>> {
    Err(Skip("futex(2) is Linux only".into()).into())
}

#[cfg(not(target_os = "linux"))]
fn futex_pong(_shm: &Shm, _watch: &Watch<'_>) -> Res<()> {
    Err(err("futex(2) is Linux only"))
}

/// The ring's producer (the parent): 64-byte messages, spinning while full,
/// the head published in batches of [`BATCH`].
fn ring_producer(shm: &Shm, watch: &Watch<'_>, w: Workload, b: &Budget) -> Res<Vec<Rep>> {
    use std::sync::atomic::Ordering;
    let (head, tail) = (shm.u64_at(off::HEAD), shm.u64_at(off::TAIL));
    let gen = shm.u64_at(off::REPORT_GEN);
    let mut h = head.load(Ordering::Relaxed);
    let mut cached_tail = tail.load(Ordering::Acquire);
    let mut seen_gen = gen.load(Ordering::Acquire);
    let mut msg = [0u8; SLOT];
    let mut push = |tag: u8, seq: u64| -> Res<()> {
        link::stamp(&mut msg, tag, seq);
        if h - cached_tail >= SLOTS {
            // Publish what is written before waiting for room.
            head.store(h, Ordering::Release);
            if !watch.spin(shm, || {
                cached_tail = tail.load(Ordering::Acquire);
                h - cached_tail < SLOTS
            })? {
                return Err(stopped());
            }
        }
        shm.write_slot(h, &msg);
        h += 1;
        if h.is_multiple_of(BATCH) || tag == link::END {
            head.store(h, Ordering::Release);
        }
        Ok(())
    };
    link::time_streams(b, w, |dur| {
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            push(link::DATA, n)?;
            n += 1;
            if n.is_multiple_of(64) && start.elapsed() >= dur {
                break;
            }
        }
        push(link::END, n)?;
        if !watch.spin(shm, || gen.load(Ordering::Acquire) != seen_gen)? {
            return Err(stopped());
        }
        let elapsed = start.elapsed();
        seen_gen = gen.load(Ordering::Acquire);
        link::check_report(
            n,
            shm.u64_at(off::REPORT_COUNT).load(Ordering::Relaxed),
            shm.u64_at(off::REPORT_BAD).load(Ordering::Relaxed),
        )?;
        Ok((n, elapsed))
    })
}

/// The ring's consumer (the child): checks every message, reports on END.
fn ring_consumer(shm: &Shm, watch: &Watch<'_>) -> Res<()> {
    use std::sync::atomic::Ordering;
    let (head, tail) = (shm.u64_at(off::HEAD), shm.u64_at(off::TAIL));
    let mut t = tail.load(Ordering::Relaxed);
    let mut cached_head = head.load(Ordering::Acquire);
    let mut buf = [0u8; SLOT];
    let (mut count, mut bad) = (0u64, 0u64);
    loop {
        if t == cached_head {
            // Free what is read before waiting for more.
            tail.store(t, Ordering::Release);
            if !watch.spin(shm, || {
                cached_head = head.load(Ordering::Acquire);
                cached_head != t
            })? {
                return Ok(());
            }
        }
        shm.read_slot(t, &mut buf);
        t += 1;
        if t.is_multiple_of(BATCH) {
            tail.store(t, Ordering::Release);
        }
        match buf[0] {
            link::DATA => {
                if !link::check(&buf, SLOT, count) {
                    bad += 1;
                }
                count += 1;
            }
            link::END => {
                shm.u64_at(off::REPORT_COUNT)
                    .store(count, Ordering::Relaxed);
                shm.u64_at(off::REPORT_BAD).store(bad, Ordering::Relaxed);
                shm.u64_at(off::REPORT_GEN).fetch_add(1, Ordering::Release);
                (count, bad) = (0, 0);
            }
            _ => return Err(err("unexpected message in the ring")),
        }
    }
}
