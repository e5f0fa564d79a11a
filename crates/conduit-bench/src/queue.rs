//! The queue section: `conduit::queue` with many producers and consumers,
//! against Python `multiprocessing.Queue` in the same shapes and conduit's
//! shm channel (one-way, point to point) as the limit of one sender and one
//! receiver.
//!
//! Shapes: 1 producer / 1 consumer, 4 / 1 and 4 / 4, every participant its
//! own process; 64 B messages, as `Vec<u8>` (the raw byte path) and typed
//! ([`Item`], a 4-field serde struct of about 64 B of CBOR; Python: a 4-field
//! dict, pickled).
//!
//! One run of a shape: a fresh queue; the producers and consumers are started
//! (`conduit::Process`; Python: `multiprocessing.Process`) and each reports
//! ready; then a start barrier releases them all (conduit: a GO on each
//! child's control channel, consumers first; Python: a `Barrier`). Each
//! producer sends `n` messages; once every producer is done, the parent sends
//! one end marker per consumer. Each consumer times itself from its release to
//! the last data message it received and checks every message (producer id,
//! sequence numbers growing per producer, the payload's check bytes); the
//! parent checks that every producer's `n` messages arrived exactly once
//! (counts and sums of sequence numbers). The run's value is the messages
//! received over the longest consumer time. Process start-up, the end markers
//! and joining are outside the timed region.
//!
//! Rounds: a calibration round (which also warms up) sizes `n` so that one
//! run takes about the repetition time; then `reps` rounds, each running
//! every (shape, payload) on conduit, then Python, then (1/1 only) the shm
//! channel, in an order that rotates from round to round. The table shows
//! median msg/s per row and the medians of the per-round ratios
//! conduit / Python and conduit 1/1 / shm channel. The shm channel rows are
//! the bench's one-way msg/s measurement of `conduit-shm` (one repetition per
//! round, its child pinned like in the main table). The queue processes are
//! not pinned: there are more of them than CPUs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use conduit::{Duplex, Process, QueueReceiver, QueueSender, Transport};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::link::{check, seq_of, stamp};
use crate::plan::Workload;
use crate::report::format_value;
use crate::stats::median;
use crate::sys_python::Driver;
use crate::{err, Budget, Ctx, Res};

/// The script, as committed in `crates/conduit-bench/python/queue_bench.py`.
const SCRIPT: &str = include_str!("../python/queue_bench.py");

/// (producers, consumers).
const SHAPES: [(u32, u32); 3] = [(1, 1), (4, 1), (4, 4)];

/// The label every typed item carries (same as the Python dicts').
const LABEL: &str = "conduit-bench queue item";

/// A byte message's tag: data.
const DATA: u8 = 2;
/// A byte message's tag: end of the run for one consumer.
const END: u8 = 3;

/// How long a child waits for its peer or the parent before giving up.
const WAIT: Duration = Duration::from_secs(60);

/// The typed message: 4 fields, about 64 B of CBOR.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Item {
    /// Which producer sent it (`u32::MAX`: the end marker).
    pub producer: u32,
    /// Its number among that producer's messages.
    pub seq: u64,
    /// Some float.
    pub value: f64,
    /// Some text ([`LABEL`]).
    pub label: String,
}

/// What a message type must do for the workers.
trait Msg: Serialize + DeserializeOwned + 'static {
    /// Message `seq` of producer `producer`.
    fn make(producer: u32, seq: u64) -> Self;
    /// Rewrites `self` into message `seq` of `producer`, reusing memory.
    fn set(&mut self, producer: u32, seq: u64);
    /// The end marker.
    fn end() -> Self;
    /// `None` for the end marker, else (producer, seq, intact).
    fn id(&self) -> Option<(u32, u64, bool)>;
}

impl Msg for Item {
    fn make(producer: u32, seq: u64) -> Self {
        Item {
            producer,
            seq,
            value: seq as f64 * 0.1,
            label: LABEL.to_owned(),
        }
    }
    fn set(&mut self, producer: u32, seq: u64) {
        self.producer = producer;
        self.seq = seq;
        self.value = seq as f64 * 0.1;
    }
    fn end() -> Self {
        Item::make(u32::MAX, 0)
    }
    fn id(&self) -> Option<(u32, u64, bool)> {
        (self.producer != u32::MAX).then(|| {
            let intact = self.label == LABEL && self.value == self.seq as f64 * 0.1;
            (self.producer, self.seq, intact)
        })
    }
}

impl Msg for Vec<u8> {
    fn make(producer: u32, seq: u64) -> Self {
        let mut m = vec![0u8; 64];
        m.set(producer, seq);
        m
    }
    fn set(&mut self, producer: u32, seq: u64) {
        stamp(self, DATA, seq);
        self[1] = producer as u8;
    }
    fn end() -> Self {
        let mut m = vec![0u8; 64];
        stamp(&mut m, END, 0);
        m
    }
    fn id(&self) -> Option<(u32, u64, bool)> {
        if self.first() == Some(&END) {
            return None;
        }
        let seq = seq_of(self);
        let intact = self.first() == Some(&DATA) && check(self, 64, seq);
        Some((u32::from(self.get(1).copied().unwrap_or(0)), seq, intact))
    }
}

/// A consumer's report.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Report {
    /// Messages received per producer.
    counts: Vec<u64>,
    /// Sum of the sequence numbers received per producer.
    sums: Vec<u64>,
    /// Messages that failed a check (and were not counted).
    bad: u64,
    /// From the release to the last data message, in nanoseconds.
    nanos: u64,
}

/// The control message a child sends when it is ready and the parent sends
/// to release it.
const READY: u64 = 1;
const GO: u64 = 2;

fn ready_then_wait(ctl: &Duplex<u64, u64>) -> Result<(), String> {
    ctl.send(&READY).map_err(|e| e.to_string())?;
    match ctl.recv_timeout(WAIT) {
        Ok(GO) => Ok(()),
        Ok(other) => Err(format!("unexpected control message {other}")),
        Err(e) => Err(format!("no GO from the parent: {e}")),
    }
}

/// A producer process: sends `n` messages tagged `id`, returns how many.
fn producer<T: Msg>(
    (tx, ctl, id, n): (QueueSender<T>, Duplex<u64, u64>, u32, u64),
) -> Result<u64, String> {
    let mut msg = T::make(id, 0);
    ready_then_wait(&ctl)?;
    for seq in 0..n {
        msg.set(id, seq);
        tx.send(&msg)
            .map_err(|e| format!("producer {id}: send {seq}: {e}"))?;
    }
    Ok(n)
}

/// A consumer process: receives until an end marker, checking each message.
fn consumer<T: Msg>(
    (rx, ctl, producers): (QueueReceiver<T>, Duplex<u64, u64>, u32),
) -> Result<Report, String> {
    let p = producers as usize;
    let mut r = Report {
        counts: vec![0; p],
        sums: vec![0; p],
        ..Report::default()
    };
    let mut next = vec![0u64; p];
    ready_then_wait(&ctl)?;
    let t0 = Instant::now();
    // The time of the last data message, read without a clock call per
    // message: taken when the queue is found empty (every message so far
    // is handled) and at the end marker, whichever follows the last one.
    let mut last = t0;
    let mut fresh = false;
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(e) if e.kind() == conduit::ErrorKind::Empty => {
                if fresh {
                    last = Instant::now();
                    fresh = false;
                }
                rx.recv_timeout(WAIT)
                    .map_err(|e| format!("consumer: {e}"))?
            }
            Err(e) => return Err(format!("consumer: {e}")),
        };
        let Some((id, seq, intact)) = msg.id() else {
            if fresh {
                last = Instant::now();
            }
            break;
        };
        fresh = true;
        let i = id as usize;
        // Per producer, one consumer sees a growing subsequence.
        if !intact || i >= p || seq < next[i] {
            r.bad += 1;
            continue;
        }
        next[i] = seq + 1;
        r.counts[i] += 1;
        r.sums[i] += seq;
    }
    r.nanos = last.duration_since(t0).as_nanos() as u64;
    Ok(r)
}

/// One run's result.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Messages received.
    count: u64,
    /// The longest consumer time.
    secs: f64,
}

impl Run {
    fn rate(self) -> f64 {
        self.count as f64 / self.secs.max(1e-9)
    }
}

/// Checks the per-producer counts and sums against `n` messages each.
fn verify(counts: &[u64], sums: &[u64], bad: u64, n: u64) -> Res<()> {
    let want = n * n.saturating_sub(1) / 2;
    for (i, (&c, &s)) in counts.iter().zip(sums).enumerate() {
        if c != n || s != want {
            return Err(err(format!(
                "producer {i}: {c} of {n} messages received (sum of seq {s}, expected {want}); {bad} bad"
            )));
        }
    }
    if bad != 0 {
        return Err(err(format!("{bad} bad messages")));
    }
    Ok(())
}

/// One run of conduit's queue.
fn conduit_run<T: Msg>(producers: u32, consumers: u32, n: u64) -> Res<Run> {
    let (tx, rx) = conduit::queue::<T>()?;
    let spawn_ctl = || conduit::duplex::<u64, u64>();
    let builder = || Process::builder().kill_on_drop(true);
    let mut cons = Vec::new();
    let mut ctls = Vec::new();
    for _ in 0..consumers {
        let (mine, theirs) = spawn_ctl()?;
        cons.push(builder().spawn(consumer::<T>, (rx.clone(), theirs, producers))?);
        ctls.push(mine);
    }
    drop(rx);
    let mut prods = Vec::new();
    for id in 0..producers {
        let (mine, theirs) = spawn_ctl()?;
        prods.push(builder().spawn(producer::<T>, (tx.clone(), theirs, id, n))?);
        ctls.push(mine);
    }
    for ctl in &ctls {
        match ctl.recv_timeout(WAIT)? {
            READY => {}
            other => return Err(err(format!("unexpected control message {other}"))),
        }
    }
    // The start barrier: consumers first, then producers.
    for ctl in &ctls {
        ctl.send(&GO)?;
    }
    for (i, p) in prods.iter_mut().enumerate() {
        let sent = p.join_timeout(WAIT)?.map_err(err)?;
        if sent != n {
            return Err(err(format!("producer {i} sent {sent} of {n}")));
        }
    }
    for _ in 0..consumers {
        tx.send(&T::end())?;
    }
    drop(tx);
    let p = producers as usize;
    let (mut counts, mut sums, mut bad, mut nanos) = (vec![0; p], vec![0; p], 0, 0);
    for c in &mut cons {
        let r = c.join_timeout(WAIT)?.map_err(err)?;
        for i in 0..p {
            counts[i] += r.counts.get(i).copied().unwrap_or(0);
            sums[i] += r.sums.get(i).copied().unwrap_or(0);
        }
        bad += r.bad;
        nanos = nanos.max(r.nanos);
    }
    verify(&counts, &sums, bad, n)?;
    Ok(Run {
        count: counts.iter().sum(),
        secs: nanos as f64 * 1e-9,
    })
}

/// One run of Python's `multiprocessing.Queue`.
fn python_run(d: &mut Driver, producers: u32, consumers: u32, typed: bool, n: u64) -> Res<Run> {
    let kind = if typed { "typed" } else { "bytes" };
    let v = d.ask(&format!("run {producers} {consumers} {kind} {n}"))?;
    let nums = |key: &str| -> Vec<u64> {
        v.get(key)
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default()
    };
    let (counts, sums) = (nums("counts"), nums("sums"));
    if counts.len() != producers as usize {
        return Err(err(format!("queue_bench.py answered {v}")));
    }
    let bad = v.get("bad").and_then(|b| b.as_u64()).unwrap_or(u64::MAX);
    verify(&counts, &sums, bad, n)?;
    Ok(Run {
        count: counts.iter().sum(),
        secs: v
            .get("seconds")
            .and_then(|s| s.as_f64())
            .ok_or_else(|| err(format!("queue_bench.py answered {v}")))?,
    })
}

/// One repetition of conduit's shm channel, one-way msg/s (the main table's
/// measurement, `sys_conduit::parent`), with its child pinned.
fn shm_run(typed: bool, ctx: &Ctx) -> Res<f64> {
    let w = if typed {
        Workload::MsgsTyped
    } else {
        Workload::Msgs
    };
    let one = Ctx {
        budget: Budget {
            warmup: ctx.budget.warmup.min(Duration::from_millis(50)),
            rep: ctx.budget.rep,
            reps: 1,
        },
        pinning: ctx.pinning.clone(),
        python: Err(String::new()),
    };
    ctx.pinning.enter_parent(w.pinned());
    let res = crate::sys_conduit::parent(Transport::Shm, "conduit-shm", w, &one);
    ctx.pinning.enter_parent(false);
    let reps = res?;
    reps.first()
        .map(|r| r.value)
        .ok_or_else(|| err("the shm channel measured nothing"))
}

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sys {
    Conduit,
    Python,
    Shm,
}

impl Sys {
    fn label(self) -> &'static str {
        match self {
            Sys::Conduit => "conduit queue",
            Sys::Python => "Python mp.Queue",
            Sys::Shm => "conduit shm channel",
        }
    }
    fn id(self) -> &'static str {
        match self {
            Sys::Conduit => "conduit-queue",
            Sys::Python => "python-queue",
            Sys::Shm => "conduit-shm-channel",
        }
    }
}

/// One measured configuration.
struct Row {
    sys: Sys,
    shape: (u32, u32),
    typed: bool,
    /// Messages per producer per run (set by the calibration round).
    n: u64,
    /// msg/s per round.
    rates: Vec<f64>,
    /// Why it is not measured, if it is not.
    skipped: Option<String>,
}

/// The queue section's results.
pub struct QueueResults {
    rows: Vec<Row>,
    rounds: usize,
    rep: Duration,
    start_method: Option<String>,
}

/// The shm channel's one-way workload has no shape: it is one sender and one
/// receiver, and appears once per payload.
fn configs() -> Vec<(Sys, (u32, u32), bool)> {
    let mut v = Vec::new();
    for typed in [false, true] {
        for shape in SHAPES {
            v.push((Sys::Conduit, shape, typed));
            v.push((Sys::Python, shape, typed));
            if shape == (1, 1) {
                v.push((Sys::Shm, shape, typed));
            }
        }
    }
    v
}

/// Messages per producer for the calibration round.
fn calibration_n(sys: Sys, quick: bool) -> u64 {
    match (sys, quick) {
        (Sys::Python, true) => 2_000,
        (Sys::Python, false) => 10_000,
        (_, true) => 10_000,
        (_, false) => 50_000,
    }
}

/// Measures every row in `rounds` interleaved rounds (the run's rounds:
/// `ctx.budget` says one repetition per case and round); `quick` only
/// shortens the calibration.
pub fn run(ctx: &Ctx, rounds: usize, quick: bool) -> Res<QueueResults> {
    let budget = &ctx.budget;
    ctx.pinning.enter_parent(false);
    let mut driver = match &ctx.python {
        Ok(py) => Driver::start(py, "queue_bench.py", SCRIPT, budget.case_timeout() * 8)
            .map_err(|e| e.to_string()),
        Err(why) => Err(format!("{why}; install python3 to measure multiprocessing")),
    };
    let start_method = match &mut driver {
        Ok(d) => d
            .ask("info")
            .ok()
            .and_then(|v| v.get("start_method")?.as_str().map(str::to_owned)),
        Err(_) => None,
    };
    let mut rows: Vec<Row> = configs()
        .into_iter()
        .map(|(sys, shape, typed)| Row {
            sys,
            shape,
            typed,
            n: calibration_n(sys, quick),
            rates: Vec::new(),
            skipped: match (&driver, sys) {
                (Err(why), Sys::Python) => Some(why.clone()),
                _ => None,
            },
        })
        .collect();
    let target = budget.rep.as_secs_f64();
    // Round 0 calibrates (and warms up).
    for round in 0..=rounds {
        let n_rows = rows.len();
        // Rotate within each (shape, payload) group: conduit, Python, shm.
        let mut order: Vec<usize> = Vec::with_capacity(n_rows);
        let mut i = 0;
        while i < n_rows {
            let mut j = i;
            while j < n_rows && rows[j].shape == rows[i].shape && rows[j].typed == rows[i].typed {
                j += 1;
            }
            let len = j - i;
            order.extend((0..len).map(|k| i + (k + round) % len));
            i = j;
        }
        for k in order {
            let row = &mut rows[k];
            if row.skipped.is_some() {
                continue;
            }
            let (p, c) = row.shape;
            let res: Res<(f64, Option<Run>)> = match (row.sys, &mut driver) {
                (Sys::Conduit, _) if row.typed => {
                    conduit_run::<Item>(p, c, row.n).map(|r| (r.rate(), Some(r)))
                }
                (Sys::Conduit, _) => {
                    conduit_run::<Vec<u8>>(p, c, row.n).map(|r| (r.rate(), Some(r)))
                }
                (Sys::Python, Ok(d)) => {
                    python_run(d, p, c, row.typed, row.n).map(|r| (r.rate(), Some(r)))
                }
                (Sys::Python, Err(why)) => Err(err(why.clone())),
                (Sys::Shm, _) => shm_run(row.typed, ctx).map(|r| (r, None)),
            };
            match res {
                Ok((rate, run)) => {
                    if round == 0 {
                        if let Some(r) = run {
                            // Size the runs: about `target` seconds each.
                            let per_s = r.rate() / f64::from(p);
                            row.n = ((per_s * target) as u64).clamp(1_000, 50_000_000);
                        }
                    } else {
                        row.rates.push(rate);
                    }
                }
                Err(e) if row.sys == Sys::Python => {
                    row.skipped = Some(format!("failed here: {e}"));
                }
                Err(e) => {
                    return Err(err(format!(
                        "{} {}P/{}C {}: {e}",
                        row.sys.label(),
                        p,
                        c,
                        payload(row.typed)
                    )))
                }
            }
        }
    }
    if let Ok(d) = &mut driver {
        d.quit();
    }
    Ok(QueueResults {
        rows,
        rounds,
        rep: budget.rep,
        start_method,
    })
}

fn payload(typed: bool) -> &'static str {
    if typed {
        "typed"
    } else {
        "Vec<u8>"
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}

fn rate(v: f64) -> String {
    format_value(Workload::Msgs, v)
}

impl QueueResults {
    fn find(&self, sys: Sys, shape: (u32, u32), typed: bool) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.sys == sys
                && r.typed == typed
                && r.skipped.is_none()
                && !r.rates.is_empty()
                && (r.shape == shape || sys == Sys::Shm)
        })
    }

    /// Median of the per-round ratios of `a` to `b`.
    fn ratio(a: &Row, b: &Row) -> Option<f64> {
        let r: Vec<f64> = a.rates.iter().zip(&b.rates).map(|(x, y)| x / y).collect();
        (!r.is_empty()).then(|| median(&r))
    }

    /// conduit / Python and (1/1) conduit / shm of one shape and payload.
    fn ratios(&self, shape: (u32, u32), typed: bool) -> (Option<f64>, Option<f64>) {
        let Some(c) = self.find(Sys::Conduit, shape, typed) else {
            return (None, None);
        };
        let py = self
            .find(Sys::Python, shape, typed)
            .and_then(|p| Self::ratio(c, p));
        let shm = (shape == (1, 1))
            .then(|| self.find(Sys::Shm, shape, typed))
            .flatten()
            .and_then(|s| Self::ratio(c, s));
        (py, shm)
    }

    /// The section of the table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nqueue: 64 B messages, msg/s received (all consumers), median of {} interleaved \
             rounds (runs of about {} ms); ratios = median of the per-round ratios",
            self.rounds,
            self.rep.as_millis()
        );
        let _ = writeln!(
            out,
            "  {:<6} {:<8} {:>14} {:>16} {:>10} {:>14} {:>12}",
            "shape",
            "payload",
            "conduit queue",
            "Python mp.Queue",
            "vs Python",
            "shm channel",
            "vs shm"
        );
        let mut notes = Vec::new();
        // Per target: Some(met) once measured everywhere, None if not.
        let mut py_ok = Some(true);
        let mut shm_ok = Some(true);
        for typed in [false, true] {
            for shape in SHAPES {
                let med = |sys| {
                    self.find(sys, shape, typed)
                        .map_or("-".to_owned(), |r| rate(median(&r.rates)))
                };
                let (vs_py, vs_shm) = self.ratios(shape, typed);
                py_ok = py_ok.zip(vs_py).map(|(ok, r)| ok && r >= 10.0);
                if shape == (1, 1) {
                    shm_ok = shm_ok.zip(vs_shm).map(|(ok, r)| ok && r >= 0.5);
                }
                let _ = writeln!(
                    out,
                    "  {:<6} {:<8} {:>14} {:>16} {:>10} {:>14} {:>12}",
                    format!("{}P/{}C", shape.0, shape.1),
                    payload(typed),
                    med(Sys::Conduit),
                    med(Sys::Python),
                    vs_py.map_or("-".to_owned(), |r| format!("{r:.1}×")),
                    if shape == (1, 1) {
                        med(Sys::Shm)
                    } else {
                        String::new()
                    },
                    vs_shm.map_or(String::new(), |r| format!("{:.0}%", r * 100.0)),
                );
            }
        }
        let _ = writeln!(
            out,
            "  targets: conduit ≥ 10× Python in every shape: {}; 1P/1C ≥ 50% of the shm channel: {}",
            verdict(py_ok),
            verdict(shm_ok),
        );
        for r in &self.rows {
            if let Some(why) = &r.skipped {
                // Python missing skips every Python row for one reason: say
                // it once; a failure names its own row.
                let note = if why.starts_with("failed here") {
                    format!(
                        "{} {}P/{}C {}: skipped: {why}",
                        r.sys.label(),
                        r.shape.0,
                        r.shape.1,
                        payload(r.typed)
                    )
                } else {
                    format!("{}: skipped: {why}", r.sys.label())
                };
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        let _ = writeln!(out, "queue notes:");
        notes.push(
            "every producer and consumer is its own process (conduit::Process / \
             multiprocessing.Process, started before the timed region, not pinned); a start \
             barrier releases them; value = messages received / longest consumer time from its \
             release to its last data message; every message is checked and counted"
                .to_owned(),
        );
        notes.push(format!(
            "typed = a 4-field serde struct (u32, u64, f64, 24-char String; {} B of CBOR) for \
             conduit, a 4-field dict (pickled) for Python; Vec<u8> = 64-byte bytes objects in Python",
            item_cbor_len()
        ));
        notes.push(
            "shm channel = conduit::Transport::Shm one-way msg/s of the main table (1 sender, 1 \
             receiver, pinned to two CPUs): the point-to-point limit"
                .to_owned(),
        );
        if let Some(m) = &self.start_method {
            notes.push(format!("Python start method: {m} (start-up is not timed)"));
        }
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
        out
    }

    /// The `queue` entry of `results.json`.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let (vs_py, vs_shm) = if r.sys == Sys::Conduit {
                    self.ratios(r.shape, r.typed)
                } else {
                    (None, None)
                };
                match &r.skipped {
                    None => json!({
                        "system": r.sys.id(),
                        "label": r.sys.label(),
                        "producers": r.shape.0,
                        "consumers": r.shape.1,
                        "payload": payload(r.typed),
                        "status": "ok",
                        "unit": "msg/s",
                        "median": median(&r.rates),
                        "rounds": r.rates,
                        "messages_per_producer": (r.sys != Sys::Shm).then_some(r.n),
                        "ratio_to_python": vs_py,
                        "ratio_to_shm_channel": vs_shm,
                    }),
                    Some(why) => json!({
                        "system": r.sys.id(),
                        "producers": r.shape.0,
                        "consumers": r.shape.1,
                        "payload": payload(r.typed),
                        "status": "skipped",
                        "reason": why,
                    }),
                }
            })
            .collect();
        json!({
            "title": "queue: 64 B messages, msg/s",
            "rounds": self.rounds,
            "rep_ms": self.rep.as_millis() as u64,
            "python_start_method": self.start_method,
            "results": rows,
        })
    }
}

/// The CBOR size of a typed item with a large sequence number.
fn item_cbor_len() -> usize {
    let mut buf = Vec::new();
    match ciborium::into_writer(&Item::make(3, 1_000_000), &mut buf) {
        Ok(()) => buf.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_identify_and_check() {
        let n = item_cbor_len();
        assert!((56..=72).contains(&n), "{n}");
        let mut m = <Vec<u8> as Msg>::make(3, 7);
        assert_eq!(m.len(), 64);
        assert_eq!(m.id(), Some((3, 7, true)));
        m[63] ^= 1;
        assert_eq!(m.id(), Some((3, 7, false)));
        assert_eq!(<Vec<u8> as Msg>::end().id(), None);
        assert_eq!(Item::make(2, 9).id(), Some((2, 9, true)));
        assert_eq!(Item::end().id(), None);
    }

    #[test]
    fn verify_catches_loss_and_duplication() {
        assert!(verify(&[3, 3], &[3, 3], 0, 3).is_ok());
        assert!(verify(&[3, 2], &[3, 1], 0, 3).is_err());
        assert!(verify(&[3, 3], &[3, 4], 0, 3).is_err());
        assert!(verify(&[3, 3], &[3, 3], 1, 3).is_err());
    }
}
