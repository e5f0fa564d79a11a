//! Python's `Pool.map`, and what happens when a worker dies.
//!
//! `cargo run -p conduit --example pool`

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

fn square(x: u64) -> u64 {
    x * x
}

/// Set in each worker by the pool's initializer.
static MARKER: OnceLock<PathBuf> = OnceLock::new();

fn remember(marker: PathBuf) {
    let _ = MARKER.set(marker);
}

/// Task 13 kills its own worker process the first time it runs (as the
/// OOM killer or `kill -9` would); the pool retries it on a fresh worker.
fn unlucky(x: u64) -> u64 {
    if x == 13
        && MARKER
            .get()
            .is_some_and(|m| std::fs::File::create_new(m).is_ok())
    {
        eprintln!("  (worker {} dies running task 13)", std::process::id());
        std::process::abort();
    }
    x + 1
}

fn fails_on_7(x: u64) -> u64 {
    assert!(x != 7, "seven is not allowed");
    x
}

fn main() -> Result<(), conduit::Error> {
    conduit::init(); // first line: a worker process runs its tasks here
    let marker = std::env::temp_dir().join(format!("conduit-pool-example-{}", std::process::id()));
    let started = Instant::now();
    let pool = conduit::Pool::builder()
        .workers(4)
        .init(remember, marker.clone())
        .build()?;
    println!("4 workers started in {:?}", started.elapsed());

    let started = Instant::now();
    let total: u64 = pool.map(square, 0..100_000u64)?.iter().sum();
    println!("sum of 100000 squares = {total} ({:?})", started.elapsed());

    print!("as they finish:");
    for r in pool.imap_unordered(square, 1..=5u64)? {
        print!(" {}", r?);
    }
    println!();

    let task = pool.submit(square, 12)?;
    println!("submit(square, 12) -> {}", task.join()?);

    let out = pool.map(unlucky, 0..20u64)?;
    println!(
        "after a worker died: {} results, task 13 -> {}",
        out.len(),
        out[13]
    );

    match pool.map(fails_on_7, 0..10u64) {
        Ok(_) => println!("no error?"),
        Err(e) => println!("a panicking task: {e}"),
    }

    pool.close();
    pool.join()?;
    let _ = std::fs::remove_file(marker);
    Ok(())
}
