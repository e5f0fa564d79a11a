//! `conduit-reliability`: the worker behind `cargo xtask soak` and
//! `cargo xtask chaos`. It re-executes itself as the peer process (the role is
//! in `CONDUIT_RELIABILITY_CHILD`), hands it an endpoint with
//! `conduit::handoff` (or lets it `connect` to a named listener), then:
//!
//! * `soak`: streams numbered, checksummed messages one-way and echoed, and
//!   counts lost / duplicated / reordered / corrupt ones ([`soak`]);
//! * `chaos`: kills the peer with `Child::kill` (SIGKILL, TerminateProcess on
//!   Windows) at random points and checks that every call returns promptly
//!   with the documented error, with no leaked descriptors and no files left
//!   in the named socket directory ([`chaos`]).
//!
//! Tool code: errors are reported as table rows and messages, and the exit
//! status is non-zero on any defect.

#![forbid(unsafe_code)]

mod chaos;
mod child;
mod link;
mod soak;
mod table;
mod wire;

use std::process::ExitCode;

/// The command line, declared with xflags like xtask's (`xtask/src/flags.rs`
/// declares the same options for `cargo xtask soak` and `cargo xtask chaos`).
mod flags {
    xflags::xflags! {
        /// usage: conduit-reliability soak|chaos [options]
        ///
        /// `cargo xtask soak` and `cargo xtask chaos` build this binary in
        /// release mode and run it.
        cmd conduit-reliability {
            /// usage: conduit-reliability soak [--transport <t>] [--messages <n>] [--seed <s>]
            ///
            /// Streams <n> numbered, checksummed messages (1 B to 64 KiB, mostly
            /// small) one-way and echoed across two processes, as `Vec<u8>` and
            /// (a tenth of <n>) as a typed struct, on every transport.
            cmd soak {
                /// Only this transport: pipe, socketpair, shm or named.
                optional --transport t: String
                /// Messages per transport and raw mode (default 10000000).
                optional --messages n: u64
                /// Seed of the size sequence (default: random, printed).
                optional --seed s: u64
            }
            /// usage: conduit-reliability chaos [--transport <t>] [--iterations <n>] [--seed <s>]
            ///
            /// Kills the peer at random points of every scenario, <n> times per
            /// transport and scenario.
            cmd chaos {
                /// Only this transport: pipe, socketpair, shm or named.
                optional --transport t: String
                /// Kills per transport and scenario (default 200).
                optional --iterations n: u32
                /// Seed of the kill points (default: random, printed).
                optional --seed s: u64
            }
        }
    }
}

fn main() -> ExitCode {
    if let Some(role) = std::env::var_os(link::ROLE_ENV) {
        return child::main(&role.to_string_lossy());
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .flat_map(|arg| {
            match arg
                .to_str()
                .and_then(|a| a.strip_prefix("--")?.split_once('='))
            {
                Some((flag, value)) => vec![format!("--{flag}").into(), value.into()],
                None => vec![arg],
            }
        })
        .collect();
    let flags = match flags::ConduitReliability::from_vec(args) {
        Ok(flags) => flags,
        Err(e) if e.is_help() => {
            println!("{}", e.to_string().trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("conduit-reliability: error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match flags.subcommand {
        flags::ConduitReliabilityCmd::Soak(f) => link::select(f.transport.as_deref())
            .and_then(|links| soak::run(&links, f.messages.unwrap_or(10_000_000), seed(f.seed))),
        flags::ConduitReliabilityCmd::Chaos(f) => link::select(f.transport.as_deref())
            .and_then(|links| chaos::run(&links, f.iterations.unwrap_or(200), seed(f.seed))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conduit-reliability: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The given seed, or a random one.
fn seed(given: Option<u64>) -> u64 {
    given.unwrap_or_else(|| fastrand::u64(..))
}
