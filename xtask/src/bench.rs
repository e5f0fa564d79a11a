//! `cargo xtask bench`: placeholder until the benchmark suite lands.

/// Runs the benchmarks (not yet implemented: prints a note and succeeds).
pub fn run(_args: &[String]) -> Result<(), String> {
    println!("bench: not yet implemented");
    Ok(())
}
