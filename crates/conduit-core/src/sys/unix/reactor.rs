//! tokio glue (feature `tokio`): the descriptors an endpoint waits on,
//! registered with the runtime's reactor through `tokio::io::unix::AsyncFd`.
//!
//! Each descriptor is duplicated for the registration (`AsyncFd` owns what
//! it watches), so the endpoint keeps its own. The reactor is
//! edge-triggered: [`Registration::poll_ready`] clears the readiness it
//! reports, and the caller must then look at the endpoint's state (a
//! non-blocking attempt) before it polls again; tokio keeps a readiness that
//! arrived in between, so no wake-up is lost.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::wait::{WaitFor, WaitHandle};

/// Descriptors registered with the current tokio runtime.
#[derive(Debug)]
pub struct Registration {
    fds: Vec<(AsyncFd<OwnedFd>, WaitFor)>,
}

impl Registration {
    /// Registers duplicates of `handles` with the current runtime's
    /// reactor. Fails outside a runtime (with `Other`) or when the
    /// descriptors cannot be duplicated or registered.
    pub fn new(handles: &[(WaitHandle<'_>, WaitFor)]) -> io::Result<Registration> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "into_async must be called inside a tokio runtime (with the I/O driver enabled)",
            ));
        }
        let mut fds = Vec::with_capacity(handles.len());
        for (h, what) in handles {
            let fd = h.try_clone_to_owned()?;
            let interest = match what {
                WaitFor::Read => Interest::READABLE,
                WaitFor::Write => Interest::WRITABLE,
            };
            // SAFETY: `fd` is a descriptor this registration owns (a fresh
            // duplicate): it is moved into the `AsyncFd`, stays open until
            // the `AsyncFd` is dropped, and `OwnedFd::as_raw_fd` always
            // returns that same descriptor.
            let registered = unsafe { AsyncFd::register_with_interest(fd, interest) }?;
            fds.push((registered, *what));
        }
        Ok(Registration { fds })
    }

    /// `Ready` when one of the descriptors is ready (its readiness is
    /// cleared: look at the endpoint before polling again); `Pending` with
    /// the waker registered on every descriptor otherwise.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut any = false;
        for (fd, what) in &self.fds {
            let polled = match what {
                WaitFor::Read => fd.poll_read_ready(cx),
                WaitFor::Write => fd.poll_write_ready(cx),
            };
            match polled {
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    any = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if any {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
