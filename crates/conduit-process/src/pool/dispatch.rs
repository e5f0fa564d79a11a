//! The pool's side of its workers: the shared queue of chunks, and one
//! thread per worker slot that feeds its worker, collects the results, and
//! replaces the worker when it dies or has run its share of tasks.
//!
//! Each slot's thread owns its worker's link and runs one chunk at a time
//! (send the chunk, wait for its results): a dead worker shows as a broken
//! link on that thread only, which knows exactly which tasks were lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use conduit_core::transport::spawn_context::export_scope;
use conduit_core::{Duplex, Error, ErrorKind, Receiver, Result, Sender};

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::codec::{encode_message, Cbor};

use super::worker::{seal_array, worker_main, Call, Down, Up, WorkerArgs, HEAD};
use super::OnWorkerDeath;
use crate::{runtime, sys, Process};

/// Where a chunk's results go: the iterator that asked for them.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: mpsc::Sender<Outcome>,
    abandoned: Arc<AtomicBool>,
    /// Wakes a task awaiting the results (`next_async`).
    #[cfg(feature = "tokio")]
    notify: Arc<tokio::sync::Notify>,
}

impl Sink {
    pub(crate) fn new(
        tx: mpsc::Sender<Outcome>,
        abandoned: Arc<AtomicBool>,
        #[cfg(feature = "tokio")] notify: Arc<tokio::sync::Notify>,
    ) -> Sink {
        Sink {
            tx,
            abandoned,
            #[cfg(feature = "tokio")]
            notify,
        }
    }
}

#[cfg(feature = "tokio")]
impl Drop for Sink {
    fn drop(&mut self) {
        // The last sink gone closes the channel: an awaiting task must look
        // again to see it. The sender is dropped first, so that the task
        // woken here finds the channel closed.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        self.notify.notify_one();
    }
}

/// The results of the chunk whose first task is `first`.
pub(crate) struct Outcome {
    pub(crate) first: usize,
    pub(crate) count: u32,
    /// The body is one CBOR array of the results (else records).
    pub(crate) packed: bool,
    /// One result record per task (see `worker`), or why none ran.
    pub(crate) body: Result<Vec<u8>>,
}

/// Tasks that go to one worker at once.
pub(crate) struct Chunk {
    call: Arc<Call>,
    /// Packed: [`HEAD`] bytes of room, then the CBOR items; raw: the
    /// inputs back to back.
    inputs: Vec<u8>,
    /// Where each input ends (after the room, when packed).
    ends: Vec<usize>,
    packed: bool,
    /// Where the frame starts in `inputs`, once sealed.
    head: usize,
    pub(crate) count: u32,
    first: usize,
    /// How many workers died running these tasks.
    deaths: u32,
    sink: Sink,
}

impl Chunk {
    /// An empty chunk whose first task is input `first`; `packed` unless
    /// the inputs travel as raw bytes.
    pub(crate) fn new(call: &Arc<Call>, first: usize, sink: &Sink, packed: bool) -> Chunk {
        Chunk {
            call: Arc::clone(call),
            inputs: if packed { vec![0; HEAD] } else { Vec::new() },
            ends: Vec::new(),
            packed,
            head: 0,
            count: 0,
            first,
            deaths: 0,
            sink: sink.clone(),
        }
    }

    /// Makes room for as many inputs and bytes as `full` holds (the next
    /// chunk of a map is usually alike): no reallocation while it fills.
    pub(crate) fn reserve_like(&mut self, full: &Chunk) {
        if self.packed {
            self.inputs.reserve(full.inputs.len());
        }
        self.ends.reserve(full.ends.len());
    }

    /// Encodes one more input into the chunk. Raw bytes (`Vec<u8>`) that
    /// start a chunk become its buffer, without a copy.
    pub(crate) fn push<A: Serialize + 'static>(&mut self, a: A) -> Result<()> {
        if !self.packed && self.inputs.is_empty() {
            let any: Box<dyn std::any::Any> = Box::new(a);
            match any.downcast::<Vec<u8>>() {
                Ok(bytes) => {
                    self.inputs = *bytes;
                    self.ends.push(self.inputs.len());
                    self.count += 1;
                    return Ok(());
                }
                Err(any) => match any.downcast::<A>() {
                    Ok(a) => return self.push_encoded(&*a),
                    Err(_) => return Err(Error::new(ErrorKind::Encode, "raw input type mismatch")),
                },
            }
        }
        self.push_encoded(&a)
    }

    /// Encodes one more input into the chunk.
    pub(crate) fn push_encoded<A: Serialize + 'static>(&mut self, a: &A) -> Result<()> {
        let before = self.inputs.len();
        if self.packed && super::ints::encode(a, &mut self.inputs) {
            // An integer: written without serde (see `ints`).
        } else if let Err(e) = encode_message::<A, Cbor>(a, &mut self.inputs) {
            self.inputs.truncate(before);
            return Err(e);
        }
        self.ends.push(self.inputs.len() - self.base());
        self.count += 1;
        Ok(())
    }

    fn base(&self) -> usize {
        if self.packed {
            HEAD
        } else {
            0
        }
    }

    /// Bytes of encoded inputs so far.
    pub(crate) fn bytes(&self) -> usize {
        self.inputs.len() - self.base()
    }

    /// Completes the frame (the array header of a packed chunk).
    pub(crate) fn seal(&mut self) {
        if self.packed {
            self.head = seal_array(&mut self.inputs, self.count as usize);
        }
    }

    fn frame(&self) -> &[u8] {
        &self.inputs[self.head..]
    }

    /// Raw inputs: their lengths, for the worker to split them.
    fn lens(&self) -> Option<Vec<u64>> {
        if self.packed {
            return None;
        }
        let mut start = 0;
        Some(
            self.ends
                .iter()
                .map(|&end| {
                    let len = (end - start) as u64;
                    start = end;
                    len
                })
                .collect(),
        )
    }

    fn deliver(self, body: Result<Vec<u8>>, packed: bool) {
        // The iterator may be gone; nobody wants the results then.
        let _ = self.sink.tx.send(Outcome {
            first: self.first,
            count: self.count,
            packed,
            body,
        });
        #[cfg(feature = "tokio")]
        self.sink.notify.notify_one();
    }

    fn fail(self, e: Error) {
        self.deliver(Err(e), false);
    }

    fn tasks(&self) -> String {
        match self.count {
            1 => format!("task {}", self.first),
            n => format!("tasks {}..{}", self.first, self.first + n as usize),
        }
    }

    /// One chunk per task, for running them one at a time after a death.
    fn split(self) -> Vec<Chunk> {
        if self.count == 1 {
            return vec![self];
        }
        let base = self.base();
        let mut start = 0;
        let mut out = Vec::with_capacity(self.count as usize);
        for (i, &end) in self.ends.iter().enumerate() {
            let mut one = Chunk::new(&self.call, self.first + i, &self.sink, self.packed);
            one.inputs
                .extend_from_slice(&self.inputs[base + start..base + end]);
            one.ends.push(end - start);
            one.count = 1;
            one.deaths = self.deaths;
            one.seal();
            out.push(one);
            start = end;
        }
        out
    }
}

struct State {
    queue: VecDeque<Chunk>,
    closed: bool,
    terminating: bool,
    /// Set when the initializer failed: every task fails with this.
    broken: Option<(ErrorKind, String)>,
}

/// What the pool's threads share.
pub(crate) struct Shared {
    state: Mutex<State>,
    work: Condvar,
    /// The worker process of each slot.
    slots: Vec<Mutex<Option<Process<()>>>>,
    exe: Vec<u64>,
    init: Option<(Call, Vec<u8>)>,
    max_tasks: Option<usize>,
    on_death: OnWorkerDeath,
    chunk_size: Option<usize>,
    workers: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker process, as its slot's thread sees it.
pub(crate) struct Link {
    duplex: Duplex<Down, Up>,
    pid: u32,
    tasks: usize,
}

/// How running a chunk on a worker went.
enum Ran {
    Done(Vec<u8>, bool),
    Failed(Error),
    InitFailed(String),
    /// The chunk could not even be sent: the worker was gone before it.
    NotSent,
    /// The link broke while the worker held the chunk.
    Died,
    /// The chunk could not be sent whole (too large): the link is out of
    /// step and the worker must be replaced; the chunk fails.
    Unusable(Error),
}

impl Shared {
    pub(crate) fn new(
        workers: usize,
        init: Option<(Call, Vec<u8>)>,
        max_tasks: Option<usize>,
        on_death: OnWorkerDeath,
        chunk_size: Option<usize>,
    ) -> Result<Shared> {
        Ok(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                terminating: false,
                broken: None,
            }),
            work: Condvar::new(),
            slots: (0..workers).map(|_| Mutex::new(None)).collect(),
            exe: crate::builder::exe_identity()?,
            init,
            max_tasks,
            on_death,
            chunk_size,
            workers,
        })
    }

    /// Tasks per chunk for a call with `n` inputs (see
    /// `PoolBuilder::chunk_size`).
    pub(crate) fn chunk_size(&self, n: usize) -> usize {
        let size = self
            .chunk_size
            .unwrap_or_else(|| n.div_ceil(self.workers * 4).max(1));
        match self.max_tasks {
            Some(m) => size.min(m),
            None => size,
        }
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| lock(s).as_ref().map(|p| p.pid()))
            .collect()
    }

    pub(crate) fn submit(&self, chunk: Chunk) -> Result<()> {
        let mut st = lock(&self.state);
        if st.closed || st.terminating {
            return Err(Error::invalid_input(
                "the pool is closed (close() or terminate() was called): it takes no more tasks",
            ));
        }
        if let Some((kind, message)) = &st.broken {
            return Err(Error::new(*kind, message.clone()));
        }
        st.queue.push_back(chunk);
        drop(st);
        self.work.notify_one();
        Ok(())
    }

    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        let st = lock(&self.state);
        st.closed || st.terminating
    }

    /// Kills every worker and fails every queued chunk.
    pub(crate) fn terminate(&self) {
        let queued: Vec<Chunk> = {
            let mut st = lock(&self.state);
            st.terminating = true;
            st.queue.drain(..).collect()
        };
        self.work.notify_all();
        for c in queued {
            let e = terminated(&c);
            c.fail(e);
        }
        for slot in &self.slots {
            if let Some(p) = lock(slot).as_mut() {
                let _ = p.kill();
            }
        }
    }

    fn terminating(&self) -> bool {
        lock(&self.state).terminating
    }

    /// The next chunk to run, or `None` when the slot's thread should end.
    fn next_chunk(&self) -> Option<Chunk> {
        let mut st = lock(&self.state);
        loop {
            if st.terminating {
                return None;
            }
            if let Some(c) = st.queue.pop_front() {
                return Some(c);
            }
            if st.closed {
                return None;
            }
            st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Puts chunks back at the front of the queue, in order.
    fn requeue(&self, chunks: Vec<Chunk>) {
        let mut st = lock(&self.state);
        if st.terminating {
            drop(st);
            for c in chunks {
                let e = terminated(&c);
                c.fail(e);
            }
            return;
        }
        for c in chunks.into_iter().rev() {
            st.queue.push_front(c);
        }
        drop(st);
        self.work.notify_all();
    }

    /// The initializer failed: fail everything queued and refuse new work.
    fn break_with(&self, kind: ErrorKind, message: &str) {
        let queued: Vec<Chunk> = {
            let mut st = lock(&self.state);
            st.broken = Some((kind, message.to_string()));
            st.queue.drain(..).collect()
        };
        for c in queued {
            c.fail(Error::new(kind, message));
        }
    }

    /// Starts the worker process of `slot`.
    pub(crate) fn start_worker(&self, slot: usize) -> Result<Link> {
        let rt = runtime()?;
        let mut guard = lock(&self.slots[slot]);
        if self.terminating() {
            return Err(Error::disconnected("the pool was terminated"));
        }
        let ((ours_tx, ours_rx), (theirs_tx, theirs_rx)) = (rt.link_duplex)()?;
        let ours = Duplex::from_parts(Sender::from_raw(ours_tx), Receiver::from_raw(ours_rx));
        let theirs = Duplex::from_parts(Sender::from_raw(theirs_tx), Receiver::from_raw(theirs_rx));
        let args = WorkerArgs {
            exe: self.exe.clone(),
            check_offset: sys::check_offset(),
            init: self
                .init
                .as_ref()
                .map(|(c, a)| (c.clone(), serde_bytes::ByteBuf::from(a.clone()))),
            link: theirs,
        };
        let p = Process::builder()
            .name(format!("conduit pool worker {slot}"))
            .kill_on_drop(true)
            .die_with_parent(true)
            .spawn(worker_main, args)?;
        let pid = p.pid();
        *guard = Some(p);
        Ok(Link {
            duplex: ours,
            pid,
            tasks: 0,
        })
    }

    /// Closes `link` and collects its worker; returns how it ended.
    fn reap(&self, slot: usize, link: Link) -> String {
        drop(link);
        let taken = lock(&self.slots[slot]).take();
        let Some(mut p) = taken else {
            return "ended".into();
        };
        // The link broke, so the worker has exited or is about to; one that
        // lingers (stuck in its own code) is killed.
        if let Err(e) = p.join_timeout(Duration::from_secs(1)) {
            if e.kind() == ErrorKind::Timeout {
                let _ = p.kill();
                let _ = p.join();
            }
        }
        match p.exit_status() {
            Some(status) => sys::describe(status).to_string(),
            None => "ended".into(),
        }
    }

    /// Lets a worker exit (it has run its share of tasks, or the pool is
    /// closing) and collects it.
    fn retire(&self, slot: usize, link: Link) {
        let _ = self.reap(slot, link);
    }
}

/// Runs input `index`, which holds endpoints, in a process of its own (a
/// process gets endpoints only as it starts, so no running worker can take
/// them): `None` when it holds none (the caller reports its own encoding
/// error), else whether the process started. A thread waits for the
/// result and delivers it like a chunk of one; it kills the process if the
/// pool is terminated first.
pub(crate) fn run_alone<F, A, R>(
    shared: &Arc<Shared>,
    a: A,
    index: usize,
    sink: &Sink,
) -> Option<Result<()>>
where
    F: Fn(A) -> R + Copy + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let (args, endpoints) = export_scope(|| crate::encode(&a));
    if endpoints.is_empty() {
        return None;
    }
    let args = match args {
        Ok(args) => args,
        Err(e) => {
            return Some(Err(Error::new(
                ErrorKind::Encode,
                format!("it does not encode: {e}"),
            )))
        }
    };
    let spawned = Process::builder()
        .name(format!("conduit pool task {index}"))
        .kill_on_drop(true)
        .die_with_parent(true)
        .spawn_encoded::<R>(
            sys::trampoline_offset(crate::trampoline::<F, A, R>),
            crate::Names::of::<F, A, R>(),
            args,
            endpoints,
        );
    let mut p = match spawned {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let one = Chunk {
        call: Arc::new(Call {
            offset: 0,
            names: crate::Names::of::<F, A, R>(),
        }),
        inputs: Vec::new(),
        ends: Vec::new(),
        packed: false,
        head: 0,
        count: 1,
        first: index,
        deaths: 0,
        sink: sink.clone(),
    };
    let shared = Arc::clone(shared);
    let waiter = std::thread::Builder::new()
        .name(format!("conduit-pool-task-{index}"))
        .spawn(move || loop {
            // Bounded waits, so that a terminated pool kills the process.
            match p.join_timeout(Duration::from_millis(100)) {
                Ok(r) => {
                    let mut body = Vec::new();
                    super::worker::push_returned(&mut body, &r);
                    return one.deliver(Ok(body), false);
                }
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    if shared.terminating() {
                        let _ = p.kill();
                        let e = terminated(&one);
                        return one.fail(e);
                    }
                }
                Err(e) => return one.fail(e),
            }
        });
    Some(
        waiter
            .map(|_| ())
            .map_err(|e| Error::from_io("cannot start a pool thread", e)),
    )
}

fn terminated(c: &Chunk) -> Error {
    Error::disconnected(format!(
        "the pool was terminated or dropped before {} finished",
        c.tasks()
    ))
}

impl Link {
    fn run(&mut self, chunk: &Chunk, results: &mut Vec<u8>) -> Ran {
        let down = Down::Chunk {
            call: Call::clone(&chunk.call),
            count: chunk.count,
            lens: chunk.lens(),
        };
        let sent = self
            .duplex
            .send(&down)
            .and_then(|()| self.duplex.send_bytes(chunk.frame()));
        match sent {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Disconnected => return Ran::NotSent,
            // Too large for the link, most likely: the worker has the
            // message header but no frame; it cannot be used again.
            Err(e) => return Ran::Unusable(e),
        }
        match self.duplex.recv() {
            Ok(Up::Done { packed }) => match self.duplex.recv_bytes_into(results) {
                Ok(_) => Ran::Done(std::mem::take(results), packed),
                Err(e) if e.kind() == ErrorKind::Disconnected => Ran::Died,
                Err(e) => Ran::Failed(e),
            },
            Ok(Up::Failed(f)) => Ran::Failed(Error::new(f.kind.into(), f.message)),
            Ok(Up::InitFailed(message)) => Ran::InitFailed(message),
            Err(e) if e.kind() == ErrorKind::Disconnected => Ran::Died,
            Err(e) => Ran::Failed(e),
        }
    }
}

/// The thread of one worker slot: runs chunks until the pool closes.
pub(crate) fn serve(shared: &Shared, slot: usize, link: Link) {
    let mut link = Some(link);
    let mut results = Vec::new();
    // Workers that were gone before they got a chunk, in a row: a worker
    // that cannot even start (its executable fails before `init()`) must
    // not be restarted forever.
    let mut stillborn = 0u32;
    while let Some(chunk) = shared.next_chunk() {
        if chunk.sink.abandoned.load(Ordering::Relaxed) {
            continue;
        }
        let l = match link.as_mut() {
            Some(l) => l,
            None => match shared.start_worker(slot) {
                Ok(l) => link.insert(l),
                Err(e) => {
                    // The OS error, if any, goes into the message: the
                    // chunk's error is a new one, without `e`'s source.
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default();
                    let e = Error::new(
                        e.kind(),
                        format!(
                            "cannot start a pool worker for {}: {}{cause}",
                            chunk.tasks(),
                            e.message()
                        ),
                    );
                    chunk.fail(e);
                    continue;
                }
            },
        };
        let pid = l.pid;
        match l.run(&chunk, &mut results) {
            Ran::Done(body, packed) => {
                stillborn = 0;
                l.tasks += chunk.count as usize;
                chunk.deliver(Ok(body), packed);
                if shared.max_tasks.is_some_and(|m| l.tasks >= m) {
                    if let Some(l) = link.take() {
                        shared.retire(slot, l);
                    }
                }
            }
            Ran::Unusable(e) => {
                if let Some(l) = link.take() {
                    shared.retire(slot, l);
                }
                let e = Error::new(e.kind(), format!("{}: {}", chunk.tasks(), e.message()));
                chunk.fail(e);
            }
            Ran::Failed(e) => {
                stillborn = 0;
                let e = Error::new(e.kind(), format!("{}: {}", chunk.tasks(), e.message()));
                chunk.fail(e);
            }
            Ran::InitFailed(message) => {
                let message = format!(
                    "the pool's initializer failed in worker (pid {pid}), so the pool runs no \
                     tasks: {message}"
                );
                if let Some(l) = link.take() {
                    shared.retire(slot, l);
                }
                shared.break_with(ErrorKind::ChildFailed, &message);
                chunk.fail(Error::new(ErrorKind::ChildFailed, message));
            }
            Ran::NotSent => {
                let how = link.take().map(|l| shared.reap(slot, l));
                stillborn += 1;
                if shared.terminating() {
                    let e = terminated(&chunk);
                    chunk.fail(e);
                } else if stillborn >= 3 {
                    let e = Error::new(
                        ErrorKind::WorkerDied,
                        format!(
                            "three pool workers in a row (the last pid {pid}, which {}) were gone \
                             before they could take {}",
                            how.unwrap_or_default(),
                            chunk.tasks()
                        ),
                    );
                    chunk.fail(e);
                } else {
                    shared.requeue(vec![chunk]);
                }
            }
            Ran::Died => {
                stillborn = 0;
                let how = link
                    .take()
                    .map(|l| shared.reap(slot, l))
                    .unwrap_or_default();
                if shared.terminating() {
                    let e = terminated(&chunk);
                    chunk.fail(e);
                    continue;
                }
                let mut chunk = chunk;
                chunk.deaths += 1;
                match shared.on_death {
                    OnWorkerDeath::Retry(n) if chunk.deaths <= n => {
                        shared.requeue(chunk.split());
                    }
                    _ => {
                        let e = Error::new(
                            ErrorKind::WorkerDied,
                            format!(
                                "pool worker (pid {pid}) {how} while it ran {}",
                                chunk.tasks()
                            ),
                        );
                        chunk.fail(e);
                    }
                }
            }
        }
    }
    if let Some(l) = link {
        shared.retire(slot, l);
    }
}
