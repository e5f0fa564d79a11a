//! The conduit test harness: real child processes, no mocks.
//!
//! A test binary built with `harness = false` calls [`main`]. When the binary
//! is started as a child by [`spawn`] (the environment variable
//! `CONDUIT_TEST_CHILD` names a registered [`ChildFn`]), [`main`] runs that
//! function and exits; otherwise it runs the trials with libtest-mimic, which
//! speaks the libtest command line, so `cargo test` and `cargo nextest run`
//! both work.
//!
//! The cross-process conformance suite lives in [`suite`]: it is written once
//! and instantiated for every transport compiled into the binary
//! ([`suite::trials`]).
//! Named endpoints, which are not an anonymous-pair transport, have their own
//! trials in `named` (feature `named`), run by [`main`] as well.

#![deny(unsafe_code)]
// Test code: a panic in a child process is how it reports failure to the parent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub use libtest_mimic::{Arguments, Failed, Trial};

pub mod alloc;
pub mod handoff_cases;
pub mod msg;
#[cfg(feature = "named")]
pub mod named;
pub mod python;
pub mod suite;

/// The environment variable that tells a re-executed test binary which child
/// function to run.
pub const CHILD_ENV: &str = "CONDUIT_TEST_CHILD";

/// A function that runs in a child process. It adopts its endpoints with
/// `conduit::adopt`; a panic makes the child exit with a failure status.
#[derive(Clone, Copy, Debug)]
pub struct ChildFn {
    /// The name [`spawn`] uses.
    pub name: &'static str,
    /// The body.
    pub run: fn(),
}

/// Runs the child named in the environment (if any, then exits), else runs
/// `trials` plus the conformance suite for every enabled transport.
pub fn main(children: &[ChildFn], mut trials: Vec<Trial>) -> ! {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        #[cfg(feature = "named")]
        let children = &[children, named::CHILDREN].concat();
        let all = suite::CHILDREN
            .iter()
            .chain(suite::hardening::CHILDREN)
            .chain(handoff_cases::CHILDREN)
            .chain(children);
        match all.into_iter().find(|c| c.name == name) {
            Some(c) => {
                (c.run)();
                std::process::exit(0)
            }
            None => {
                eprintln!("conduit-test: no child function named {name:?} is registered");
                std::process::exit(2)
            }
        }
    }
    // The general trials need an anonymous transport (a `named`-only build has none).
    let anonymous = !conduit::Transport::enabled().is_empty();
    trials.extend(suite::general_trials().into_iter().map(|t| {
        let ignored = t.has_ignored_flag();
        t.with_ignored_flag(ignored || !anonymous)
    }));
    #[cfg(feature = "named")]
    trials.extend(named::trials());
    for t in conduit::Transport::enabled() {
        trials.extend(suite::trials(t));
    }
    let args = Arguments::from_args();
    // Looking for python3 + cbor2 spawns a process: only when the python
    // trials can be selected (nextest runs the binary once per test).
    let wants_python = args
        .filter
        .as_deref()
        .map_or(true, |f| f.contains("python"));
    trials.extend(python::trials(wants_python));
    libtest_mimic::run(&args, trials).exit()
}

/// A child process running a [`ChildFn`]. Dropping it kills the child, so a
/// failing test never leaves processes behind.
#[derive(Debug)]
pub struct Spawned {
    child: Option<Child>,
    name: String,
}

/// Spawns this test binary again as a child that runs the child function
/// `name`. `setup` hands endpoints to the child (`conduit::handoff`) and may
/// set environment variables.
pub fn spawn(
    name: &str,
    setup: impl FnOnce(&mut Command) -> conduit::Result<()>,
) -> Result<Spawned, Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, name).stdin(Stdio::null());
    setup(&mut cmd).map_err(|e| format!("handing endpoints to child {name}: {e}"))?;
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn child {name}: {e}"))?;
    Ok(Spawned {
        child: Some(child),
        name: name.to_string(),
    })
}

impl Spawned {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the child (SIGKILL / TerminateProcess) and reaps it.
    pub fn kill(&mut self) -> Result<(), Failed> {
        if let Some(mut c) = self.child.take() {
            c.kill()
                .map_err(|e| format!("cannot kill child {}: {e}", self.name))?;
            c.wait()
                .map_err(|e| format!("cannot reap child {}: {e}", self.name))?;
        }
        Ok(())
    }

    /// Waits for the child to exit and returns its status.
    pub fn wait(&mut self) -> Result<ExitStatus, Failed> {
        match self.child.take() {
            Some(mut c) => c
                .wait()
                .map_err(|e| format!("cannot wait for child {}: {e}", self.name).into()),
            None => Err(format!("child {} was already reaped", self.name).into()),
        }
    }

    /// Waits for the child and fails unless it exited successfully.
    pub fn wait_success(&mut self) -> Result<(), Failed> {
        let status = self.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("child {} failed: {status}", self.name).into())
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Turns any displayable error into a test failure with context.
pub fn fail<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> Failed + '_ {
    move |e| Failed::from(format!("{context}: {e}"))
}

/// Fails with `msg` unless `cond` holds.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

/// The id of the calling thread, for [`wait_until_blocked`].
#[derive(Clone, Copy, Debug)]
pub struct ThreadId(#[allow(dead_code)] i64);

/// The calling thread's id.
pub fn current_thread() -> ThreadId {
    #[cfg(target_os = "linux")]
    {
        ThreadId(rustix::thread::gettid().as_raw_nonzero().get() as i64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        ThreadId(0)
    }
}

/// Waits (up to `limit`) until `thread` sleeps in the kernel, i.e. is blocked
/// in a system call; true when seen asleep. On Linux this reads
/// `/proc/self/task/<tid>/stat`; elsewhere it cannot tell and returns false at
/// once (tests then still check the outcome, only less strictly timed).
pub fn wait_until_blocked(thread: ThreadId, limit: Duration) -> bool {
    #[cfg(target_os = "linux")]
    {
        let path = format!("/proc/self/task/{}/stat", thread.0);
        let start = std::time::Instant::now();
        // Several consecutive sightings, so that a short sleep inside
        // unrelated work (an allocation, a lock) does not count.
        let mut seen = 0;
        while start.elapsed() < limit {
            let state = std::fs::read_to_string(&path).ok().and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
            });
            if state == Some('S') {
                seen += 1;
                if seen >= 20 {
                    return true;
                }
            } else {
                seen = 0;
            }
            std::thread::yield_now();
        }
        false
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (thread, limit);
        false
    }
}

/// Runs `f`; if it has not returned within `limit`, prints `what` and exits the
/// process with a failure, so a hang becomes a failed test instead of a stuck
/// run.
pub fn watchdog<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let dog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
            eprintln!("conduit-test watchdog: {what} did not return within {limit:?}: hang");
            std::process::exit(3);
        }
    });
    let out = f();
    drop(done_tx);
    let _ = dog.join();
    out
}
