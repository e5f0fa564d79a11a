//! [`Pool`]: map a function over inputs in worker processes (Python's
//! `multiprocessing.Pool` and `ProcessPoolExecutor`), surviving workers
//! that die.

mod dispatch;
mod ints;
mod results;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::codec::{encode_message, is_raw, Cbor};
use conduit_core::{Error, ErrorKind, Result};

use crate::{runtime, sys, Names};
use dispatch::{Chunk, Shared, Sink};
pub use results::{PoolIter, PoolTask};
use worker::{init_trampoline, task_trampoline, Call};

/// What a [`Pool`] does with the tasks of a worker process that dies while
/// it runs them (killed by the OOM killer or `kill -9`, crashed in native
/// code, or exited).
///
/// Whatever the policy, the pool notices the death at once (the worker's
/// link breaks), starts a replacement worker, and every other task
/// completes normally: `map` never hangs on a dead worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnWorkerDeath {
    /// Run each task the dead worker held again, one task at a time, on a
    /// fresh worker, up to `n` more times; a task whose worker dies more
    /// often than that fails with [`ErrorKind::WorkerDied`]. Running tasks
    /// one at a time after a death isolates a task that kills its worker
    /// itself from the tasks that shared its chunk.
    ///
    /// Tasks may therefore run more than once: use this (the default,
    /// `Retry(1)`) for functions without side effects outside their result,
    /// as `Pool.map` functions usually are.
    Retry(u32),
    /// Fail every task the dead worker held with [`ErrorKind::WorkerDied`]
    /// (the message names the worker's pid and how it ended). With a chunk
    /// size above 1 that is the whole chunk it was running.
    Fail,
}

impl Default for OnWorkerDeath {
    fn default() -> Self {
        OnWorkerDeath::Retry(1)
    }
}

/// Configures a [`Pool`] before [`PoolBuilder::build`].
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
/// fn setup(greeting: String) { eprintln!("{greeting} from {}", std::process::id()); }
/// # fn main() -> Result<(), conduit::Error> {
/// conduit::init();
/// let pool = conduit::Pool::builder()
///     .workers(2)
///     .chunk_size(64)
///     .max_tasks_per_worker(10_000)
///     .init(setup, "hello".to_string())
///     .on_worker_death(conduit::OnWorkerDeath::Fail)
///     .build()?;
/// assert_eq!(pool.map(square, 1..=3u64)?, [1, 4, 9]);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until build is called"]
pub struct PoolBuilder {
    workers: Option<usize>,
    chunk_size: Option<usize>,
    max_tasks: Option<usize>,
    init: Option<Result<(Call, Vec<u8>)>>,
    on_death: OnWorkerDeath,
}

impl PoolBuilder {
    /// The number of worker processes. Default: the machine's available
    /// parallelism (`std::thread::available_parallelism`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How many inputs go to a worker at once. Default: chosen per call
    /// like Python's `Pool.map`: the number of inputs divided by four times
    /// the number of workers, rounded up (so each worker gets about four
    /// chunks and a slow chunk does not leave the others idle), and a chunk
    /// is also closed once its encoded inputs reach 1 MiB (so large inputs
    /// go one or a few at a time).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// Replace a worker with a fresh process after it has run `n` tasks
    /// (Python's `maxtasksperchild`). Chunks are kept to at most `n` tasks.
    /// Default: workers live as long as the pool.
    pub fn max_tasks_per_worker(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Run `f(args)` in each worker process when it starts, before its
    /// first task (Python's `initializer`, `initargs`). `args` is encoded
    /// once, here, and decoded by every worker; it cannot hold endpoints.
    /// If `f` panics, the pool is broken: pending and later tasks fail with
    /// `ChildFailed` carrying the panic message.
    pub fn init<F, A>(mut self, f: F, args: A) -> Self
    where
        F: Fn(A) + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "a pool initializer is a fn item or a closure that captures nothing"
            )
        };
        let _ = f;
        let mut bytes = Vec::new();
        self.init = Some(encode_message::<A, Cbor>(&args, &mut bytes).map(|()| {
            let call = Call {
                offset: sys::init_offset(init_trampoline::<F, A>),
                names: Names::of::<F, A, ()>(),
            };
            (call, bytes)
        }));
        self
    }

    /// What to do with the tasks of a worker that dies. Default:
    /// [`OnWorkerDeath::Retry(1)`](OnWorkerDeath::Retry).
    pub fn on_worker_death(mut self, policy: OnWorkerDeath) -> Self {
        self.on_death = policy;
        self
    }

    /// Starts the worker processes.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `conduit::init()` has not run in this process or
    /// `workers(0)`, `chunk_size(0)` or `max_tasks_per_worker(0)` was asked
    /// for, `Encode` when the initializer's arguments
    /// do not encode, `Io` when a worker cannot be started.
    pub fn build(self) -> Result<Pool> {
        runtime()?;
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::invalid_input(
                    "a pool needs at least one worker process (workers(0) was asked for)",
                ))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        for (zero, what) in [
            (
                self.chunk_size == Some(0),
                "chunk_size(0): a chunk holds at least one task",
            ),
            (
                self.max_tasks == Some(0),
                "max_tasks_per_worker(0): a worker runs at least one task before it is replaced",
            ),
        ] {
            if zero {
                return Err(Error::invalid_input(format!(
                    "{what}; leave it unset for the default"
                )));
            }
        }
        let init = self.init.transpose()?;
        let shared = Arc::new(Shared::new(
            workers,
            init,
            self.max_tasks,
            self.on_death,
            self.chunk_size,
        )?);
        let mut threads = Vec::with_capacity(workers);
        for slot in 0..workers {
            // Started here, so that a pool that cannot start its workers
            // fails now rather than on its first task.
            let link = match shared.start_worker(slot) {
                Ok(link) => link,
                Err(e) => {
                    shared.terminate();
                    for t in threads {
                        let _ = JoinHandle::join(t);
                    }
                    return Err(e);
                }
            };
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("conduit-pool-{slot}"))
                .spawn(move || dispatch::serve(&s, slot, link));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.terminate();
                    return Err(Error::from_io("cannot start a pool thread", e));
                }
            }
        }
        Ok(Pool {
            shared,
            workers,
            threads: Mutex::new(threads),
        })
    }
}

/// A pool of worker processes that run `fn(A) -> R` over many inputs
/// (Python's `multiprocessing.Pool`).
///
/// Workers are this program's executable started again, like
/// [`Process::spawn`](crate::Process::spawn) children (`main` must call
/// `conduit::init()` first), tied to this process (`die_with_parent`) and
/// killed when the pool is dropped. Inputs are encoded in the calling
/// thread, sent in chunks over one link per worker (the fastest duplex
/// transport compiled in), and results come back in input order
/// ([`map`](Pool::map), [`imap`](Pool::imap)) or as they finish
/// ([`imap_unordered`](Pool::imap_unordered)).
///
/// A panic in the function is that task's `ChildFailed` error (panic
/// message and location); the worker lives on. An input that holds
/// endpoints (`Sender`, `Receiver`, `Duplex`, queue ends) runs in a process
/// of its own started for it, since endpoints can only be handed to a
/// process as it starts. A worker that dies is
/// replaced at once and its tasks are retried or failed with
/// [`ErrorKind::WorkerDied`], as [`OnWorkerDeath`] says.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), conduit::Error> {
///     conduit::init();
///     let pool = conduit::Pool::new(4)?;
///     let out: Vec<u64> = pool.map(square, 0..10u64)?;
///     assert_eq!(out[3], 9);
///     for r in pool.imap_unordered(square, vec![1u64, 2, 3])? {
///         println!("{}", r?);
///     }
///     let h = pool.submit(square, 7)?;
///     assert_eq!(h.join()?, 49);
///     pool.close();
///     pool.join()?;
///     Ok(())
/// }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `workers` processes with the defaults (see
    /// [`Pool::builder`]).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(workers: usize) -> Result<Pool> {
        Pool::builder().workers(workers).build()
    }

    /// A [`PoolBuilder`] with the defaults.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The pids of the worker processes running now (a dead or retired
    /// worker's replacement has a new pid).
    pub fn pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// `f` over every input, results in input order (Python's `Pool.map`).
    ///
    /// # Errors
    ///
    /// The first failed task's error, in input order: `ChildFailed` (it
    /// panicked), `WorkerDied`, `Decode`/`Encode`; `Encode` up front when an
    /// input does not encode; `InvalidInput` when the pool is closed.
    pub fn map<F, A, R, I>(&self, f: F, inputs: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap(f, inputs)?.collect_in_order()
    }

    /// `f` over every input, as an iterator of results in input order
    /// (Python's `Pool.imap`). Every input is encoded and queued before
    /// this returns; results arrive while the iterator is read. Dropping
    /// the iterator skips the chunks not started yet.
    ///
    /// # Errors
    ///
    /// Up front: `Encode` when an input does not encode, `InvalidInput` when
    /// the pool is closed. Per item: as [`map`](Pool::map).
    pub fn imap<F, A, R, I>(&self, f: F, inputs: I) -> Result<PoolIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.start(f, inputs, true)
    }

    /// Like [`imap`](Pool::imap), but results come as they finish
    /// (Python's `Pool.imap_unordered`).
    ///
    /// # Errors
    ///
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered<F, A, R, I>(&self, f: F, inputs: I) -> Result<PoolIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.start(f, inputs, false)
    }

    /// Runs one task (Python's `Pool.apply_async`,
    /// `ProcessPoolExecutor.submit`); [`PoolTask::join`] waits for it.
    ///
    /// # Errors
    ///
    /// As [`imap`](Pool::imap).
    pub fn submit<F, A, R>(&self, f: F, input: A) -> Result<PoolTask<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.start(f, [input], true).map(PoolTask::new)
    }

    /// Like [`map`](Pool::map), awaiting the results without blocking the
    /// runtime (feature `tokio`): the inputs are encoded and queued at the
    /// first poll, in the calling task, then the results are awaited (no
    /// thread is started for them). Dropping the future skips the chunks
    /// not started yet.
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), conduit::Error> {
    /// conduit::init();
    /// let pool = conduit::Pool::new(2)?;
    /// let out = pool.map_async(square, 0..100u64).await?;
    /// assert_eq!(out[9], 81);
    /// assert_eq!(pool.submit(square, 7)?.join_async().await?, 49);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn map_async<F, A, R, I>(&self, f: F, inputs: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        let mut it = self.imap(f, inputs)?;
        let mut out = Vec::with_capacity(it.len());
        while let Some(r) = it.next_async().await {
            out.push(r?);
        }
        Ok(out)
    }

    /// Accepts no more tasks; the workers exit once the queued ones are
    /// done (Python's `Pool.close`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills the workers now; queued and running tasks fail with
    /// `Disconnected` (Python's `Pool.terminate`).
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits until the workers have exited (Python's `Pool.join`): after
    /// [`close`](Pool::close), once every queued task is done; after
    /// [`terminate`](Pool::terminate), at once.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the pool was neither closed nor terminated (it
    /// would wait forever).
    pub fn join(&self) -> Result<()> {
        if !self.shared.is_closed() {
            return Err(Error::invalid_input(
                "Pool::join waits for the workers to exit: call close() (or terminate()) first",
            ));
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                return Err(Error::new(
                    ErrorKind::Io,
                    "a pool thread panicked (a bug in conduit: please report it)",
                ));
            }
        }
        Ok(())
    }

    fn start<F, A, R, I>(&self, f: F, inputs: I, ordered: bool) -> Result<PoolIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "Pool takes a fn item or a closure that captures nothing: \
                 pass captured values in the inputs instead"
            )
        };
        let _ = f;
        let call = Arc::new(Call {
            offset: sys::task_offset(task_trampoline::<F, A, R>),
            names: Names::of::<F, A, R>(),
        });
        let iter = inputs.into_iter();
        // The chunk size needs the number of inputs; an iterator that does
        // not know it is collected first (the inputs are all encoded up
        // front anyway, as Python's Pool does).
        let (lower, upper) = iter.size_hint();
        if Some(lower) == upper {
            self.start_with::<F, A, R, _>(call, lower, iter, ordered)
        } else {
            let v: Vec<A> = iter.collect();
            self.start_with::<F, A, R, _>(call, v.len(), v.into_iter(), ordered)
        }
    }

    /// [`start`](Pool::start) with `n` inputs in `items` (generic, not a
    /// `dyn Iterator`: a virtual call per input was measurable with tiny
    /// tasks).
    fn start_with<F, A, R, I>(
        &self,
        call: Arc<Call>,
        n: usize,
        items: I,
        ordered: bool,
    ) -> Result<PoolIter<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: Iterator<Item = A>,
    {
        let per_chunk = self.shared.chunk_size(n);
        let (tx, rx) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        #[cfg(feature = "tokio")]
        let notify = Arc::new(tokio::sync::Notify::new());
        let sink = Sink::new(
            tx,
            Arc::clone(&abandoned),
            #[cfg(feature = "tokio")]
            Arc::clone(&notify),
        );
        let packed = !is_raw::<A>();
        // Each chunk is queued as soon as it is full, so that the workers
        // start while the rest is encoded. If an input does not encode, the
        // chunks already queued are skipped (nobody will read them).
        let queued = |r: Result<()>| {
            if r.is_err() {
                abandoned.store(true, Ordering::Relaxed);
            }
            r
        };
        let mut chunk = Chunk::new(&call, 0, &sink, packed);
        let mut total = 0;
        for a in items {
            if chunk.count as usize >= per_chunk || chunk.bytes() >= CHUNK_BYTES {
                let mut next = Chunk::new(&call, total, &sink, packed);
                next.reserve_like(&chunk);
                let mut full = std::mem::replace(&mut chunk, next);
                full.seal();
                queued(self.shared.submit(full))?;
            }
            let pushed = if packed {
                match chunk.push_encoded(&a) {
                    Ok(()) => Ok(()),
                    // Perhaps it holds endpoints: they can only go to a
                    // process as it starts, so this input runs alone.
                    Err(e) => match dispatch::run_alone::<F, A, R>(&self.shared, a, total, &sink) {
                        Some(Ok(())) => {
                            if chunk.count > 0 {
                                chunk.seal();
                                queued(self.shared.submit(chunk))?;
                            }
                            chunk = Chunk::new(&call, total + 1, &sink, packed);
                            Ok(())
                        }
                        Some(Err(e)) => Err(e),
                        None => Err(e),
                    },
                }
            } else {
                chunk.push(a)
            };
            let pushed = pushed.map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("input {total} of the pool's task: {}", e.message()),
                )
            });
            queued(pushed)?;
            total += 1;
        }
        if chunk.count > 0 {
            chunk.seal();
            queued(self.shared.submit(chunk))?;
        }
        Ok(PoolIter::new(
            rx,
            total,
            ordered,
            abandoned,
            #[cfg(feature = "tokio")]
            notify,
        ))
    }
}

/// A chunk is closed once its encoded inputs reach this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.terminate();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
