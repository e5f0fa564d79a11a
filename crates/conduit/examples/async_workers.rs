//! An async parent drives 8 worker processes and awaits whichever answers
//! first; then a synchronous parent does the same with `conduit::wait`.
//!
//! ```text
//! cargo run -p conduit --features tokio --example async_workers
//! ```
//!
//! The Python asyncio program it corresponds to is in the README
//! ("Async and waiting on many").

use std::time::{Duration, Instant};

use conduit::{Duplex, Process, Waitable};

/// A job: how much work (simulated by sleeping `ms` milliseconds).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Job {
    id: u32,
    ms: u64,
}

/// The worker's answer.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Done {
    id: u32,
    pid: u32,
    took_ms: u64,
}

/// Runs in each child (a plain blocking function): answers jobs until the
/// parent hangs up, returns how many it did.
fn worker(conn: Duplex<Done, Job>) -> u32 {
    let mut n = 0;
    while let Ok(job) = conn.recv() {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(job.ms));
        let took_ms = start.elapsed().as_millis() as u64;
        if conn
            .send(&Done {
                id: job.id,
                pid: std::process::id(),
                took_ms,
            })
            .is_err()
        {
            break;
        }
        n += 1;
    }
    n
}

/// Work for worker `i`: the later ones get less, so they finish first.
fn job(i: u32) -> Job {
    Job {
        id: i,
        ms: 20 + 15 * u64::from(7 - i),
    }
}

async fn async_parent() -> Result<(), conduit::Error> {
    println!("async parent: 8 workers, replies in the order they finish");
    let mut procs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (ours, theirs) = conduit::duplex::<Job, Done>()?;
        procs.push(Process::spawn(worker, theirs)?);
        let mut conn = ours.into_async()?;
        tasks.spawn(async move {
            conn.send(&job(i)).await?;
            conn.recv().await
        });
    }
    let mut order = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let done =
            done.map_err(|e| conduit::Error::new(conduit::ErrorKind::Io, e.to_string()))??;
        println!(
            "  job {} done by pid {} in {} ms",
            done.id, done.pid, done.took_ms
        );
        order.push(done.id);
    }
    println!("  first to finish: job {}", order[0]);
    // The tasks ended, so every connection is closed: each worker returns.
    for mut p in procs {
        let n = tokio::select! {
            n = p.join_async() => n?,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                p.kill()?;
                return Err(conduit::Error::timeout("a worker did not finish"));
            }
        };
        assert_eq!(n, 1);
    }
    Ok(())
}

fn sync_parent() -> Result<(), conduit::Error> {
    println!("sync parent: the same with conduit::wait");
    let mut conns = Vec::new();
    let mut procs = Vec::new();
    for i in 0..8 {
        let (ours, theirs) = conduit::duplex::<Job, Done>()?;
        procs.push(Process::spawn(worker, theirs)?);
        ours.send(&job(i))?;
        conns.push(Some(ours));
    }
    let mut left = conns.len();
    while left > 0 {
        let objects: Vec<&dyn Waitable> =
            conns.iter().flatten().map(|c| c as &dyn Waitable).collect();
        let live: Vec<usize> = (0..conns.len()).filter(|&i| conns[i].is_some()).collect();
        for k in conduit::wait(&objects, Some(Duration::from_secs(10)))? {
            let i = live[k];
            if let Some(c) = conns[i].take() {
                let done = c.recv()?;
                println!("  job {} done by pid {}", done.id, done.pid);
                left -= 1;
            }
        }
    }
    // Processes are waitable too: wait until every worker has exited.
    let mut running: Vec<Process<u32>> = procs;
    while !running.is_empty() {
        let objects: Vec<&dyn Waitable> = running.iter().map(|p| p as &dyn Waitable).collect();
        let ready = conduit::wait(&objects, Some(Duration::from_secs(10)))?;
        for k in ready.into_iter().rev() {
            let mut p = running.swap_remove(k);
            println!("  worker pid {} exited after {} job(s)", p.pid(), p.join()?);
        }
    }
    Ok(())
}

fn main() -> Result<(), conduit::Error> {
    conduit::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| conduit::Error::from_io("cannot start tokio", e))?;
    rt.block_on(async_parent())?;
    sync_parent()
}
