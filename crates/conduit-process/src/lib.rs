//! Run a Rust function in a child process — Python's
//! `multiprocessing.Process` for Rust. Applications use it through the
//! `conduit` facade: [`conduit::init`], [`conduit::Process`],
//! [`conduit::ProcessBuilder`].
//!
//! [`conduit::init`]: https://docs.rs/conduit/latest/conduit/fn.init.html
//! [`conduit::Process`]: https://docs.rs/conduit/latest/conduit/struct.Process.html
//! [`conduit::ProcessBuilder`]: https://docs.rs/conduit/latest/conduit/struct.ProcessBuilder.html
//!
//! ```no_run
//! fn square(n: u64) -> u64 {
//!     n * n
//! }
//!
//! fn main() -> Result<(), conduit::Error> {
//!     conduit::init(); // first line: a spawned child runs `square` here and exits
//!     let mut p = conduit::Process::spawn(square, 7)?;
//!     assert_eq!(p.join()?, 49);
//!     Ok(())
//! }
//! ```
//!
//! # How the child finds the function
//!
//! A child is a fresh `exec` of the parent's executable
//! ([`std::env::current_exe`]) with no arguments; its `main` must call
//! `conduit::init()` first, which sees the control channel handed to it
//! (with `conduit_core::handoff`, so only that child gets it) and runs the
//! target instead of returning.
//!
//! The target `f: F` must be a zero-sized `Fn(A) -> R + Copy` (a `fn` item
//! or a closure that captures nothing); anything else is refused at compile
//! time. The parent sends over the control channel:
//!
//! - the address of `trampoline::<F, A, R>` (one monomorphized function per
//!   target, which decodes `A`, calls `F`, encodes `R`) as an **offset** from
//!   an anchor function of this crate (offsets inside one image survive
//!   ASLR);
//! - the **identity of the running executable** (Unix: device, inode, size,
//!   modification time of `/proc/self/exe` or `current_exe()`; Windows:
//!   size, creation and write times) and the offset of a **second known
//!   function** from the anchor;
//! - `std::any::type_name` of `F`, `A` and `R`;
//! - the CBOR-encoded arguments.
//!
//! The child follows the offset only after its own executable identity and
//! second-function offset equal the parent's, so a rebuilt or replaced
//! binary is a clear [`ErrorKind::Protocol`] error, never a jump to a wrong
//! address. Inside the trampoline (proven to be the parent's function), the
//! type names are compared before anything is decoded.
//!
//! Limits: the anchor and the trampoline must be in the same image, which
//! holds when crates are linked statically (Rust's default); a `dylib`
//! crate or `-C prefer-dynamic` between them is not supported. The target
//! runs in a new process, not a fork: statics start fresh, and the child
//! gets no command-line arguments (`main` must not need any before
//! `conduit::init()`).
//!
//! # Endpoints inside the arguments
//!
//! `Sender`, `Receiver` and `Duplex` (of every transport) may sit anywhere
//! inside `args`: fields, `Vec` elements, `Option`s. While `spawn` encodes
//! the arguments, a thread-local *spawn context* is active
//! (`conduit_core::transport::spawn_context`): serializing an endpoint moves
//! its byte-level halves into the context (the value left in the parent
//! answers `Disconnected`) and writes its index; each collected endpoint is
//! then handed to this one child with `handoff` (exact inheritance: no other
//! child, even one spawned at the same time from another thread, gets its
//! handles). The child adopts them before decoding and the endpoints'
//! `Deserialize` takes them back by index. Serializing an endpoint outside
//! `spawn` (to JSON, to a file) fails with an error instead of copying it.
//!
//! # Tests
//!
//! A test binary's `main` is libtest's, which does not call
//! `conduit::init()`. Put process tests in a test target with
//! `harness = false` whose `main` calls `conduit::init()` first and then runs
//! the tests (with `libtest-mimic`, which works under `cargo test` and
//! `cargo nextest`); see `tests/process.rs` in the conduit repository.
//!
//! # Errors
//!
//! `join` fails with [`ErrorKind::ChildFailed`] when the target panicked
//! (message and location of the panic), the child exited or was killed
//! before returning (exit code, or signal name on Unix), or never ran the
//! target (its `main` does not call `conduit::init()` first); with
//! [`ErrorKind::Decode`] when the result does not decode as `R`.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use conduit_core::handoff::{handoff, handoff_halves, Resolver};
use conduit_core::transport::spawn_context::{export_scope, import_scope, Exported};
use conduit_core::transport::BoxDuplexEnd;
use conduit_core::{Duplex, Error, ErrorKind, Receiver, Result, Sender};

mod child;
mod sys;

/// The handoff key of the control channel.
const CTL_KEY: &str = "conduit_process";
/// The handoff key of the `i`-th endpoint inside the arguments.
fn endpoint_key(i: usize) -> String {
    format!("conduit_process_{i}")
}

/// Bumped when [`Request`] or [`FromChild`] change.
const PROTOCOL_VERSION: u32 = 1;

/// What the facade supplies: how to make the control channel and how to
/// rebuild handed-over endpoints. Not a stable interface.
#[doc(hidden)]
pub struct Runtime {
    /// Rebuilds handed-over endpoints (the facade's transport registry).
    pub resolver: &'static (dyn Resolver + Sync),
    /// Makes a duplex connection for the control channel.
    pub duplex: fn() -> Result<(BoxDuplexEnd, BoxDuplexEnd)>,
}

static RUNTIME: OnceLock<&'static Runtime> = OnceLock::new();

/// What `conduit::init()` does: in a child started by [`Process::spawn`],
/// runs the target and exits; elsewhere records `rt` and returns at once.
#[doc(hidden)]
pub fn init_with(rt: &'static Runtime) {
    let rt = *RUNTIME.get_or_init(|| rt);
    if std::env::var_os(conduit_core::handoff::env_var(CTL_KEY)).is_some() {
        child::run(rt);
    }
}

fn runtime() -> Result<&'static Runtime> {
    RUNTIME.get().copied().ok_or_else(|| {
        Error::invalid_input(
            "conduit::init() has not run in this process: call it as the first line of main \
             (a spawned child starts there); in tests use a harness = false test target whose \
             main calls conduit::init() first",
        )
    })
}

/// The names of a target's types, compared by the child.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct Names {
    f: String,
    a: String,
    r: String,
}

impl Names {
    fn of<F, A, R>() -> Names {
        Names {
            f: std::any::type_name::<F>().into(),
            a: std::any::type_name::<A>().into(),
            r: std::any::type_name::<R>().into(),
        }
    }
}

/// Parent to child: what to run.
#[derive(Serialize, Deserialize, Debug)]
struct Request {
    version: u32,
    exe: Vec<u64>,
    check_offset: i64,
    trampoline_offset: i64,
    names: Names,
    #[serde(with = "serde_bytes")]
    args: Vec<u8>,
    /// The role of each endpoint inside `args`, handed over under
    /// [`endpoint_key`].
    endpoints: Vec<String>,
    die_with_parent: bool,
}

/// Why the child could not run the target, as an error kind.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum FailKind {
    Protocol,
    Decode,
    Encode,
}

impl From<FailKind> for ErrorKind {
    fn from(k: FailKind) -> ErrorKind {
        match k {
            FailKind::Protocol => ErrorKind::Protocol,
            FailKind::Decode => ErrorKind::Decode,
            FailKind::Encode => ErrorKind::Encode,
        }
    }
}

/// Child to parent.
#[derive(Serialize, Deserialize, Debug)]
enum FromChild {
    /// The checks passed; the target is about to run.
    Started,
    /// The target returned; its CBOR-encoded result.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The target panicked.
    Panicked { message: String, location: String },
    /// The target could not be run, or its result not encoded.
    Failed { kind: FailKind, message: String },
}

/// A monomorphized [`trampoline`].
type Trampoline = fn(&Names, &[u8], Exported) -> FromChild;

/// Runs `F` on the CBOR-encoded `args`; what the child jumps to.
fn trampoline<F, A, R>(names: &Names, args: &[u8], endpoints: Exported) -> FromChild
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let ours = Names::of::<F, A, R>();
    if *names != ours {
        return FromChild::Failed {
            kind: FailKind::Protocol,
            message: format!(
                "the parent asked for {} ({} -> {}) but found {} ({} -> {}) in the child",
                names.f, names.a, names.r, ours.f, ours.a, ours.r
            ),
        };
    }
    let Some(f) = sys::conjure::<F>() else {
        return FromChild::Failed {
            kind: FailKind::Protocol,
            message: format!("the target {} is not zero-sized", ours.f),
        };
    };
    let (a, _unclaimed) = import_scope(endpoints, || ciborium::from_reader::<A, _>(args));
    let a = match a {
        Ok(a) => a,
        Err(e) => {
            return FromChild::Failed {
                kind: FailKind::Decode,
                message: format!(
                    "the arguments do not decode as {} in the child: {e}",
                    ours.a
                ),
            }
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(a))) {
        Ok(r) => match encode(&r) {
            Ok(bytes) => FromChild::Returned(bytes),
            Err(e) => FromChild::Failed {
                kind: FailKind::Encode,
                message: format!("the result ({}) does not encode: {e}", ours.r),
            },
        },
        Err(payload) => child::panicked(payload.as_ref()),
    }
}

fn encode<T: Serialize + ?Sized>(v: &T) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// How a child ended, from its exit status.
pub(crate) enum Ended {
    /// It exited with this code.
    Code(i32),
    /// Unix: it was killed by this signal (number, name).
    #[cfg_attr(windows, allow(dead_code))]
    Signal(i32, &'static str),
    /// Anything else the OS reports.
    Other(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exited with code {c}"),
            Ended::Signal(n, name) => write!(f, "was killed by signal {n} ({name})"),
            Ended::Other(s) => write!(f, "ended with {s}"),
        }
    }
}

/// Configures a child process before [`ProcessBuilder::spawn`].
///
/// # Examples
///
/// ```no_run
/// fn work(n: u32) -> u32 { n + 1 }
/// # fn main() -> Result<(), conduit::Error> {
/// conduit::init();
/// let mut p = conduit::Process::builder()
///     .name("worker")
///     .env("RUST_LOG", "debug")
///     .kill_on_drop(true)
///     .die_with_parent(true)
///     .spawn(work, 1)?;
/// assert_eq!(p.join()?, 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until spawn is called"]
pub struct ProcessBuilder {
    name: Option<String>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    kill_on_drop: bool,
    die_with_parent: bool,
}

impl ProcessBuilder {
    /// A builder with the defaults: no name, the parent's environment,
    /// directory and standard streams, not killed on drop, not tied to the
    /// parent's life.
    pub fn new() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// A name for the process, used in error messages and [`Process::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets an environment variable in the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The child's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The child's standard input (inherited by default).
    pub fn stdin(mut self, cfg: impl Into<Stdio>) -> Self {
        self.stdin = Some(cfg.into());
        self
    }

    /// The child's standard output (inherited by default).
    pub fn stdout(mut self, cfg: impl Into<Stdio>) -> Self {
        self.stdout = Some(cfg.into());
        self
    }

    /// The child's standard error (inherited by default).
    pub fn stderr(mut self, cfg: impl Into<Stdio>) -> Self {
        self.stderr = Some(cfg.into());
        self
    }

    /// Kill (and reap) the child when its [`Process`] is dropped before it
    /// was joined. Default `false`, like Python's non-daemon processes: the
    /// child keeps running.
    pub fn kill_on_drop(mut self, on: bool) -> Self {
        self.kill_on_drop = on;
        self
    }

    /// Kill the child when the parent process dies, even by SIGKILL
    /// (Python's `daemon`). Default `false`.
    ///
    /// - Linux: `PR_SET_PDEATHSIG(SIGKILL)` is set between fork and exec,
    ///   and the child does not start if the parent is already gone. The
    ///   signal is tied to the *thread* that forks, so such children are
    ///   spawned from one long-lived internal thread.
    /// - Windows: the child is put in a job object with
    ///   `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, one per parent process,
    ///   whose only handle (not inheritable) the parent keeps open until it
    ///   ends; when it ends, however it ends, Windows closes the handle and
    ///   kills the job's processes. The job has
    ///   `JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK`, so processes the child
    ///   starts are not in it (only the direct child is tied to the parent,
    ///   as on Linux). The child is assigned right after it was created (a
    ///   moment in which it runs outside the job, covered by the next
    ///   point); if the assignment fails the child is killed and `spawn`
    ///   fails with `Io`.
    /// - Every OS: once in `conduit::init()`, a thread of the child watches
    ///   the control channel and exits the child (code 87) when it breaks,
    ///   which happens when the parent process ends however it ends. On
    ///   macOS this is the whole mechanism (a best effort: a child whose
    ///   parent dies before it reaches `conduit::init()` is not covered).
    ///
    /// Dropping the [`Process`] does not end such a child (unless
    /// [`kill_on_drop`](Self::kill_on_drop)): its control channel is kept
    /// open until the parent exits.
    pub fn die_with_parent(mut self, on: bool) -> Self {
        self.die_with_parent = on;
        self
    }

    /// Starts `f(args)` in a child process (see [`Process::spawn`]).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `conduit::init()` has not run in this process,
    /// `Encode` when `args` does not encode, `Io` when the child cannot be
    /// started.
    pub fn spawn<F, A, R>(self, f: F, args: A) -> Result<Process<R>>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "conduit::Process::spawn takes a fn item or a closure that captures nothing: \
                 pass captured values in the arguments instead"
            )
        };
        let _ = f;
        let rt = runtime()?;
        // Endpoints inside `args` move out of it into `endpoints` here.
        let (args, endpoints) = export_scope(move || encode(&args));
        let args = args.map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!("the arguments of the child process do not encode: {e}"),
            )
        })?;
        let request = Request {
            version: PROTOCOL_VERSION,
            exe: exe_identity()?,
            check_offset: sys::check_offset(),
            trampoline_offset: sys::trampoline_offset(trampoline::<F, A, R>),
            names: Names::of::<F, A, R>(),
            args,
            endpoints: endpoints
                .iter()
                .map(|(role, _)| role.as_str().into())
                .collect(),
            die_with_parent: self.die_with_parent,
        };
        let exe = std::env::current_exe().map_err(|e| {
            Error::from_io(
                "cannot find this program's executable to start the child",
                e,
            )
        })?;
        let ((ours_tx, ours_rx), (theirs_tx, theirs_rx)) = (rt.duplex)()?;
        let ctl: Duplex<Request, FromChild> =
            Duplex::from_parts(Sender::from_raw(ours_tx), Receiver::from_raw(ours_rx));
        let theirs: Duplex<FromChild, Request> =
            Duplex::from_parts(Sender::from_raw(theirs_tx), Receiver::from_raw(theirs_rx));
        let mut cmd = Command::new(&exe);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        if let Some(s) = self.stdin {
            cmd.stdin(s);
        }
        if let Some(s) = self.stdout {
            cmd.stdout(s);
        }
        if let Some(s) = self.stderr {
            cmd.stderr(s);
        }
        handoff(&mut cmd, CTL_KEY, theirs)?;
        for (i, (role, halves)) in endpoints.into_iter().enumerate() {
            handoff_halves(&mut cmd, &endpoint_key(i), role, halves)?;
        }
        sys::prepare(&mut cmd, self.die_with_parent);
        let spawned = if self.die_with_parent {
            spawn_from_keeper(cmd)
        } else {
            cmd.spawn()
        };
        let mut child = spawned.map_err(|e| {
            Error::from_io(
                &format!("cannot start a child process of {}", exe.display()),
                e,
            )
        })?;
        sys::after_spawn(&mut child, self.die_with_parent)
            .map_err(|e| Error::from_io("cannot tie the child process to this one", e))?;
        // A child that is already gone makes this fail; `join` then says
        // how it ended, which is the useful part.
        let _ = ctl.send(&request);
        Ok(Process {
            child,
            name: self.name,
            ctl: Some(ctl),
            started: false,
            outcome: None,
            ctl_error: None,
            status: None,
            taken: false,
            kill_on_drop: self.kill_on_drop,
            die_with_parent: self.die_with_parent,
            _result: PhantomData,
        })
    }
}

fn exe_identity() -> Result<Vec<u64>> {
    static ID: OnceLock<Vec<u64>> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let id = sys::exe_identity()
        .map_err(|e| Error::from_io("cannot read this program's executable file", e))?;
    Ok(ID.get_or_init(|| id).clone())
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one long-lived thread (Linux's parent-death signal is
/// tied to the thread that forks).
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        let mut keeper = KEEPER.lock().unwrap_or_else(|p| p.into_inner());
        if keeper.is_none() {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("conduit-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })?;
            *keeper = Some(tx);
        }
        let sent = keeper
            .as_ref()
            .map(|k| k.send((cmd, reply_tx)).is_ok())
            .unwrap_or(false);
        if !sent {
            *keeper = None;
            return Err(std::io::Error::other("the conduit-spawner thread is gone"));
        }
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the conduit-spawner thread is gone")))
}

/// How often `join` looks at the child process itself while it waits on
/// the control channel: only on Windows, where the channel may not report
/// a child that exited before adopting it.
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
