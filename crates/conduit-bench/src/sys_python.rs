//! Python `multiprocessing.Pipe` and `multiprocessing.Queue`, measured by
//! `python/mp_bench.py` (embedded in this binary and written next to the
//! results), run with `python3` when there is one.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::plan::{Skip, Workload};
use crate::proc::Spawned;
use crate::stats::Rep;
use crate::{err, Ctx, Res};

/// The script, as committed in `crates/conduit-bench/python/mp_bench.py`.
const SCRIPT: &str = include_str!("../python/mp_bench.py");

/// A Python interpreter that can run the script.
#[derive(Clone, Debug)]
pub struct Python {
    /// The interpreter's command.
    pub exe: String,
    /// `Python 3.x.y`.
    pub version: String,
    /// Where the script was written.
    pub script: PathBuf,
}

impl Python {
    /// Finds `python3` (or `python` if that is Python 3) and writes the script
    /// to `dir`. The error says why Python cases are skipped.
    pub fn find(dir: &Path) -> Result<Python, String> {
        let mut tried = Vec::new();
        for exe in ["python3", "python"] {
            match version_of(exe) {
                Some(v) if v.starts_with("Python 3.") => {
                    let script = dir.join("mp_bench.py");
                    std::fs::write(&script, SCRIPT)
                        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
                    return Ok(Python {
                        exe: exe.to_owned(),
                        version: v,
                        script,
                    });
                }
                Some(v) => tried.push(format!("{exe} is {v}")),
                None => tried.push(format!("no {exe}")),
            }
        }
        Err(format!("no Python 3 found ({})", tried.join(", ")))
    }
}

/// A long-lived Python script that takes its requests over stdin, one line
/// each, and answers each with one JSON line on stdout (`{"error": ...}` for
/// a failure). The sections that interleave Python with Rust systems round
/// by round (spawn, queue) use one, so that the interpreter's start-up is
/// never timed.
pub struct Driver {
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    name: &'static str,
    _child: Spawned,
}

impl Driver {
    /// Writes `text` as `name` next to the main script and starts it; it is
    /// killed (with its process group) after `timeout` or when dropped.
    pub fn start(py: &Python, name: &'static str, text: &str, timeout: Duration) -> Res<Driver> {
        let dir = py
            .script
            .parent()
            .ok_or_else(|| err("the Python script has no directory"))?;
        let script = dir.join(name);
        std::fs::write(&script, text)
            .map_err(|e| err(format!("cannot write {}: {e}", script.display())))?;
        let mut cmd = Command::new(&py.exe);
        cmd.arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Spawned::spawn(&mut cmd, timeout, true)?;
        let (stdin, stdout) = child.take_stdio();
        Ok(Driver {
            stdin: stdin.ok_or_else(|| err(format!("no stdin for {name}")))?,
            stdout: BufReader::new(stdout.ok_or_else(|| err(format!("no stdout for {name}")))?),
            name,
            _child: child,
        })
    }

    /// Sends one request line, returns the JSON answer (an `error` answer
    /// becomes an `Err`).
    pub fn ask(&mut self, request: &str) -> Res<serde_json::Value> {
        let name = self.name;
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(err(format!("{name} ended early")));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| err(format!("{name} printed {line:?}: {e}")))?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Err(err(format!("{name}: {request}: {e}")));
        }
        Ok(v)
    }

    /// Asks the script to end (it is killed anyway when dropped).
    pub fn quit(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
    }
}

/// `<exe> --version`, with a timeout.
fn version_of(exe: &str) -> Option<String> {
    let mut cmd = Command::new(exe);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = Spawned::spawn(&mut cmd, Duration::from_secs(20), false).ok()?;
    let out = spawned.take_output();
    let status = spawned.wait_for_exit().ok()?;
    let text = out.join().ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&text).trim().to_owned())
}

/// Runs workload `w` on `kind` (`pipe` or `queue`).
pub fn run(kind: &str, w: Workload, ctx: &Ctx) -> Res<Vec<Rep>> {
    let py = ctx
        .python
        .as_ref()
        .map_err(|why| Skip(format!("{why}; install python3 to measure multiprocessing")))?;
    let b = &ctx.budget;
    let timeout = b.case_timeout();
    let mut cmd = Command::new(&py.exe);
    cmd.arg("-u")
        .arg(&py.script)
        .args(["--kind", kind, "--workload", w.id()])
        .args(["--reps", &b.reps.to_string()])
        .args(["--rep-seconds", &b.rep.as_secs_f64().to_string()])
        .args(["--warmup-seconds", &b.warmup.as_secs_f64().to_string()])
        .args(["--timeout", &timeout.as_secs().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let (true, Some(cpus)) = (w.pinned(), ctx.pinning.pair_arg()) {
        cmd.args(["--cpus", &cpus]);
    }
    let child = Spawned::spawn(&mut cmd, timeout, true)?;
    let out = child.take_output();
    let status = child.wait_for_exit();
    let text = out.join().map_err(|_| err("the output reader panicked"))?;
    let text = String::from_utf8_lossy(&text);
    let status = status?;
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(6).collect::<Vec<_>>();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(err(format!(
            "mp_bench.py failed ({status}): {}",
            tail.join(" | ")
        )));
    }
    parse(&text)
}

/// Reads the script's last JSON line: `{"values": [...], "p99": [...] | null}`.
fn parse(text: &str) -> Res<Vec<Rep>> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| err("mp_bench.py printed no result"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let values = v["values"]
        .as_array()
        .ok_or_else(|| err("mp_bench.py: no values"))?;
    let p99 = v["p99"].as_array();
    let counts = v["counts"].as_array();
    let mut reps = Vec::new();
    for (i, value) in values.iter().enumerate() {
        reps.push(Rep {
            value: value
                .as_f64()
                .ok_or_else(|| err("mp_bench.py: bad value"))?,
            p99: p99.and_then(|p| p.get(i)).and_then(|x| x.as_f64()),
            count: counts
                .and_then(|c| c.get(i))
                .and_then(|x| x.as_u64())
                .unwrap_or(0),
        });
    }
    if reps.is_empty() {
        return Err(err("mp_bench.py: no repetitions"));
    }
    Ok(reps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_script_output() {
        let reps =
            parse("noise\n{\"values\": [1.0, 2.0, 3.0], \"p99\": null, \"counts\": [5, 6, 7]}\n")
                .unwrap();
        assert_eq!(reps.len(), 3);
        assert_eq!(reps[1].value, 2.0);
        assert_eq!(reps[2].count, 7);
        assert!(parse("nothing").is_err());
    }
}
