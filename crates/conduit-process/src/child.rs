//! The child's side: what `conduit::init()` does in a process started by
//! `Process::spawn`.

use std::io::Write;
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, ThreadId};

use conduit_core::handoff::{adopt_with, Resolver, Role};
use conduit_core::Duplex;

use crate::sys::{self, SameImage};
use crate::{FailKind, FromChild, Request, Runtime, CTL_KEY, PROTOCOL_VERSION};

/// Exit code of a child that could not take its control channel or read its
/// request (it printed why on stderr).
pub(crate) const SETUP_FAILED: i32 = 86;
/// Exit code of a `die_with_parent` child whose parent is gone.
pub(crate) const PARENT_GONE: i32 = 87;

/// Runs the target the parent asked for and exits; never returns.
pub(crate) fn run(rt: &Runtime) -> ! {
    let ctl: Duplex<FromChild, Request> = match adopt_with(CTL_KEY, rt.resolver) {
        Ok(ctl) => ctl,
        Err(e) => setup_failed(&format!("cannot take the control channel: {e}")),
    };
    let request = match ctl.recv() {
        Ok(r) => r,
        Err(e) => setup_failed(&format!("cannot read the request from the parent: {e}")),
    };
    let (tx, rx) = ctl.split();
    // For a `die_with_parent` child the receiving half watches the parent:
    // it only ever sees the end of the channel, when the parent has exited
    // or dropped its `Process` (which keeps the channel open for such
    // children). Other children have nothing to watch for: the half is kept
    // (open, unread) until the process exits, and no thread is started.
    let mut _unwatched = None;
    if request.die_with_parent {
        let watcher = thread::Builder::new()
            .name("conduit-parent-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {}
                std::process::exit(PARENT_GONE);
            });
        if let Err(e) = watcher {
            setup_failed(&format!("cannot start the parent-watch thread: {e}"));
        }
    } else {
        _unwatched = Some(rx);
    }
    let outcome = run_request(&request, rt.resolver, || {
        let _ = tx.send(&FromChild::Started);
    });
    let sent = tx.send(&outcome);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if let Err(e) = sent {
        eprintln!("conduit: cannot send the result to the parent process: {e}");
        std::process::exit(SETUP_FAILED);
    }
    std::process::exit(0)
}

fn setup_failed(why: &str) -> ! {
    eprintln!(
        "conduit: this process was started by conduit::Process::spawn but {why}; \
         it must be started by its parent, not by hand"
    );
    std::process::exit(SETUP_FAILED)
}

fn failed(kind: FailKind, message: String) -> FromChild {
    FromChild::Failed { kind, message }
}

/// Checks the request against this binary, then jumps.
fn run_request(req: &Request, resolver: &dyn Resolver, started: impl FnOnce()) -> FromChild {
    if req.version != PROTOCOL_VERSION {
        return failed(
            FailKind::Protocol,
            format!(
                "the parent speaks process protocol {} but the child speaks {PROTOCOL_VERSION}; \
                 both must be the same binary",
                req.version
            ),
        );
    }
    let Some(proof) = SameImage::checked(&req.exe, req.check_offset) else {
        return failed(
            FailKind::Protocol,
            "the child does not run the same executable file as the parent (was it rebuilt or \
             replaced after the parent started?): refusing to look the target function up"
                .into(),
        );
    };
    let mut endpoints = Vec::with_capacity(req.endpoints.len());
    for (i, role) in req.endpoints.iter().enumerate() {
        let Some(role) = Role::parse(role) else {
            return failed(
                FailKind::Protocol,
                format!("unknown endpoint role {role:?}"),
            );
        };
        match sys::adopt(i, role, &req.pushed, resolver) {
            Ok(halves) => endpoints.push((role, halves)),
            Err(e) => {
                return failed(
                    FailKind::Protocol,
                    format!("cannot take endpoint {i} of the arguments: {e}"),
                )
            }
        }
    }
    let trampoline = sys::trampoline_at(&proof, req.trampoline_offset);
    install_panic_hook();
    started();
    trampoline(&req.names, &req.args, endpoints)
}

/// The last panic of the thread that runs the target: (message, location).
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);
static TARGET_THREAD: OnceLock<ThreadId> = OnceLock::new();
/// Set while a pool task runs: its panic goes back to the pool as the
/// task's error, so the hook does not also print it in the worker.
pub(crate) static QUIET: AtomicBool = AtomicBool::new(false);

fn install_panic_hook() {
    let _ = TARGET_THREAD.set(thread::current().id());
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if TARGET_THREAD.get() == Some(&thread::current().id()) {
            let location = info
                .location()
                .map_or_else(|| "an unknown location".to_string(), |l| l.to_string());
            let message = payload_message(info.payload());
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some((message, location));
            if QUIET.load(Ordering::Relaxed) {
                return;
            }
        }
        previous(info);
    }));
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic payload that is not a string".to_string()
    }
}

/// What to report for a target that unwound with `payload`.
pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> FromChild {
    let recorded = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
    let (message, location) =
        recorded.unwrap_or_else(|| (payload_message(payload), "an unknown location".into()));
    FromChild::Panicked { message, location }
}
