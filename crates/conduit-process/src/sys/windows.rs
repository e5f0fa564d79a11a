//! Windows: executable identity, TerminateProcess, exit codes.
//!
//! `die_with_parent` has no pre-exec part here: the child's watcher thread
//! (see `crate::child`) ends it when the control channel breaks. A job
//! object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` would also cover a child
//! that has not reached `conduit::init()` yet; it is not done yet.
//!
//! The endpoints inside the arguments are pushed into the child after the
//! spawn (`conduit_core::handoff::Outgoing`), and their tokens travel in the
//! request over the control channel: a child that exits without adopting
//! them closes them, and the parent's ends see `Disconnected`. The control
//! channel itself is still pulled by the child from the parent (its token
//! must be in the environment before the spawn), which is why `join` also
//! looks at the process itself on Windows.

use std::io;
use std::os::windows::fs::MetadataExt;
use std::os::windows::io::AsHandle;
use std::process::{Child, Command, ExitStatus};

use conduit_core::handoff::{adopt_pushed, Halves, Outgoing, Resolver, Role};
use conduit_core::{Error, Result};

use crate::Ended;

/// The endpoints of the arguments, exported but not in any process yet.
/// Dropped (the spawn failed), it closes their handles.
pub(crate) struct Handing(Vec<Outgoing>);

/// Exports the endpoints of the arguments for the child `cmd` will spawn;
/// [`Handing::finish`] moves them into it.
pub(crate) fn hand(_cmd: &mut Command, endpoints: Vec<(Role, Halves)>) -> Result<Handing> {
    endpoints
        .into_iter()
        .map(|(role, halves)| Outgoing::new(role, halves))
        .collect::<Result<_>>()
        .map(Handing)
}

impl Handing {
    /// Moves every endpoint into `child` (none is left in this process,
    /// even when this fails) and returns their tokens, in order.
    pub(crate) fn finish(self, child: &Child) -> Result<Vec<String>> {
        let mut tokens = Vec::with_capacity(self.0.len());
        let mut failed = None;
        for out in self.0 {
            match out.push_to(child.as_handle()) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            None => Ok(tokens),
            Some(e) => Err(e),
        }
    }
}

/// Child: adopts the `i`-th endpoint of the arguments from the token the
/// parent pushed with it.
pub(crate) fn adopt(
    i: usize,
    role: Role,
    pushed: &[String],
    resolver: &dyn Resolver,
) -> Result<Halves> {
    let token = pushed.get(i).ok_or_else(|| {
        Error::invalid_input(format!("the request has no token for endpoint {i}"))
    })?;
    // SAFETY: `pushed` is the request the parent sent over the control
    // channel, which only the parent can write to (it was handed to this
    // process alone, and `adopt` checked that the parent handed it); the
    // parent made each token with `Outgoing::push_to` into this very
    // process, and the child reads the request once and adopts each
    // endpoint once (`run_request`), so nothing else here owns the handles.
    // A hostile parent gains nothing by lying: it chose this process's
    // executable and environment already.
    unsafe {
        adopt_pushed(
            &format!("endpoint {i} of the arguments"),
            token,
            role,
            resolver,
        )
    }
}

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
