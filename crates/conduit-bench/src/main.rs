//! `conduit-bench`: conduit's transports side by side with the raw OS limits,
//! `ipc-channel`, `interprocess`, `iceoryx2` and Python `multiprocessing`.
//!
//! Run it through `cargo xtask bench [--quick] [--only <system>]...`, which
//! builds this binary in release mode first. Every workload runs between two
//! real OS processes: the binary re-executes itself as the child (the
//! environment variable [`proc::CHILD_ENV`] says which side of which case it
//! is), and conduit endpoints reach the child with `conduit::handoff`.
//!
//! Method: at least three rounds; in each round every case runs once (a
//! fresh child, a warm-up, one timed repetition), so the systems' repetitions
//! interleave. The table shows the median of the round values, the spread
//! (min–max of them) and the median of the per-round ratios to the raw OS
//! limit of the same kind, then head-to-head per-round ratios (typed against
//! bytes, conduit shm against iceoryx2).
//! The two processes are pinned to distinct CPUs where the OS allows it. The
//! results go to stdout (a table), `results.json` and `bench.svg` in the output
//! directory (`target/conduit-bench/` by default). Slowness never fails the
//! run: this is a measurement, not a test.
//!
//! Two sections follow the table: [`queue`] measures `conduit::queue` with 1
//! or 4 producers and 1 or 4 consumers against Python `multiprocessing.Queue`
//! and conduit's shm channel, and [`spawn`] measures spawn + join of an
//! empty function: `conduit::Process` against `std::process::Command` and
//! Python `multiprocessing.Process`. Both start children with
//! `conduit::Process`, so `main` calls `conduit::init()` first.

mod child;
mod link;
mod plan;
mod plot;
mod pool;
mod proc;
mod queue;
mod report;
mod spawn;
mod stats;
mod sys_conduit;
mod sys_iceoryx2;
mod sys_interprocess;
mod sys_ipc;
mod sys_python;
mod sys_raw;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plan::{Case, Group, System};
use report::{CaseResult, Outcome};

/// The result type of the bench: any error, as a message for the table.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Builds an error from a message.
pub fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

/// The command line, declared with xflags like xtask's (`xtask/src/flags.rs`
/// declares the same options for `cargo xtask bench`). The doc comments are
/// the `--help` text.
mod flags {
    use std::path::PathBuf;

    xflags::xflags! {
        /// usage: conduit-bench [--quick] [--only <system>[,<system>...]]... [--reps <n>] [--out <dir>] [--no-pin] [--list]
        ///
        /// Measures 64 B round-trip latency (median, p99), 64 B one-way messages/s and
        /// 64 KiB / 1 MiB one-way GB/s between two processes, for every conduit
        /// transport, the raw OS limits, ipc-channel, interprocess, iceoryx2
        /// (Linux) and Python multiprocessing, in interleaved rounds; the msg/s
        /// of conduit::queue with many producers and consumers; Pool.map
        /// throughput; and the time to spawn + join an empty function in a
        /// child process. Prints a table, writes results.json and bench.svg.
        ///
        /// `cargo xtask bench [options]` builds this binary in release mode and runs it.
        cmd conduit-bench {
            /// Short warm-up and 3 rounds (the measuring takes about a minute).
            optional --quick
            /// The full run (the default; not with --quick).
            optional --full
            /// Run only these systems (repeatable or comma list); a name
            /// matches a system id (conduit-shm), a group (raw, conduit,
            /// ipc-channel, interprocess, iceoryx2, python) or a word of an id (shm,
            /// pipe); the raw limits a system is compared with run too.
            /// `queue` selects the queue section (conduit::queue 1P/1C,
            /// 4P/1C, 4P/4C against Python mp.Queue and the shm channel;
            /// the python-queue system of the table is `python-queue`);
            /// `spawn` selects the spawn + join section (conduit Process,
            /// std Command, Python fork/spawn); `pool` the Pool.map section
            /// (conduit Pool, Python Pool, rayon).
            repeated --only system: String
            /// Rounds: timed repetitions per case, interleaved (default 5,
            /// --quick 3; at least 3).
            optional --reps n: usize
            /// Where results.json and bench.svg go
            /// (default: <target dir>/conduit-bench).
            optional --out dir: PathBuf
            /// Do not pin the two processes to distinct CPUs.
            optional --no-pin
            /// List the systems and their workloads, then exit.
            optional --list
        }
    }
}

/// Command-line options.
#[derive(Debug, Default)]
pub struct Opts {
    /// Short run.
    pub quick: bool,
    /// System filters (`--only`).
    pub only: Vec<String>,
    /// Repetitions per case.
    pub reps: Option<usize>,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// Do not pin processes to CPUs.
    pub no_pin: bool,
    /// List the systems and exit.
    pub list: bool,
}

impl Opts {
    /// Parses the arguments (without the program name). `Err` carries the help
    /// text for `-h`/`--help` (see [`xflags::Error::is_help`]), else a message
    /// that names the bad argument.
    fn parse(args: &[String]) -> Result<Opts, xflags::Error> {
        // xflags takes `--flag value`; `--flag=value` is split here.
        let args = args
            .iter()
            .flat_map(
                |arg| match arg.strip_prefix("--").and_then(|a| a.split_once('=')) {
                    Some((flag, value)) => vec![format!("--{flag}"), value.to_owned()],
                    None => vec![arg.clone()],
                },
            )
            .map(Into::into)
            .collect();
        let f = flags::ConduitBench::from_vec(args)?;
        if f.quick && f.full {
            return Err(xflags::Error::new("--quick and --full exclude each other"));
        }
        Ok(Opts {
            quick: f.quick,
            only: f
                .only
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            reps: f.reps.map(|n| n.max(3)),
            out: f.out,
            no_pin: f.no_pin,
            list: f.list,
        })
    }
}

/// How long each case measures.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Untimed warm-up before the repetitions.
    pub warmup: Duration,
    /// Length of one timed repetition.
    pub rep: Duration,
    /// Number of timed repetitions.
    pub reps: usize,
}

impl Budget {
    fn new(opts: &Opts) -> Budget {
        let (warmup, rep, reps) = if opts.quick {
            (Duration::from_millis(30), Duration::from_millis(80), 3)
        } else {
            (Duration::from_millis(300), Duration::from_millis(500), 5)
        };
        Budget {
            warmup,
            rep,
            reps: opts.reps.unwrap_or(reps),
        }
    }

    /// The longest a case may take before its child is killed: the planned
    /// time, several times over, plus room for slow process start-up.
    pub fn case_timeout(&self) -> Duration {
        (self.warmup + self.rep * self.reps as u32) * 4 + Duration::from_secs(20)
    }
}

fn main() -> ExitCode {
    // First: a child started by conduit::Process (the spawn section) runs
    // its target here and exits.
    conduit::init();
    if let Some(spec) = std::env::var_os(proc::CHILD_ENV) {
        if spec == spawn::FLOOR_SPEC {
            // The spawn section's floor: an exec that does nothing.
            return ExitCode::SUCCESS;
        }
        return child::main(&spec.to_string_lossy());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args) {
        Ok(opts) => opts,
        Err(help) if help.is_help() => {
            println!("{}", help.to_string().trim_end());
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("conduit-bench: error: {msg} (see `cargo xtask bench --help`)");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conduit-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The parent side: plans the cases, runs them, reports.
fn run(opts: &Opts) -> Res<ExitCode> {
    let systems = plan::systems();
    if opts.list {
        for s in &systems {
            let ws: Vec<&str> = s.workloads.iter().map(|w| w.id()).collect();
            let state = match &s.unsupported {
                Some(why) => format!("  (skipped: {why})"),
                None => String::new(),
            };
            println!(
                "{:<20} {:<13} {}{state}",
                s.id,
                s.group.name(),
                ws.join(" ")
            );
        }
        println!(
            "{:<20} {:<13} conduit queue 1P/1C 4P/1C 4P/4C, Python mp.Queue, conduit shm channel",
            "queue", "queue"
        );
        println!(
            "{:<20} {:<13} std Command, conduit Process, Python mp fork and spawn",
            "spawn", "spawn"
        );
        println!(
            "{:<20} {:<13} conduit Pool, Python mp Pool, rayon",
            "pool", "pool"
        );
        return Ok(ExitCode::SUCCESS);
    }
    // `--only spawn` (or `process`) selects the spawn section, `--only
    // queue` the queue section; without filters everything runs.
    let is_spawn = |f: &String| matches!(f.to_ascii_lowercase().as_str(), "spawn" | "process");
    let is_queue = |f: &String| f.eq_ignore_ascii_case("queue");
    let is_pool = |f: &String| f.eq_ignore_ascii_case("pool");
    let with_spawn = opts.only.is_empty() || opts.only.iter().any(is_spawn);
    let with_queue = opts.only.is_empty() || opts.only.iter().any(is_queue);
    let with_pool = opts.only.is_empty() || opts.only.iter().any(is_pool);
    let only: Vec<String> = opts
        .only
        .iter()
        .filter(|f| !is_spawn(f) && !is_queue(f) && !is_pool(f))
        .cloned()
        .collect();
    let cases = if only.is_empty() && !opts.only.is_empty() {
        Vec::new()
    } else {
        plan::select(&systems, &only)?
    };
    let budget = Budget::new(opts);
    let pinning = proc::Pinning::detect(opts.no_pin);
    let out_dir = match &opts.out {
        Some(dir) => dir.clone(),
        None => default_out_dir()?,
    };
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| err(format!("cannot create {}: {e}", out_dir.display())))?;
    let needs_python = with_spawn
        || with_queue
        || with_pool
        || cases
            .iter()
            .any(|c| systems[c.system].group == Group::Python);
    let python = if needs_python {
        sys_python::Python::find(&out_dir)
    } else {
        Err("not needed".into())
    };
    // Every case runs once per round (a warm-up and one repetition in a
    // fresh child), the rounds one after the other: A B C A B C ..., so that
    // a change of the host's speed in the middle of the run hits every
    // system alike and the per-round ratios stay meaningful.
    let ctx = Ctx {
        budget: Budget { reps: 1, ..budget },
        pinning,
        python,
    };

    let mode = if opts.quick { "quick" } else { "full" };
    eprintln!(
        "conduit-bench: {mode} run, {} cases in {} interleaved rounds; each round: warm-up {} ms, one repetition of {} ms; {}",
        cases.len(),
        budget.reps,
        budget.warmup.as_millis(),
        budget.rep.as_millis(),
        ctx.pinning.describe()
    );
    if let Some(extra) = plan::added_references(&systems, &cases, &only) {
        eprintln!("conduit-bench: also running the raw limits they are compared with: {extra}");
    }
    let load_before = report::load_average();
    let started = Instant::now();
    let current = hang_guard();
    let results = run_rounds(&systems, &cases, &ctx, &current, budget.reps);
    let queued = with_queue.then(|| {
        section(
            &current,
            "queue: 1P/1C, 4P/1C, 4P/4C against Python mp.Queue and the shm channel",
            budget.case_timeout() * 8 + Duration::from_secs(120),
            || queue::run(&ctx, budget.reps, opts.quick),
        )
    });
    let spawned = with_spawn.then(|| {
        section(
            &current,
            "spawn + join of an empty function",
            budget.case_timeout() * 4 + Duration::from_secs(60),
            || {
                ctx.pinning.enter_parent(false);
                spawn::run(&budget, &ctx.python)
            },
        )
    });
    let pooled = with_pool.then(|| {
        section(
            &current,
            "Pool.map throughput",
            budget.case_timeout() * 8 + Duration::from_secs(120),
            || {
                ctx.pinning.enter_parent(false);
                pool::run(&budget, &ctx.python, opts.quick)
            },
        )
    });
    let elapsed = started.elapsed();
    let load_after = report::load_average();
    let meta = report::Meta {
        mode,
        budget,
        pinning: ctx.pinning.describe(),
        load_before,
        load_after,
        elapsed,
        python: ctx.python.as_ref().ok().map(|p| p.version.clone()),
        cpus: ctx.pinning.allowed.len(),
    };
    if !results.is_empty() {
        let table = report::table(&systems, &results, &meta);
        println!("{table}");
    }
    let mut json = report::json(&systems, &results, &meta);
    add_section(&mut json, "queue", "queue", queued.as_ref());
    add_section(
        &mut json,
        "spawn",
        "spawn + join of an empty function",
        spawned.as_ref(),
    );
    add_section(&mut json, "pool", "Pool.map throughput", pooled.as_ref());
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, json)
        .map_err(|e| err(format!("cannot write {}: {e}", json_path.display())))?;
    let svg_path = out_dir.join("bench.svg");
    match plot::svg(&systems, &results, &meta, &svg_path) {
        Ok(()) => {}
        Err(e) => eprintln!("conduit-bench: cannot draw {}: {e}", svg_path.display()),
    }
    println!("wrote {} and {}", json_path.display(), svg_path.display());

    // A conduit case that failed is a bug in conduit (lost, corrupted or
    // reordered data, a hang): make it visible in the exit status. Other
    // systems failing (Python missing, ipc-channel unavailable) is only noted.
    let conduit_failed = results.iter().any(|r| {
        systems[r.system].group == Group::Conduit && matches!(r.outcome, Outcome::Failed(_))
    }) || matches!(spawned, Some(Err(_)))
        || matches!(queued, Some(Err(_)))
        || matches!(pooled, Some(Err(_)));
    Ok(if conduit_failed {
        eprintln!("conduit-bench: a conduit case failed (see the notes under the table)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A section of the bench that runs after the table (queue, spawn, pool):
/// its own table and its entry of `results.json`.
trait Section {
    fn table(&self) -> String;
    fn json(&self) -> serde_json::Value;
}

impl Section for queue::QueueResults {
    fn table(&self) -> String {
        queue::QueueResults::table(self)
    }
    fn json(&self) -> serde_json::Value {
        queue::QueueResults::json(self)
    }
}

impl Section for spawn::SpawnResults {
    fn table(&self) -> String {
        spawn::SpawnResults::table(self)
    }
    fn json(&self) -> serde_json::Value {
        spawn::SpawnResults::json(self)
    }
}

impl Section for pool::PoolResults {
    fn table(&self) -> String {
        pool::PoolResults::table(self)
    }
    fn json(&self) -> serde_json::Value {
        pool::PoolResults::json(self)
    }
}

/// Runs one section under the hang guard (`limit`), saying on stderr how
/// it went.
fn section<T>(
    current: &Current,
    what: &str,
    limit: Duration,
    run: impl FnOnce() -> Res<T>,
) -> Res<T> {
    eprint!("{what} ... ");
    *current.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((Instant::now() + limit, what.to_owned()));
    let res = run();
    *current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    match &res {
        Ok(_) => eprintln!("done"),
        Err(e) => eprintln!("FAILED: {e}"),
    }
    res
}

/// Prints a section's table (or that it failed) and puts its JSON under
/// `key` in `json` (the text of `results.json`).
fn add_section<S: Section>(json: &mut String, key: &str, title: &str, res: Option<&Res<S>>) {
    match res {
        Some(Ok(s)) => {
            println!("{}", s.table());
            if let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(json) {
                doc[key] = s.json();
                if let Ok(text) = serde_json::to_string_pretty(&doc) {
                    *json = text + "\n";
                }
            }
        }
        Some(Err(e)) => println!("\n{title}: FAILED: {e}"),
        None => {}
    }
}

/// Runs `cases` in `rounds` rounds: every case once per round, in
/// case order; a case that fails or is skipped is not run again. The
/// repetitions of a case are in round order, so that repetition `r` of two
/// cases ran in the same round.
fn run_rounds(
    systems: &[System],
    cases: &[Case],
    ctx: &Ctx,
    current: &Current,
    rounds: usize,
) -> Vec<CaseResult> {
    let total = cases.len();
    let order = run_order(systems, cases);
    let mut reps: Vec<Vec<stats::Rep>> = vec![Vec::new(); total];
    let mut ended: Vec<Option<Outcome>> = vec![None; total];
    for round in 0..rounds {
        let round_start = Instant::now();
        if round > 0 {
            eprint!("round {}/{rounds} ... ", round + 1);
        }
        for (k, &i) in order.iter().enumerate() {
            let case = &cases[i];
            if ended[i].is_some() {
                continue;
            }
            let sys = &systems[case.system];
            let what = format!(
                "[{}/{total}] {} {}",
                k + 1,
                sys.label,
                case.workload.title()
            );
            if round == 0 {
                eprint!("{what} ... ");
            }
            *current.lock().unwrap_or_else(PoisonError::into_inner) = Some((
                Instant::now() + ctx.budget.case_timeout() + Duration::from_secs(30),
                format!("{what} (round {})", round + 1),
            ));
            let outcome = run_case(sys, case, ctx);
            *current.lock().unwrap_or_else(PoisonError::into_inner) = None;
            match outcome {
                Ok(mut got) => {
                    if round == 0 {
                        let s = stats::Summary::new(&got);
                        eprintln!("{}", report::format_value(case.workload, s.median));
                    }
                    reps[i].append(&mut got);
                }
                Err(o) => {
                    match &o {
                        Outcome::Skipped(why) if round == 0 => eprintln!("skipped: {why}"),
                        Outcome::Skipped(why) => eprint!("\n{what}: skipped: {why} "),
                        Outcome::Failed(why) if round == 0 => eprintln!("FAILED: {why}"),
                        Outcome::Failed(why) => eprint!("\n{what}: FAILED: {why} "),
                        Outcome::Done(_) => {}
                    }
                    ended[i] = Some(o);
                }
            }
        }
        if round == 0 {
            eprintln!(
                "round 1/{rounds} took {:.0} s",
                round_start.elapsed().as_secs_f64()
            );
        } else {
            eprintln!("{:.0} s", round_start.elapsed().as_secs_f64());
        }
    }
    cases
        .iter()
        .zip(reps)
        .zip(ended)
        .map(|((case, reps), ended)| CaseResult {
            system: case.system,
            workload: case.workload,
            outcome: ended.unwrap_or_else(|| Outcome::Done(stats::Summary::new(&reps))),
        })
        .collect()
}

/// The order in which a round runs the cases: the cases compared with the
/// same raw limit (and the limit itself) one after the other, so that the
/// systems a ratio compares run seconds apart, not a whole round apart;
/// groups in order of first appearance, table order within a group.
fn run_order(systems: &[System], cases: &[Case]) -> Vec<usize> {
    let group = |c: &Case| {
        let s = &systems[c.system];
        s.reference(c.workload).unwrap_or(s.id.as_str()).to_owned()
    };
    let mut first: Vec<String> = Vec::new();
    for c in cases {
        let g = group(c);
        if !first.contains(&g) {
            first.push(g);
        }
    }
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| (first.iter().position(|g| *g == group(&cases[i])), i));
    order
}

/// `$CARGO_TARGET_DIR/conduit-bench`, else `<dir of this exe>/../conduit-bench`
/// (the binary lives in `target/release/`).
fn default_out_dir() -> Res<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir).join("conduit-bench"));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or_else(|| err("cannot find the target directory: pass --out"))?;
    Ok(target.join("conduit-bench"))
}

/// What every case needs from the parent.
pub struct Ctx {
    /// How long to measure.
    pub budget: Budget,
    /// Which CPUs the two processes use.
    pub pinning: proc::Pinning,
    /// The Python interpreter, or why there is none.
    pub python: Result<sys_python::Python, String>,
}

/// Runs one case (one round of it); `Err` when it was skipped or failed.
fn run_case(sys: &System, case: &Case, ctx: &Ctx) -> Result<Vec<stats::Rep>, Outcome> {
    if let Some(why) = &sys.unsupported {
        return Err(Outcome::Skipped(why.clone()));
    }
    let w = case.workload;
    ctx.pinning.enter_parent(w.pinned());
    plan::run(sys, w, ctx).map_err(|e| match e.downcast::<plan::Skip>() {
        Ok(skip) => Outcome::Skipped(skip.0),
        // conduit failing is a finding; the others failing on this
        // machine (a sandbox, a missing module) is only a note.
        Err(e) if sys.group == Group::Conduit => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Skipped(format!("failed here: {e}")),
    })
}

/// The case in progress and when it must be over.
type Current = Arc<Mutex<Option<(Instant, String)>>>;

/// Ends the whole run if a case outlives its deadline: the last line of
/// defence against a hang (each child also has a watchdog and a lifetime).
fn hang_guard() -> Current {
    let current: Current = Arc::new(Mutex::new(None));
    let watched = Arc::clone(&current);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        let stuck = watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(deadline, _)| Instant::now() > *deadline)
            .map(|(_, what)| what.clone());
        if let Some(what) = stuck {
            eprintln!("\nconduit-bench: {what} is stuck past its deadline; giving up");
            std::process::exit(2);
        }
    });
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::Workload;

    #[test]
    fn parses_flags() {
        let args: Vec<String> = [
            "--quick",
            "--only",
            "shm,pipe",
            "--only=python",
            "--reps",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let opts = Opts::parse(&args).unwrap();
        assert!(opts.quick);
        assert_eq!(opts.only, ["shm", "pipe", "python"]);
        assert_eq!(opts.reps, Some(3));
        let parse =
            |args: &[&str]| Opts::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let opts = parse(&["--full", "--out", "o", "--no-pin", "--list", "--reps=7"]).unwrap();
        assert!(!opts.quick && opts.no_pin && opts.list);
        assert_eq!((opts.out, opts.reps), (Some(PathBuf::from("o")), Some(7)));
        let bogus = parse(&["--bogus"]).unwrap_err();
        assert!(!bogus.is_help() && bogus.to_string().contains("`--bogus`"));
        assert!(parse(&["--reps", "x"]).is_err());
        assert!(parse(&["--quick", "--full"]).is_err());
        assert!(parse(&["stray"]).is_err());
        let help = parse(&["--help"]).unwrap_err();
        assert!(help.is_help() && help.to_string().contains("--only <system>"));
        assert!(parse(&["-h"]).unwrap_err().is_help());
    }

    #[test]
    fn a_round_runs_compared_cases_together() {
        let systems = plan::systems();
        let only = ["shm", "pipe", "futex"].map(String::from);
        let cases = plan::select(&systems, &only).unwrap();
        let order = run_order(&systems, &cases);
        let ids: Vec<(&str, Workload)> = order
            .iter()
            .map(|&i| (systems[cases[i].system].id.as_str(), cases[i].workload))
            .collect();
        let at = |id: &str, w: Workload| ids.iter().position(|x| *x == (id, w)).unwrap();
        // raw shm, conduit shm's round trips and msg/s are adjacent; the
        // futex and pipe cases (in table order between raw shm and conduit
        // shm) come before or after them, never in between.
        let shm = [
            at("raw-shm", Workload::Rtt),
            at("conduit-shm", Workload::Rtt),
            at("conduit-shm", Workload::RttTyped),
            at("conduit-shm", Workload::Msgs),
        ];
        let (lo, hi) = (*shm.iter().min().unwrap(), *shm.iter().max().unwrap());
        for other in [
            at("conduit-pipe", Workload::Rtt),
            at("raw-futex", Workload::Rtt),
        ] {
            assert!(other < lo || other > hi, "{ids:?}");
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..cases.len()).collect::<Vec<_>>());
    }

    #[test]
    fn workloads_round_trip_ids() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_id(w.id()), Some(w));
        }
    }
}
