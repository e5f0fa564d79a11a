//! The caller's side of a pool call: results decoded as they arrive, in
//! input order or as they finish.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use conduit_core::codec::{decode_message, Cbor, Codec};
use conduit_core::{Error, ErrorKind, Result};

use super::dispatch::Outcome;
use super::worker::{split_record, Each, ItemFailure};

/// The results of [`Pool::imap`](crate::Pool::imap) (in input order) or
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (as they finish):
/// one `Result<R>` per input.
///
/// Reading blocks until the next result is there; it never blocks forever:
/// if the pool is dropped or terminated, the missing results are
/// `Disconnected` errors. Dropping the iterator skips the tasks that have
/// not started.
pub struct PoolIter<R> {
    rx: mpsc::Receiver<Outcome>,
    total: usize,
    yielded: usize,
    ordered: bool,
    /// Ordered: the chunks that arrived before their turn, by the input
    /// index of their first result, still encoded (one entry per chunk,
    /// not per result); decoded when their turn comes.
    waiting: BTreeMap<usize, Outcome>,
    /// Results ready to yield: ordered, the chunk whose turn it is;
    /// unordered, everything decoded, in arrival order.
    arrived: VecDeque<Batch<R>>,
    /// Set when every sender is gone (the pool went away).
    orphaned: bool,
    abandoned: Arc<AtomicBool>,
    /// Notified by the pool after each delivery (and when it lets go).
    #[cfg(feature = "tokio")]
    notify: Arc<tokio::sync::Notify>,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for PoolIter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolIter")
            .field("total", &self.total)
            .field("yielded", &self.yielded)
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + 'static> PoolIter<R> {
    pub(crate) fn new(
        rx: mpsc::Receiver<Outcome>,
        total: usize,
        ordered: bool,
        abandoned: Arc<AtomicBool>,
        #[cfg(feature = "tokio")] notify: Arc<tokio::sync::Notify>,
    ) -> PoolIter<R> {
        PoolIter {
            rx,
            total,
            yielded: 0,
            ordered,
            waiting: BTreeMap::new(),
            arrived: VecDeque::new(),
            orphaned: false,
            abandoned,
            #[cfg(feature = "tokio")]
            notify,
            _r: PhantomData,
        }
    }

    /// The next result, awaited without blocking the runtime (feature
    /// `tokio`); `None` after the last. Cancel-safe: a result is taken out
    /// only when it is returned.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn next_async(&mut self) -> Option<Result<R>> {
        loop {
            if self.yielded >= self.total {
                return None;
            }
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            if self.orphaned {
                return None;
            }
            // A delivery between this look and the wait leaves a permit in
            // the Notify, so the wait below returns at once: no lost wake-up.
            match self.rx.try_recv() {
                Ok(outcome) => self.absorb(outcome),
                Err(mpsc::TryRecvError::Disconnected) => self.orphan(),
                Err(mpsc::TryRecvError::Empty) => self.notify.notified().await,
            }
        }
    }

    fn take_ready(&mut self) -> Option<Result<R>> {
        loop {
            if self.ordered && self.arrived.is_empty() {
                // The chunk that starts where the last one ended, if it is
                // here.
                let next = self.waiting.remove(&self.yielded)?;
                self.arrived.push_back(Self::decoded(next));
            }
            let batch = self.arrived.front_mut()?;
            if let Some(r) = batch.next() {
                self.yielded += 1;
                return Some(r);
            }
            self.arrived.pop_front();
        }
    }

    fn pending(&self) -> usize {
        self.arrived.iter().map(ExactSizeIterator::len).sum()
    }

    /// Files the results of a chunk: ordered, until their turn; else
    /// decoded, to yield next.
    fn absorb(&mut self, outcome: Outcome) {
        if self.ordered {
            self.waiting.insert(outcome.first, outcome);
        } else {
            self.arrived.push_back(Self::decoded(outcome));
        }
    }

    fn decoded(outcome: Outcome) -> Batch<R> {
        let Outcome {
            first,
            count,
            packed,
            body,
        } = outcome;
        match body {
            Ok(body) if packed => Self::decode_packed(first, count, &body),
            Ok(body) => Self::decode(first, count, &body),
            Err(e) => Batch::Results(
                (0..count)
                    .map(|_| Err(Error::new(e.kind(), e.message())))
                    .collect::<VecDeque<_>>()
                    .into_iter(),
            ),
        }
    }

    /// Decodes the packed results of a chunk straight onto the end of
    /// `out` (no `Vec` per chunk: those cost a fresh allocation, and page
    /// faults, per chunk).
    fn decode_packed_into(first: usize, count: u32, body: &[u8], out: &mut Vec<R>) -> Result<()> {
        let end = first + count as usize;
        let decoded = match super::ints::decode(body, count as usize, |r: R| out.push(r)) {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(Error::new(ErrorKind::Decode, e)),
            None => Cbor::decode_seed(body, Each::new(count as usize, |r: R| out.push(r))),
        };
        match decoded {
            Ok(n) if n == count as usize => Ok(()),
            Ok(n) => Err(Error::protocol(format!(
                "a pool worker sent {n} results for the {count} tasks {first}..{end}"
            ))),
            Err(e) => Err(Error::new(
                e.kind(),
                format!("the results of tasks {first}..{end}: {}", e.message()),
            )),
        }
    }

    /// The packed results (one CBOR array) of the chunk that starts at
    /// input `first`.
    fn decode_packed(first: usize, count: u32, body: &[u8]) -> Batch<R> {
        let end = first + count as usize;
        let mut v = Vec::new();
        let decoded = match super::ints::decode(body, count as usize, |r: R| v.push(r)) {
            // Integers: decoded by hand (see `ints`).
            Some(Ok(_)) => Ok(v),
            Some(Err(e)) => Err(Error::new(ErrorKind::Decode, e)),
            None => Cbor::decode::<Vec<R>>(body),
        };
        let failed: VecDeque<Result<R>> = match decoded {
            Ok(v) if v.len() == count as usize => return Batch::Values(v.into_iter()),
            Ok(v) => (0..count)
                .map(|_| {
                    Err(Error::protocol(format!(
                        "a pool worker sent {} results for the {count} tasks {first}..{end}",
                        v.len()
                    )))
                })
                .collect(),
            Err(e) => (0..count)
                .map(|_| {
                    Err(Error::new(
                        e.kind(),
                        format!("the results of tasks {first}..{end}: {}", e.message()),
                    ))
                })
                .collect(),
        };
        Batch::Results(failed.into_iter())
    }

    /// The results (records) of the chunk that starts at input `first`.
    fn decode(first: usize, count: u32, body: &[u8]) -> Batch<R> {
        let mut out = VecDeque::with_capacity(count as usize);
        let mut rest = body;
        for i in 0..count as usize {
            let index = first + i;
            let Some((tag, item, tail)) = split_record(rest, 1) else {
                out.push_back(Err(Error::protocol(format!(
                    "a pool worker sent fewer results than tasks (task {index} has none)"
                ))));
                continue;
            };
            rest = tail;
            let r = if tag == [0] {
                decode_message::<R, Cbor>(item).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!("the result of task {index}: {}", e.message()),
                    )
                })
            } else {
                Err(match Cbor::decode::<ItemFailure>(item) {
                    Ok(ItemFailure::Panicked { message, location }) => Error::new(
                        ErrorKind::ChildFailed,
                        format!("task {index} panicked at {location}: {message}"),
                    ),
                    Ok(ItemFailure::Failed(f)) => {
                        Error::new(f.kind.into(), format!("task {index}: {}", f.message))
                    }
                    Err(e) => Error::protocol(format!(
                        "a pool worker sent an unreadable failure for task {index}: {e}"
                    )),
                })
            };
            out.push_back(r);
        }
        Batch::Results(out.into_iter())
    }

    /// Every result not delivered yet fails: the pool went away.
    fn orphan(&mut self) {
        self.orphaned = true;
        let gone = || {
            Err(Error::disconnected(
                "the pool was dropped or terminated before this task finished",
            ))
        };
        // Every chunk not here yet fills its gap with errors, so that the
        // iterator yields exactly `total` items, in order.
        let mut next = self.yielded + self.pending();
        let waiting = std::mem::take(&mut self.waiting);
        let mut gap = VecDeque::new();
        for (first, chunk) in waiting {
            while next < first {
                gap.push_back(gone());
                next += 1;
            }
            next += chunk.count as usize;
            self.arrived
                .push_back(Batch::Results(std::mem::take(&mut gap).into_iter()));
            self.arrived.push_back(Self::decoded(chunk));
        }
        while next < self.total {
            gap.push_back(gone());
            next += 1;
        }
        self.arrived.push_back(Batch::Results(gap.into_iter()));
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if self.yielded >= self.total {
                return None;
            }
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            if self.orphaned {
                // Unreachable in practice: `orphan` filled every gap.
                return None;
            }
            let got = match deadline {
                None => self.rx.recv().map_err(|_| true),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected)),
            };
            match got {
                Ok(outcome) => self.absorb(outcome),
                Err(true) => self.orphan(),
                Err(false) => {
                    return Some(Err(Error::new(
                        ErrorKind::Timeout,
                        "the pool task did not finish in time (it keeps running; join again)",
                    )))
                }
            }
        }
    }

    /// Every result, in order, or the first error; what `Pool::map` does.
    /// Moves whole chunks of results at once where it can (measured: a map
    /// of 100,000 `u64`s spent 11% of the caller's time yielding them one
    /// by one).
    pub(crate) fn collect_in_order(mut self) -> Result<Vec<R>> {
        let mut out = Vec::with_capacity(self.total);
        loop {
            if self.ordered && self.arrived.is_empty() {
                if let Some(next) = self.waiting.remove(&self.yielded) {
                    match next.body {
                        Ok(ref body) if next.packed => {
                            Self::decode_packed_into(next.first, next.count, body, &mut out)?;
                            self.yielded += next.count as usize;
                            continue;
                        }
                        _ => self.arrived.push_back(Self::decoded(next)),
                    }
                }
            }
            if let Some(batch) = self.arrived.pop_front() {
                match batch {
                    Batch::Values(v) => {
                        self.yielded += v.len();
                        out.extend(v);
                    }
                    Batch::Results(rs) => {
                        for r in rs {
                            self.yielded += 1;
                            out.push(r?);
                        }
                    }
                }
                continue;
            }
            if self.yielded >= self.total || self.orphaned {
                return Ok(out);
            }
            match self.rx.recv() {
                Ok(outcome) => self.absorb(outcome),
                Err(_) => self.orphan(),
            }
        }
    }
}

impl<R: DeserializeOwned + 'static> Iterator for PoolIter<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.yielded;
        (left, Some(left))
    }
}

impl<R: DeserializeOwned + 'static> ExactSizeIterator for PoolIter<R> {}

impl<R> Drop for PoolIter<R> {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

/// The decoded results of one chunk, yielded one by one.
enum Batch<R> {
    /// Every task returned (a packed chunk): no per-result `Result` is
    /// stored.
    Values(std::vec::IntoIter<R>),
    /// Some failed, or the results came as records.
    Results(std::collections::vec_deque::IntoIter<Result<R>>),
}

impl<R> Iterator for Batch<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        match self {
            Batch::Values(v) => v.next().map(Ok),
            Batch::Results(r) => r.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Batch::Values(v) => v.size_hint(),
            Batch::Results(r) => r.size_hint(),
        }
    }
}

impl<R> ExactSizeIterator for Batch<R> {}

/// One task started with [`Pool::submit`](crate::Pool::submit).
#[derive(Debug)]
pub struct PoolTask<R>(PoolIter<R>);

impl<R: DeserializeOwned + 'static> PoolTask<R> {
    pub(crate) fn new(it: PoolIter<R>) -> PoolTask<R> {
        PoolTask(it)
    }

    /// Waits for the task's result.
    ///
    /// # Errors
    ///
    /// As one item of [`Pool::map`](crate::Pool::map).
    pub fn join(mut self) -> Result<R> {
        self.0.next_until(None).unwrap_or_else(taken)
    }

    /// Waits for the task's result without blocking the runtime (feature
    /// `tokio`).
    ///
    /// # Errors
    ///
    /// As [`join`](PoolTask::join).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn join_async(mut self) -> Result<R> {
        self.0.next_async().await.unwrap_or_else(taken)
    }

    /// Waits at most `timeout` for the task's result; `Timeout` leaves the
    /// task running and joinable.
    ///
    /// # Errors
    ///
    /// `Timeout`, or as one item of [`Pool::map`](crate::Pool::map).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.0
            .next_until(Some(Instant::now() + timeout))
            .unwrap_or_else(taken)
    }
}

fn taken<R>() -> Result<R> {
    Err(Error::invalid_input("the task's result was already taken"))
}
