//! `chaos`: kills the peer with `Child::kill` (SIGKILL; TerminateProcess on
//! Windows) at random points of each scenario, on every transport, and checks
//! that every call returns within [`LIMIT`] of the kill with the documented
//! error (`Disconnected`, or one `Protocol` for a truncated frame and then
//! `Disconnected`), without a panic, without leaking descriptors (Linux: the
//! entries of `/proc/self/fd`) and without leaving files in the named socket
//! directory (`CONDUIT_NAMED_DIR`, a fresh directory for the run).

use std::{
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use conduit::{Duplex, ErrorKind};

use crate::{
    child::{READY, READY_ENV, SIZE_ENV},
    link::{self, Link},
    table,
};

/// Every call must return `Disconnected` within this time of the kill.
const LIMIT: Duration = Duration::from_secs(1);
/// A call still going this long after it started is a hang: the tool reports
/// it and exits.
const HANG: Duration = Duration::from_secs(30);
/// Smallest and largest "large" message.
const LARGE: (usize, usize) = (16 << 20, conduit::DEFAULT_MAX_FRAME as usize);

/// Where the peer is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// The parent is blocked in `recv` on an idle peer.
    Recv,
    /// The parent is blocked in `send` on a full channel (the peer reads nothing).
    SendFull,
    /// The parent is sending a 16–64 MiB message to a reading peer.
    LargeSend,
    /// The parent is receiving 16–64 MiB messages from the peer.
    LargeRecv,
    /// Killed 0–3 ms after spawn: before or while it adopts (named
    /// endpoints: 0–15 ms, before or while it connects and shakes hands).
    Handoff,
    /// The parent loops over `try_recv`, `recv_timeout(1 ms)` and
    /// `poll(1 ms)` while the peer sends a message every millisecond.
    Short,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::Recv,
    Scenario::SendFull,
    Scenario::LargeSend,
    Scenario::LargeRecv,
    Scenario::Handoff,
    Scenario::Short,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Recv => "blocked recv",
            Scenario::SendFull => "blocked send (full)",
            Scenario::LargeSend => "mid-large send",
            Scenario::LargeRecv => "mid-large recv",
            Scenario::Handoff => "handoff/handshake",
            Scenario::Short => "short timeouts",
        }
    }

    /// The child's role.
    fn role(self) -> &'static str {
        match self {
            Scenario::Recv | Scenario::SendFull | Scenario::Handoff => "idle",
            Scenario::LargeSend => "sink",
            Scenario::LargeRecv => "source-large",
            Scenario::Short => "trickle",
        }
    }

    /// The random delay before the kill.
    fn delay(self, link: Link, rng: &mut fastrand::Rng) -> Duration {
        let max_us = match self {
            // A named child needs a few ms more to reach its handshake.
            Scenario::Handoff if link == Link::Named => 15_000,
            Scenario::Handoff => 3_000,
            Scenario::LargeSend => 80_000,
            Scenario::LargeRecv => 150_000,
            Scenario::Recv | Scenario::SendFull | Scenario::Short => 50_000,
        };
        Duration::from_micros(rng.u64(0..=max_us))
    }
}

/// The instant the killer was about to kill the child (set once).
#[derive(Default)]
struct Killed(Mutex<Option<Instant>>);

impl Killed {
    fn at(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

/// What the run in progress is, for the hang watchdog.
static CURRENT: Mutex<Option<(Instant, String)>> = Mutex::new(None);

fn set_current(what: Option<String>) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = what.map(|w| (Instant::now(), w));
}

/// Reports a run that takes longer than [`HANG`] and exits: a hung call
/// cannot be cancelled.
fn start_watchdog() {
    thread::spawn(|| loop {
        thread::sleep(Duration::from_millis(200));
        let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((start, what)) = current {
            if start.elapsed() > HANG {
                eprintln!("chaos: HANG: {what} has not returned after {HANG:?}");
                std::process::exit(1);
            }
        }
    });
}

/// One table row.
#[derive(Default)]
struct Stats {
    runs: u32,
    failures: u32,
    /// Runs where no connection was made (the named peer died before its
    /// handshake; `accept` timed out as documented).
    unconnected: u32,
    max_ms: f64,
    sum_ms: f64,
    timed: u32,
    skipped: Option<&'static str>,
}

/// Runs the chaos loop; true when every run passed.
pub fn run(links: &[Link], iterations: u32, seed: u64) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!(
        "conduit-chaos-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    // Set before any thread starts; children inherit it.
    std::env::set_var("CONDUIT_NAMED_DIR", &dir);
    println!(
        "chaos: {iterations} kills per transport and scenario, seed {seed}, named dir {}",
        dir.display()
    );
    if open_fds().is_none() {
        println!("chaos: no /proc/self/fd here: descriptor counts are not checked");
    }
    start_watchdog();
    let big = vec![0x5au8; LARGE.1];
    // Warm-up, not counted: the first handoff starts conduit's handoff
    // watcher thread (and its wake pipe), which then lives for the process.
    for &link in links {
        let mut rng = fastrand::Rng::with_seed(seed);
        let _ = run_once(link, Scenario::Recv, &mut rng, &big);
    }
    let mut rows = Vec::new();
    let mut all_ok = true;
    for &link in links {
        for scenario in SCENARIOS {
            let mut stats = Stats::default();
            if cfg!(windows) && scenario == Scenario::Handoff && link != Link::Named {
                // Documented limitation (docs/design-notes.md): a child that
                // dies before it adopts leaves the parent's handles open.
                stats.skipped = Some("skipped on Windows (documented limitation)");
                rows.push((link, scenario, stats));
                continue;
            }
            for i in 0..iterations {
                let run_seed = run_seed(seed, link, scenario, i);
                let mut rng = fastrand::Rng::with_seed(run_seed);
                let what = format!(
                    "{} / {} / iteration {i} (--seed {seed} --transport {})",
                    link.name(),
                    scenario.name(),
                    link.name()
                );
                let fds_before = open_fds();
                set_current(Some(what.clone()));
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    run_once(link, scenario, &mut rng, &big)
                }))
                .unwrap_or_else(|_| Err("panicked".to_owned()));
                set_current(None);
                let outcome = outcome.and_then(|ms| {
                    check_fds(fds_before)?;
                    if link == Link::Named {
                        check_dir_empty(&dir)?;
                    }
                    Ok(ms)
                });
                stats.runs += 1;
                match outcome {
                    Ok(Some(ms)) => {
                        stats.max_ms = stats.max_ms.max(ms);
                        stats.sum_ms += ms;
                        stats.timed += 1;
                    }
                    Ok(None) => stats.unconnected += 1,
                    Err(e) => {
                        stats.failures += 1;
                        all_ok = false;
                        println!("  FAIL {what}: {e}");
                    }
                }
            }
            println!(
                "  {:<10} {:<20} {:>4} runs {:>3} failures  max {:>7.1} ms",
                link.name(),
                scenario.name(),
                stats.runs,
                stats.failures,
                stats.max_ms
            );
            rows.push((link, scenario, stats));
        }
    }
    let _ = std::fs::remove_dir(&dir);
    println!();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(link, scenario, s)| {
            let mean = if s.timed > 0 {
                format!("{:.1}", s.sum_ms / f64::from(s.timed))
            } else {
                "-".to_owned()
            };
            let mut note = s.skipped.unwrap_or_default().to_owned();
            if s.unconnected > 0 {
                note = format!(
                    "{} killed before the handshake (accept timed out)",
                    s.unconnected
                );
            }
            vec![
                link.name().to_owned(),
                scenario.name().to_owned(),
                s.runs.to_string(),
                s.failures.to_string(),
                format!("{:.1}", s.max_ms),
                mean,
                note,
            ]
        })
        .collect();
    table::print(
        &[
            "transport",
            "scenario",
            "runs",
            "failures",
            "max ms to Disconnected",
            "mean ms",
        ],
        2,
        &cells,
    );
    if !all_ok {
        println!("\nchaos: failures (seed {seed}); rerun one transport with --transport <t> --seed {seed}");
    }
    Ok(all_ok)
}

/// The seed of one run: the same for a transport, scenario and iteration
/// whatever else runs, so `--transport t --seed s` repeats a failure.
fn run_seed(seed: u64, link: Link, scenario: Scenario, i: u32) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for b in link.name().bytes().chain(scenario.name().bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ u64::from(i)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Open descriptors of this process, where `/proc/self/fd` exists.
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

/// The descriptor count is back to `before` (conduit's handoff watcher
/// closes its copies asynchronously: give it a moment).
fn check_fds(before: Option<usize>) -> Result<(), String> {
    let Some(before) = before else { return Ok(()) };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let now = open_fds().unwrap_or(before);
        if now <= before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} descriptor(s) leaked", now - before));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn check_dir_empty(dir: &Path) -> Result<(), String> {
    let left: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(()),
    };
    if left.is_empty() {
        Ok(())
    } else {
        for p in &left {
            let _ = std::fs::remove_file(p);
        }
        Err(format!("left in the named socket directory: {left:?}"))
    }
}

/// One run: spawn, kill after a random delay, check the calls. `Ok(Some(ms))`
/// is the time from the kill to `Disconnected`; `Ok(None)` a named peer that
/// died before it connected.
fn run_once(
    link: Link,
    scenario: Scenario,
    rng: &mut fastrand::Rng,
    big: &[u8],
) -> Result<Option<f64>, String> {
    let delay = scenario.delay(link, rng);
    let size = rng.usize(LARGE.0..=LARGE.1);
    let mut cmd = link::command(scenario.role())?;
    cmd.env(SIZE_ENV, size.to_string());
    if scenario == Scenario::Handoff {
        return handoff(link, cmd, delay);
    }
    // Every scenario but the handoff one starts once the child holds its
    // end (on Windows a child killed before it adopts leaves the parent's
    // handles open: a documented limitation that the handoff scenario is
    // skipped for there).
    cmd.env(READY_ENV, "1");
    let (mut child, conn) = link::spawn_duplex::<Vec<u8>>(link, cmd)?;
    match conn.recv_timeout(Duration::from_secs(20)) {
        Ok(m) if m == READY => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the child did not say ready: {other:?}"));
        }
    }
    let mut body_rng = fastrand::Rng::with_seed(rng.u64(..));
    let (result, killer) = with_killer(&mut child, delay, |killed| match scenario {
        Scenario::Recv | Scenario::Handoff => recv_until_gone(&conn, killed),
        Scenario::SendFull => {
            let msg = vec![1u8; 4096];
            let mut judge = Judge::new(killed, "send");
            loop {
                if let Some(at) = judge.step(conn.send(&msg), &[])? {
                    return Ok(at);
                }
            }
        }
        Scenario::LargeSend => {
            let (tx, rx) = conn.split();
            let mut raw = tx.into_raw();
            let mut judge = Judge::new(killed, "large send");
            let out = loop {
                match judge.step(raw.send_frame(&big[..size]), &[]) {
                    Ok(None) => {}
                    other => break other,
                }
            };
            drop(rx);
            out.map(|at| at.unwrap_or_else(Instant::now))
        }
        Scenario::LargeRecv => {
            let (tx, rx) = conn.split();
            let mut raw = rx.into_raw();
            let mut buf = Vec::new();
            let mut judge = Judge::new(killed, "large recv");
            let out = loop {
                match judge.step(raw.recv_frame(&mut buf, None), &[]) {
                    Ok(None) => {}
                    other => break other,
                }
            };
            drop(tx);
            out.map(|at| at.unwrap_or_else(Instant::now))
        }
        Scenario::Short => {
            let mut judge = Judge::new(killed, "short-timeout call");
            loop {
                let start = Instant::now();
                let r = match body_rng.u8(0..3) {
                    0 => conn.try_recv().map(drop),
                    1 => conn.recv_timeout(Duration::from_millis(1)).map(drop),
                    _ => conn.poll(Duration::from_millis(1)).map(drop),
                };
                if start.elapsed() > LIMIT {
                    return Err(format!("a short-timeout call took {:?}", start.elapsed()));
                }
                if let Some(at) = judge.step(r, &[ErrorKind::Empty, ErrorKind::Timeout])? {
                    return Ok(at);
                }
            }
        }
    });
    let _ = child.wait();
    latency(result, killer)
}

/// Kills `child` after `delay` in another thread while `body` runs here.
fn with_killer<R>(
    child: &mut Child,
    delay: Duration,
    body: impl FnOnce(&Killed) -> R,
) -> (R, Result<Instant, String>) {
    let killed = Killed::default();
    thread::scope(|s| {
        let killed = &killed;
        let killer = s.spawn(move || {
            thread::sleep(delay);
            let at = Instant::now();
            killed.set(at);
            child.kill().map(|()| at).map_err(|e| format!("kill: {e}"))
        });
        let out = body(killed);
        let at = killer
            .join()
            .unwrap_or_else(|_| Err("the killer thread panicked".to_owned()));
        (out, at)
    })
}

/// The time from the kill to `Disconnected`, checked against [`LIMIT`].
fn latency(
    result: Result<Instant, String>,
    killed: Result<Instant, String>,
) -> Result<Option<f64>, String> {
    let gone = result?;
    let killed = killed?;
    if gone < killed {
        return Err(format!("Disconnected {:?} before the kill", killed - gone));
    }
    let d = gone - killed;
    if d > LIMIT {
        return Err(format!(
            "Disconnected {d:?} after the kill (limit {LIMIT:?})"
        ));
    }
    Ok(Some(d.as_secs_f64() * 1e3))
}

/// Judges a sequence of calls: `Ok` and the `allowed` error kinds go on; one
/// `Protocol` after the kill goes on (a truncated frame); `Disconnected`
/// ends; anything else fails, as does going on for 2 × [`LIMIT`] after the
/// kill.
struct Judge<'a> {
    killed: &'a Killed,
    what: &'static str,
    protocol_seen: bool,
}

impl<'a> Judge<'a> {
    fn new(killed: &'a Killed, what: &'static str) -> Self {
        Judge {
            killed,
            what,
            protocol_seen: false,
        }
    }

    /// `Some(instant)` when the call returned `Disconnected`.
    fn step<T>(
        &mut self,
        r: conduit::Result<T>,
        allowed: &[ErrorKind],
    ) -> Result<Option<Instant>, String> {
        let now = Instant::now();
        let killed = self.killed.at();
        match r {
            Err(e) if e.is_disconnected() => return Ok(Some(now)),
            Err(e)
                if e.kind() == ErrorKind::Protocol && killed.is_some() && !self.protocol_seen =>
            {
                self.protocol_seen = true;
            }
            Ok(_) => {}
            Err(e) if allowed.contains(&e.kind()) => {}
            Err(e) => {
                let when = if killed.is_some() { "after" } else { "before" };
                return Err(format!(
                    "{}: {:?} {when} the kill: {e}",
                    self.what,
                    e.kind()
                ));
            }
        }
        match killed {
            Some(k) if now - k > 2 * LIMIT => Err(format!(
                "{}: no Disconnected {:?} after the kill",
                self.what,
                now - k
            )),
            _ => Ok(None),
        }
    }
}

fn recv_until_gone(conn: &Duplex<Vec<u8>, Vec<u8>>, killed: &Killed) -> Result<Instant, String> {
    let mut judge = Judge::new(killed, "recv");
    loop {
        if let Some(at) = judge.step(conn.recv(), &[])? {
            return Ok(at);
        }
    }
}

/// Kills the child 0–3 ms after spawn: before or while it adopts (or
/// connects and shakes hands).
fn handoff(
    link: Link,
    mut cmd: std::process::Command,
    delay: Duration,
) -> Result<Option<f64>, String> {
    match link {
        Link::Anon(t) => {
            let (a, b) = t
                .duplex::<Vec<u8>, Vec<u8>>()
                .map_err(|e| format!("duplex: {e}"))?;
            conduit::handoff(&mut cmd, "conn", b).map_err(|e| format!("handoff: {e}"))?;
            let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
            drop(cmd);
            let (result, killer) =
                with_killer(&mut child, delay, |killed| recv_until_gone(&a, killed));
            let _ = child.wait();
            latency(result, killer)
        }
        Link::Named => {
            let name = link::random_name("h");
            let listener = conduit::named::Listener::<Vec<u8>, Vec<u8>>::bind(&name)
                .map_err(|e| format!("bind: {e}"))?;
            cmd.env(link::NAME_ENV, &name);
            let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
            let (result, killer) = with_killer(&mut child, delay, |killed| {
                // Returns within LIMIT of the kill either way.
                match listener.accept_timeout(Duration::from_millis(500)) {
                    Ok(conn) => recv_until_gone(&conn, killed).map(Some),
                    Err(e) if e.is_timeout() => Ok(None),
                    Err(e) => Err(format!("accept: {e}")),
                }
            });
            let _ = child.wait();
            drop(listener);
            match result {
                Ok(Some(at)) => latency(Ok(at), killer),
                Ok(None) => killer.map(|_| None),
                Err(e) => Err(e),
            }
        }
    }
}
