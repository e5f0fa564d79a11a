//! `cargo xtask fuzz`: coverage-guided fuzzing with cargo-fuzz (libFuzzer)
//! of the targets in `fuzz/fuzz_targets/`.
//!
//! cargo-fuzz needs nightly-only flags (`-Zsanitizer=address`); the stable
//! toolchain accepts them with `RUSTC_BOOTSTRAP=1`, which this command sets
//! for the fuzz build only. cargo-fuzz is installed with `cargo install
//! cargo-fuzz --locked` when it is missing. Each target starts from its
//! committed seeds (`fuzz/seeds/<target>/`, read only) plus a working
//! corpus under `target/fuzz-corpus/<target>/`; a crash leaves its input in
//! `target/fuzz-artifacts/<target>/` and fails the command (turn it into a
//! regression test, then add it to the seeds).

use std::path::Path;

use xshell::cmd;

use crate::{flags, util};

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "stream_reader",
    "cbor_decode",
    "cbor_differential",
    "shm_consumer",
    "handoff_token",
];

/// What one libFuzzer run reported.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    execs: u64,
    cov: u64,
    features: u64,
    corpus: u64,
}

/// Reads `Done N runs` and the last `cov:`/`ft:`/`corp:` line of a run.
fn parse_stats(text: &str) -> Stats {
    let mut s = Stats::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                s.execs = n;
            }
        }
        if line.starts_with('#') && line.contains("cov:") {
            s.cov = field(line, "cov:").unwrap_or(s.cov);
            s.features = field(line, "ft:").unwrap_or(s.features);
            s.corpus = field(line, "corp:").unwrap_or(s.corpus);
        }
    }
    s
}

/// Runs the targets; fails when one crashes.
pub fn run(opts: &flags::Fuzz) -> Result<(), String> {
    let sh = util::shell()?;
    let cargo = util::cargo();
    let root = util::project_root();
    if cmd!(sh, "{cargo} fuzz --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        cmd!(sh, "{cargo} install cargo-fuzz --locked")
            .run()
            .map_err(|e| format!("cannot install cargo-fuzz: {e}"))?;
    }
    let targets: Vec<&str> = match &opts.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => {
            return Err(format!(
                "unknown fuzz target `{t}`; the targets are {}",
                TARGETS.join(", ")
            ))
        }
        None => TARGETS.to_vec(),
    };
    let time = opts.time.unwrap_or(60).to_string();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        let work = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        let seeds = root.join("fuzz/seeds").join(target);
        for dir in [&work, &artifacts] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut corpora = vec![work.display().to_string()];
        if seeds.is_dir() {
            corpora.push(seeds.display().to_string());
        }
        let prefix = format!("-artifact_prefix={}/", artifacts.display());
        let max_time = format!("-max_total_time={time}");
        let fuzz_dir = root.join("fuzz");
        let teed = util::run_tee(
            cmd!(
                sh,
                "{cargo} fuzz run --fuzz-dir {fuzz_dir} {target} {corpora...} -- {max_time} {prefix} -print_final_stats=1"
            )
            .env("RUSTC_BOOTSTRAP", "1"),
        )?;
        let stats = parse_stats(&teed.text);
        let ok = teed.status.success();
        if !ok {
            failed.push(format!(
                "{target} (input in {})",
                Path::new(&artifacts).display()
            ));
        }
        rows.push(vec![
            target.to_string(),
            if ok { "ok" } else { "FAILED" }.to_string(),
            stats.execs.to_string(),
            stats.cov.to_string(),
            stats.features.to_string(),
            stats.corpus.to_string(),
        ]);
    }
    println!("\nfuzz results ({time} s per target):");
    util::print_table(
        &["target", "result", "execs", "cov", "features", "corpus"],
        2,
        &rows,
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("crash or failure in: {}", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_from_libfuzzer_output() {
        let text = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                    #4096\tpulse  cov: 120 ft: 300 corp: 40/900b lim: 43 exec/s: 2048\n\
                    #542084\tDONE   cov: 133 ft: 412 corp: 57/1412b lim: 4096 exec/s: 49280\n\
                    Done 542084 runs in 11 second(s)\n";
        assert_eq!(
            parse_stats(text),
            Stats {
                execs: 542_084,
                cov: 133,
                features: 412,
                corpus: 57
            }
        );
    }
}
