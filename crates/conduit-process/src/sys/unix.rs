//! Unix: executable identity, the pre-exec hook, SIGTERM, exit statuses.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};

use rustix::process::{Pid, Signal};

use conduit_core::handoff::{adopt_halves, handoff_halves, Halves, Resolver, Role};
use conduit_core::Result;

use crate::{endpoint_key, Ended};

/// The endpoints of the arguments, on their way to the child. On Unix
/// they went with the `Command` (see `conduit_core::handoff`): nothing is
/// left to do after the spawn.
pub(crate) struct Handing;

/// Hands the endpoints of the arguments to the child `cmd` will spawn.
pub(crate) fn hand(cmd: &mut Command, endpoints: Vec<(Role, Halves)>) -> Result<Handing> {
    for (i, (role, halves)) in endpoints.into_iter().enumerate() {
        handoff_halves(cmd, &endpoint_key(i), role, halves)?;
    }
    Ok(Handing)
}

impl Handing {
    /// The tokens to put in the request: none on Unix.
    pub(crate) fn finish(self, _child: &Child) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Child: adopts the `i`-th endpoint of the arguments (from the
/// environment; `pushed` is empty on Unix).
pub(crate) fn adopt(
    i: usize,
    role: Role,
    _pushed: &[String],
    resolver: &dyn Resolver,
) -> Result<Halves> {
    adopt_halves(&endpoint_key(i), role, resolver)
}

/// Device, inode, size and modification time of the running executable.
///
/// On Linux `/proc/self/exe` names the running image even after its file
/// was replaced or removed (a rebuilt binary gets a new inode).
pub(crate) fn exe_identity() -> io::Result<Vec<u64>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let meta = std::fs::metadata("/proc/self/exe")?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let meta = std::fs::metadata(std::env::current_exe()?)?;
    Ok(vec![
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
    ])
}

/// Linux: the child gets SIGKILL when the spawning thread's process dies
/// (`PR_SET_PDEATHSIG`), and refuses to start when the parent is already
/// gone. Elsewhere nothing happens before exec: the child's watcher thread
/// (see `crate::child`) is the best effort there.
pub(crate) fn prepare(cmd: &mut Command, die_with_parent: bool) {
    if !die_with_parent {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::process::CommandExt;
        let parent = rustix::process::getpid();
        // SAFETY: the hook runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: it makes two system calls
        // (`prctl`, `getppid`) through rustix, which allocate nothing and
        // take no lock, and builds an `io::Error` from an errno value
        // (no allocation for `from_raw_os_error`). It captures a `Pid`
        // (plain integer) only.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // The parent may have died between fork and prctl: then
                // the signal will never come, so do not start at all.
                if rustix::process::getppid() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc_esrch()));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = cmd;
}

/// Nothing to do once the child runs on Unix (see [`prepare`]).
#[allow(clippy::unnecessary_wraps)]
pub(crate) fn after_spawn(_child: &mut Child, _die_with_parent: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

/// Sends SIGTERM to a child that has not been reaped.
pub(crate) fn terminate(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad child pid"))?;
    // Not reaped yet, so the pid still names our child (a zombie at worst).
    rustix::process::kill_process(pid, Signal::TERM).map_err(io::Error::from)
}

/// How the child ended.
pub(crate) fn describe(status: ExitStatus) -> Ended {
    if let Some(code) = status.code() {
        return Ended::Code(code);
    }
    match status.signal() {
        Some(sig) => Ended::Signal(sig, signal_name(sig)),
        None => Ended::Other(format!("{status}")),
    }
}

fn signal_name(sig: i32) -> &'static str {
    let names: &[(Signal, &str)] = &[
        (Signal::HUP, "SIGHUP"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::ILL, "SIGILL"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::TERM, "SIGTERM"),
    ];
    names
        .iter()
        .find(|(s, _)| s.as_raw() == sig)
        .map_or("an unnamed signal", |(_, n)| n)
}

/// Watches a child for its exit, for `conduit::wait` and `join_async`: a
/// descriptor that turns readable when the child has exited (a pidfd on
/// Linux, a kqueue with an `EVFILT_PROC`/`NOTE_EXIT` event on macOS).
#[derive(Debug)]
pub(crate) struct ExitWatch {
    fd: std::os::fd::OwnedFd,
}

impl ExitWatch {
    /// True when the child has exited (the descriptor is readable).
    pub(crate) fn exited(&self) -> io::Result<bool> {
        use std::os::fd::AsFd;
        conduit_core::transport::sys::poll_fd(
            self.fd.as_fd(),
            rustix::event::PollFlags::IN,
            Some(std::time::Instant::now()),
        )
    }

    /// The descriptor to poll for input.
    pub(crate) fn handle(&self) -> Option<conduit_core::WaitHandle<'_>> {
        use std::os::fd::AsFd;
        Some(self.fd.as_fd())
    }
}

/// A watch on `child`, which must not have been reaped yet; `None` when it
/// is gone already.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn exit_watch(child: &Child) -> io::Result<Option<ExitWatch>> {
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        return Ok(None);
    };
    // The child is not reaped (the caller holds its `Child` and no status),
    // so its pid cannot have been reused: the pidfd is this child's.
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(ExitWatch { fd })),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A watch on `child`, which must not have been reaped yet; `None` when it
/// is gone already.
#[cfg(target_os = "macos")]
pub(crate) fn exit_watch(child: &Child) -> io::Result<Option<ExitWatch>> {
    use rustix::event::kqueue::{self, Event, EventFilter, EventFlags, ProcessEvents};
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        return Ok(None);
    };
    let kq = kqueue::kqueue()?;
    let ev = Event::new(
        EventFilter::Proc {
            pid,
            flags: ProcessEvents::EXIT,
        },
        EventFlags::ADD | EventFlags::ONESHOT,
        std::ptr::null_mut(),
    );
    let mut out: Vec<Event> = Vec::new();
    // SAFETY: the event names a process, not a file descriptor, so no
    // descriptor must outlive the kqueue; the event list is empty (nothing
    // is written back) and the timeout is zero.
    match unsafe { kqueue::kevent(&kq, &[ev], &mut out, Some(std::time::Duration::ZERO)) } {
        Ok(_) => Ok(Some(ExitWatch { fd: kq })),
        // A zombie cannot be watched: it has exited.
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// No exit watch on this system.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
pub(crate) fn exit_watch(_child: &Child) -> io::Result<Option<ExitWatch>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "waiting on a process is supported on Linux, macOS and Windows",
    ))
}
