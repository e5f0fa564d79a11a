//! Python's `JoinableQueue` pattern: four worker processes take jobs from
//! one queue, mark each done, and end when no sender is left.
//!
//! `cargo run -p conduit --example queue`

use std::time::Instant;

fn worker(jobs: conduit::QueueReceiver<u64>) -> u64 {
    let mut sum = 0;
    // Ends once the queue is empty and every sender (in every process) is gone.
    for job in jobs.iter() {
        match job {
            Ok(n) => {
                sum += n * n;
                if let Err(e) = jobs.task_done() {
                    eprintln!("worker {}: {e}", std::process::id());
                }
            }
            Err(e) => {
                eprintln!("worker {}: {e}", std::process::id());
                break;
            }
        }
    }
    sum
}

fn main() -> Result<(), conduit::Error> {
    conduit::init(); // first line: a worker process runs `worker` here
    let started = Instant::now();
    let (tx, rx) = conduit::queue::<u64>()?;
    let workers: Vec<_> = (0..4)
        .map(|_| conduit::Process::spawn(worker, rx.clone()))
        .collect::<Result<_, _>>()?;
    drop(rx);
    for job in 0..10_000u64 {
        tx.send(&job)?;
    }
    tx.join()?; // every job was marked done
    println!("10000 jobs done by 4 processes in {:?}", started.elapsed());
    drop(tx); // the workers' iter() ends
    let mut total = 0;
    for mut w in workers {
        total += w.join()?;
    }
    let expected: u64 = (0..10_000u64).map(|n| n * n).sum();
    assert_eq!(total, expected);
    println!("sum of squares {total} (checked)");
    Ok(())
}
