//! The child side: this binary re-executed with [`crate::proc::CHILD_ENV`] set.

use std::process::ExitCode;

use crate::plan::{self, Workload};
use crate::{err, proc, Res};

/// Runs the child named by `spec` (`<system id>/<workload id>`).
pub fn main(spec: &str) -> ExitCode {
    proc::child_setup();
    match run(spec) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conduit-bench child {spec}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(spec: &str) -> Res<()> {
    let (sys_id, w_id) = spec
        .split_once('/')
        .ok_or_else(|| err(format!("bad child spec `{spec}`")))?;
    let w = Workload::from_id(w_id).ok_or_else(|| err(format!("unknown workload `{w_id}`")))?;
    let systems = plan::systems();
    let sys = systems
        .iter()
        .find(|s| s.id == sys_id)
        .ok_or_else(|| err(format!("unknown system `{sys_id}`")))?;
    plan::run_child(sys, w)
}
