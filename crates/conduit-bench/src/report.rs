//! The outputs: the table on stdout and `results.json`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::link::Sample;
use crate::plan::{Group, Kind, System, Workload};
use crate::stats::{median_ratio, round_ratios, Summary};
use crate::Budget;

/// How a case ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Measured.
    Done(Summary),
    /// Not measured here, with the reason.
    Skipped(String),
    /// Went wrong, with the error.
    Failed(String),
}

/// One case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// Index into the system list.
    pub system: usize,
    /// The workload.
    pub workload: Workload,
    /// What came of it.
    pub outcome: Outcome,
}

/// Facts about the run, for the outputs.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// The measuring budget.
    pub budget: Budget,
    /// The pinning line.
    pub pinning: String,
    /// The 1-minute load average before the run (Linux).
    pub load_before: Option<f64>,
    /// The 1-minute load average after the run (Linux).
    pub load_after: Option<f64>,
    /// How long the cases took.
    pub elapsed: Duration,
    /// The Python version, when Python ran.
    pub python: Option<String>,
    /// CPUs the bench may use.
    pub cpus: usize,
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// The proleptic Gregorian date of a day number since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The 1-minute load average (Linux), for judging noise.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A number with its unit: `1.23 µs`, `4.56 M/s`, `12.3 GB/s`.
pub fn format_value(w: Workload, v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    match w.kind() {
        Kind::Latency => {
            let us = v * 1e6;
            if us >= 1000.0 {
                format!("{} ms", sig3(us / 1000.0))
            } else {
                format!("{} µs", sig3(us))
            }
        }
        Kind::Rate => {
            if v >= 1e6 {
                format!("{} M/s", sig3(v / 1e6))
            } else {
                format!("{} k/s", sig3(v / 1e3))
            }
        }
        Kind::Bandwidth => format!("{} GB/s", sig3(v / 1e9)),
    }
}

/// The bare number of [`format_value`] in the unit of `unit_of`.
fn format_in_unit(w: Workload, v: f64, unit_of: f64) -> String {
    let full = format_value(w, unit_of);
    let unit = full.split_once(' ').map_or("", |(_, u)| u);
    let scaled = match (w.kind(), unit) {
        (Kind::Latency, "ms") => v * 1e3,
        (Kind::Latency, _) => v * 1e6,
        (Kind::Rate, "M/s") => v / 1e6,
        (Kind::Rate, _) => v / 1e3,
        (Kind::Bandwidth, _) => v / 1e9,
    };
    sig3(scaled)
}

/// Three significant digits, no exponent.
fn sig3(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The ratio column: latency as a multiple of the limit (`2.4× raw pipe`),
/// throughput as a share of it (`45% of memcpy`); `x` = value / limit.
fn ratio_text(w: Workload, x: f64, limit_label: &str) -> String {
    match w.kind() {
        Kind::Latency => {
            if x < 10.0 {
                format!("{x:.2}× {limit_label}")
            } else if x < 100.0 {
                format!("{x:.1}× {limit_label}")
            } else {
                format!("{x:.0}× {limit_label}")
            }
        }
        _ => {
            let pct = 100.0 * x;
            if pct >= 10.0 {
                format!("{pct:.0}% of {limit_label}")
            } else {
                format!("{pct:.1}% of {limit_label}")
            }
        }
    }
}

/// The summary of `system` × `workload`, if measured.
fn find<'a>(
    systems: &[System],
    results: &'a [CaseResult],
    id: &str,
    w: Workload,
) -> Option<&'a Summary> {
    results.iter().find_map(|r| match &r.outcome {
        Outcome::Done(s) if systems[r.system].id == id && r.workload == w => Some(s),
        _ => None,
    })
}

/// The reference (label, summary) of a result, if it was measured.
fn reference<'a>(
    systems: &[System],
    results: &'a [CaseResult],
    sys: &System,
    w: Workload,
) -> Option<(String, &'a Summary)> {
    let rid = sys.reference(w)?;
    let rsys = systems.iter().find(|s| s.id == rid)?;
    let s = find(systems, results, rid, w.reference())?;
    Some((rsys.label.clone(), s))
}

/// The table: one section per workload (system, median, spread, p99, ratio to
/// the raw limit), a summary matrix, and notes.
pub fn table(systems: &[System], results: &[CaseResult], meta: &Meta) -> String {
    let mut out = String::new();
    let b = &meta.budget;
    let _ = writeln!(
        out,
        "conduit-bench, {} ({} run): median of {} interleaved rounds (every case once per round, \
         A B C A B C ...: a fresh child, {} ms warm-up, one {} ms repetition); \
         spread = min–max of the round values",
        utc_date(),
        meta.mode,
        b.reps,
        b.warmup.as_millis(),
        b.rep.as_millis()
    );
    let _ = writeln!(out, "{}", meta.pinning);
    let _ = writeln!(out, "{}", machine_line(meta));
    let _ = writeln!(
        out,
        "typed = a 4-field struct, {} B as CBOR (conduit; ipc-channel uses postcard, Python pickles a dict); \
         \"vs limit\": median of the per-round ratios to the raw limit run in the same round \
         (latency as a multiple of it, throughput as a share of it)",
        Sample::cbor_len()
    );
    for w in Workload::ALL {
        let rows: Vec<&CaseResult> = results.iter().filter(|r| r.workload == w).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", w.title());
        let latency = w.kind() == Kind::Latency;
        if latency {
            let _ = writeln!(
                out,
                "  {:<20} {:>10} {:>17} {:>10}   vs limit",
                "system", "median", "spread", "p99"
            );
        } else {
            let _ = writeln!(
                out,
                "  {:<20} {:>11} {:>17}   vs limit",
                "system", "median", "spread"
            );
        }
        for r in rows {
            let sys = &systems[r.system];
            match &r.outcome {
                Outcome::Done(s) => {
                    let spread = format!(
                        "{}–{}",
                        format_in_unit(w, s.min, s.median),
                        format_in_unit(w, s.max, s.median)
                    );
                    let vs = if sys.reference(w).is_none() {
                        "(limit)".to_owned()
                    } else {
                        match reference(systems, results, sys, w) {
                            Some((label, r)) => ratio_text(w, median_ratio(s, r), &label),
                            None => "-".to_owned(),
                        }
                    };
                    if latency {
                        let p99 = s.p99.map_or("-".to_owned(), |p| format_value(w, p));
                        let _ = writeln!(
                            out,
                            "  {:<20} {:>10} {:>17} {:>10}   {vs}",
                            sys.label,
                            format_value(w, s.median),
                            spread,
                            p99
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "  {:<20} {:>11} {:>17}   {vs}",
                            sys.label,
                            format_value(w, s.median),
                            spread
                        );
                    }
                }
                Outcome::Skipped(_) => {
                    let _ = writeln!(out, "  {:<20} skipped (see the notes)", sys.label);
                }
                Outcome::Failed(why) => {
                    let _ = writeln!(out, "  {:<20} FAILED: {why}", sys.label);
                }
            }
        }
    }
    out.push_str(&matrix(systems, results));
    out.push_str(&comparisons(systems, results));
    let mut notes: Vec<String> = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        if !results.iter().any(|r| r.system == i) {
            continue;
        }
        if let Some(n) = &s.note {
            notes.push(format!("{}: {n}", s.label));
        }
        for r in results.iter().filter(|r| r.system == i) {
            if let Outcome::Skipped(why) = &r.outcome {
                let note = format!("{}: skipped: {why}", s.label);
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "notes:");
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    out
}

fn machine_line(meta: &Meta) -> String {
    let cpus = meta.cpus;
    let load = match (meta.load_before, meta.load_after) {
        (Some(a), Some(b)) => format!("; load average {a:.2} before, {b:.2} after"),
        _ => String::new(),
    };
    let py = meta
        .python
        .as_ref()
        .map_or(String::new(), |v| format!("; {v}"));
    format!(
        "{} {}, {cpus} CPUs{load}; run took {:.0} s{py}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        meta.elapsed.as_secs_f64()
    )
}

/// The system × workload matrix of medians.
fn matrix(systems: &[System], results: &[CaseResult]) -> String {
    let cols: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| results.iter().any(|r| r.workload == *w))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = write!(out, "summary (medians)     ");
    for w in &cols {
        let _ = write!(out, " {:>11}", w.short());
    }
    let _ = writeln!(out);
    for (i, s) in systems.iter().enumerate() {
        if !results.iter().any(|r| r.system == i) {
            continue;
        }
        let _ = write!(out, "  {:<20}", s.label);
        for w in &cols {
            let cell = results
                .iter()
                .find(|r| r.system == i && r.workload == *w)
                .map_or(String::new(), |r| match &r.outcome {
                    Outcome::Done(sum) => format_value(*w, sum.median),
                    Outcome::Skipped(_) => "skip".to_owned(),
                    Outcome::Failed(_) => "FAIL".to_owned(),
                });
            let _ = write!(out, " {cell:>11}");
        }
        let _ = writeln!(out);
    }
    out
}

/// The pairs the comparisons section shows: (a, workload of a, b, workload
/// of b); `a / b` per round.
fn comparison_pairs(systems: &[System]) -> Vec<(String, Workload, String, Workload)> {
    use Workload::*;
    let mut v = Vec::new();
    for s in systems.iter().filter(|s| s.group == Group::Conduit) {
        v.push((s.id.clone(), RttTyped, s.id.clone(), Rtt));
        v.push((s.id.clone(), MsgsTyped, s.id.clone(), Msgs));
    }
    let shm = "conduit-shm".to_owned();
    let ice = "iceoryx2".to_owned();
    let pc = "conduit-shm-postcard".to_owned();
    v.push((pc.clone(), RttTyped, shm.clone(), Rtt));
    v.push((pc.clone(), MsgsTyped, shm.clone(), Msgs));
    for (a, b) in [(Rtt, Rtt), (RttTyped, Rtt), (Msgs, Msgs), (MsgsTyped, Msgs)] {
        v.push((shm.clone(), a, ice.clone(), b));
    }
    for w in [Bulk64K, Bulk1M] {
        v.push((shm.clone(), w, ice.clone(), w));
        v.push((shm.clone(), w, "iceoryx2-loan".to_owned(), w));
    }
    // Async against blocking on the same system, then conduit's async rows
    // against the async peers: interprocess's tokio socket (the local socket
    // like conduit named) and Python asyncio on mp.Pipe (a socketpair).
    let mut async_pairs: Vec<(String, String)> = systems
        .iter()
        .filter_map(|s| {
            let blocking = s.id.strip_prefix("conduit-async-")?;
            Some((s.id.clone(), format!("conduit-{blocking}")))
        })
        .collect();
    for (a, b) in [
        ("interprocess-tokio", "interprocess"),
        ("python-asyncio", "python-pipe"),
        ("conduit-async-named", "interprocess-tokio"),
        ("conduit-async-socketpair", "python-asyncio"),
    ] {
        async_pairs.push((a.to_owned(), b.to_owned()));
    }
    for (a, b) in async_pairs {
        for w in [Rtt, Msgs] {
            v.push((a.clone(), w, b.clone(), w));
        }
    }
    v
}

/// Head-to-head ratios of cases run in the same rounds: typed against bytes
/// on each conduit transport, conduit shm against iceoryx2, async against
/// blocking.
fn comparisons(systems: &[System], results: &[CaseResult]) -> String {
    let mut lines = Vec::new();
    for (a, aw, b, bw) in comparison_pairs(systems) {
        let (Some(sa), Some(sb)) = (
            find(systems, results, &a, aw),
            find(systems, results, &b, bw),
        ) else {
            continue;
        };
        let label = |id: &str| {
            systems
                .iter()
                .find(|s| s.id == id)
                .map_or(id.to_owned(), |s| s.label.clone())
        };
        let name = format!(
            "{} {} / {} {}",
            label(&a),
            aw.short(),
            label(&b),
            bw.short()
        );
        let rounds: Vec<String> = round_ratios(sa, sb)
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        lines.push(format!(
            "  {name:<52} {:>6.2}   rounds: {}",
            median_ratio(sa, sb),
            rounds.join(" ")
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "comparisons: median of the per-round ratios a / b (latency: < 1 = a faster; msg/s, GB/s: > 1 = a faster)"
    );
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    out
}

/// `results.json`.
pub fn json(systems: &[System], results: &[CaseResult], meta: &Meta) -> String {
    use serde_json::{json, Value};
    let cases: Vec<Value> = results
        .iter()
        .map(|r| {
            let sys = &systems[r.system];
            let w = r.workload;
            let unit = match w.kind() {
                Kind::Latency => "s",
                Kind::Rate => "msg/s",
                Kind::Bandwidth => "B/s",
            };
            let mut v = json!({
                "system": sys.id,
                "label": sys.label,
                "group": sys.group.name(),
                "workload": w.id(),
                "title": w.title(),
                "unit": unit,
                "message_bytes": w.size(),
                "typed": w.typed(),
                "pinned": w.pinned(),
            });
            match &r.outcome {
                Outcome::Done(s) => {
                    v["status"] = json!("ok");
                    v["median"] = json!(s.median);
                    v["min"] = json!(s.min);
                    v["max"] = json!(s.max);
                    v["p99"] = json!(s.p99);
                    v["reps"] = json!(s.reps.iter().map(|r| r.value).collect::<Vec<_>>());
                    v["rep_p99"] = json!(s.reps.iter().map(|r| r.p99).collect::<Vec<_>>());
                    v["rep_counts"] = json!(s.reps.iter().map(|r| r.count).collect::<Vec<_>>());
                    if let Some(rid) = sys.reference(w) {
                        v["reference"] = json!(rid);
                        if let Some((_, r)) = reference(systems, results, sys, w) {
                            v["ratio_to_reference"] = json!(median_ratio(s, r));
                            v["round_ratios"] = json!(round_ratios(s, r));
                        }
                    }
                }
                Outcome::Skipped(why) => {
                    v["status"] = json!("skipped");
                    v["reason"] = json!(why);
                }
                Outcome::Failed(why) => {
                    v["status"] = json!("failed");
                    v["reason"] = json!(why);
                }
            }
            v
        })
        .collect();
    let notes: serde_json::Map<String, Value> = systems
        .iter()
        .filter_map(|s| s.note.as_ref().map(|n| (s.id.clone(), json!(n))))
        .collect();
    let comparisons: Vec<Value> = comparison_pairs(systems)
        .into_iter()
        .filter_map(|(a, aw, b, bw)| {
            let sa = find(systems, results, &a, aw)?;
            let sb = find(systems, results, &b, bw)?;
            Some(json!({
                "a": a,
                "a_workload": aw.id(),
                "b": b,
                "b_workload": bw.id(),
                "ratio": median_ratio(sa, sb),
                "round_ratios": round_ratios(sa, sb),
            }))
        })
        .collect();
    let doc = json!({
        "tool": "conduit-bench",
        "date": utc_date(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "mode": meta.mode,
        "warmup_ms": meta.budget.warmup.as_millis() as u64,
        "rep_ms": meta.budget.rep.as_millis() as u64,
        "reps": meta.budget.reps,
        "pinning": meta.pinning,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": meta.cpus,
        "load_before": meta.load_before,
        "load_after": meta.load_after,
        "elapsed_s": meta.elapsed.as_secs_f64(),
        "python": meta.python,
        "typed_cbor_bytes": Sample::cbor_len(),
        "notes": notes,
        "results": cases,
        "comparisons": comparisons,
    });
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Colour-free group order for the plot legend.
pub fn groups_in(systems: &[System], results: &[CaseResult]) -> Vec<Group> {
    let mut gs: Vec<Group> = Vec::new();
    for r in results {
        let g = systems[r.system].group;
        if !gs.contains(&g) {
            gs.push(g);
        }
    }
    gs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_415), "2025-11-23");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn formats() {
        assert_eq!(format_value(Workload::Rtt, 5.123e-6), "5.12 µs");
        assert_eq!(format_value(Workload::Rtt, 2.5e-7), "0.250 µs");
        assert_eq!(format_value(Workload::Rtt, 1.5e-3), "1.50 ms");
        assert_eq!(format_value(Workload::Msgs, 1.234e6), "1.23 M/s");
        assert_eq!(format_value(Workload::Msgs, 45_600.0), "45.6 k/s");
        assert_eq!(format_value(Workload::Bulk1M, 12.34e9), "12.3 GB/s");
        assert_eq!(format_in_unit(Workload::Rtt, 4.9e-6, 5.1e-6), "4.90");
        assert_eq!(ratio_text(Workload::Rtt, 1.2, "raw pipe"), "1.20× raw pipe");
        assert_eq!(
            ratio_text(Workload::Bulk1M, 0.45, "memcpy"),
            "45% of memcpy"
        );
    }
}
