//! `cargo xtask bench`: builds `conduit-bench` in release mode and runs it.
//!
//! The bench package (`crates/conduit-bench`) is a workspace member but not a
//! default member, so ordinary builds and tests never compile its heavy
//! dependencies (ipc-channel, interprocess, plotters). The options (declared in
//! [`crate::flags`], checked before the build) are passed on to the binary,
//! which declares the same options; see `cargo xtask bench --help`.

use xshell::cmd;

use crate::{flags, util};

/// Runs `cargo xtask bench [args]`.
pub fn run(flags: &flags::Bench) -> Result<(), String> {
    if flags.quick && flags.full {
        return Err("--quick and --full exclude each other".to_owned());
    }
    let args = flags.to_args();
    let sh = util::shell()?;
    let exe = util::build_release_bin(&sh, "conduit-bench", "conduit-bench")?;
    cmd!(sh, "{exe} {args...}")
        .run()
        .map_err(|e| format!("the bench failed: {e}"))
}
