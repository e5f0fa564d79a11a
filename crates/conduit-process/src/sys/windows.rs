//! Windows: executable identity, the `die_with_parent` job object,
//! TerminateProcess, exit codes.
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
use std::os::windows::io::{AsHandle, AsRawHandle};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK,
};

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

/// Nothing to do before the child starts on Windows: `std::process::Command`
/// has no hook between `CreateProcessW` and the child's first instruction
/// (see [`after_spawn`]).
pub(crate) fn prepare(_cmd: &mut Command, _die_with_parent: bool) {}

/// A `die_with_parent` child joins this process's kill-on-close job.
///
/// The job is created once per parent process, on the first such spawn, and
/// its only handle (not inheritable) stays open until this process ends;
/// then Windows closes it, however the process ended (`TerminateProcess`
/// included), and `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` kills every process
/// still in the job.
///
/// `JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK`: processes that a child starts
/// are not put in this job, so only the direct child is tied to this
/// process, as with Linux's parent-death signal (a grandchild spawned with
/// `die_with_parent` joins its own parent's job instead). A parent that is
/// itself in a job (a CI runner's, a terminal's) gets a nested job, which
/// Windows 8 and later support.
///
/// The child is assigned right after `CreateProcessW` returns, so it runs
/// for a moment before it is in the job (`std` has no `CREATE_SUSPENDED`
/// hook that would let us resume it afterwards: its main thread handle is
/// not exposed). A parent that dies in that moment leaves a child that
/// will fail to take its control channel (the handles are duplicated out
/// of the parent, which is gone) and exit, or, if it got that far, whose
/// watcher thread sees the channel break and exits it.
///
/// When the assignment fails the child is killed and the spawn fails: the
/// caller asked for a guarantee this process cannot give.
pub(crate) fn after_spawn(child: &mut Child, die_with_parent: bool) -> io::Result<()> {
    if !die_with_parent {
        return Ok(());
    }
    let assigned = job().and_then(|job| {
        let process = child.as_raw_handle() as HANDLE;
        // SAFETY: `job` is a valid job handle kept open for the life of
        // this process (see `job`), `process` is the handle `std` holds for
        // a child it has not reaped (alive until `child` is dropped), with
        // the access `CreateProcessW` grants (PROCESS_ALL_ACCESS, which
        // includes the PROCESS_SET_QUOTA and PROCESS_TERMINATE required).
        if unsafe { AssignProcessToJobObject(job as HANDLE, process) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    });
    if let Err(e) = assigned {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot put the die_with_parent child in this process's kill-on-close job \
                 object (AssignProcessToJobObject: {e})"
            ),
        ));
    }
    Ok(())
}

/// This process's kill-on-close job, as a raw handle value (a `HANDLE` is a
/// pointer, which a static cannot hold).
fn job() -> io::Result<isize> {
    static JOB: OnceLock<Result<isize, (io::ErrorKind, String)>> = OnceLock::new();
    JOB.get_or_init(|| create_job().map_err(|e| (e.kind(), e.to_string())))
        .clone()
        .map_err(|(kind, msg)| io::Error::new(kind, msg))
}

fn create_job() -> io::Result<isize> {
    // SAFETY: null security attributes (default security, not inheritable)
    // and a null name (an anonymous job) are valid arguments.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("CreateJobObjectW: {e}")));
    }
    let mut info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
    info.BasicLimitInformation.LimitFlags =
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK;
    // SAFETY: `job` is the job handle just created; `info` is a valid
    // JOBOBJECT_EXTENDED_LIMIT_INFORMATION that lives across the call and
    // whose size is passed as the length, as the information class expects.
    let set = unsafe {
        SetInformationJobObject(
            job,
            JobObjectExtendedLimitInformation,
            std::ptr::from_ref(&info).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if set == 0 {
        let e = io::Error::last_os_error();
        // SAFETY: `job` is our handle, closed once, not used afterwards.
        unsafe { CloseHandle(job) };
        return Err(io::Error::new(
            e.kind(),
            format!("SetInformationJobObject(KILL_ON_JOB_CLOSE): {e}"),
        ));
    }
    // Never closed: closing it is what kills the children, and that must
    // happen only when this process ends.
    Ok(job as isize)
}

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

/// Watches a child for its exit: a duplicate of its process handle, which
/// is signalled once the process has ended.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    process: std::os::windows::io::OwnedHandle,
}

impl ExitWatch {
    /// True when the child has exited.
    pub(crate) fn exited(&self) -> io::Result<bool> {
        // SAFETY: the handle is open for the lifetime of `self`; a zero
        // timeout only tests the state. A process handle is signalled for
        // good once the process ended (waiting does not reset it).
        let r = unsafe {
            windows_sys::Win32::System::Threading::WaitForSingleObject(
                self.process.as_raw_handle() as HANDLE,
                0,
            )
        };
        match r {
            windows_sys::Win32::Foundation::WAIT_OBJECT_0 => Ok(true),
            windows_sys::Win32::Foundation::WAIT_TIMEOUT => Ok(false),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// The handle `conduit::wait` and `join_async` watch: the process
    /// handle, signalled once the child has ended.
    pub(crate) fn handle(&self) -> Option<conduit_core::WaitHandle<'_>> {
        Some(std::os::windows::io::AsHandle::as_handle(&self.process))
    }
}

/// A watch on `child`.
pub(crate) fn exit_watch(child: &Child) -> io::Result<Option<ExitWatch>> {
    Ok(Some(ExitWatch {
        process: child.as_handle().try_clone_to_owned()?,
    }))
}
