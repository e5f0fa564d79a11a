//! `cargo xtask test-matrix`: runs the `conduit-tests` suite once per transport
//! feature set, then the transport crates' own tests, and prints a table of
//! the results.
//!
//! The transports are read at run time from the `all-transports` feature of
//! `crates/conduit/Cargo.toml`: every plain feature listed there is a transport.
//! The feature sets are each transport alone, `all-transports`, and the default
//! set. Adding a transport needs no change here.
//!
//! The counts in the table come from nextest's JUnit report when the nextest
//! profile writes one (`[profile.<p>.junit]` in `.config/nextest.toml`; the
//! `ci` profile does); it is read right after each run, before the next run
//! overwrites it, and kept as `junit-<set>.xml`. Without a report (the
//! `default` profile) they come from nextest's closing summary line, and
//! without cargo-nextest from libtest's `test result:` lines. The table says
//! which, per row.

use std::{
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use toml::{Table, Value};

use crate::{
    flags, junit,
    util::{self, Counts},
};

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
/// nextest's configuration.
const NEXTEST_CONFIG: &str = ".config/nextest.toml";

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

/// Where the counts of a row come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// nextest's JUnit report.
    Junit,
    /// Passed and failed from the JUnit report, skipped from nextest's summary
    /// line: the report leaves skipped tests out.
    JunitSkippedFromSummary,
    /// nextest's closing summary line: the profile writes no JUnit report.
    Summary,
    /// libtest's `test result:` lines (`cargo test`).
    Libtest,
    /// Nothing to count: the build or the runner failed.
    Nothing,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Junit => "junit",
            Source::JunitSkippedFromSummary => "junit+summary",
            Source::Summary => "summary",
            Source::Libtest => "libtest",
            Source::Nothing => "-",
        }
    }

    fn explain(self, junit: Option<&Path>) -> String {
        let report = junit.map_or_else(
            || "the JUnit report".to_owned(),
            |p| {
                format!(
                    "the JUnit report ({})",
                    p.with_file_name("junit-<set>.xml").display()
                )
            },
        );
        match self {
            Source::Junit => format!("junit: {report}"),
            Source::JunitSkippedFromSummary => format!(
                "junit+summary: passed and failed from {report}, skipped from nextest's \
                 summary line (the report leaves skipped tests out unless the nextest profile \
                 sets junit.report-skipped = \"all\")"
            ),
            Source::Summary => "summary: nextest's closing summary line (this nextest profile \
                 writes no JUnit report)"
                .to_owned(),
            Source::Libtest => "libtest: the `test result:` lines of cargo test (cargo-nextest \
                 not found): doctests count too, tests left out by a filter do not"
                .to_owned(),
            Source::Nothing => "-: no counts (the build or the test runner failed)".to_owned(),
        }
    }
}

struct Row {
    set: FeatureSet,
    ok: bool,
    counts: Option<Counts>,
    source: Source,
    time: Duration,
}

/// Runs the matrix; fails if any feature set fails. `runner_args` go to the
/// test runner unchanged.
pub fn run(opts: &flags::TestMatrix, runner_args: &[OsString]) -> Result<(), String> {
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
        .map(|n| n.to_string())
        .or_else(|| opts.quick.then(|| "8".to_owned()));
    let junit = if nextest {
        nextest_junit_path(&profile)?
    } else {
        None
    };
    let runner = match (nextest, &junit) {
        (true, Some(_)) => format!("cargo nextest (profile `{profile}`, JUnit report)"),
        (true, None) => format!("cargo nextest (profile `{profile}`, no JUnit report)"),
        (false, _) => "cargo test (cargo-nextest not found)".to_owned(),
    };
    println!(
        "test-matrix: {} feature set(s) of {TEST_PACKAGE} with {runner}; PROPTEST_CASES={}",
        sets.len(),
        cases
            .clone()
            .or_else(|| env::var("PROPTEST_CASES").ok())
            .unwrap_or_else(|| "(proptest default)".to_owned())
    );

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
        if !runner_args.is_empty() {
            if !nextest {
                cmd = cmd.arg("--");
            }
            cmd = cmd.args(runner_args);
        }
        if let Some(n) = &cases {
            cmd = cmd.env("PROPTEST_CASES", n);
        }
        // A report left by the previous set must not be read as this one's.
        let junit = junit.as_deref().filter(|path| remove_stale(path));
        let start = Instant::now();
        let teed = util::run_tee(cmd)?;
        let time = start.elapsed();
        let (counts, source) = if nextest {
            nextest_counts(&teed.text, junit, &set.name)
        } else {
            let counts = util::parse_libtest_results(&teed.text);
            (counts, counts.map_or(Source::Nothing, |_| Source::Libtest))
        };
        let ok = teed.status.success() && counts.is_some_and(|c| c.failed == 0);
        rows.push(Row {
            set: set.clone(),
            ok,
            counts,
            source,
            time,
        });
    }

    report(&rows, cases.as_deref(), junit.as_deref());
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

/// Removes the report of an earlier run; false if it is there and cannot go.
fn remove_stale(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            eprintln!(
                "test-matrix: warning: cannot remove {}: {e}; not reading JUnit reports",
                path.display()
            );
            false
        }
    }
}

/// The counts of one nextest run: from the JUnit report at `junit` when there
/// is one, else from the summary line in `output`.
fn nextest_counts(output: &str, junit: Option<&Path>, set: &str) -> (Option<Counts>, Source) {
    let summary = util::parse_nextest_summary(output);
    let from_summary = (
        summary,
        summary.map_or(Source::Nothing, |_| Source::Summary),
    );
    let Some(path) = junit.filter(|p| p.is_file()) else {
        return from_summary;
    };
    keep_junit(path, &path.with_file_name(format!("junit-{set}.xml")));
    let report = match junit::read(path) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("test-matrix: warning: cannot read the JUnit report: {e}");
            return from_summary;
        }
    };
    let mut counts = report;
    let mut source = Source::Junit;
    if let Some(summary) = summary {
        if (summary.passed, summary.failed) != (report.passed, report.failed) {
            eprintln!(
                "test-matrix: warning: the JUnit report ({} passed, {} failed) and nextest's \
                 summary ({} passed, {} failed) disagree; the table shows the report",
                report.passed, report.failed, summary.passed, summary.failed
            );
        }
        if report.skipped == 0 && summary.skipped > 0 {
            counts.skipped = summary.skipped;
            source = Source::JunitSkippedFromSummary;
        }
    }
    (Some(counts), source)
}

/// Where nextest writes the JUnit report of `profile`, if the profile writes
/// one: `<store dir>/<profile>/<junit.path>`, as set in `.config/nextest.toml`
/// (a profile inherits `junit.path` from `default`).
fn nextest_junit_path(profile: &str) -> Result<Option<PathBuf>, String> {
    let root = util::project_root();
    let path = root.join(NEXTEST_CONFIG);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let found = junit_in_config(&text, profile).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(found.map(|(store, junit)| root.join(store).join(profile).join(junit)))
}

/// The store directory and the JUnit path of `profile` in nextest's config.
fn junit_in_config(config: &str, profile: &str) -> Result<Option<(String, String)>, String> {
    let table: Table = config.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let get = |path: &[&str]| -> Option<String> {
        let (last, parents) = path.split_last()?;
        let mut t = &table;
        for key in parents {
            t = t.get(*key)?.as_table()?;
        }
        t.get(*last)?.as_str().map(str::to_owned)
    };
    let junit = get(&["profile", profile, "junit", "path"])
        .or_else(|| get(&["profile", "default", "junit", "path"]));
    let store = get(&["store", "dir"]).unwrap_or_else(|| "target/nextest".to_owned());
    Ok(junit.map(|junit| (store, junit)))
}

/// nextest writes its report afresh on every run; keep a copy per feature set.
fn keep_junit(from: &Path, to: &Path) {
    if let Err(e) = fs::copy(from, to) {
        eprintln!(
            "test-matrix: warning: cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        );
    }
}

fn report(rows: &[Row], cases: Option<&str>, junit: Option<&Path>) {
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
                r.source.label().to_owned(),
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
            "counts",
        ],
        3,
        &table,
    );
    let mut sources: Vec<Source> = Vec::new();
    for r in rows {
        if !sources.contains(&r.source) {
            sources.push(r.source);
        }
    }
    for source in sources {
        println!("  counts from {}", source.explain(junit));
    }
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
    fn finds_the_junit_report_in_nextest_config() {
        let config = r#"
[profile.default]
slow-timeout = { period = "60s", terminate-after = 5 }
[profile.ci]
fail-fast = false
[profile.ci.junit]
path = "junit.xml"
"#;
        let ci = Some(("target/nextest".to_owned(), "junit.xml".to_owned()));
        assert_eq!(junit_in_config(config, "ci"), Ok(ci));
        assert_eq!(junit_in_config(config, "default"), Ok(None));
        assert_eq!(junit_in_config(config, "other"), Ok(None));
        // Profiles inherit from `default`; the store directory can move.
        let config = "[store]\ndir = \"out/nt\"\n[profile.default.junit]\npath = \"j.xml\"\n";
        let inherited = Some(("out/nt".to_owned(), "j.xml".to_owned()));
        assert_eq!(junit_in_config(config, "ci"), Ok(inherited));
        assert!(junit_in_config("[profile", "ci").is_err());
    }

    #[test]
    fn counts_from_junit_else_summary() {
        let dir = std::env::temp_dir().join(format!("xtask-junit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junit.xml");
        let summary = "     Summary [   1.1s] 15 tests run: 15 passed, 4 skipped\n";

        // No report: the summary line.
        let (counts, source) = nextest_counts(summary, Some(&path), "named");
        assert_eq!(source, Source::Summary);
        assert_eq!(counts.map(|c| (c.passed, c.skipped)), Some((15, 4)));
        assert_eq!(nextest_counts("", None, "x"), (None, Source::Nothing));

        // A report without skipped tests: those come from the summary.
        fs::write(
            &path,
            r#"<testsuites tests="15" skipped="0" failures="0" errors="0"/>"#,
        )
        .unwrap();
        let (counts, source) = nextest_counts(summary, Some(&path), "named");
        assert_eq!(source, Source::JunitSkippedFromSummary);
        assert_eq!(
            counts.map(|c| (c.passed, c.failed, c.skipped)),
            Some((15, 0, 4))
        );
        assert!(dir.join("junit-named.xml").is_file());

        // A report with them (junit.report-skipped): the report alone.
        fs::write(
            &path,
            r#"<testsuites tests="19" skipped="4" failures="1" errors="0"/>"#,
        )
        .unwrap();
        let (counts, source) = nextest_counts("", Some(&path), "named");
        assert_eq!(source, Source::Junit);
        assert_eq!(
            counts.map(|c| (c.passed, c.failed, c.skipped)),
            Some((14, 1, 4))
        );

        assert!(remove_stale(&path));
        assert!(!path.exists());
        assert!(remove_stale(&path));
        fs::remove_dir_all(&dir).unwrap();
    }
}
