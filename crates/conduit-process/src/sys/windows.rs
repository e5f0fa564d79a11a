//! Windows: executable identity, TerminateProcess, exit codes.
//!
//! `die_with_parent` has no pre-exec part here: the child's watcher thread
//! (see `crate::child`) ends it when the control channel breaks. A job
//! object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` would also cover a child
//! that has not reached `conduit::init()` yet; it is not done yet.

use std::io;
use std::os::windows::fs::MetadataExt;
use std::process::{Child, Command, ExitStatus};

use crate::Ended;

/// Size, creation and last-write times of the running executable.
pub(crate) fn exe_identity() -> io::Result<Vec<u64>> {
    let meta = std::fs::metadata(std::env::current_exe()?)?;
    Ok(vec![
        meta.file_size(),
        meta.creation_time(),
        meta.last_write_time(),
    ])
}

/// Nothing to do before the child starts on Windows.
pub(crate) fn prepare(_cmd: &mut Command, _die_with_parent: bool) {}

/// `TerminateProcess` (the same as `kill` on Windows).
pub(crate) fn terminate(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    child.kill()
}

/// How the child ended.
pub(crate) fn describe(status: ExitStatus) -> Ended {
    match status.code() {
        Some(code) => Ended::Code(code),
        None => Ended::Other(format!("{status}")),
    }
}
