//! [`Process`]: a running child, joined for its result.

use std::fmt;
use std::marker::PhantomData;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::{Duplex, Error, ErrorKind, Result};

use crate::{child, sys, Ended, FromChild, ProcessBuilder, Request};

/// How often `join` looks at the child process itself while it waits on
/// the control channel: only on Windows, where the channel may not report
/// a child that exited before adopting it (the control channel is pulled by
/// the child through the environment, unlike the endpoints of the
/// arguments, which are pushed).
const EXIT_CHECK: Option<Duration> = if cfg!(windows) {
    Some(Duration::from_millis(100))
} else {
    None
};

/// Control channels of dropped `die_with_parent` children, kept open until
/// this process exits so that those children live as long as it does.
static KEPT: Mutex<Vec<Duplex<Request, FromChild>>> = Mutex::new(Vec::new());

/// A child process running a Rust function; [`join`](Process::join) returns
/// the function's result.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
///
/// fn slow(ms: u64) -> String {
///     std::thread::sleep(Duration::from_millis(ms));
///     format!("slept {ms} ms")
/// }
///
/// # fn main() -> Result<(), conduit::Error> {
/// conduit::init();
/// let mut p = conduit::Process::spawn(slow, 200)?;
/// assert!(p.join_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
/// assert!(p.is_alive());
/// assert_eq!(p.join()?, "slept 200 ms");
/// assert!(p.exit_status().is_some_and(|s| s.success()));
/// # Ok(()) }
/// ```
pub struct Process<R> {
    child: Child,
    name: Option<String>,
    ctl: Option<Duplex<Request, FromChild>>,
    started: bool,
    outcome: Option<FromChild>,
    ctl_error: Option<Error>,
    status: Option<ExitStatus>,
    taken: bool,
    kill_on_drop: bool,
    die_with_parent: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.id())
            .field("name", &self.name)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl<R> Process<R> {
    /// A child that `ProcessBuilder::spawn` has just started and sent its
    /// request to.
    pub(crate) fn started(
        child: Child,
        name: Option<String>,
        ctl: Duplex<Request, FromChild>,
        kill_on_drop: bool,
        die_with_parent: bool,
    ) -> Process<R> {
        Process {
            child,
            name,
            ctl: Some(ctl),
            started: false,
            outcome: None,
            ctl_error: None,
            status: None,
            taken: false,
            kill_on_drop,
            die_with_parent,
            _result: PhantomData,
        }
    }
}

impl Process<()> {
    /// A [`ProcessBuilder`] with the defaults.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::new()
    }
}

impl<R: Serialize + DeserializeOwned + 'static> Process<R> {
    /// Starts `f(args)` in a child process: this program's executable, run
    /// again; its `main` must call `conduit::init()` first.
    ///
    /// `f` is a `fn` item or a closure that captures nothing (checked at
    /// compile time); `args` and the result travel as CBOR.
    ///
    /// A closure that captures is refused when the program is built:
    ///
    /// ```compile_fail
    /// let base = 10u32;
    /// let p = conduit::Process::spawn(move |x: u32| x + base, 1);
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `conduit::init()` has not run in this process,
    /// `Encode` when `args` does not encode, `Io` when the child cannot be
    /// started.
    pub fn spawn<F, A>(f: F, args: A) -> Result<Process<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
    {
        ProcessBuilder::new().spawn(f, args)
    }

    /// Waits for the child to end and returns the target's result.
    ///
    /// # Errors
    ///
    /// `ChildFailed` (panic, exit, signal, or no `conduit::init()` in the
    /// child's `main`), `Decode` (the result does not decode as `R`),
    /// `Protocol` (the child is not the same executable), `InvalidInput`
    /// when the result was already taken by an earlier join.
    pub fn join(&mut self) -> Result<R> {
        self.join_until(None)
    }

    /// Like [`join`](Self::join), but fails with `Timeout` after `timeout`,
    /// leaving the child running and joinable.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_until(Some(
            conduit_core::deadline_after(timeout).unwrap_or_else(far_future),
        ))
    }

    /// The result if the child has ended, `Ok(None)` while it runs.
    pub fn try_join(&mut self) -> Result<Option<R>> {
        match self.join_until(Some(Instant::now())) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<R> {
        if self.taken {
            return Err(Error::invalid_input(format!(
                "the result of {} was already taken by an earlier join",
                self.who()
            )));
        }
        if !self.wait(deadline)? {
            return Err(Error::timeout(format!(
                "{} is still running; join again later",
                self.who()
            )));
        }
        self.taken = true;
        self.ctl = None;
        self.result()
    }

    /// Reads the control channel and reaps the child; `Ok(false)` when the
    /// deadline passed first.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<bool> {
        while self.outcome.is_none() {
            let Some(ctl) = &self.ctl else { break };
            // Windows: a child that exits before adopting its control
            // channel leaves the handles in this process, so the channel
            // never reports `Disconnected` (see `conduit_core::handoff`);
            // look at the process itself between slices of the wait.
            let slice = EXIT_CHECK.map(|s| Instant::now() + s);
            let until = match (deadline, slice) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            let msg = match until {
                Some(d) => ctl.recv_deadline(d),
                None => ctl.recv(),
            };
            match msg {
                Ok(FromChild::Started) => self.started = true,
                Ok(other) => self.outcome = Some(other),
                Err(e) if e.is_timeout() || e.kind() == ErrorKind::Empty => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    if slice.is_some() && self.exit_status().is_some() {
                        // Everything it sent is readable now.
                        while let Some(ctl) = &self.ctl {
                            match ctl.try_recv() {
                                Ok(FromChild::Started) => self.started = true,
                                Ok(other) => {
                                    self.outcome = Some(other);
                                    break;
                                }
                                Err(_) => self.ctl = None,
                            }
                        }
                    }
                }
                Err(e) => {
                    if !e.is_disconnected() {
                        self.ctl_error = Some(e);
                    }
                    self.ctl = None;
                }
            }
        }
        let mut pause = Duration::from_micros(200);
        while self.status.is_none() {
            if deadline.is_none() {
                self.status = Some(
                    self.child
                        .wait()
                        .map_err(|e| self.io_error("wait for", e))?,
                );
                break;
            }
            if let Some(s) = self
                .child
                .try_wait()
                .map_err(|e| self.io_error("wait for", e))?
            {
                self.status = Some(s);
                break;
            }
            let now = Instant::now();
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(now));
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok(true)
    }

    fn result(&mut self) -> Result<R> {
        let who = self.who();
        match self.outcome.take() {
            Some(FromChild::Returned(bytes)) => {
                ciborium::from_reader(bytes.as_slice()).map_err(|e| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "the result of {who} does not decode as {}: {e}",
                            std::any::type_name::<R>()
                        ),
                    )
                })
            }
            Some(FromChild::Panicked { message, location }) => Err(Error::new(
                ErrorKind::ChildFailed,
                format!("{who} panicked at {location}: {message}"),
            )),
            Some(FromChild::Failed { kind, message }) => {
                Err(Error::new(kind.into(), format!("{who}: {message}")))
            }
            Some(FromChild::Started) | None => Err(self.ended_without_result()),
        }
    }

    fn ended_without_result(&mut self) -> Error {
        let who = self.who();
        let ended = match self.status {
            Some(s) => sys::describe(s),
            None => Ended::Other("an unknown status".into()),
        };
        if let Some(e) = self.ctl_error.take() {
            return Error::new(
                e.kind(),
                format!("{who} {ended} after sending something unreadable: {e}"),
            );
        }
        let msg = if self.started {
            format!("{who} {ended} while running its target, before returning")
        } else if matches!(ended, Ended::Code(child::SETUP_FAILED)) {
            format!(
                "{who} {ended}: it could not take its control channel or request \
                 (its standard error says why)"
            )
        } else if matches!(ended, Ended::Code(_)) {
            format!(
                "{who} {ended} without running its target: its main does not call \
                 conduit::init() first; make `conduit::init();` the first line of main \
                 (in tests: a harness = false test target whose main calls conduit::init())"
            )
        } else {
            format!("{who} {ended} before it started its target")
        };
        Error::new(ErrorKind::ChildFailed, msg)
    }
}

impl<R> Process<R> {
    fn who(&self) -> String {
        match &self.name {
            Some(n) => format!("child process {n:?} (pid {})", self.child.id()),
            None => format!("child process (pid {})", self.child.id()),
        }
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        Error::from_io(&format!("cannot {what} {}", self.who()), e)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given with [`ProcessBuilder::name`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// True while the child runs (it has not exited, or has exited but its
    /// status was not collected yet and cannot be now).
    pub fn is_alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How the child ended, once it has; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Kills the child (SIGKILL on Unix, `TerminateProcess` on Windows).
    /// A child that has already ended is left alone. Then
    /// [`join`](Process::join) fails with `ChildFailed` naming the signal.
    pub fn kill(&mut self) -> Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        self.child.kill().map_err(|e| self.io_error("kill", e))
    }

    /// Asks the child to end: SIGTERM on Unix (it may handle it),
    /// `TerminateProcess` on Windows.
    pub fn terminate(&mut self) -> Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        sys::terminate(&mut self.child).map_err(|e| self.io_error("terminate", e))
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.status.is_some() || self.taken {
            return;
        }
        if self.kill_on_drop {
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else if self.die_with_parent {
            if let Some(ctl) = self.ctl.take() {
                KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(ctl);
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// A process's part in a `conduit::wait`.
struct ExitWait {
    /// `None`: the child is known to have exited.
    watch: Option<sys::ExitWatch>,
}

impl conduit_core::WaitSource for ExitWait {
    fn arm(&mut self) -> Result<bool> {
        match &self.watch {
            None => Ok(true),
            Some(w) => w
                .exited()
                .map_err(|e| Error::from_io("cannot look at the child process", e)),
        }
    }

    fn handles<'a>(&'a self, out: &mut Vec<conduit_core::WaitHandle<'a>>) {
        out.extend(self.watch.as_ref().and_then(sys::ExitWatch::handle));
    }
}

/// Ready when the child has exited (its result, if any, can be joined
/// without blocking). Linux: a pidfd; macOS: a kqueue process event;
/// Windows: the process handle.
impl<R> conduit_core::Waitable for Process<R> {
    fn wait_source(&self) -> Result<Box<dyn conduit_core::WaitSource + '_>> {
        let watch = if self.status.is_some() {
            None
        } else {
            sys::exit_watch(&self.child).map_err(|e| {
                Error::from_io(
                    &format!("cannot watch child process (pid {})", self.child.id()),
                    e,
                )
            })?
        };
        Ok(Box::new(ExitWait { watch }))
    }
}

#[cfg(feature = "tokio")]
impl<R: Serialize + DeserializeOwned + 'static> Process<R> {
    /// Waits for the child to end without blocking the runtime (feature
    /// `tokio`) and returns the target's result, like [`join`](Self::join).
    /// The exit is watched by the runtime's reactor (Linux: a pidfd; macOS:
    /// a kqueue process event), with no thread; on Windows the process
    /// handle is watched by the OS thread pool's shared wait threads. Dropping the future before
    /// the child ends leaves the process joinable.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), conduit::Error> {
    /// conduit::init();
    /// let mut p = conduit::Process::spawn(double, 21)?;
    /// assert_eq!(p.join_async().await?, 42);
    /// # Ok(()) }
    /// ```
    pub async fn join_async(&mut self) -> Result<R> {
        if self.status.is_none() && !self.taken {
            let watch = sys::exit_watch(&self.child).map_err(|e| {
                Error::from_io(
                    &format!("cannot watch child process (pid {})", self.child.id()),
                    e,
                )
            })?;
            if let Some(watch) = watch {
                let handle = watch.handle().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Unsupported,
                        "join_async is not available on this platform yet; call join on a blocking thread",
                    )
                })?;
                let reg = conduit_core::transport::sys::reactor::Registration::new(&[(
                    handle,
                    conduit_core::WaitFor::Read,
                )])
                .map_err(|e| Error::from_io("the async runtime cannot watch the child", e))?;
                std::future::poll_fn(|cx| loop {
                    match watch.exited() {
                        Ok(true) => return std::task::Poll::Ready(Ok(())),
                        Ok(false) => {}
                        Err(e) => return std::task::Poll::Ready(Err(e)),
                    }
                    match reg.poll_ready(cx) {
                        std::task::Poll::Ready(Ok(())) => {}
                        std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                        std::task::Poll::Pending => return std::task::Poll::Pending,
                    }
                })
                .await
                .map_err(|e| Error::from_io("waiting for the child failed", e))?;
            }
        }
        self.join()
    }
}
