//! The cross-process conformance suite for every transport compiled in (see
//! `conduit_test::suite`), run by libtest-mimic so that both `cargo test` and
//! `cargo nextest run` work. Child processes are this binary, re-executed.

#[global_allocator]
static ALLOC: conduit_test::alloc::Tracking = conduit_test::alloc::Tracking;

fn main() {
    conduit_test::main(&[], Vec::new())
}
