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
use super::worker::{split_record, ItemFailure};

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
    /// Ordered: decoded results by input index, waiting for their turn.
    waiting: BTreeMap<usize, Result<R>>,
    /// Unordered: decoded results in arrival order.
    arrived: VecDeque<Result<R>>,
    /// Set when every sender is gone (the pool went away).
    orphaned: bool,
    abandoned: Arc<AtomicBool>,
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
            _r: PhantomData,
        }
    }

    fn take_ready(&mut self) -> Option<Result<R>> {
        let r = if self.ordered {
            self.waiting.remove(&self.yielded)
        } else {
            self.arrived.pop_front()
        };
        if r.is_some() {
            self.yielded += 1;
        }
        r
    }

    fn put(&mut self, index: usize, r: Result<R>) {
        if self.ordered {
            self.waiting.insert(index, r);
        } else {
            self.arrived.push_back(r);
        }
    }

    fn absorb(&mut self, outcome: Outcome) {
        let Outcome { first, count, body } = outcome;
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                for i in 0..count as usize {
                    self.put(first + i, Err(Error::new(e.kind(), e.to_string())));
                }
                return;
            }
        };
        let mut rest = &body[..];
        for i in 0..count as usize {
            let index = first + i;
            let Some((tag, item, tail)) = split_record(rest, 1) else {
                self.put(
                    index,
                    Err(Error::protocol(format!(
                        "a pool worker sent fewer results than tasks (task {index} has none)"
                    ))),
                );
                continue;
            };
            rest = tail;
            let r = if tag == [0] {
                decode_message::<R, Cbor>(item)
                    .map_err(|e| Error::new(e.kind(), format!("the result of task {index}: {e}")))
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
            self.put(index, r);
        }
    }

    /// Every result not delivered yet fails: the pool went away.
    fn orphan(&mut self) {
        self.orphaned = true;
        let gone = || {
            Err(Error::disconnected(
                "the pool was dropped or terminated before this task finished",
            ))
        };
        if self.ordered {
            for i in self.yielded..self.total {
                self.waiting.entry(i).or_insert_with(gone);
            }
        } else {
            let missing = self.total - self.yielded - self.arrived.len();
            for _ in 0..missing {
                self.arrived.push_back(gone());
            }
        }
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

impl<R> Drop for PoolIter<R> {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

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
