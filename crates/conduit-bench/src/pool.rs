//! `Pool.map` throughput: conduit `Pool`, Python `multiprocessing.Pool`
//! (default chunksize) and rayon's `par_iter` in this process (the ceiling
//! without any IPC), each with 2 workers, on two workloads: 100,000 tiny
//! tasks (`fn(u64) -> u64`) and tasks of 1 MiB `Vec<u8>` each.
//!
//! Method: one pool per system is started first and kept (start-up is not
//! timed); then a warm-up round and `reps` rounds, in each of which every
//! system runs one `map` of the workload, in an order that rotates from
//! round to round. A round's value is tasks per second. The table shows
//! per system the median over rounds and the median of the per-round
//! ratios to Python. Python runs in one long-lived interpreter that takes
//! its rounds over stdin (`python/pool_bench.py`).

use std::fmt::Write as _;
use std::time::Instant;

use rayon::prelude::*;

use crate::stats::median;
use crate::sys_python::{Driver, Python};
use crate::{err, Budget, Res};

/// The script, as committed in `crates/conduit-bench/python/pool_bench.py`.
const SCRIPT: &str = include_str!("../python/pool_bench.py");

/// Worker processes (threads for rayon): this machine has 2 vCPUs.
const WORKERS: usize = 2;
/// Tasks of the tiny workload.
const TINY: usize = 100_000;
/// Maps of the tiny tasks per round and system: one map takes ~1–15 ms,
/// so a single one per round measured mostly the wake-up after the other
/// systems' turns (the round's figure is the tasks of all of them over
/// their summed time).
const TINY_MAPS: usize = 20;
/// Size of one task of the big workload.
const BIG_SIZE: usize = 1 << 20;

/// The tiny task.
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// The big task: touches its input, returns a checkable number.
fn blob(b: Vec<u8>) -> u64 {
    (b.len() ^ usize::from(b[0])) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Tiny,
    Big,
}

impl Work {
    fn label(self, big: usize) -> String {
        match self {
            Work::Tiny => format!("{TINY} tiny tasks (fn(u64) -> u64), {TINY_MAPS} maps per round"),
            Work::Big => format!("{big} tasks of 1 MiB Vec<u8> (fn(Vec<u8>) -> u64)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Conduit,
    Python,
    Rayon,
}

impl System {
    const ALL: [System; 3] = [System::Conduit, System::Python, System::Rayon];

    fn id(self) -> &'static str {
        match self {
            System::Conduit => "conduit-pool",
            System::Python => "python-pool",
            System::Rayon => "rayon",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::Conduit => "conduit Pool",
            System::Python => "Python mp Pool",
            System::Rayon => "rayon (in-process)",
        }
    }

    fn note(self) -> &'static str {
        match self {
            System::Conduit => {
                "conduit::Pool::new(2), pool.map(f, inputs): chunks over the shm transport, \
                 default chunk size"
            }
            System::Python => {
                "multiprocessing.Pool(2) (fork), pool.map(f, inputs), default chunksize"
            }
            System::Rayon => {
                "a 2-thread rayon pool, inputs.par_iter().map(f).collect(): no IPC at all, \
                 the ceiling"
            }
        }
    }
}

/// One round of Python's pool: the seconds of its `map`.
fn python_round(d: &mut Driver, work: Work, big: usize) -> Res<f64> {
    let v = match work {
        Work::Tiny => d.ask(&format!("tiny {TINY} {TINY_MAPS}"))?,
        Work::Big => d.ask(&format!("big {big} {BIG_SIZE}"))?,
    };
    v.get("seconds")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| err(format!("pool_bench.py answered {v}")))
}

fn big_inputs(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![(i % 251) as u8; BIG_SIZE]).collect()
}

fn check_big(out: &[u64]) -> Res<()> {
    let ok = out
        .iter()
        .enumerate()
        .all(|(i, &v)| v == (BIG_SIZE ^ (i % 251)) as u64);
    if ok {
        Ok(())
    } else {
        Err(err("wrong results from the 1 MiB tasks"))
    }
}

fn check_tiny(out: &[u64]) -> Res<()> {
    let ok = out.len() == TINY && out.iter().enumerate().all(|(i, &v)| v == square(i as u64));
    if ok {
        Ok(())
    } else {
        Err(err("wrong results from the tiny tasks"))
    }
}

/// Seconds for one `map` of `work` with conduit's pool.
fn conduit_round(pool: &conduit::Pool, work: Work, big: usize) -> Res<f64> {
    match work {
        Work::Tiny => {
            let mut s = 0.0;
            for _ in 0..TINY_MAPS {
                let t = Instant::now();
                let out = pool.map(square, 0..TINY as u64)?;
                s += t.elapsed().as_secs_f64();
                check_tiny(&out)?;
            }
            Ok(s)
        }
        Work::Big => {
            let inputs = big_inputs(big);
            let t = Instant::now();
            let out = pool.map(blob, inputs)?;
            let s = t.elapsed().as_secs_f64();
            check_big(&out)?;
            Ok(s)
        }
    }
}

fn rayon_round(pool: &rayon::ThreadPool, work: Work, big: usize) -> Res<f64> {
    match work {
        Work::Tiny => {
            let inputs: Vec<u64> = (0..TINY as u64).collect();
            let mut s = 0.0;
            for _ in 0..TINY_MAPS {
                let t = Instant::now();
                let out: Vec<u64> =
                    pool.install(|| inputs.par_iter().map(|&x| square(x)).collect());
                s += t.elapsed().as_secs_f64();
                check_tiny(&out)?;
            }
            Ok(s)
        }
        Work::Big => {
            let inputs = big_inputs(big);
            let t = Instant::now();
            // By value, as the pools get them.
            let out: Vec<u64> = pool.install(|| inputs.into_par_iter().map(blob).collect());
            let s = t.elapsed().as_secs_f64();
            check_big(&out)?;
            Ok(s)
        }
    }
}

/// What became of one system on one workload.
enum Row {
    /// Per-round tasks/s, in round order.
    Done(Vec<f64>),
    /// Why it was not measured.
    Skipped(String),
}

/// The pool section's results.
pub struct PoolResults {
    /// Per workload: its label, then one row per system.
    tables: Vec<(Work, Vec<(System, Row)>)>,
    rounds: usize,
    big: usize,
}

/// Measures every system on both workloads; `python` is the interpreter or
/// why there is none.
pub fn run(budget: &Budget, python: &Result<Python, String>, quick: bool) -> Res<PoolResults> {
    let big = if quick { 100 } else { 1000 };
    let pool = conduit::Pool::new(WORKERS)?;
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .map_err(|e| err(format!("cannot start rayon's pool: {e}")))?;
    let mut driver = match python {
        Ok(py) => Driver::start(py, "pool_bench.py", SCRIPT, budget.case_timeout() * 8)
            .map_err(|e| e.to_string()),
        Err(why) => Err(format!("{why}; install python3 to measure multiprocessing")),
    };
    let mut tables = Vec::new();
    for work in [Work::Tiny, Work::Big] {
        let mut rows: Vec<(System, Row)> = System::ALL
            .iter()
            .map(|&s| (s, Row::Done(Vec::new())))
            .collect();
        // Round 0 is the warm-up.
        for round in 0..=budget.reps {
            let n = rows.len();
            for k in 0..n {
                let (s, row) = &mut rows[(k + round) % n];
                let Row::Done(values) = row else { continue };
                let tasks = match work {
                    Work::Tiny => TINY * TINY_MAPS,
                    Work::Big => big,
                } as f64;
                let seconds = match s {
                    System::Conduit => conduit_round(&pool, work, big),
                    System::Rayon => rayon_round(&threads, work, big),
                    System::Python => match &mut driver {
                        Ok(d) => python_round(d, work, big),
                        Err(why) => Err(err(why.clone())),
                    },
                };
                match seconds {
                    Ok(t) if round > 0 => values.push(tasks / t),
                    Ok(_) => {}
                    Err(e) if *s == System::Conduit => return Err(e),
                    Err(e) => *row = Row::Skipped(format!("{e}")),
                }
            }
        }
        tables.push((work, rows));
    }
    if let Ok(d) = &mut driver {
        d.quit();
    }
    Ok(PoolResults {
        tables,
        rounds: budget.reps,
        big,
    })
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

/// Median of the per-round ratios of `values` to `base`.
fn ratio(values: &[f64], base: &[f64]) -> Option<f64> {
    let r: Vec<f64> = values.iter().zip(base).map(|(v, b)| v / b).collect();
    (!r.is_empty()).then(|| median(&r))
}

impl PoolResults {
    fn python(rows: &[(System, Row)]) -> Option<&[f64]> {
        rows.iter().find_map(|(s, r)| match r {
            Row::Done(v) if *s == System::Python && !v.is_empty() => Some(v.as_slice()),
            _ => None,
        })
    }

    /// The section of the table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nPool.map with {WORKERS} workers: tasks/s, median of {} interleaved rounds; \
             ratio = median of the per-round ratios to Python",
            self.rounds
        );
        let mut notes = Vec::new();
        for (work, rows) in &self.tables {
            let _ = writeln!(out, "  {}", work.label(self.big));
            let python = Self::python(rows);
            for (s, row) in rows {
                match row {
                    Row::Done(v) if !v.is_empty() => {
                        let vs = match (s, python.and_then(|p| ratio(v, p))) {
                            (System::Python, _) => "(base)".to_owned(),
                            (_, Some(r)) => format!("{r:.1}× Python"),
                            (_, None) => "-".to_owned(),
                        };
                        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let _ = writeln!(
                            out,
                            "    {:<20} {:>12} {:>25}   {vs}",
                            s.label(),
                            fmt_rate(median(v)),
                            format!("{}–{}", fmt_rate(min), fmt_rate(max)),
                        );
                    }
                    Row::Done(_) => {
                        let _ = writeln!(out, "    {:<20} no rounds", s.label());
                    }
                    Row::Skipped(why) => {
                        let _ = writeln!(out, "    {:<20} skipped (see the notes)", s.label());
                        notes.push(format!("{}: skipped: {why}", s.label()));
                    }
                }
            }
        }
        let _ = writeln!(out, "pool notes:");
        for s in System::ALL {
            let _ = writeln!(out, "  {}: {}", s.label(), s.note());
        }
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
        out
    }

    /// The `pool` entry of `results.json`.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let tables: Vec<serde_json::Value> = self
            .tables
            .iter()
            .map(|(work, rows)| {
                let python = Self::python(rows);
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(s, row)| match row {
                        Row::Done(v) => json!({
                            "system": s.id(),
                            "label": s.label(),
                            "status": "ok",
                            "unit": "tasks/s",
                            "median": median(v),
                            "rounds": v,
                            "ratio_to_python": python.and_then(|p| ratio(v, p)),
                            "note": s.note(),
                        }),
                        Row::Skipped(why) => json!({
                            "system": s.id(),
                            "label": s.label(),
                            "status": "skipped",
                            "reason": why,
                        }),
                    })
                    .collect();
                json!({ "workload": work.label(self.big), "results": rows })
            })
            .collect();
        json!({
            "title": "Pool.map throughput",
            "workers": WORKERS,
            "rounds": self.rounds,
            "workloads": tables,
        })
    }
}
