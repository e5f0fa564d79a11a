//! [`init`]: the facade's half of `conduit-process` (the transport registry
//! it needs to make and adopt the control channel lives here).

use conduit_core::transport::BoxDuplexEnd;
use conduit_core::FrameConfig;
use conduit_process::Runtime;

use crate::{Registry, Result, Transport};

static RUNTIME: Runtime = Runtime {
    resolver: &Registry,
    duplex: control_duplex,
    link_duplex,
};

/// The link between a pool and a worker: the best duplex transport (shared
/// memory when it is compiled in).
///
/// Shared memory without spinning: either side waits for a whole chunk of
/// tasks (typically a millisecond), so a spin before parking only takes a
/// CPU from the workers. Measured on 2 vCPUs, a `map` of 100,000 tiny
/// tasks over 2 workers: 2.11–2.24 ms with no spin, 2.72–2.87 ms with the
/// default 50 µs spin.
fn link_duplex() -> Result<(BoxDuplexEnd, BoxDuplexEnd)> {
    #[cfg(feature = "shm")]
    {
        let cfg = conduit_shm::ShmConfig::from(FrameConfig::default())
            .with_spin(std::time::Duration::ZERO);
        conduit_shm::duplex(cfg).map(conduit_core::transport::boxed_duplex)
    }
    #[cfg(not(feature = "shm"))]
    Transport::best_duplex()?.raw_duplex(FrameConfig::default())
}

/// The control channel between a parent and a child: a kernel transport
/// when one is compiled in (a blocked `join` then costs nothing), else the
/// best enabled one.
fn control_duplex() -> Result<(BoxDuplexEnd, BoxDuplexEnd)> {
    let t = [Transport::Socketpair, Transport::Pipe]
        .into_iter()
        .find(|t| t.is_enabled())
        .map_or_else(Transport::best_duplex, Ok)?;
    t.raw_duplex(FrameConfig::default())
}

/// Call this first in `main`: in a child started by [`Process::spawn`](crate::Process::spawn)
/// it runs the target function and exits the process; anywhere else it
/// returns at once.
///
/// `Process::spawn` refuses to run before `init` has, so that a program
/// whose children would not run their target fails in the parent, with an
/// error saying so.
///
/// # Examples
///
/// ```no_run
/// fn double(x: i32) -> i32 {
///     2 * x
/// }
///
/// fn main() {
///     conduit::init();
///     let mut p = conduit::Process::spawn(double, 21).unwrap();
///     assert_eq!(p.join().unwrap(), 42);
/// }
/// ```
///
/// In tests, use a test target with `harness = false` whose `main` calls
/// `conduit::init()` and then runs the tests (for example with
/// `libtest-mimic`): a child re-executes the test binary.
pub fn init() {
    conduit_process::init_with(&RUNTIME);
}
