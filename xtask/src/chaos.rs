//! `cargo xtask chaos`: builds `conduit-reliability` in release mode and runs
//! `conduit-reliability chaos` with the options, which the binary declares
//! too. See `crates/conduit-reliability/src/chaos.rs` and `docs/reliability.md`.

use xshell::cmd;

use crate::{flags, soak::BIN, util};

/// Runs `cargo xtask chaos [options]`; fails on any failed run.
pub fn run(flags: &flags::Chaos) -> Result<(), String> {
    let args = flags.to_args();
    let sh = util::shell()?;
    let exe = util::build_release_bin(&sh, BIN, BIN)?;
    cmd!(sh, "{exe} chaos {args...}")
        .run()
        .map_err(|e| format!("failures found, or chaos could not run: {e}"))
}
