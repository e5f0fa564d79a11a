//! `conduit::Process` across real processes.
//!
//! A test binary's `main` is normally libtest's, which does not call
//! `conduit::init()`; children re-execute this binary, so this target has
//! `harness = false` and its own `main`: `conduit::init()` first, then the
//! tests through libtest-mimic (works under `cargo test` and
//! `cargo nextest run`).

use std::time::{Duration, Instant};

use conduit::{Duplex, ErrorKind, Process, Receiver, Sender};
use conduit_tests::{check, fails};
#[cfg(any(target_os = "linux", windows))]
use conduit_tests::{gone_within, is_gone};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Set in a child to play a program whose `main` lacks `conduit::init()`.
const NO_INIT: &str = "CONDUIT_PROCESS_TEST_NO_INIT";
/// Set in a child to play one that has not reached `conduit::init()` yet
/// (so its parent-watch thread does not run): it sleeps a minute first.
const STALL: &str = "CONDUIT_PROCESS_TEST_STALL";

fn main() {
    if std::env::var_os(NO_INIT).is_some() {
        // A main without conduit::init(): does its own thing and exits.
        return;
    }
    if std::env::var_os(STALL).is_some() {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    conduit::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test("result_comes_back", result_comes_back),
        Trial::test("closure_without_captures", closure_without_captures),
        Trial::test(
            "panic_is_child_failed_with_message",
            panic_is_child_failed_with_message,
        ),
        Trial::test("exit_code_is_reported", exit_code_is_reported),
        Trial::test("kill_names_the_signal", kill_names_the_signal),
        Trial::test("terminate_names_the_signal", terminate_names_the_signal),
        Trial::test(
            "join_timeout_leaves_it_joinable",
            join_timeout_leaves_it_joinable,
        ),
        Trial::test(
            "main_without_init_is_explained",
            main_without_init_is_explained,
        ),
        Trial::test(
            "child_that_never_adopts_disconnects_its_endpoints",
            child_that_never_adopts_disconnects_its_endpoints,
        ),
        Trial::test("undecodable_result_is_decode", undecodable_result_is_decode),
        Trial::test("builder_env_dir_and_name", builder_env_dir_and_name),
        Trial::test("spawn_failure_says_why", spawn_failure_says_why),
        Trial::test("kill_on_drop_kills", kill_on_drop_kills),
        Trial::test(
            "die_with_parent_after_sigkill",
            die_with_parent_after_sigkill,
        ),
        Trial::test("die_with_parent_before_init", die_with_parent_before_init),
        Trial::test("many_from_many_threads", many_from_many_threads),
        Trial::test("endpoints_of_every_transport", endpoints_of_every_transport),
        Trial::test("endpoints_in_vec_and_option", endpoints_in_vec_and_option),
        Trial::test(
            "endpoint_serialized_elsewhere_fails",
            endpoint_serialized_elsewhere_fails,
        ),
        Trial::test(
            "endpoints_to_64_concurrent_children",
            endpoints_to_64_concurrent_children,
        ),
        Trial::test(
            "concurrent_children_hold_only_their_handles",
            concurrent_children_hold_only_their_handles,
        ),
    ];
    conduit_tests::run_with_processes(&args, tests);
}

fn square(n: u64) -> u64 {
    n * n
}

fn result_comes_back() -> Result<(), Failed> {
    let mut p = Process::spawn(square, 12)?;
    check(p.pid() > 0, "pid")?;
    check(p.join()? == 144, "result")?;
    check(p.exit_status().is_some_and(|s| s.success()), "exit status")?;
    check(!p.is_alive(), "not alive after join")?;
    let again = fails(p.join())?;
    check(
        again.kind() == ErrorKind::InvalidInput,
        format!("second join: {again}"),
    )
}

fn closure_without_captures() -> Result<(), Failed> {
    let mut p = Process::spawn(
        |(a, b): (String, u32)| a.repeat(b as usize),
        ("ab".into(), 3),
    )?;
    check(p.join()? == "ababab", "closure result")
}

fn boom(n: u32) {
    panic!("boom {n}");
}

fn panic_is_child_failed_with_message() -> Result<(), Failed> {
    let mut p = Process::builder()
        .stderr(std::process::Stdio::null())
        .spawn(boom, 42)?;
    let err = fails(p.join())?;
    let msg = err.to_string();
    check(err.kind() == ErrorKind::ChildFailed, format!("kind: {err}"))?;
    check(msg.contains("boom 42"), format!("message: {msg}"))?;
    check(msg.contains("process.rs:"), format!("location: {msg}"))
}

fn exit3(_: ()) {
    std::process::exit(3);
}

fn exit_code_is_reported() -> Result<(), Failed> {
    let mut p = Process::spawn(exit3, ())?;
    let err = fails(p.join())?;
    check(err.kind() == ErrorKind::ChildFailed, format!("kind: {err}"))?;
    check(
        err.to_string().contains("exited with code 3"),
        err.to_string(),
    )?;
    check(
        err.to_string().contains("while running its target"),
        err.to_string(),
    )
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn kill_names_the_signal() -> Result<(), Failed> {
    let mut p = Process::spawn(sleep_ms, 60_000)?;
    p.kill()?;
    let err = fails(p.join())?;
    check(err.kind() == ErrorKind::ChildFailed, format!("kind: {err}"))?;
    #[cfg(unix)]
    check(err.to_string().contains("SIGKILL"), err.to_string())?;
    Ok(())
}

fn terminate_names_the_signal() -> Result<(), Failed> {
    let mut p = Process::spawn(sleep_ms, 60_000)?;
    // Let it reach its target, so that the message is about the target.
    std::thread::sleep(Duration::from_millis(100));
    p.terminate()?;
    let err = fails(p.join())?;
    check(err.kind() == ErrorKind::ChildFailed, format!("kind: {err}"))?;
    #[cfg(unix)]
    check(err.to_string().contains("SIGTERM"), err.to_string())?;
    Ok(())
}

fn join_timeout_leaves_it_joinable() -> Result<(), Failed> {
    let mut p = Process::spawn(sleep_ms, 700)?;
    let err = fails(p.join_timeout(Duration::from_millis(50)))?;
    check(err.is_timeout(), format!("timeout: {err}"))?;
    check(p.is_alive(), "alive after a timeout")?;
    check(p.try_join()?.is_none(), "try_join while running")?;
    check(p.join()? == 700, "joined after the timeout")
}

fn main_without_init_is_explained() -> Result<(), Failed> {
    let mut p = Process::builder().env(NO_INIT, "1").spawn(square, 2)?;
    let err = fails(p.join())?;
    let msg = err.to_string();
    check(err.kind() == ErrorKind::ChildFailed, format!("kind: {err}"))?;
    check(msg.contains("without running its target"), msg.clone())?;
    check(msg.contains("conduit::init()"), msg)
}

/// Would hold both ends; never runs (its child's `main` lacks `conduit::init()`).
fn hold_both((_rx, _tx): (Receiver<u32>, Sender<u32>)) {}

/// A child that exits without adopting the endpoints of its arguments must
/// release them: the parent's ends see `Disconnected` within 1 s of its
/// exit, while the `Process` is still alive (issue 10, item 1; on Windows
/// the handles used to wait in the parent for the child to take them).
fn child_that_never_adopts_disconnects_its_endpoints() -> Result<(), Failed> {
    for t in conduit::Transport::enabled() {
        let (to_child, rx) = t.channel::<u32>()?;
        let (tx, from_child) = t.channel::<u32>()?;
        let spawned = Process::builder()
            .env(NO_INIT, "1")
            .spawn(hold_both, (rx, tx));
        // Spawn may fail only because the child was already gone when the
        // endpoints were handed to it; the ends must be released either way.
        let _p = match spawned {
            Ok(mut p) => {
                let err = fails(p.join_timeout(Duration::from_secs(30)))?;
                check(
                    err.kind() == ErrorKind::ChildFailed,
                    format!("{}: join: {err}", t.name()),
                )?;
                Some(p)
            }
            Err(e) => {
                check(
                    e.to_string().contains("exited"),
                    format!("{}: spawn: {e}", t.name()),
                )?;
                None
            }
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let err = fails(from_child.recv_deadline(deadline))?;
        check(
            err.is_disconnected(),
            format!("{}: the parent's receiver: {err}", t.name()),
        )?;
        // Bounded: the pipe cannot fill up before the deadline.
        loop {
            match to_child.send(&1) {
                Err(e) if e.is_disconnected() => break,
                Err(e) => return Err(format!("{}: the parent's sender: {e}", t.name()).into()),
                Ok(()) => check(
                    Instant::now() < deadline,
                    format!("{}: the parent's sender still sends after 1 s", t.name()),
                )?,
            }
        }
    }
    Ok(())
}

/// Encodes as a string but decodes as a number.
#[derive(Debug)]
struct Lopsided;

impl Serialize for Lopsided {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("not a number")
    }
}

impl<'de> Deserialize<'de> for Lopsided {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|_| Lopsided)
    }
}

fn lopsided(_: ()) -> Lopsided {
    Lopsided
}

fn undecodable_result_is_decode() -> Result<(), Failed> {
    let mut p = Process::spawn(lopsided, ())?;
    let err = fails(p.join())?;
    check(err.kind() == ErrorKind::Decode, format!("kind: {err}"))
}

fn env_and_dir(var: String) -> (Option<String>, String) {
    let dir = std::env::current_dir().map(|d| d.display().to_string());
    (std::env::var(var).ok(), dir.unwrap_or_default())
}

fn builder_env_dir_and_name() -> Result<(), Failed> {
    let dir = std::env::temp_dir().canonicalize()?;
    let mut p = Process::builder()
        .name("envy")
        .env("CONDUIT_PROCESS_TEST_VAR", "hello")
        .current_dir(&dir)
        .spawn(env_and_dir, "CONDUIT_PROCESS_TEST_VAR".to_string())?;
    check(p.name() == Some("envy"), "name")?;
    let (var, cwd) = p.join()?;
    check(var.as_deref() == Some("hello"), format!("env: {var:?}"))?;
    // Compared canonicalized: Windows spells the same directory with and
    // without the `\\?\` prefix.
    let cwd_path = std::path::Path::new(&cwd).canonicalize()?;
    check(cwd_path == dir, format!("dir: {cwd}"))
}

/// A child that cannot start (here: its working directory is missing)
/// fails with `Io`, and the message itself (what `{e}` prints, all that a
/// newcomer's `println!` shows) names the directory and the OS's reason.
fn spawn_failure_says_why() -> Result<(), Failed> {
    let missing = std::env::temp_dir().join(format!("conduit-no-such-dir-{}", std::process::id()));
    for die_with_parent in [false, true] {
        let err = fails(
            Process::builder()
                .current_dir(&missing)
                .die_with_parent(die_with_parent)
                .spawn(square, 3),
        )?;
        let text = err.to_string();
        check(
            err.kind() == ErrorKind::Io,
            format!("die_with_parent {die_with_parent}: kind of {text}"),
        )?;
        let os = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        check(
            text.contains(&missing.display().to_string())
                && (text.contains("os error") || text.contains(&os)),
            format!("die_with_parent {die_with_parent}: the message does not say why: {text}"),
        )?;
    }
    Ok(())
}

fn kill_on_drop_kills() -> Result<(), Failed> {
    let p = Process::builder()
        .kill_on_drop(true)
        .spawn(sleep_ms, 60_000)?;
    let pid = p.pid();
    drop(p);
    #[cfg(any(target_os = "linux", windows))]
    check(
        gone_within(pid, Duration::from_secs(1)),
        "child still runs after drop",
    )?;
    let _ = pid;
    Ok(())
}

/// Spawns a `die_with_parent` grandchild (one that stalls before
/// `conduit::init()` when `stall`), writes its pid to `path`, sleeps.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
fn middle((path, stall): (String, bool)) {
    let mut b = Process::builder().die_with_parent(true);
    if stall {
        b = b.env(STALL, "1");
    }
    let Ok(g) = b.spawn(sleep_ms, 60_000) else {
        return;
    };
    let _ = std::fs::write(&path, g.pid().to_string());
    std::thread::sleep(Duration::from_secs(60));
    drop(g);
}

/// The grandchild has reached its target: both the OS mechanism (Linux's
/// parent-death signal, Windows's kill-on-close job) and its parent-watch
/// thread end it.
fn die_with_parent_after_sigkill() -> Result<(), Failed> {
    die_with_parent_case(false)
}

/// The grandchild has not reached `conduit::init()`: only the OS
/// mechanism can end it.
fn die_with_parent_before_init() -> Result<(), Failed> {
    die_with_parent_case(true)
}

/// Kills (SIGKILL / TerminateProcess) a child that spawned a
/// `die_with_parent` grandchild; the grandchild must be gone within 1 s.
/// Linux and Windows only: macOS has no OS mechanism (a best effort).
fn die_with_parent_case(stall: bool) -> Result<(), Failed> {
    #[cfg(any(target_os = "linux", windows))]
    {
        let path = std::env::temp_dir().join(format!(
            "conduit-process-test-{}-{stall}",
            std::process::id(),
        ));
        let _ = std::fs::remove_file(&path);
        let mut p = Process::spawn(middle, (path.display().to_string(), stall))?;
        let start = std::time::Instant::now();
        let gpid = loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if let Ok(pid) = s.trim().parse::<u32>() {
                    break pid;
                }
            }
            check(
                start.elapsed() < Duration::from_secs(20),
                "no grandchild pid",
            )?;
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = std::fs::remove_file(&path);
        check(!is_gone(gpid), "the grandchild is not running")?;
        p.kill()?;
        let _ = p.join();
        check(
            gone_within(gpid, Duration::from_secs(1)),
            "grandchild still runs 1 s after its parent was killed",
        )?;
    }
    let _ = stall;
    Ok(())
}

fn many_from_many_threads() -> Result<(), Failed> {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut ps = Vec::new();
                for i in 0..8u64 {
                    let n = t * 8 + i;
                    ps.push((n, Process::spawn(square, n).map_err(|e| e.to_string())?));
                }
                for (n, mut p) in ps {
                    let got = p.join().map_err(|e| e.to_string())?;
                    if got != n * n {
                        return Err(format!("{n}: got {got}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "thread panicked")??;
    }
    Ok(())
}

/// Counts the strings on `rx` until the parent closes it, reports each
/// length on `tx`, returns `n` plus the count.
fn count_words((n, rx, tx): (u32, Receiver<String>, Sender<u64>)) -> u32 {
    let mut count = 0;
    for word in rx.iter() {
        let Ok(word) = word else { break };
        let _ = tx.send(&(word.len() as u64));
        count += 1;
    }
    n + count
}

fn endpoints_of_every_transport() -> Result<(), Failed> {
    for t in conduit::Transport::enabled() {
        let (words_tx, words_rx) = t.channel::<String>()?;
        let (lens_tx, lens_rx) = t.channel::<u64>()?;
        let mut p = Process::spawn(count_words, (7u32, words_rx, lens_tx))?;
        for w in ["a", "bb", "ccc"] {
            words_tx.send(&w.to_string())?;
        }
        for want in 1..=3u64 {
            let got = lens_rx.recv_timeout(Duration::from_secs(10))?;
            check(
                got == want,
                format!("{}: length {got}, want {want}", t.name()),
            )?;
        }
        drop(words_tx);
        check(p.join()? == 10, format!("{}: result", t.name()))?;
        // Only the child held the other ends: they are closed now.
        let err = fails(lens_rx.recv_timeout(Duration::from_secs(5)))?;
        check(err.is_disconnected(), format!("{}: {err}", t.name()))?;
    }
    Ok(())
}

/// Echoes one number on each duplex, reports the sum on `done`.
fn echo_all((conns, done): (Vec<Duplex<u32, u32>>, Option<Sender<u32>>)) -> usize {
    let mut sum = 0;
    for c in &conns {
        if let Ok(x) = c.recv() {
            sum += x;
            let _ = c.send(&(x * 10));
        }
    }
    if let Some(done) = done {
        let _ = done.send(&sum);
    }
    conns.len()
}

fn endpoints_in_vec_and_option() -> Result<(), Failed> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let (a, b) = conduit::duplex::<u32, u32>()?;
        ours.push(a);
        theirs.push(b);
    }
    let (done_tx, done_rx) = conduit::channel::<u32>()?;
    let mut p = Process::spawn(echo_all, (theirs, Some(done_tx)))?;
    for (i, c) in ours.iter().enumerate() {
        c.send(&(i as u32 + 1))?;
        check(c.recv()? == (i as u32 + 1) * 10, "echo")?;
    }
    check(done_rx.recv()? == 6, "sum")?;
    check(p.join()? == 3, "count")
}

fn endpoint_serialized_elsewhere_fails() -> Result<(), Failed> {
    let (tx, rx) = conduit::channel::<u32>()?;
    let mut out = Vec::new();
    let err = ciborium::into_writer(&rx, &mut out).map(|_| ()).err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    check(
        msg.contains("conduit::Process::spawn"),
        format!("error: {msg:?}"),
    )?;
    // Nothing moved: the channel still works.
    tx.send(&5)?;
    check(rx.recv()? == 5, "channel after a refused serialization")
}

fn first_number(rx: Receiver<u64>) -> u64 {
    rx.recv().unwrap_or(u64::MAX)
}

fn endpoints_to_64_concurrent_children() -> Result<(), Failed> {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut ps = Vec::new();
                for i in 0..8u64 {
                    let n = t * 8 + i;
                    let (tx, rx) = conduit::channel::<u64>().map_err(|e| e.to_string())?;
                    let p = Process::spawn(first_number, rx).map_err(|e| e.to_string())?;
                    ps.push((n, tx, p));
                }
                for (n, tx, mut p) in ps {
                    tx.send(&n).map_err(|e| e.to_string())?;
                    let got = p.join().map_err(|e| e.to_string())?;
                    if got != n {
                        return Err(format!("child {n} read {got}"));
                    }
                    // No other child holds this receiver: the peer is gone.
                    let gone = (0..100).any(|_| {
                        let r = tx.send(&0);
                        if r.is_ok() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        r.is_err_and(|e| e.is_disconnected())
                    });
                    if !gone {
                        return Err(format!("child {n}'s receiver is still open elsewhere"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "thread panicked")??;
    }
    Ok(())
}

/// The descriptors open in this process, each as "number -> what it is"
/// where the OS says, without the one used to list them; `None` where this
/// test cannot count them (see [`concurrent_children_hold_only_their_handles`]).
#[cfg(unix)]
fn open_descriptors() -> Option<Vec<String>> {
    let linux = cfg!(any(target_os = "linux", target_os = "android"));
    let dir = if linux { "/proc/self/fd" } else { "/dev/fd" };
    // The listing's own descriptor is open while this runs ...
    let names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if linux {
        // ... and closed now: its link no longer reads.
        Some(
            names
                .into_iter()
                .filter_map(|n| {
                    let target = std::fs::read_link(format!("{dir}/{n}")).ok()?;
                    Some(format!("{n} -> {}", target.display()))
                })
                .collect(),
        )
    } else {
        // /dev/fd lists it too; which number it had is not known here.
        let mut names = names;
        names.pop()?;
        Some(names)
    }
}

#[cfg(not(unix))]
fn open_descriptors() -> Option<Vec<String>> {
    None
}

/// Reads one number, then reports it with the descriptors open in this
/// child at that point.
fn number_and_descriptors(rx: Receiver<u64>) -> (u64, Option<Vec<String>>) {
    let n = rx.recv().unwrap_or(u64::MAX);
    (n, open_descriptors())
}

/// The "each checking that it got its own handles and no others":
/// a baseline child spawned alone with the same argument shape (one
/// receiver) counts its open descriptors; then 64 children spawned
/// concurrently from 8 threads count theirs, and every one must have
/// exactly the baseline's count. One more would be a descriptor of a
/// sibling's handoff (carrier or endpoint) inherited by accident; one fewer
/// a missing endpoint.
///
/// Windows: skipped (the children still run, the counts are not compared).
/// Wine, where `xcheck` runs these tests, answers `GetProcessHandleCount`
/// with 0 in every process (tried: 66 children and the baselines all said
/// 0), so the comparison would pass whatever leaked. On real Windows the
/// count includes handles the loader and runtime open on their own (events,
/// thread pool, keys), no stable baseline either. Handoff handles are never
/// inheritable there (the child duplicates them out of the parent), so
/// nothing of a sibling can arrive by inheritance.
fn concurrent_children_hold_only_their_handles() -> Result<(), Failed> {
    let spawn_one = |n: u64| -> Result<(u64, Option<Vec<String>>), String> {
        let (tx, rx) = conduit::channel::<u64>().map_err(|e| e.to_string())?;
        let mut p = Process::spawn(number_and_descriptors, rx).map_err(|e| e.to_string())?;
        tx.send(&n).map_err(|e| e.to_string())?;
        p.join().map_err(|e| e.to_string())
    };
    let (_, baseline) = spawn_one(0)?;
    let Some(baseline) = baseline else {
        return Ok(());
    };
    // Same count twice in a row when alone, or the comparison means nothing.
    let (_, again) = spawn_one(0)?;
    let again = again.unwrap_or_default();
    check(
        again.len() == baseline.len(),
        format!("two lone children differ: {baseline:?} and {again:?}"),
    )?;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || -> Result<Vec<(u64, u64, Vec<String>)>, String> {
                let mut ps = Vec::new();
                for i in 0..8u64 {
                    let n = t * 8 + i;
                    let (tx, rx) = conduit::channel::<u64>().map_err(|e| e.to_string())?;
                    let p =
                        Process::spawn(number_and_descriptors, rx).map_err(|e| e.to_string())?;
                    ps.push((n, tx, p));
                }
                let mut seen = Vec::new();
                for (n, tx, mut p) in ps {
                    tx.send(&n).map_err(|e| e.to_string())?;
                    let (got, fds) = p.join().map_err(|e| e.to_string())?;
                    seen.push((n, got, fds.unwrap_or_default()));
                }
                Ok(seen)
            })
        })
        .collect();
    for t in threads {
        for (n, got, fds) in t.join().map_err(|_| "thread panicked")?? {
            check(got == n, format!("child {n} read {got}"))?;
            check(
                fds.len() == baseline.len(),
                format!(
                    "child {n} has {} descriptors open, a child spawned alone has {}: \
                     {fds:?} vs {baseline:?}",
                    fds.len(),
                    baseline.len()
                ),
            )?;
        }
    }
    Ok(())
}
