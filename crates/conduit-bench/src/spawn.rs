//! Spawn + join of an empty function: `conduit::Process` against
//! `std::process::Command` of this same binary (the floor: an exec of the
//! same executable that returns at once) and Python `multiprocessing.Process`
//! with the `fork` and the `spawn` start methods.
//!
//! Method: a warm-up round, then `reps` rounds; in each round every system
//! runs one batch (at least [`LEAST`] spawn+joins, and for at least the
//! repetition time), in an order that rotates from round to round, so that
//! the systems share the machine's state as evenly as possible. A batch's
//! value is the median time of its spawn+joins. The table shows, per system,
//! the median of the batch values and the median of the per-round ratios to
//! the `Command` batch of the same round. Python runs in one long-lived
//! interpreter that takes its batches over stdin (`python/spawn_bench.py`),
//! so that its start-up is not counted and its batches interleave too.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::CHILD_ENV;
use crate::stats::median;
use crate::sys_python::{Driver, Python};
use crate::{err, Budget, Res};

/// The child spec of the `Command` floor: `main` returns at once.
pub const FLOOR_SPEC: &str = "spawn-floor";

/// The script, as committed in `crates/conduit-bench/python/spawn_bench.py`.
const SCRIPT: &str = include_str!("../python/spawn_bench.py");

/// The fewest spawn+joins in a batch.
const LEAST: usize = 3;

/// The target of the conduit rows.
fn empty(_: ()) {}

/// One row of the spawn table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spawner {
    Command,
    Conduit,
    PythonFork,
    PythonSpawn,
}

impl Spawner {
    const ALL: [Spawner; 4] = [
        Spawner::Command,
        Spawner::Conduit,
        Spawner::PythonFork,
        Spawner::PythonSpawn,
    ];

    fn id(self) -> &'static str {
        match self {
            Spawner::Command => "std-command",
            Spawner::Conduit => "conduit-process",
            Spawner::PythonFork => "python-fork",
            Spawner::PythonSpawn => "python-spawn",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Spawner::Command => "std Command (floor)",
            Spawner::Conduit => "conduit Process",
            Spawner::PythonFork => "Python mp fork",
            Spawner::PythonSpawn => "Python mp spawn",
        }
    }

    fn note(self) -> &'static str {
        match self {
            Spawner::Command => {
                "Command::new(this exe).spawn() + wait(), the child's main returns at once"
            }
            Spawner::Conduit => {
                "conduit::Process::spawn(empty, ()) + join(): the same exec, plus the control \
                 channel, the request and the result"
            }
            Spawner::PythonFork => {
                "multiprocessing.get_context(\"fork\").Process(target=f).start() + join()"
            }
            Spawner::PythonSpawn => {
                "multiprocessing.get_context(\"spawn\").Process(target=f).start() + join() \
                 (a fresh interpreter that imports the script)"
            }
        }
    }

    fn python_method(self) -> Option<&'static str> {
        match self {
            Spawner::PythonFork => Some("fork"),
            Spawner::PythonSpawn => Some("spawn"),
            _ => None,
        }
    }
}

/// The driver's request for one batch: the time of each start+join.
fn python_batch(d: &mut Driver, method: &str, time: Duration) -> Res<Vec<f64>> {
    let v = d.ask(&format!("{method} {} {LEAST}", time.as_secs_f64()))?;
    Ok(v.get("times")
        .and_then(|t| t.as_array())
        .ok_or_else(|| err(format!("spawn_bench.py printed {v}")))?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect())
}

/// Runs `one` until `time` has passed and at least [`LEAST`] times.
fn batch(time: Duration, mut one: impl FnMut() -> Res<()>) -> Res<Vec<f64>> {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < LEAST || start.elapsed() < time {
        let t = Instant::now();
        one()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn floor_once(exe: &std::path::Path) -> Res<()> {
    let status = Command::new(exe).env(CHILD_ENV, FLOOR_SPEC).status()?;
    if !status.success() {
        return Err(err(format!("the floor child failed: {status}")));
    }
    Ok(())
}

fn conduit_once() -> Res<()> {
    conduit::Process::spawn(empty, ())?.join()?;
    Ok(())
}

/// What became of one system.
enum Row {
    /// Per-round batch medians (seconds), in round order.
    Done(Vec<f64>),
    /// Why it was not measured.
    Skipped(String),
}

/// The spawn section's results.
pub struct SpawnResults {
    rows: Vec<(Spawner, Row)>,
    rounds: usize,
    rep: Duration,
}

/// Measures every spawner; `python` is the interpreter or why there is none.
pub fn run(budget: &Budget, python: &Result<Python, String>) -> Res<SpawnResults> {
    let exe = std::env::current_exe()?;
    let mut driver = match python {
        Ok(py) => Driver::start(py, "spawn_bench.py", SCRIPT, budget.case_timeout() * 4)
            .map_err(|e| e.to_string()),
        Err(why) => Err(format!("{why}; install python3 to measure multiprocessing")),
    };
    let mut rows: Vec<(Spawner, Row)> = Spawner::ALL
        .iter()
        .map(|&s| (s, Row::Done(Vec::new())))
        .collect();
    if let Err(why) = &driver {
        for (s, row) in &mut rows {
            if s.python_method().is_some() {
                *row = Row::Skipped(why.clone());
            }
        }
    }
    // Round 0 is the warm-up.
    for round in 0..=budget.reps {
        let time = if round == 0 {
            budget.warmup
        } else {
            budget.rep
        };
        let n = rows.len();
        for k in 0..n {
            let (s, row) = &mut rows[(k + round) % n];
            let Row::Done(values) = row else { continue };
            let times = match (s.python_method(), &mut driver) {
                (None, _) if *s == Spawner::Command => batch(time, || floor_once(&exe)),
                (None, _) => batch(time, conduit_once),
                (Some(method), Ok(d)) => python_batch(d, method, time),
                (Some(_), Err(why)) => Err(err(why.clone())),
            };
            match times {
                Ok(t) if round > 0 => values.push(median(&t)),
                Ok(_) => {}
                Err(e) if *s == Spawner::Conduit || *s == Spawner::Command => return Err(e),
                Err(e) => *row = Row::Skipped(format!("failed here: {e}")),
            }
        }
    }
    if let Ok(d) = &mut driver {
        d.quit();
    }
    Ok(SpawnResults {
        rows,
        rounds: budget.reps,
        rep: budget.rep,
    })
}

fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

impl SpawnResults {
    fn floor(&self) -> Option<&[f64]> {
        self.rows.iter().find_map(|(s, r)| match r {
            Row::Done(v) if *s == Spawner::Command => Some(v.as_slice()),
            _ => None,
        })
    }

    /// Median of the per-round ratios to the `Command` batch.
    fn ratio(&self, values: &[f64]) -> Option<f64> {
        let floor = self.floor()?;
        let ratios: Vec<f64> = values.iter().zip(floor).map(|(v, f)| v / f).collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    }

    /// The section of the table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nspawn + join of an empty function: median of {} interleaved rounds \
             (batches of ≥ {} ms and ≥ {LEAST} spawns, batch value = median spawn+join); \
             ratio = median of the per-round ratios to std Command",
            self.rounds,
            self.rep.as_millis()
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>21}   vs Command",
            "system", "median", "spread"
        );
        let mut notes = Vec::new();
        for (s, row) in &self.rows {
            notes.push(format!("{}: {}", s.label(), s.note()));
            match row {
                Row::Done(v) if !v.is_empty() => {
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let vs = match (s, self.ratio(v)) {
                        (Spawner::Command, _) => "(floor)".to_owned(),
                        (_, Some(r)) => format!("{r:.2}×"),
                        (_, None) => "-".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "  {:<20} {:>10} {:>21}   {vs}",
                        s.label(),
                        fmt_time(median(v)),
                        format!("{}–{}", fmt_time(min), fmt_time(max)),
                    );
                }
                Row::Done(_) => {
                    let _ = writeln!(out, "  {:<20} no rounds", s.label());
                }
                Row::Skipped(why) => {
                    let _ = writeln!(out, "  {:<20} skipped (see the notes)", s.label());
                    notes.push(format!("{}: skipped: {why}", s.label()));
                }
            }
        }
        let _ = writeln!(out, "spawn notes:");
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
        out
    }

    /// The `spawn` entry of `results.json`.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|(s, row)| match row {
                Row::Done(v) => json!({
                    "system": s.id(),
                    "label": s.label(),
                    "status": "ok",
                    "unit": "s",
                    "median": median(v),
                    "rounds": v,
                    "ratio_to_command": if *s == Spawner::Command { None } else { self.ratio(v) },
                    "note": s.note(),
                }),
                Row::Skipped(why) => json!({
                    "system": s.id(),
                    "label": s.label(),
                    "status": "skipped",
                    "reason": why,
                    "note": s.note(),
                }),
            })
            .collect();
        json!({
            "title": "spawn + join of an empty function",
            "rounds": self.rounds,
            "rep_ms": self.rep.as_millis() as u64,
            "results": rows,
        })
    }
}
