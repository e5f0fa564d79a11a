//! `cargo xtask test-matrix`: runs the `conduit-tests` suite once per transport
//! feature set, then the transport crates' own tests, and prints a table of
//! the results.
//!
//! The transports are read at run time from the `all-transports` feature of
//! `crates/conduit/Cargo.toml`: every plain feature listed there is a transport.
//! The feature sets are each transport alone, `all-transports`, and the default
//! set. Adding a transport needs no change here.

use std::{
    env, fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use toml::{Table, Value};

use crate::util::{self, Counts};

const HELP: &str = "\
usage: cargo xtask test-matrix [options] [-- <runner args>]

Runs the conduit-tests suite once per transport feature set: each transport
alone (--no-default-features --features <t>), all-transports, and the default
set; then the crates' own tests (conduit-core and conduit-<t>). Uses `cargo nextest run` when cargo-nextest is installed, else `cargo test`.

options:
  --transport <t>  only the feature sets that contain transport <t> (and the
                   tests of conduit-core and conduit-<t>)
  --cases <n>      PROPTEST_CASES for the property tests
  --quick          PROPTEST_CASES=8 unless --cases is given
  --profile <p>    nextest profile (default: $CONDUIT_NEXTEST_PROFILE, else `default`)
  -- <args>        passed on to the runner unchanged (test filters, --no-fail-fast, ...)";

/// The package whose tests the matrix runs.
const TEST_PACKAGE: &str = "conduit-tests";
/// The manifest that defines the transport features.
const FACADE_MANIFEST: &str = "crates/conduit/Cargo.toml";
/// The crate every transport builds on; its own tests run in the last row.
const CORE_PACKAGE: &str = "conduit-core";
/// The name of the row that runs the crates' own tests.
const CRATE_TESTS: &str = "crate tests";
/// The feature that lists every transport.
const ALL_TRANSPORTS: &str = "all-transports";

/// One cargo feature selection of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSet {
    /// Short name for tables: a transport name, `all-transports` or `default`.
    pub name: String,
    /// The cargo arguments that select the features.
    pub cargo_args: Vec<String>,
    /// The transports this set enables.
    pub transports: Vec<String>,
}

/// The transports and the default transports, as declared by the facade manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transports {
    /// Every transport, in the order of the `all-transports` feature.
    pub all: Vec<String>,
    /// The transports among the `default` features.
    pub default: Vec<String>,
}

/// Reads the transports from `crates/conduit/Cargo.toml`.
pub fn transports() -> Result<Transports, String> {
    let path = util::project_root().join(FACADE_MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_transports(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_transports(manifest: &str) -> Result<Transports, String> {
    let table: Table = manifest
        .parse()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let features = table
        .get("features")
        .and_then(Value::as_table)
        .ok_or("no [features] table")?;
    let list = |name: &str| -> Result<Vec<String>, String> {
        let Some(value) = features.get(name) else {
            return Ok(Vec::new());
        };
        let array = value
            .as_array()
            .ok_or_else(|| format!("feature `{name}` is not an array"))?;
        array
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("feature `{name}` holds a non-string"))
            })
            .collect()
    };
    if !features.contains_key(ALL_TRANSPORTS) {
        return Err(format!("no `{ALL_TRANSPORTS}` feature"));
    }
    // Only plain feature names are transports, not `dep:x` or `crate/feature`.
    let all: Vec<String> = list(ALL_TRANSPORTS)?
        .into_iter()
        .filter(|f| !f.contains(':') && !f.contains('/') && features.contains_key(f.as_str()))
        .collect();
    if all.is_empty() {
        return Err(format!("feature `{ALL_TRANSPORTS}` lists no transport"));
    }
    let default = list("default")?
        .into_iter()
        .filter(|f| all.contains(f))
        .collect();
    Ok(Transports { all, default })
}

/// The feature sets of the matrix: each transport alone, `all-transports`, default.
pub fn feature_sets() -> Result<Vec<FeatureSet>, String> {
    Ok(sets_for(&transports()?))
}

fn sets_for(t: &Transports) -> Vec<FeatureSet> {
    let only = |features: &str| {
        vec![
            "-p".to_owned(),
            TEST_PACKAGE.to_owned(),
            "--no-default-features".to_owned(),
            "--features".to_owned(),
            features.to_owned(),
        ]
    };
    let mut sets: Vec<FeatureSet> = t
        .all
        .iter()
        .map(|name| FeatureSet {
            name: name.clone(),
            cargo_args: only(name),
            transports: vec![name.clone()],
        })
        .collect();
    sets.push(FeatureSet {
        name: ALL_TRANSPORTS.to_owned(),
        cargo_args: only(ALL_TRANSPORTS),
        transports: t.all.clone(),
    });
    sets.push(FeatureSet {
        name: "default".to_owned(),
        cargo_args: vec!["-p".to_owned(), TEST_PACKAGE.to_owned()],
        transports: t.default.clone(),
    });
    sets
}

/// The row after the feature sets: the crates' own tests (ring and codec unit
/// tests, blocking behaviour of shm, ...) of `conduit-core` and of the crate of
/// each given transport (`conduit-<t>`), with all features.
fn crate_tests_set(transports: &[String]) -> FeatureSet {
    let mut cargo_args = vec!["-p".to_owned(), CORE_PACKAGE.to_owned()];
    for t in transports {
        cargo_args.push("-p".to_owned());
        cargo_args.push(format!("conduit-{t}"));
    }
    cargo_args.push("--all-features".to_owned());
    FeatureSet {
        name: CRATE_TESTS.to_owned(),
        cargo_args,
        transports: transports.to_vec(),
    }
}

#[derive(Debug, Default)]
struct Options {
    transport: Option<String>,
    cases: Option<String>,
    quick: bool,
    profile: Option<String>,
    runner_args: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--transport" => o.transport = Some(value("--transport")?),
            "--cases" => {
                let n = value("--cases")?;
                n.parse::<u32>()
                    .map_err(|_| format!("--cases wants a number, not `{n}`"))?;
                o.cases = Some(n);
            }
            "--quick" => o.quick = true,
            "--profile" => o.profile = Some(value("--profile")?),
            "--" => {
                o.runner_args = it.by_ref().cloned().collect();
            }
            other => return Err(format!("unknown argument `{other}`\n\n{HELP}")),
        }
    }
    Ok(Some(o))
}

struct Row {
    set: FeatureSet,
    ok: bool,
    counts: Option<Counts>,
    time: Duration,
}

/// Runs the matrix; fails if any feature set fails.
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse_args(args)? else {
        println!("{HELP}");
        return Ok(());
    };
    let transports = transports()?;
    let mut sets = sets_for(&transports);
    if let Some(t) = &opts.transport {
        if !transports.all.contains(t) {
            return Err(format!(
                "unknown transport `{t}`; the transports are: {}",
                transports.all.join(", ")
            ));
        }
        sets.retain(|s| s.transports.contains(t));
        sets.push(crate_tests_set(std::slice::from_ref(t)));
    } else {
        sets.push(crate_tests_set(&transports.all));
    }

    let sh = util::shell()?;
    let cargo = util::cargo();
    let nextest = util::have_nextest(&sh);
    let profile = opts
        .profile
        .clone()
        .or_else(|| {
            env::var("CONDUIT_NEXTEST_PROFILE")
                .ok()
                .filter(|p| !p.is_empty())
        })
        .unwrap_or_else(|| "default".to_owned());
    let cases = opts
        .cases
        .clone()
        .or_else(|| opts.quick.then(|| "8".to_owned()));
    let runner = if nextest {
        format!("cargo nextest (profile `{profile}`)")
    } else {
        "cargo test (cargo-nextest not found)".to_owned()
    };
    println!(
        "test-matrix: {} feature set(s) of {TEST_PACKAGE} with {runner}; PROPTEST_CASES={}",
        sets.len(),
        cases
            .clone()
            .or_else(|| env::var("PROPTEST_CASES").ok())
            .unwrap_or_else(|| "(proptest default)".to_owned())
    );

    let junit_dir = util::project_root()
        .join("target")
        .join("nextest")
        .join(&profile);
    let mut rows = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        println!(
            "\n== test-matrix [{}/{}] {} ({})",
            i + 1,
            sets.len(),
            set.name,
            set.transports.join("+")
        );
        let mut cmd = if nextest {
            sh.cmd(&cargo)
                .args(["nextest", "run"])
                .args(&set.cargo_args)
                .args(["--profile", &profile])
        } else {
            sh.cmd(&cargo)
                .args(["test", "--no-fail-fast"])
                .args(&set.cargo_args)
        };
        if !opts.runner_args.is_empty() {
            if !nextest {
                cmd = cmd.arg("--");
            }
            cmd = cmd.args(&opts.runner_args);
        }
        if let Some(n) = &cases {
            cmd = cmd.env("PROPTEST_CASES", n);
        }
        let junit = junit_dir.join("junit.xml");
        if nextest {
            let _ = fs::remove_file(&junit);
        }
        let start = Instant::now();
        let teed = util::run_tee(cmd)?;
        let time = start.elapsed();
        let counts = if nextest {
            util::parse_nextest_summary(&teed.text)
        } else {
            util::parse_libtest_results(&teed.text)
        };
        let ok = teed.status.success() && counts.is_some_and(|c| c.failed == 0);
        if nextest && junit.is_file() {
            keep_junit(&junit, &junit_dir.join(format!("junit-{}.xml", set.name)));
        }
        rows.push(Row {
            set: set.clone(),
            ok,
            counts,
            time,
        });
    }

    report(&rows, cases.as_deref());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.set.name.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failing feature set(s): {}", failed.join(", ")))
    }
}

/// nextest writes `junit.xml` afresh on every run; keep a copy per feature set.
fn keep_junit(from: &PathBuf, to: &PathBuf) {
    if let Err(e) = fs::copy(from, to) {
        eprintln!(
            "test-matrix: warning: cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        );
    }
}

fn report(rows: &[Row], cases: Option<&str>) {
    let count =
        |c: Option<Counts>, f: fn(Counts) -> u64| c.map_or("?".to_owned(), |c| f(c).to_string());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.set.name.clone(),
                r.set.transports.join("+"),
                if r.ok { "ok" } else { "FAILED" }.to_owned(),
                count(r.counts, |c| c.passed),
                count(r.counts, |c| c.failed),
                count(r.counts, |c| c.skipped),
                util::secs(r.time),
            ]
        })
        .collect();
    println!(
        "\ntest-matrix results (PROPTEST_CASES={}):",
        cases.unwrap_or("default")
    );
    util::print_table(
        &[
            "feature set",
            "transports",
            "result",
            "passed",
            "failed",
            "skipped",
            "secs",
        ],
        3,
        &table,
    );
    let mut total = Counts::default();
    for r in rows {
        total.add(r.counts.unwrap_or_default());
    }
    let broken = rows.iter().filter(|r| r.counts.is_none()).count();
    // A failed build or run that printed no counts still counts as one failure.
    println!(
        "test-matrix: {} passed, {} failed, {} skipped",
        total.passed,
        total.failed + broken as u64,
        total.skipped
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[package]
name = "conduit"

[features]
default = ["pipe", "socketpair", "std"]
std = []
pipe = ["dep:conduit-pipe"]
socketpair = ["dep:conduit-socketpair"]
named = []
shm = []
# every transport
all-transports = [
    "pipe",
    "socketpair", # comment
    "named",
    "conduit-pipe?/extra",
]
"#;

    #[test]
    fn reads_transports() {
        let t = parse_transports(MANIFEST);
        assert_eq!(
            t,
            Ok(Transports {
                all: vec!["pipe".into(), "socketpair".into(), "named".into()],
                default: vec!["pipe".into(), "socketpair".into()],
            })
        );
        assert!(parse_transports("[features]\ndefault = []\n").is_err());
    }

    #[test]
    fn builds_sets() {
        let t = Transports {
            all: vec!["pipe".into(), "shm".into()],
            default: vec!["pipe".into()],
        };
        let names: Vec<String> = sets_for(&t).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["pipe", "shm", "all-transports", "default"]);
        let sets = sets_for(&t);
        assert_eq!(
            sets[1].cargo_args,
            [
                "-p",
                "conduit-tests",
                "--no-default-features",
                "--features",
                "shm"
            ]
        );
        assert_eq!(sets[3].cargo_args, ["-p", "conduit-tests"]);
        let crates = crate_tests_set(&t.all);
        assert_eq!(
            crates.cargo_args,
            [
                "-p",
                "conduit-core",
                "-p",
                "conduit-pipe",
                "-p",
                "conduit-shm",
                "--all-features"
            ]
        );
    }

    #[test]
    fn args() {
        let args: Vec<String> = ["--quick", "--transport", "shm", "--", "prop_"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_args(&args);
        assert!(matches!(o, Ok(Some(Options { quick: true, .. }))));
        if let Ok(Some(o)) = o {
            assert_eq!(o.transport.as_deref(), Some("shm"));
            assert_eq!(o.runner_args, ["prop_"]);
        }
        assert!(parse_args(&["--bogus".to_string()]).is_err());
        assert!(parse_args(&["--cases".to_string(), "x".to_string()]).is_err());
    }
}
