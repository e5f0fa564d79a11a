//! [`ProcessBuilder`]: the child's settings, and `spawn`, which encodes the
//! request, hands the control channel and the endpoints to the child and
//! starts it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use conduit_core::handoff::handoff;
use conduit_core::transport::spawn_context::{export_scope, Exported};
use conduit_core::{Duplex, Error, ErrorKind, Receiver, Result, Sender};

use crate::{
    encode, runtime, sys, trampoline, FromChild, Names, Process, Request, CTL_KEY, PROTOCOL_VERSION,
};

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
        runtime()?;
        // Endpoints inside `args` move out of it into `endpoints` here.
        let (args, endpoints) = export_scope(move || encode(&args));
        let args = args.map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!("the arguments of the child process do not encode: {e}"),
            )
        })?;
        self.spawn_encoded(
            sys::trampoline_offset(trampoline::<F, A, R>),
            Names::of::<F, A, R>(),
            args,
            endpoints,
        )
    }

    /// Starts the trampoline at `trampoline_offset` (made for `names`) on
    /// arguments already encoded, with the endpoints taken out of them.
    pub(crate) fn spawn_encoded<R>(
        self,
        trampoline_offset: i64,
        names: Names,
        args: Vec<u8>,
        endpoints: Exported,
    ) -> Result<Process<R>> {
        let rt = runtime()?;
        let mut request = Request {
            version: PROTOCOL_VERSION,
            exe: exe_identity()?,
            check_offset: sys::check_offset(),
            trampoline_offset,
            names,
            args,
            endpoints: endpoints
                .iter()
                .map(|(role, _)| role.as_str().into())
                .collect(),
            pushed: Vec::new(),
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
        let handing = sys::hand(&mut cmd, endpoints)?;
        sys::prepare(&mut cmd, self.die_with_parent);
        let spawned = if self.die_with_parent {
            spawn_from_keeper(cmd)
        } else {
            cmd.spawn()
        };
        let mut child = spawned.map_err(|e| {
            // The OS's reason goes into the message too: `{e}` is often all
            // a user prints, and a bare "cannot start" says nothing.
            let dir = self
                .current_dir
                .as_ref()
                .map(|d| format!(" in the directory {}", d.display()))
                .unwrap_or_default();
            Error::from_io(
                &format!(
                    "cannot start a child process of {}{dir}: {e}",
                    exe.display()
                ),
                e,
            )
        })?;
        sys::after_spawn(&mut child, self.die_with_parent)
            .map_err(|e| Error::from_io("cannot tie the child process to this one", e))?;
        request.pushed = match handing.finish(&child) {
            Ok(tokens) => tokens,
            Err(e) => {
                // It cannot run its target without its arguments (and has
                // almost certainly exited already).
                let _ = child.kill();
                let ended = match child.wait() {
                    Ok(s) => sys::describe(s).to_string(),
                    Err(_) => "could not be waited for".into(),
                };
                return Err(Error::new(
                    e.kind(),
                    format!(
                        "cannot hand the endpoints in the arguments to the child process \
                         (pid {}), which {ended}: {e}",
                        child.id()
                    ),
                ));
            }
        };
        // A child that is already gone makes this fail; `join` then says
        // how it ended, which is the useful part.
        let _ = ctl.send(&request);
        Ok(Process::started(
            child,
            self.name,
            ctl,
            self.kill_on_drop,
            self.die_with_parent,
        ))
    }
}

pub(crate) fn exe_identity() -> Result<Vec<u64>> {
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
