//! Child processes (spawned with a watchdog, killed on drop) and CPU pinning.

use std::io::Read;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::plan::Workload;
use crate::{err, Ctx, Res};

/// Set in a child: `<system id>/<workload id>`.
pub const CHILD_ENV: &str = "CONDUIT_BENCH_CHILD";
/// Set in a pinned child: the CPU to pin itself to.
pub const CPU_ENV: &str = "CONDUIT_BENCH_CPU";
/// Set in a child: exit after this many milliseconds whatever happens.
pub const LIFETIME_ENV: &str = "CONDUIT_BENCH_LIFETIME_MS";

/// A command that re-executes this binary as the child of workload `w` of
/// system `system`. Standard input and output are null (the raw pipe cases
/// replace them), standard error is inherited.
pub fn child_command(system: &str, w: Workload, ctx: &Ctx) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, format!("{system}/{}", w.id()))
        .env(
            LIFETIME_ENV,
            (ctx.budget.case_timeout() + Duration::from_secs(5))
                .as_millis()
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match ctx.pinning.cpus {
        Some((_, child_cpu)) if w.pinned() => {
            cmd.env(CPU_ENV, child_cpu.to_string());
        }
        _ => {
            cmd.env_remove(CPU_ENV);
        }
    }
    Ok(cmd)
}

/// A running child with a watchdog: the child is killed when the case takes
/// longer than its timeout, and when this value is dropped.
pub struct Spawned {
    child: Arc<Mutex<Child>>,
    cancel: Option<mpsc::Sender<()>>,
    watchdog: Option<thread::JoinHandle<()>>,
    timed_out: Arc<AtomicBool>,
    timeout: Duration,
    group: bool,
}

fn kill(child: &mut Child, group: bool) {
    #[cfg(unix)]
    if group {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    let _ = group;
    let _ = child.kill();
}

impl Spawned {
    /// Spawns `cmd`. With `group` (Unix), the child leads a new process group
    /// and the whole group is killed (for Python, whose own children would
    /// otherwise outlive it).
    pub fn spawn(cmd: &mut Command, timeout: Duration, group: bool) -> Res<Spawned> {
        #[cfg(unix)]
        if group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {:?}: {e}", cmd.get_program())))?;
        let child = Arc::new(Mutex::new(child));
        let timed_out = Arc::new(AtomicBool::new(false));
        let (cancel, cancelled) = mpsc::channel::<()>();
        let watchdog = {
            let child = Arc::clone(&child);
            let timed_out = Arc::clone(&timed_out);
            thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(timeout) {
                    timed_out.store(true, Ordering::SeqCst);
                    kill(
                        &mut child.lock().unwrap_or_else(PoisonError::into_inner),
                        group,
                    );
                }
            })
        };
        Ok(Spawned {
            child,
            cancel: Some(cancel),
            watchdog: Some(watchdog),
            timed_out,
            timeout,
            group,
        })
    }

    /// Reads the child's piped stdout and stderr on threads; the handle
    /// returns stdout followed by stderr.
    pub fn take_output(&self) -> thread::JoinHandle<Vec<u8>> {
        let (out, errs) = {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            (child.stdout.take(), child.stderr.take())
        };
        thread::spawn(move || {
            let errs = errs.map(|mut e| {
                thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = e.read_to_end(&mut v);
                    v
                })
            });
            let mut all = Vec::new();
            if let Some(mut o) = out {
                let _ = o.read_to_end(&mut all);
            }
            if let Some(Ok(e)) = errs.map(|h| h.join()) {
                all.extend_from_slice(&e);
            }
            all
        })
    }

    /// Takes the child's piped stdin and stdout, to talk to it line by line.
    pub fn take_stdio(&mut self) -> (Option<ChildStdin>, Option<ChildStdout>) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        (child.stdin.take(), child.stdout.take())
    }

    /// True once the child has exited (it is reaped; `finish` still sees
    /// its status).
    pub fn has_exited(&self) -> bool {
        matches!(
            self.child
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_wait(),
            Ok(Some(_))
        )
    }

    fn stop_watchdog(&mut self) {
        drop(self.cancel.take());
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }

    /// Waits up to `grace` for the child to exit, then kills it.
    fn wait(&mut self, grace: Duration) -> Res<ExitStatus> {
        self.stop_watchdog();
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                kill(&mut child, self.group);
                let _ = child.wait();
                return Err(err(format!(
                    "the child did not exit within {grace:?} and was killed"
                )));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends the case: `res` is the parent's result (its links to the child
    /// already dropped). Waits for the child and turns a timeout or a failed
    /// child into the error that explains the case best.
    pub fn finish<T>(mut self, res: Res<T>) -> Res<T> {
        let status = self.wait(Duration::from_secs(5));
        if self.timed_out.load(Ordering::SeqCst) {
            return Err(err(format!(
                "timed out after {:.0} s; the child was killed",
                self.timeout.as_secs_f64()
            )));
        }
        match (res, status) {
            (Ok(v), Ok(s)) if s.success() => Ok(v),
            (Ok(_), Ok(s)) => Err(err(format!("the child failed: {s}"))),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(s)) if !s.success() => Err(err(format!("{e} (child: {s})"))),
            (Err(e), _) => Err(e),
        }
    }

    /// Waits for the child to exit by itself within the watchdog's timeout.
    pub fn wait_for_exit(mut self) -> Res<ExitStatus> {
        let deadline = self.timeout;
        self.wait(deadline)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop_watchdog();
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(None) = child.try_wait() {
            kill(&mut child, self.group);
            let _ = child.wait();
        }
    }
}

/// Called first in a child: pins it as asked and makes sure it exits after its
/// lifetime even if the parent vanished without closing anything.
pub fn child_setup() {
    if let Some(cpu) = std::env::var(CPU_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let _ = pin_to(&[cpu]);
    }
    let lifetime = std::env::var(LIFETIME_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(120_000);
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(lifetime));
        eprintln!("conduit-bench child: lifetime of {lifetime} ms is over, exiting");
        std::process::exit(3);
    });
}

/// Which CPUs the parent and child use.
#[derive(Clone, Debug)]
pub struct Pinning {
    /// (parent CPU, child CPU) when pinning works here.
    pub cpus: Option<(usize, usize)>,
    /// Every CPU the bench may run on (restored for unpinned cases).
    pub allowed: Vec<usize>,
    /// Why there is no pinning, if there is none.
    pub why_not: Option<String>,
}

impl Pinning {
    /// Finds two CPUs to pin to (Linux), or says why not.
    pub fn detect(no_pin: bool) -> Pinning {
        let allowed = allowed_cpus();
        let (cpus, why_not) = if no_pin {
            (None, Some("--no-pin".to_owned()))
        } else if !cfg!(target_os = "linux") {
            (
                None,
                Some("CPU pinning is implemented on Linux only".to_owned()),
            )
        } else if allowed.len() < 2 {
            (None, Some(format!("only {} CPU allowed", allowed.len())))
        } else {
            let pair = (allowed[0], allowed[1]);
            match pin_to(&[pair.0]).and_then(|()| pin_to(&allowed)) {
                Ok(()) => (Some(pair), None),
                Err(e) => (None, Some(format!("sched_setaffinity failed: {e}"))),
            }
        };
        Pinning {
            cpus,
            allowed,
            why_not,
        }
    }

    /// One line for the output.
    pub fn describe(&self) -> String {
        match (self.cpus, &self.why_not) {
            (Some((p, c)), _) => format!(
                "pinned: parent on CPU {p}, child on CPU {c} (sched_setaffinity); \
                 \"unpinned\" cases use any of {} CPUs",
                self.allowed.len()
            ),
            (None, Some(why)) => format!("not pinned ({why})"),
            (None, None) => "not pinned".to_owned(),
        }
    }

    /// Pins the parent for a pinned workload, unpins it otherwise. A child
    /// inherits this until it pins itself.
    pub fn enter_parent(&self, pinned: bool) {
        if let Some((parent, _)) = self.cpus {
            let _ = if pinned {
                pin_to(&[parent])
            } else {
                pin_to(&self.allowed)
            };
        }
    }

    /// The two CPUs as `a,b` for the Python script, if pinned.
    pub fn pair_arg(&self) -> Option<String> {
        self.cpus.map(|(a, b)| format!("{a},{b}"))
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&i| set.is_set(i))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    let n = thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Pins the calling process (its main thread, and what it spawns later) to
/// `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

/// Pinning is Linux only.
#[cfg(not(target_os = "linux"))]
pub fn pin_to(_cpus: &[usize]) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "CPU pinning is implemented on Linux only",
    ))
}
