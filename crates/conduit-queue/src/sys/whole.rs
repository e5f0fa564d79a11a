//! The async glue of the Unix backends (feature `tokio`), where a send is
//! whole or nothing (Linux: a record in the shared ring; macOS: one
//! datagram), so nothing is ever in flight, and a receiver's own
//! descriptors turn readable, so there is nothing to arm.

use std::io;

use conduit_core::{ErrorKind, Result, WaitFor, WaitHandle};

use super::imp::{RxEnd, TxEnd};

/// An async receiver's readiness: the end's descriptors.
pub(crate) struct RecvWatch;

impl RecvWatch {
    pub(crate) fn new(_end: &RxEnd) -> io::Result<RecvWatch> {
        Ok(RecvWatch)
    }

    /// The end's descriptors (see `RxEnd::wait_handles`).
    pub(crate) fn wait_handles<'a>(&'a self, end: &'a RxEnd, out: &mut Vec<WaitHandle<'a>>) {
        end.wait_handles(out);
    }

    /// Nothing to arm: never ready by itself.
    pub(crate) fn arm(&mut self) -> io::Result<bool> {
        Ok(false)
    }
}

/// How an async send attempt went (see [`SendSlot::try_send`]).
pub(crate) enum SendTry {
    /// The queue took the message.
    Sent,
    /// The queue is full; nothing was sent.
    Full,
    /// Never here: a send is whole or nothing (Windows leaves writes in
    /// flight).
    #[allow(dead_code)]
    Queued,
}

/// An async sender's send slot: nothing is ever in flight.
pub(crate) struct SendSlot;

impl SendSlot {
    pub(crate) fn new(_end: &TxEnd) -> io::Result<SendSlot> {
        Ok(SendSlot)
    }

    /// The end's descriptors (see `TxEnd::wait_handles`).
    pub(crate) fn wait_handles<'a>(
        &'a self,
        end: &'a TxEnd,
        out: &mut Vec<(WaitHandle<'a>, WaitFor)>,
    ) {
        end.wait_handles(out);
    }

    /// Nothing is ever in flight.
    pub(crate) fn poll_queued(&mut self) -> Option<Result<()>> {
        Some(Ok(()))
    }

    /// Nothing is ever in flight.
    pub(crate) fn cancel_queued(&mut self) -> Option<Result<()>> {
        None
    }

    /// One attempt that does not wait (`TxEnd::send_now`).
    pub(crate) fn try_send(&mut self, end: &TxEnd, payload: &[u8]) -> Result<SendTry> {
        match end.send_now(payload) {
            Ok(()) => Ok(SendTry::Sent),
            Err(e) if e.is_timeout() || e.kind() == ErrorKind::Full => Ok(SendTry::Full),
            Err(e) => Err(e),
        }
    }
}
