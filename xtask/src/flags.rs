//! The command line of `cargo xtask`, declared once with [`xflags`] (as in
//! rust-analyzer's xtask). The doc comments are the `--help` text.
//!
//! After changing the grammar, regenerate the structs at the end of this file
//! with `UPDATE_XFLAGS=1 cargo build -p xtask`.
//!
//! What xflags does not do is done here, before it sees the arguments:
//! everything after the first `--` is split off for the runner of
//! `test-matrix` and `xcheck` (so a stray positional argument is still an
//! error), and `--flag=value` is split into `--flag value`.
//! `-h`/`--help` anywhere prints the help of the command it follows.

use std::{ffi::OsString, path::PathBuf};

xflags::xflags! {
    src "./src/flags.rs"

    /// usage: cargo xtask <command> [options]
    ///
    /// Project chores for conduit. CI calls the same commands.
    /// `cargo xtask <command> --help` tells more about one command.
    cmd xtask {
        /// usage: cargo xtask test-matrix [options] [-- <runner args>]
        ///
        /// Runs the conduit-tests suite once per transport feature set: each
        /// transport alone (--no-default-features --features <t>),
        /// all-transports, and the default set; then the crates' own tests
        /// (conduit-core and conduit-<t>). Uses `cargo nextest run` when
        /// cargo-nextest is installed, else `cargo test`. Prints a table of
        /// passed / failed / skipped per feature set, read from nextest's JUnit
        /// report when the profile writes one (the `ci` profile does), else
        /// from the runner's own summary lines.
        ///
        /// -- <args>  passed on to the runner unchanged (test filters, ...)
        cmd test-matrix {
            /// Only the feature sets that contain transport <t> (and the
            /// tests of conduit-core and conduit-<t>).
            optional --transport t: String
            /// PROPTEST_CASES for the property tests.
            optional --cases n: u32
            /// PROPTEST_CASES=8 unless --cases is given.
            optional --quick
            /// nextest profile (default: $CONDUIT_NEXTEST_PROFILE, else `default`).
            optional --profile p: String
        }

        /// usage: cargo xtask ci [options]
        ///
        /// Steps: cargo fmt --check; clippy -D warnings per feature set of the
        /// test matrix (-p conduit -p conduit-tests) and once with --workspace
        /// --all-features; xtask's own tests; cargo doc with RUSTDOCFLAGS=-D
        /// warnings; test-matrix; soak --messages 100000; chaos --iterations
        /// 50; xcheck; fuzz (5 s per target); actionlint. All steps run even
        /// when one fails; the command fails if any step failed.
        cmd ci {
            /// Do not run the test matrix.
            optional --skip-test-matrix
            /// Do not run the short soak and chaos runs.
            optional --skip-reliability
            /// Do not run the cross-target checks.
            optional --skip-xcheck
            /// Do not lint the GitHub workflows.
            optional --skip-actionlint
            /// Do not run the short fuzz smoke run (`fuzz --time 5`).
            optional --skip-fuzz
            /// Pass --quick to test-matrix (PROPTEST_CASES=8).
            optional --quick
        }

        /// usage: cargo xtask xcheck [options] [-- <test binary args>]
        ///
        /// Linux x86_64 with Debian packages only (installed with apt-get when
        /// missing): clippy -D warnings for Windows and macOS targets with
        /// Debian's rustc-web and -Zbuild-std, then the x86_64-pc-windows-gnu
        /// tests under wine64.
        ///
        /// The cargo package options below replace the default selection of
        /// both steps (clippy: --workspace --all-features; Wine tests:
        /// --workspace --all-features except conduit-bench and xtask).
        ///
        /// -- <args>  passed to the Windows test binaries
        ///
        /// environment: XCHECK_HOME (Wine prefix cache, default ~/.cache/xcheck),
        /// XCHECK_INSTALL=0 (fail instead of installing missing packages)
        cmd xcheck {
            /// Skip the Wine test run.
            optional --no-wine
            /// Targets for clippy, comma separated (default:
            /// x86_64-pc-windows-msvc, x86_64-pc-windows-gnu,
            /// aarch64-apple-darwin, x86_64-apple-darwin).
            optional --targets list: String
            /// cargo: package to check and test (repeatable).
            repeated -p, --package spec: String
            /// cargo: all packages of the workspace.
            optional --workspace
            /// cargo: exclude a package (repeatable, with --workspace).
            repeated --exclude spec: String
            /// cargo: features to enable (repeatable).
            repeated -F, --features features: String
            /// cargo: all features.
            optional --all-features
            /// cargo: not the default features.
            optional --no-default-features
        }

        /// usage: cargo xtask bench [--quick] [--only <system>[,<system>...]]... [--reps <n>] [--out <dir>] [--no-pin] [--list]
        ///
        /// Builds crates/conduit-bench in release mode and runs it: conduit's
        /// transports side by side with the raw OS limits (pipe, socketpair,
        /// shared-memory spin and futex ping-pong, memcpy), ipc-channel,
        /// interprocess, iceoryx2 (Linux) and Python multiprocessing (skipped
        /// with a note without python3), in interleaved rounds. Prints a table and writes results.json and bench.svg to
        /// target/conduit-bench/. The options are passed to the bench binary.
        /// See docs/benchmarks.md for how to read the output.
        cmd bench {
            /// Short warm-up and 3 rounds (the measuring takes about a minute).
            optional --quick
            /// The full run (the default; not with --quick).
            optional --full
            /// Only these systems (repeatable or a comma list): an id
            /// (conduit-shm), a group (raw, conduit, ipc-channel, interprocess,
            /// iceoryx2, python) or a word of an id (shm, pipe); the raw limits
            /// they are
            /// compared with run too. `queue` selects the queue section
            /// (conduit::queue 1P/1C, 4P/1C, 4P/4C against Python mp.Queue and
            /// the shm channel; the table's Python queue is `python-queue`);
            /// `spawn` selects the spawn + join section (conduit Process, std
            /// Command, Python fork/spawn); `pool` the Pool.map section (conduit
            /// Pool, Python Pool, rayon).
            repeated --only system: String
            /// Rounds: timed repetitions per case, interleaved (default 5,
            /// --quick 3; at least 3).
            optional --reps n: usize
            /// Output directory (default target/conduit-bench).
            optional --out dir: PathBuf
            /// Do not pin the two processes to distinct CPUs.
            optional --no-pin
            /// List the systems and workloads, then exit.
            optional --list
        }

        /// usage: cargo xtask fuzz [--target <t>] [--time <s>]
        ///
        /// Coverage-guided fuzzing with cargo-fuzz (libFuzzer) of the targets
        /// in fuzz/fuzz_targets: stream_reader, cbor_decode, cbor_differential, shm_consumer,
        /// handoff_token. Installs cargo-fuzz when it is missing and builds
        /// with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly-only flags).
        /// Starts from fuzz/seeds/<target>; crashes land in
        /// target/fuzz-artifacts/<target> and fail the command. Prints execs,
        /// coverage and corpus size per target.
        cmd fuzz {
            /// Only this target.
            optional --target t: String
            /// Seconds per target (default 60).
            optional --time s: u32
        }

        /// usage: cargo xtask soak [--transport <t>] [--messages <n>] [--seed <s>]
        ///
        /// Builds crates/conduit-reliability in release mode and streams <n>
        /// messages (1 B to 64 KiB, 90 % of them up to 256 B), each with a
        /// sequence number and a checksum, between two processes on every
        /// transport (pipe, socketpair, shm, named): one-way and echoed, as
        /// Vec<u8>, then <n>/10 as a typed struct. Prints lost / duplicated /
        /// reordered / corrupt counts, msg/s and MB/s per transport and mode;
        /// fails on any defect. See docs/reliability.md.
        cmd soak {
            /// Only this transport: pipe, socketpair, shm or named.
            optional --transport t: String
            /// Messages per transport and raw mode (default 10000000).
            optional --messages n: u64
            /// Seed of the message sizes (default: random, printed).
            optional --seed s: u64
        }

        /// usage: cargo xtask chaos [--transport <t>] [--iterations <n>] [--seed <s>]
        ///
        /// Builds crates/conduit-reliability in release mode and kills the peer
        /// process (SIGKILL; TerminateProcess on Windows) after a random delay
        /// while this side is blocked in recv, blocked in send on a full
        /// channel, sending or receiving a 16-64 MiB message, handing over or
        /// shaking hands, or looping over try_recv / recv_timeout(1 ms) /
        /// poll(1 ms). Checks that every call returns Disconnected (after at
        /// most one Protocol for a truncated frame) within 1 s of the kill, with
        /// no panic, no leaked descriptor (Linux) and nothing left in the named
        /// socket directory. Prints runs, failures and max ms to Disconnected
        /// per transport and scenario; fails on any failure.
        cmd chaos {
            /// Only this transport: pipe, socketpair, shm or named.
            optional --transport t: String
            /// Kills per transport and scenario (default 200).
            optional --iterations n: u32
            /// Seed of the kill points (default: random, printed; a failure
            /// repeats with --transport <t> --seed <s>).
            optional --seed s: u64
        }
    }
}

/// The arguments after the first `--`, which belong to the runner.
pub type Passthrough = Vec<OsString>;

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run a command; the second field holds the arguments after `--`.
    Run(Xtask, Passthrough),
    /// Print this help and succeed.
    Help(String),
}

/// The commands, for error messages.
const COMMANDS: [&str; 7] = [
    "test-matrix",
    "ci",
    "xcheck",
    "bench",
    "fuzz",
    "soak",
    "chaos",
];

/// Parses the arguments of `cargo xtask` (without the program name). An error
/// names the offending argument and points at `--help`.
pub fn parse(args: Vec<OsString>) -> Result<Parsed, String> {
    let (mut ours, passthrough) = split_args(args);
    // `cargo xtask` alone and `cargo xtask help [command]` print the help too.
    match ours.first() {
        None => ours.push("--help".into()),
        Some(first) if first == "help" => {
            ours.remove(0);
            ours.push("--help".into());
        }
        Some(_) => {}
    }
    let command = ours
        .first()
        .and_then(|a| a.to_str())
        .filter(|a| COMMANDS.contains(a))
        .map(str::to_owned);
    match Xtask::from_vec(ours) {
        Ok(flags) => Ok(Parsed::Run(flags, passthrough)),
        Err(e) if e.is_help() => {
            let all = e.to_string();
            let help = match command {
                Some(c) => help_of(&all, &c),
                None => overview(&all),
            };
            Ok(Parsed::Help(
                help.unwrap_or_else(|| all.trim_end().to_owned()),
            ))
        }
        Err(e) => Err(match command {
            Some(c) => format!("{e} (see `cargo xtask {c} --help`)"),
            None => format!(
                "{e} (the commands are {}; see `cargo xtask --help`)",
                COMMANDS.join(", ")
            ),
        }),
    }
}

/// Splits `args` at the first `--` and splits `--flag=value` before it.
fn split_args(args: Vec<OsString>) -> (Vec<OsString>, Passthrough) {
    let mut ours = Vec::new();
    let mut it = args.into_iter();
    for arg in it.by_ref() {
        if arg == "--" {
            break;
        }
        match arg
            .to_str()
            .and_then(|a| a.strip_prefix("--")?.split_once('='))
        {
            Some((flag, value)) => {
                ours.push(format!("--{flag}").into());
                ours.push(value.into());
            }
            None => ours.push(arg),
        }
    }
    (ours, it.collect())
}

/// The help of `cargo xtask` itself: xflags 0.3 prints the help of every
/// command for `--help`; keep its first section and the usage line of each
/// command.
fn overview(help: &str) -> Option<String> {
    let (head, _) = help.split_once("SUBCOMMANDS:")?;
    let mut out = format!("{}\n\ncommands:\n", head.trim_end());
    for command in COMMANDS {
        let usage = help_of(help, command)?;
        let usage = usage.lines().nth(1)?.trim().strip_prefix("usage: ")?;
        out.push_str(&format!("  {usage}\n"));
    }
    Some(out.trim_end().to_owned())
}

/// The section of the generated help that belongs to `command` (`bench`, ...):
/// xflags 0.3 prints the help of every command for `--help`.
fn help_of(help: &str, command: &str) -> Option<String> {
    let head = format!("xtask {command}\n");
    let start = help.find(&format!("\n{head}"))? + 1;
    let rest = &help[start + head.len()..];
    let end = rest.find("\n\nxtask ").unwrap_or(rest.len());
    Some(format!("{head}{}", rest[..end].trim_end()))
}

impl Bench {
    /// The arguments for the bench binary: the options as given, in a fixed order.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |on: bool, name: &str| {
            if on {
                args.push(name.into());
            }
        };
        flag(self.quick, "--quick");
        flag(self.full, "--full");
        flag(self.no_pin, "--no-pin");
        flag(self.list, "--list");
        for only in &self.only {
            args.extend(["--only".into(), only.into()]);
        }
        if let Some(n) = self.reps {
            args.extend(["--reps".into(), n.to_string().into()]);
        }
        if let Some(dir) = &self.out {
            args.extend(["--out".into(), dir.clone().into_os_string()]);
        }
        args
    }
}

/// `--transport`, `--seed` and one count, as arguments for conduit-reliability.
fn reliability_args(
    transport: &Option<String>,
    count: Option<(&str, u64)>,
    seed: Option<u64>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(t) = transport {
        args.extend(["--transport".into(), t.into()]);
    }
    if let Some((flag, n)) = count {
        args.extend([flag.into(), n.to_string().into()]);
    }
    if let Some(s) = seed {
        args.extend(["--seed".into(), s.to_string().into()]);
    }
    args
}

impl Soak {
    /// The arguments for `conduit-reliability soak`.
    pub fn to_args(&self) -> Vec<OsString> {
        reliability_args(
            &self.transport,
            self.messages.map(|n| ("--messages", n)),
            self.seed,
        )
    }
}

impl Chaos {
    /// The arguments for `conduit-reliability chaos`.
    pub fn to_args(&self) -> Vec<OsString> {
        let count = self.iterations.map(|n| ("--iterations", u64::from(n)));
        reliability_args(&self.transport, count, self.seed)
    }
}

impl Xcheck {
    /// The cargo package selection given on the command line, if any.
    pub fn cargo_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for p in &self.package {
            args.extend(["--package".to_owned(), p.clone()]);
        }
        if self.workspace {
            args.push("--workspace".to_owned());
        }
        for p in &self.exclude {
            args.extend(["--exclude".to_owned(), p.clone()]);
        }
        for f in &self.features {
            args.extend(["--features".to_owned(), f.clone()]);
        }
        if self.all_features {
            args.push("--all-features".to_owned());
        }
        if self.no_default_features {
            args.push("--no-default-features".to_owned());
        }
        args
    }
}

// generated start
// The following code is generated by `xflags` macro.
// Run `env UPDATE_XFLAGS=1 cargo build` to regenerate.
#[derive(Debug)]
pub struct Xtask {
    pub subcommand: XtaskCmd,
}

#[derive(Debug)]
pub enum XtaskCmd {
    TestMatrix(TestMatrix),
    Ci(Ci),
    Xcheck(Xcheck),
    Bench(Bench),
    Fuzz(Fuzz),
    Soak(Soak),
    Chaos(Chaos),
}

#[derive(Debug)]
pub struct TestMatrix {
    pub transport: Option<String>,
    pub cases: Option<u32>,
    pub quick: bool,
    pub profile: Option<String>,
}

#[derive(Debug)]
pub struct Ci {
    pub skip_test_matrix: bool,
    pub skip_reliability: bool,
    pub skip_xcheck: bool,
    pub skip_actionlint: bool,
    pub skip_fuzz: bool,
    pub quick: bool,
}

#[derive(Debug)]
pub struct Xcheck {
    pub no_wine: bool,
    pub targets: Option<String>,
    pub package: Vec<String>,
    pub workspace: bool,
    pub exclude: Vec<String>,
    pub features: Vec<String>,
    pub all_features: bool,
    pub no_default_features: bool,
}

#[derive(Debug)]
pub struct Bench {
    pub quick: bool,
    pub full: bool,
    pub only: Vec<String>,
    pub reps: Option<usize>,
    pub out: Option<PathBuf>,
    pub no_pin: bool,
    pub list: bool,
}

#[derive(Debug)]
pub struct Fuzz {
    pub target: Option<String>,
    pub time: Option<u32>,
}

#[derive(Debug)]
pub struct Soak {
    pub transport: Option<String>,
    pub messages: Option<u64>,
    pub seed: Option<u64>,
}

#[derive(Debug)]
pub struct Chaos {
    pub transport: Option<String>,
    pub iterations: Option<u32>,
    pub seed: Option<u64>,
}

impl Xtask {
    #[allow(dead_code)]
    pub fn from_env_or_exit() -> Self {
        Self::from_env_or_exit_()
    }

    #[allow(dead_code)]
    pub fn from_env() -> xflags::Result<Self> {
        Self::from_env_()
    }

    #[allow(dead_code)]
    pub fn from_vec(args: Vec<std::ffi::OsString>) -> xflags::Result<Self> {
        Self::from_vec_(args)
    }
}
// generated end

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(OsString::from).collect())
    }

    fn run(args: &[&str]) -> (XtaskCmd, Passthrough) {
        match parse_strs(args) {
            Ok(Parsed::Run(flags, passthrough)) => (flags.subcommand, passthrough),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn help(args: &[&str]) -> String {
        match parse_strs(args) {
            Ok(Parsed::Help(help)) => help,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn test_matrix() {
        let (cmd, rest) = run(&[
            "test-matrix",
            "--quick",
            "--transport=shm",
            "--",
            "prop_",
            "--no-capture",
        ]);
        let XtaskCmd::TestMatrix(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert!(f.quick);
        assert_eq!(f.transport.as_deref(), Some("shm"));
        assert_eq!(f.cases, None);
        assert_eq!(rest, ["prop_", "--no-capture"]);
        let (cmd, _) = run(&["test-matrix", "--cases", "32", "--profile", "ci"]);
        let XtaskCmd::TestMatrix(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!((f.cases, f.profile.as_deref()), (Some(32), Some("ci")));
        assert!(parse_strs(&["test-matrix", "--cases", "x"]).is_err());
        // A runner argument needs `--`.
        assert!(parse_strs(&["test-matrix", "prop_"]).is_err());
    }

    #[test]
    fn ci() {
        let (cmd, _) = run(&["ci", "--skip-xcheck", "--quick"]);
        let XtaskCmd::Ci(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert!(f.skip_xcheck && f.quick && !f.skip_test_matrix && !f.skip_actionlint);
        assert!(!f.skip_reliability);
        let (cmd, _) = run(&[
            "ci",
            "--skip-test-matrix",
            "--skip-actionlint",
            "--skip-reliability",
        ]);
        let XtaskCmd::Ci(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert!(f.skip_test_matrix && f.skip_actionlint && f.skip_reliability);
    }

    #[test]
    fn xcheck() {
        let (cmd, rest) = run(&[
            "xcheck",
            "--no-wine",
            "--targets",
            "a,b",
            "-p",
            "x",
            "--features=f",
            "--",
            "--nocapture",
        ]);
        let XtaskCmd::Xcheck(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert!(f.no_wine);
        assert_eq!(f.targets.as_deref(), Some("a,b"));
        assert_eq!(f.cargo_args(), ["--package", "x", "--features", "f"]);
        assert_eq!(rest, ["--nocapture"]);
        let (cmd, _) = run(&["xcheck", "--targets=x86_64-pc-windows-gnu"]);
        let XtaskCmd::Xcheck(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.targets.as_deref(), Some("x86_64-pc-windows-gnu"));
        assert!(f.cargo_args().is_empty());
    }

    #[test]
    fn bench() {
        let (cmd, _) = run(&[
            "bench",
            "--quick",
            "--only",
            "shm,pipe",
            "--only=python",
            "--reps",
            "3",
            "--out",
            "o",
            "--no-pin",
        ]);
        let XtaskCmd::Bench(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.only, ["shm,pipe", "python"]);
        assert_eq!(
            f.to_args(),
            [
                "--quick", "--no-pin", "--only", "shm,pipe", "--only", "python", "--reps", "3",
                "--out", "o"
            ]
        );
        let (cmd, _) = run(&["bench", "--list"]);
        let XtaskCmd::Bench(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.to_args(), ["--list"]);
        let (cmd, _) = run(&["bench", "--full"]);
        let XtaskCmd::Bench(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.to_args(), ["--full"]);
        assert!(parse_strs(&["bench", "--reps", "many"]).is_err());
    }

    #[test]
    fn soak_and_chaos() {
        let (cmd, _) = run(&["soak", "--transport=shm", "--messages", "100000"]);
        let XtaskCmd::Soak(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.to_args(), ["--transport", "shm", "--messages", "100000"]);
        let (cmd, _) = run(&["chaos", "--iterations", "50", "--seed=7"]);
        let XtaskCmd::Chaos(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.to_args(), ["--iterations", "50", "--seed", "7"]);
        assert!(parse_strs(&["chaos", "--iterations", "-1"]).is_err());
        assert!(parse_strs(&["soak", "extra"]).is_err());
    }

    #[test]
    fn errors_name_the_argument_and_point_at_help() {
        let e = parse_strs(&["bench", "--bogus"]).unwrap_err();
        assert!(
            e.contains("`--bogus`") && e.contains("cargo xtask bench --help"),
            "{e}"
        );
        let e = parse_strs(&["test-matrix", "--quick", "--nope=1"]).unwrap_err();
        assert!(
            e.contains("`--nope`") && e.contains("cargo xtask test-matrix --help"),
            "{e}"
        );
        let e = parse_strs(&["frobnicate"]).unwrap_err();
        assert!(
            e.contains("frobnicate") && e.contains("cargo xtask --help"),
            "{e}"
        );
        assert!(
            e.contains("test-matrix, ci, xcheck, bench, fuzz, soak, chaos"),
            "{e}"
        );
        let e = parse_strs(&["--quick"]).unwrap_err();
        assert!(
            e.contains("`--quick`") && e.contains("cargo xtask --help"),
            "{e}"
        );
    }

    #[test]
    fn help_per_command() {
        let all = help(&[]);
        assert_eq!(help(&["--help"]), all);
        assert_eq!(help(&["help"]), all);
        assert!(
            all.contains("commands:\n  cargo xtask test-matrix [options]"),
            "{all}"
        );
        for command in COMMANDS {
            assert!(
                all.contains(&format!("\n  cargo xtask {command} ")),
                "{command}"
            );
            let one = help(&[command, "--help"]);
            assert!(one.starts_with(&format!("xtask {command}\n")), "{one}");
            assert_eq!(one.matches("\nxtask ").count(), 0, "{one}");
            assert_eq!(help(&["help", command]), one);
            assert_eq!(help(&[command, "-h"]), one);
        }
        assert!(help(&["bench", "--help"]).contains("--only <system>"));
        assert!(help(&["test-matrix", "--help"]).contains("--transport <t>"));
    }
}
