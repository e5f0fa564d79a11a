//! `cargo xtask`: the project's chores, written in Rust so that a local run and
//! CI run the very same steps (see `.cargo/config.toml` for the alias).
//!
//! One module per command; each exposes `run(args) -> Result<(), String>`.
//! Commands are run through [`xshell`], with `cargo` taken from `$CARGO`.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod test_matrix;
mod util;
mod xcheck;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test-matrix  run the conduit-tests suite once per transport feature set, then crate tests
               [--transport <t>] [--cases <n>] [--quick] [--profile <p>] [-- <runner args>]
  ci           fmt, clippy per feature set, doc, test-matrix, xcheck, actionlint
               [--skip-test-matrix] [--skip-xcheck] [--skip-actionlint] [--quick]
  xcheck       clippy for Windows/macOS targets and Windows tests under Wine (Linux only)
               [--no-wine] [--targets a,b] [cargo args]
  bench        conduit vs raw OS limits, ipc-channel, interprocess, Python (release build)
               [--quick] [--only <system>] [--reps <n>] [--out <dir>] [--no-pin] [--list]

`cargo xtask <command> --help` tells more about one command.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    let result = match command.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "test-matrix" => test_matrix::run(rest),
        "ci" => ci::run(rest),
        "xcheck" => xcheck::run(rest),
        "bench" => bench::run(rest),
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask {command}: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
