//! Integration tests live in `conformance.rs`, `process.rs`, `queue.rs`
//! and `pool.rs`; this library holds what the harness-less ones share.

use libtest_mimic::{Arguments, Failed, Trial};

/// A test failure saying `what` unless `ok`.
pub fn check(ok: bool, what: impl Into<String>) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// The error of `r`, or a test failure when it succeeded.
pub fn fails<T: std::fmt::Debug>(r: conduit::Result<T>) -> Result<conduit::Error, Failed> {
    match r {
        Ok(v) => Err(format!("expected an error, got {v:?}").into()),
        Err(e) => Ok(e),
    }
}

/// True when `pid` no longer runs (gone, or a zombie nobody reaped yet).
#[cfg(target_os = "linux")]
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// True when `pid` no longer runs (no such process, or it has exited and
/// only handles to it remain).
#[cfg(windows)]
#[allow(unsafe_code)]
pub fn is_gone(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_OBJECT_0};
    use windows_sys::Win32::System::Threading::{
        OpenProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE,
    };
    // SAFETY: plain calls with a pid and constant flags; the handle is
    // checked for null, used once and closed once.
    unsafe {
        let h = OpenProcess(PROCESS_SYNCHRONIZE, 0, pid);
        if h.is_null() {
            return true;
        }
        let exited = WaitForSingleObject(h, 0) == WAIT_OBJECT_0;
        CloseHandle(h);
        exited
    }
}

/// True once `pid` is gone, polled for up to `limit` (a liveness bound,
/// not a timing assertion).
#[cfg(any(target_os = "linux", windows))]
pub fn gone_within(pid: u32, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if is_gone(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    is_gone(pid)
}

/// Runs `tests` (which start child processes) and exits. They are marked
/// ignored in a build without an anonymous transport (only `named`):
/// `Process` talks to its child over an anonymous channel and says so when
/// there is none.
pub fn run_with_processes(args: &Arguments, tests: Vec<Trial>) -> ! {
    let anonymous = !conduit::Transport::enabled().is_empty();
    let tests = tests
        .into_iter()
        .map(|t| t.with_ignored_flag(!anonymous))
        .collect();
    libtest_mimic::run(args, tests).exit()
}
