//! `cargo xtask soak`: builds `conduit-reliability` in release mode (a
//! workspace member but not a default member, like conduit-bench) and runs
//! `conduit-reliability soak` with the options, which the binary declares
//! too. See `crates/conduit-reliability/src/soak.rs` and `docs/reliability.md`.

use xshell::cmd;

use crate::{flags, util};

/// The package and binary that do the work.
pub const BIN: &str = "conduit-reliability";

/// Runs `cargo xtask soak [options]`; fails on any defect.
pub fn run(flags: &flags::Soak) -> Result<(), String> {
    let args = flags.to_args();
    let sh = util::shell()?;
    let exe = util::build_release_bin(&sh, BIN, BIN)?;
    cmd!(sh, "{exe} soak {args...}")
        .run()
        .map_err(|e| format!("defects found, or the soak could not run: {e}"))
}
