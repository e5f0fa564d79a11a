//! `cargo xtask`: the project's chores, written in Rust so that a local run and
//! CI run the very same steps (see `.cargo/config.toml` for the alias).
//!
//! The command line is declared in [`flags`] (xflags); `main` dispatches to one
//! module per command, each exposing `run(flags, ...) -> Result<(), String>`.
//! Commands are run through [`xshell`], with `cargo` taken from `$CARGO`.

#![forbid(unsafe_code)]

mod bench;
mod chaos;
mod ci;
mod flags;
mod fuzz;
mod junit;
mod soak;
mod test_matrix;
mod util;
mod xcheck;

use std::process::ExitCode;

use flags::{Parsed, XtaskCmd};

fn main() -> ExitCode {
    let (flags, passthrough) = match flags::parse(std::env::args_os().skip(1).collect()) {
        Ok(Parsed::Run(flags, passthrough)) => (flags, passthrough),
        Ok(Parsed::Help(help)) => {
            println!("{help}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("xtask: error: {msg}");
            return ExitCode::from(2);
        }
    };
    let (name, result) = match flags.subcommand {
        XtaskCmd::TestMatrix(f) => ("test-matrix", test_matrix::run(&f, &passthrough)),
        XtaskCmd::Xcheck(f) => ("xcheck", xcheck::run(&f, &passthrough)),
        XtaskCmd::Ci(f) => (
            "ci",
            no_passthrough("ci", &passthrough).and_then(|()| ci::run(&f)),
        ),
        XtaskCmd::Bench(f) => (
            "bench",
            no_passthrough("bench", &passthrough).and_then(|()| bench::run(&f)),
        ),
        XtaskCmd::Fuzz(f) => (
            "fuzz",
            no_passthrough("fuzz", &passthrough).and_then(|()| fuzz::run(&f)),
        ),
        XtaskCmd::Soak(f) => (
            "soak",
            no_passthrough("soak", &passthrough).and_then(|()| soak::run(&f)),
        ),
        XtaskCmd::Chaos(f) => (
            "chaos",
            no_passthrough("chaos", &passthrough).and_then(|()| chaos::run(&f)),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask {name}: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Commands without a runner refuse arguments after `--`.
fn no_passthrough(name: &str, passthrough: &[std::ffi::OsString]) -> Result<(), String> {
    match passthrough.first() {
        None => Ok(()),
        Some(arg) => Err(format!(
            "unexpected argument after `--`: {arg:?} (see `cargo xtask {name} --help`)"
        )),
    }
}
