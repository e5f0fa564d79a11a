//! `conduit::Pool` across real worker processes.
//!
//! Like `process.rs`, this target has `harness = false`: workers re-execute
//! this binary, whose `main` calls `conduit::init()` first.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use conduit::{ErrorKind, OnWorkerDeath, Pool};
use conduit_tests::{check, fails};
#[cfg(any(target_os = "linux", windows))]
use conduit_tests::{gone_within, is_gone};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    conduit::init();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "map_and_imap_keep_input_order",
            map_and_imap_keep_input_order,
        ),
        Trial::test(
            "imap_unordered_yields_each_once",
            imap_unordered_yields_each_once,
        ),
        Trial::test("submit_and_join", submit_and_join),
        Trial::test("panic_is_that_tasks_error", panic_is_that_tasks_error),
        Trial::test(
            "worker_killed_mid_task_is_retried_50_times",
            worker_killed_mid_task_is_retried_50_times,
        ),
        Trial::test(
            "worker_killed_from_outside_during_map",
            worker_killed_from_outside_during_map,
        ),
        Trial::test(
            "worker_death_with_fail_policy_names_pid_and_signal",
            worker_death_with_fail_policy_names_pid_and_signal,
        ),
        Trial::test(
            "max_tasks_per_worker_replaces_workers",
            max_tasks_per_worker_replaces_workers,
        ),
        Trial::test("init_runs_in_every_worker", init_runs_in_every_worker),
        Trial::test("failing_init_breaks_the_pool", failing_init_breaks_the_pool),
        Trial::test(
            "dropped_pool_leaves_no_process",
            dropped_pool_leaves_no_process,
        ),
        Trial::test("close_then_join", close_then_join),
        Trial::test("large_inputs_and_results", large_inputs_and_results),
        Trial::test("endpoints_inside_inputs", endpoints_inside_inputs),
        Trial::test("map_async_and_join_async", map_async_and_join_async),
        Trial::test(
            "zero_sizes_are_refused_at_build",
            zero_sizes_are_refused_at_build,
        ),
        Trial::test(
            "integer_inputs_and_results_at_their_edges",
            integer_inputs_and_results_at_their_edges,
        ),
    ];
    conduit_tests::run_with_processes(&args, tests);
}

fn triple(n: u64) -> u64 {
    3 * n
}

fn map_and_imap_keep_input_order() -> Result<(), Failed> {
    let pool = Pool::new(3)?;
    let out = pool.map(triple, 0..5000u64)?;
    check(
        out == (0..5000u64).map(|n| 3 * n).collect::<Vec<_>>(),
        "map: wrong or reordered results",
    )?;
    // An iterator that does not know its length, and explicit small chunks.
    let odd = (0..3000u64).filter(|n| n % 2 == 1);
    let got: Vec<u64> = pool.imap(triple, odd)?.collect::<conduit::Result<_>>()?;
    let want: Vec<u64> = (0..3000u64).filter(|n| n % 2 == 1).map(|n| 3 * n).collect();
    check(got == want, "imap: wrong or reordered results")?;
    let none: Vec<u64> = pool.map(triple, Vec::<u64>::new())?;
    check(none.is_empty(), "map of nothing")?;
    let small = Pool::builder().workers(2).chunk_size(1).build()?;
    check(
        small.map(triple, 0..100u64)? == (0..100u64).map(|n| 3 * n).collect::<Vec<_>>(),
        "chunk_size(1)",
    )
}

fn imap_unordered_yields_each_once() -> Result<(), Failed> {
    let pool = Pool::new(4)?;
    let mut seen = HashSet::new();
    for r in pool.imap_unordered(triple, 0..4000u64)? {
        let v = r?;
        check(v % 3 == 0 && v < 12_000, format!("stray result {v}"))?;
        check(seen.insert(v), format!("{v} twice"))?;
    }
    check(
        seen.len() == 4000,
        format!("{} results of 4000", seen.len()),
    )
}

fn submit_and_join() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let handles: Vec<_> = (0..50u64)
        .map(|n| pool.submit(triple, n))
        .collect::<conduit::Result<_>>()?;
    for (n, h) in handles.into_iter().enumerate() {
        check(h.join()? == 3 * n as u64, format!("task {n}"))?;
    }
    // From several threads at once.
    let pool = std::sync::Arc::new(pool);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || -> conduit::Result<u64> {
                pool.map(triple, (0..500).map(move |i| t * 1000 + i))
                    .map(|v| v.iter().sum())
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        let sum = th.join().map_err(|_| "thread panicked")??;
        let want: u64 = (0..500).map(|i| 3 * (t as u64 * 1000 + i)).sum();
        check(sum == want, format!("thread {t}: {sum} != {want}"))?;
    }
    Ok(())
}

fn panic_at_37(n: u64) -> u64 {
    if n == 37 {
        panic!("no thirty-seven here");
    }
    n + 1
}

fn panic_is_that_tasks_error() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let before: HashSet<u32> = pool.pids().into_iter().collect();
    let e = fails(pool.map(panic_at_37, 0..200u64))?;
    check(
        e.kind() == ErrorKind::ChildFailed && e.to_string().contains("no thirty-seven here"),
        format!("map's error: {e}"),
    )?;
    for (i, r) in pool.imap(panic_at_37, 0..200u64)?.enumerate() {
        match (i, r) {
            (37, Err(e)) => check(
                e.kind() == ErrorKind::ChildFailed
                    && e.to_string().contains("task 37 panicked")
                    && e.to_string().contains("pool.rs"),
                format!("task 37's error: {e}"),
            )?,
            (37, Ok(v)) => return Err(format!("task 37 returned {v}").into()),
            (i, r) => check(r? == i as u64 + 1, format!("task {i}"))?,
        }
    }
    let after: HashSet<u32> = pool.pids().into_iter().collect();
    check(before == after, "a panic replaced a worker")
}

/// Set by `arm` in each worker: the task index that kills its worker, and
/// the marker file that makes it do so only once.
static VICTIM: OnceLock<(u64, String)> = OnceLock::new();

fn arm(victim: (u64, String)) {
    let _ = VICTIM.set(victim);
}

/// `3 * n`; the victim task kills its own worker (SIGKILL /
/// TerminateProcess) the first time it runs.
fn crashy(n: u64) -> u64 {
    if let Some((victim, marker)) = VICTIM.get() {
        if n == *victim
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .is_ok()
        {
            kill_pid(std::process::id());
            loop {
                std::thread::park();
            }
        }
    }
    3 * n
}

/// Kills `pid` like `kill -9`.
fn kill_pid(pid: u32) {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    #[cfg(windows)]
    #[allow(unsafe_code)]
    {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, TerminateProcess, PROCESS_TERMINATE,
        };
        // SAFETY: plain calls with a pid and constants; the handle is
        // checked for null, used once and closed once.
        unsafe {
            let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
            if !h.is_null() {
                TerminateProcess(h, 9);
                CloseHandle(h);
            }
        }
    }
}

fn marker(tag: &str) -> String {
    std::env::temp_dir()
        .join(format!(
            "conduit-pool-test-{}-{tag}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
        .display()
        .to_string()
}

fn worker_killed_mid_task_is_retried_50_times() -> Result<(), Failed> {
    let iterations: u32 = std::env::var("CONDUIT_POOL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let want: Vec<u64> = (0..10_000u64).map(|n| 3 * n).collect();
    for round in 0..iterations {
        let victim = fastrand::u64(0..10_000);
        let path = marker("victim");
        let workers = fastrand::usize(2..=4);
        let pool = Pool::builder()
            .workers(workers)
            .init(arm, (victim, path.clone()))
            .build()?;
        let out = pool.map(crashy, 0..10_000u64);
        let killed = std::path::Path::new(&path).exists();
        let _ = std::fs::remove_file(&path);
        let out = out.map_err(|e| format!("round {round} (victim {victim}): {e}"))?;
        check(killed, format!("round {round}: the victim task never ran"))?;
        check(
            out == want,
            format!("round {round} (victim {victim}): wrong results"),
        )?;
        check(
            pool.pids().len() == workers,
            format!("round {round}: the dead worker was not replaced"),
        )?;
    }
    Ok(())
}

/// Some work per task, so that a map lasts long enough to be interrupted.
fn churn(n: u64) -> u64 {
    let mut x = n;
    for _ in 0..20_000 {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    x
}

fn worker_killed_from_outside_during_map() -> Result<(), Failed> {
    let want: Vec<u64> = (0..4000u64).map(churn).collect();
    for round in 0..10 {
        let pool = Pool::new(2)?;
        let kill_after = fastrand::usize(0..3000);
        let mut got = Vec::with_capacity(4000);
        let mut killed = None;
        for (i, r) in pool.imap(churn, 0..4000u64)?.enumerate() {
            got.push(r.map_err(|e| format!("round {round}, task {i}: {e}"))?);
            if i == kill_after {
                let pids = pool.pids();
                let pid = pids[fastrand::usize(0..pids.len())];
                kill_pid(pid);
                killed = Some(pid);
            }
        }
        check(got == want, format!("round {round}: wrong results"))?;
        let Some(pid) = killed else {
            return Err(format!("round {round}: no kill").into());
        };
        #[cfg(any(target_os = "linux", windows))]
        check(
            gone_within(pid, Duration::from_secs(5)),
            format!("round {round}: killed worker {pid} not reaped"),
        )?;
        let _ = pid;
    }
    Ok(())
}

fn worker_death_with_fail_policy_names_pid_and_signal() -> Result<(), Failed> {
    let path = marker("fail");
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .on_worker_death(OnWorkerDeath::Fail)
        .init(arm, (5u64, path.clone()))
        .build()?;
    let results: Vec<_> = pool.imap(crashy, 0..20u64)?.collect();
    let _ = std::fs::remove_file(&path);
    for (i, r) in results.into_iter().enumerate() {
        match (i, r) {
            (5, Err(e)) => {
                let s = e.to_string();
                check(
                    e.kind() == ErrorKind::WorkerDied && s.contains("pid ") && s.contains("task 5"),
                    format!("task 5's error: {s}"),
                )?;
                #[cfg(unix)]
                check(s.contains("signal 9"), format!("no signal in: {s}"))?;
            }
            (5, Ok(v)) => return Err(format!("task 5 returned {v}").into()),
            (i, r) => check(r? == 3 * i as u64, format!("task {i}"))?,
        }
    }
    // The pool lives on with a replacement worker.
    check(pool.map(triple, 0..10u64)?[9] == 27, "after the death")
}

fn own_pid(_: u32) -> u32 {
    std::process::id()
}

fn max_tasks_per_worker_replaces_workers() -> Result<(), Failed> {
    let pool = Pool::builder().workers(2).max_tasks_per_worker(5).build()?;
    let pids: HashSet<u32> = pool.map(own_pid, 0..40u32)?.into_iter().collect();
    check(
        pids.len() >= 8,
        format!(
            "40 tasks, 5 per worker, ran in only {} processes",
            pids.len()
        ),
    )?;
    let unlimited = Pool::new(2)?;
    let pids: HashSet<u32> = unlimited.map(own_pid, 0..40u32)?.into_iter().collect();
    check(
        pids.len() <= 2,
        format!("{} processes for 2 workers", pids.len()),
    )
}

static GREETING: OnceLock<String> = OnceLock::new();

fn greet(g: String) {
    let _ = GREETING.set(g);
}

fn greeting(n: u32) -> String {
    format!("{}{n}", GREETING.get().map_or("unset", |s| s.as_str()))
}

fn init_runs_in_every_worker() -> Result<(), Failed> {
    let pool = Pool::builder()
        .workers(3)
        .chunk_size(1)
        .init(greet, "hi ".to_string())
        .build()?;
    let out = pool.map(greeting, 0..30u32)?;
    check(
        out.iter().enumerate().all(|(i, s)| *s == format!("hi {i}")),
        format!("{out:?}"),
    )
}

fn bad_init(_: ()) {
    panic!("cannot set up");
}

fn failing_init_breaks_the_pool() -> Result<(), Failed> {
    let pool = Pool::builder().workers(2).init(bad_init, ()).build()?;
    let e = fails(pool.map(triple, 0..10u64))?;
    check(
        e.kind() == ErrorKind::ChildFailed
            && e.to_string().contains("initializer")
            && e.to_string().contains("cannot set up"),
        format!("map's error: {e}"),
    )?;
    let e = fails(pool.submit(triple, 1).and_then(|h| h.join()))?;
    check(
        e.to_string().contains("cannot set up"),
        format!("a later task: {e}"),
    )
}

fn block(_: u32) {
    loop {
        std::thread::park();
    }
}

fn dropped_pool_leaves_no_process() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let pids = pool.pids();
    check(pids.len() == 2, "two workers")?;
    let stuck: Vec<_> = (0..6)
        .map(|i| pool.submit(block, i))
        .collect::<conduit::Result<_>>()?;
    drop(pool);
    for h in stuck {
        let e = fails(h.join())?;
        check(
            e.kind() == ErrorKind::Disconnected,
            format!("a task of a dropped pool: {e}"),
        )?;
    }
    #[cfg(any(target_os = "linux", windows))]
    for pid in pids {
        check(
            gone_within(pid, Duration::from_secs(1)),
            format!("worker {pid} outlived its pool"),
        )?;
    }
    Ok(())
}

fn close_then_join() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let e = fails(pool.join())?;
    check(
        e.kind() == ErrorKind::InvalidInput,
        format!("join before close: {e}"),
    )?;
    let it = pool.imap(triple, 0..1000u64)?;
    pool.close();
    let e = fails(pool.submit(triple, 1))?;
    check(
        e.kind() == ErrorKind::InvalidInput,
        format!("submit after close: {e}"),
    )?;
    let pids = pool.pids();
    pool.join()?;
    // Queued work finished before the workers exited.
    let sum: u64 = it.map(|r| r.unwrap_or(0)).sum();
    check(sum == 3 * 999 * 1000 / 2, format!("sum {sum}"))?;
    #[cfg(any(target_os = "linux", windows))]
    for pid in pids {
        check(is_gone(pid), format!("worker {pid} still runs after join"))?;
    }
    let _ = pids;
    Ok(())
}

fn checksum(v: Vec<u8>) -> (usize, u64) {
    (v.len(), v.iter().map(|&b| u64::from(b)).sum())
}

fn large_inputs_and_results() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let inputs: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            (0..(1 << 20) + usize::from(i))
                .map(|j| (j as u8) ^ i)
                .collect()
        })
        .collect();
    let want: Vec<(usize, u64)> = inputs.iter().cloned().map(checksum).collect();
    check(pool.map(checksum, inputs.clone())? == want, "checksums")?;
    fn echo(v: Vec<u8>) -> Vec<u8> {
        v
    }
    check(
        pool.map(echo, inputs.clone())? == inputs,
        "echoed 1 MiB inputs",
    )?;
    // Above the link's 64 MiB frame limit: that task fails, the pool goes on.
    let huge = vec![vec![7u8; 65 << 20], vec![1u8; 10]];
    let results: Vec<_> = pool.imap(checksum, huge)?.collect();
    match &results[0] {
        Err(e) => check(
            e.kind() == ErrorKind::TooLarge,
            format!("a 65 MiB input: {e}"),
        )?,
        Ok(v) => return Err(format!("a 65 MiB input returned {v:?}").into()),
    }
    check(
        matches!(results[1], Ok((10, 10))),
        format!("the small input after it: {:?}", results[1]),
    )
}

/// `n` plus everything on `rx` (if any) until its sender is gone.
fn drain((n, rx): (u64, Option<conduit::Receiver<u64>>)) -> u64 {
    n + rx.map_or(0, |rx| rx.iter().map(|v| v.unwrap_or(1_000_000)).sum())
}

fn endpoints_inside_inputs() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let mut inputs = Vec::new();
    let mut senders = Vec::new();
    for i in 0..12u64 {
        if i % 3 == 0 {
            let (tx, rx) = conduit::channel::<u64>()?;
            for v in 0..10 {
                tx.send(&(i * 100 + v))?;
            }
            senders.push(tx);
            inputs.push((i, Some(rx)));
        } else {
            inputs.push((i, None));
        }
    }
    drop(senders); // each receiver's iter ends after its 10 values
    let out = pool.map(drain, inputs)?;
    for (i, got) in out.into_iter().enumerate() {
        let i = i as u64;
        let want = if i % 3 == 0 {
            i + (0..10).map(|v| i * 100 + v).sum::<u64>()
        } else {
            i
        };
        check(got == want, format!("input {i}: {got} != {want}"))?;
    }
    Ok(())
}

fn map_async_and_join_async() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A liveness bound: a lost wake-up shows as this timeout, not a hang.
    let run = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let pool = Pool::new(2)?;
            // Two maps awaited together on one thread.
            let (a, b) = tokio::join!(
                pool.map_async(triple, 0..3000u64),
                pool.map_async(triple, 3000..6000u64)
            );
            let (a, b) = (a?, b?);
            check(
                a.iter().chain(&b).copied().eq((0..6000u64).map(|n| 3 * n)),
                "map_async results",
            )?;
            check(
                pool.submit(triple, 5)?.join_async().await? == 15,
                "join_async",
            )?;
            // A cancelled map_async leaves the pool usable.
            let cancelled =
                tokio::time::timeout(Duration::from_micros(1), pool.map_async(churn, 0..2000u64))
                    .await;
            drop(cancelled);
            check(
                pool.map_async(triple, 0..10u64).await?[9] == 27,
                "after a cancel",
            )?;
            // A task awaited while its pool is dropped ends with Disconnected.
            let stuck = pool.submit(block, 0)?;
            let (got, ()) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(10), stuck.join_async()),
                async {
                    tokio::task::yield_now().await;
                    drop(pool);
                }
            );
            match got {
                Ok(Err(e)) => check(e.kind() == ErrorKind::Disconnected, format!("{e}")),
                Ok(Ok(())) => Err("a blocked task returned".into()),
                Err(_) => Err("join_async still waits 10 s after the pool was dropped".into()),
            }
        })
        .await
    });
    run.map_err(|_| Failed::from("the async pool calls did not finish within 60 s"))?
}

fn neg_i64(n: i64) -> i64 {
    n.wrapping_neg()
}

fn widen_i32(n: i32) -> i64 {
    i64::from(n) * 3
}

fn halve_u32(n: u32) -> usize {
    n as usize / 2
}

fn flip_u64(n: u64) -> i64 {
    n as i64
}

fn isize_sq(n: isize) -> i16 {
    (n % 100) as i16 * -3
}

/// Integers take a serde-free path in the pool (both ways): every width
/// and sign, at the edges of each CBOR head size, must come back exactly
/// as computed here, in order, through `map` and `imap`.
fn integer_inputs_and_results_at_their_edges() -> Result<(), Failed> {
    let pool = Pool::new(2)?;
    let mut i64s = vec![0i64, -1, 1, i64::MIN, i64::MAX, i64::MIN + 1];
    for b in [8u32, 16, 32] {
        let e = 1i64 << b;
        i64s.extend([e - 1, e, -e, -e - 1, 23, 24, -24, -25]);
    }
    let want: Vec<i64> = i64s.iter().map(|&n| n.wrapping_neg()).collect();
    check(pool.map(neg_i64, i64s.clone())? == want, "i64 -> i64")?;
    let got: Vec<i64> = pool.imap(neg_i64, i64s)?.collect::<conduit::Result<_>>()?;
    check(got == want, "i64 -> i64 through imap")?;
    let i32s = vec![0, -1, i32::MIN, i32::MAX, 255, 256, -256, -257, 65_536];
    let want: Vec<i64> = i32s.iter().map(|&n| i64::from(n) * 3).collect();
    check(pool.map(widen_i32, i32s)? == want, "i32 -> i64")?;
    let u32s = vec![0, 1, 23, 24, 255, 256, 65_535, 65_536, u32::MAX];
    let want: Vec<usize> = u32s.iter().map(|&n| n as usize / 2).collect();
    check(pool.map(halve_u32, u32s)? == want, "u32 -> usize")?;
    let u64s = vec![0, u64::MAX, 1 << 63, (1 << 63) - 1, u64::from(u32::MAX) + 1];
    let want: Vec<i64> = u64s.iter().map(|&n| n as i64).collect();
    check(pool.map(flip_u64, u64s)? == want, "u64 -> i64")?;
    let isizes: Vec<isize> = vec![0, -1, isize::MIN, isize::MAX, 99, -99];
    let want: Vec<i16> = isizes.iter().map(|&n| (n % 100) as i16 * -3).collect();
    check(
        pool.map(isize_sq, isizes)? == want,
        "isize -> i16 (i16: the serde path)",
    )
}

/// `workers(0)`, `chunk_size(0)` and `max_tasks_per_worker(0)` are
/// mistakes (Python raises `ValueError` for the last two): `build` says
/// which, instead of quietly running with 1.
fn zero_sizes_are_refused_at_build() -> Result<(), Failed> {
    for (what, b) in [
        ("workers(0)", Pool::builder().workers(0)),
        ("chunk_size(0)", Pool::builder().workers(1).chunk_size(0)),
        (
            "max_tasks_per_worker(0)",
            Pool::builder().workers(1).max_tasks_per_worker(0),
        ),
    ] {
        let e = fails(b.build())?;
        check(
            e.kind() == conduit::ErrorKind::InvalidInput && e.to_string().contains(what),
            format!("{what}: {e}"),
        )?;
    }
    Ok(())
}
