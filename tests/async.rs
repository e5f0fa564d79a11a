//! The tokio API across real processes: every transport, the queue, named
//! endpoints and `join_async`; cancellation at random points; peer death;
//! 1,000 idle async receivers on one thread.
//!
//! `harness = false` like `process.rs`: children re-execute this binary
//! through `conduit::init()`.

use std::time::Duration;

use conduit_tests::check;
use libtest_mimic::{Arguments, Trial};

fn main() {
    conduit::init();
    let args = Arguments::from_args();
    libtest_mimic::run(&args, imp::tests()).exit();
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    }
}

const LONG: Duration = Duration::from_secs(10);

/// The transports whose endpoints can be made async on this platform: every
/// one on Unix; on Windows those with a waitable handle (the anonymous pipes
/// under `pipe` and `socketpair` signal none).
fn async_transports() -> Vec<conduit::Transport> {
    conduit::Transport::enabled()
        .into_iter()
        .filter(|t| async_on(t.name()))
        .collect()
}

/// Whether a transport (or `"queue"`) has async endpoints here.
fn async_on(name: &str) -> bool {
    cfg!(unix) || WINDOWS_ASYNC.contains(&name)
}

/// The transports (and `"queue"`) with async endpoints on Windows.
const WINDOWS_ASYNC: &[&str] = &["shm", "queue", "pipe", "socketpair", "named"];

mod imp {
    use super::*;

    use libtest_mimic::Failed;

    use conduit::{Duplex, Process, QueueReceiver, QueueSender, Receiver, Sender};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use tokio_stream_shim::next;

    pub(super) fn tests() -> Vec<Trial> {
        let mut v = vec![
            Trial::test("blocking_child_async_parent", blocking_child_async_parent),
            Trial::test("join_async", join_async),
            Trial::test(
                "always_ready_ends_yield_to_the_runtime",
                always_ready_ends_yield_to_the_runtime,
            ),
            Trial::test(
                "budget_cancelled_ops_lose_nothing",
                budget_cancelled_ops_lose_nothing,
            ),
            Trial::test("peer_death_is_disconnected_within_1s", peer_death),
            Trial::test("cancelled_recv_loses_nothing", cancelled_recv_loses_nothing),
            Trial::test(
                "cancelled_send_is_whole_or_nothing",
                cancelled_send_whole_or_nothing,
            ),
        ];
        #[cfg(windows)]
        v.push(Trial::test(
            "windows_unsupported_transports_say_so",
            windows_unsupported_transports_say_so,
        ));
        #[cfg(target_os = "linux")]
        v.push(Trial::test(
            "thousand_idle_receivers_no_threads",
            thousand_idle_receivers_no_threads,
        ));
        if async_on("queue") {
            v.push(Trial::test("queue_async", queue_async));
            v.push(Trial::test(
                "queue_cancelled_sends_on_a_full_queue",
                queue_cancelled_sends_on_a_full_queue,
            ));
            v.push(Trial::test(
                "queue_peer_death_is_disconnected_within_1s",
                queue_peer_death,
            ));
        }
        #[cfg(feature = "named")]
        if async_on("named") {
            v.push(Trial::test("named_async", named_async));
            v.push(Trial::test(
                "named_async_accept_cancelled_at_every_poll",
                named_async_accept_cancelled_at_every_poll,
            ));
            v.push(Trial::test(
                "named_async_concurrent_accepts",
                named_async_concurrent_accepts,
            ));
            v.push(Trial::test(
                "named_async_accept_past_silent_clients",
                named_async_accept_past_silent_clients,
            ));
        }
        // Children talk to the parent over an anonymous channel.
        let anonymous = !conduit::Transport::enabled().is_empty();
        v.into_iter()
            .map(|t| t.with_ignored_flag(!anonymous))
            .collect()
    }

    /// A tiny `StreamExt::next` (no futures-util dependency).
    mod tokio_stream_shim {
        use std::pin::Pin;

        pub(crate) async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
            std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
        }
    }

    /// Child (blocking): answers each number with number + 1 until the
    /// parent is gone; returns how many it answered.
    fn echo(conn: Duplex<u64, u64>) -> u64 {
        let mut n = 0;
        while let Ok(x) = conn.recv() {
            if conn.send(&(x + 1)).is_err() {
                break;
            }
            n += 1;
        }
        n
    }

    /// Child (blocking): sends 0..n, then returns.
    fn count_to((tx, n): (Sender<u64>, u64)) -> u64 {
        for i in 0..n {
            if tx.send(&i).is_err() {
                return i;
            }
        }
        n
    }

    /// Windows: a transport without async endpoints fails `into_async` with
    /// `Unsupported`, naming the transports that have them.
    #[cfg(windows)]
    fn windows_unsupported_transports_say_so() -> Result<(), Failed> {
        runtime().block_on(async {
            for t in conduit::Transport::enabled() {
                if async_on(t.name()) {
                    continue;
                }
                let (tx, rx) = t.channel::<u32>()?;
                for e in [
                    rx.into_async().err().ok_or("into_async succeeded")?,
                    tx.into_async().err().ok_or("into_async succeeded")?,
                ] {
                    check(
                        e.kind() == conduit::ErrorKind::Unsupported,
                        format!("{}: {e}", t.name()),
                    )?;
                    check(
                        e.to_string().contains("shm"),
                        format!("{}: {e} names no transport that works", t.name()),
                    )?;
                }
            }
            Ok(())
        })
    }

    fn blocking_child_async_parent() -> Result<(), Failed> {
        if cfg!(feature = "shm") {
            // The default transport: never skipped.
            check(
                async_transports().iter().any(|t| t.name() == "shm"),
                "shm is not among the async transports",
            )?;
        }
        runtime().block_on(async {
            for t in async_transports() {
                let (a, b) = t.duplex::<u64, u64>()?;
                let mut p = Process::spawn(echo, b)?;
                let mut a = a.into_async()?;
                for i in 0..200u64 {
                    a.send(&i).await?;
                    let got = tokio::time::timeout(LONG, a.recv()).await??;
                    check(got == i + 1, format!("{}: {got} for {i}", t.name()))?;
                }
                // Pipelined: 64 out, then 64 back.
                for i in 0..64u64 {
                    a.send(&i).await?;
                }
                for i in 0..64u64 {
                    check(
                        a.recv().await? == i + 1,
                        format!("{}: pipelined {i}", t.name()),
                    )?;
                }
                drop(a);
                check(
                    p.join_async().await? == 264,
                    format!("{}: child's count", t.name()),
                )?;

                // One-way, read as a Stream until the child's end closes.
                let (tx, rx) = t.channel::<u64>()?;
                let mut p = Process::spawn(count_to, (tx, 1000))?;
                let mut rx = rx.into_async()?;
                let mut want = 0;
                while let Some(x) = next(&mut rx).await {
                    check(x? == want, format!("{}: stream order", t.name()))?;
                    want += 1;
                }
                check(want == 1000, format!("{}: {want} of 1000", t.name()))?;
                check(p.join()? == 1000, "count_to")?;
            }
            Ok(())
        })
    }

    /// An async end that never has to wait (room for every send, a message
    /// ready for every receive) still lets the other tasks of its runtime
    /// run: it spends tokio's cooperative budget (128 operations), so a
    /// task spawned before the loop runs long before the loop's end.
    /// Without that, a sender on a pipe that never fills (Windows pipes
    /// under Wine) starved the runtime's timers.
    fn always_ready_ends_yield_to_the_runtime() -> Result<(), Failed> {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        use std::sync::Arc;
        // More than the budget, and few enough to fit every transport's
        // buffer unread (a socket pair's counts a kernel buffer of about
        // 1 KiB for each small write).
        const N: u64 = 150;
        /// Runs `op(0..N)`; returns how many had completed when a task
        /// spawned before the loop got to run.
        async fn done_when_others_ran(
            mut op: impl AsyncFnMut(u64) -> Result<(), Failed>,
        ) -> Result<u64, Failed> {
            let done = Arc::new(AtomicU64::new(0));
            let seen = Arc::new(AtomicU64::new(u64::MAX));
            let (d, s) = (Arc::clone(&done), Arc::clone(&seen));
            let spawned = tokio::spawn(async move { s.store(d.load(SeqCst), SeqCst) });
            for i in 0..N {
                op(i).await?;
                done.store(i + 1, SeqCst);
            }
            spawned.await?;
            Ok(seen.load(SeqCst))
        }
        fn yielded(name: &str, sent: u64, received: u64) -> Result<(), Failed> {
            for (side, at) in [("send", sent), ("recv", received)] {
                check(
                    at < N,
                    format!(
                        "{name} {side}: another task ran only after all {N} operations \
                         (at {at}): the loop never yielded to the runtime"
                    ),
                )?;
            }
            Ok(())
        }
        runtime().block_on(async {
            for t in async_transports() {
                let (tx, rx) = t.channel::<u64>()?;
                let (mut tx, mut rx) = (tx.into_async()?, rx.into_async()?);
                let sent = done_when_others_ran(async |i| Ok(tx.send(&i).await?)).await?;
                let received = done_when_others_ran(async |i| {
                    let got = rx.recv().await?;
                    check(got == i, format!("{}: got {got} for {i}", t.name()))
                })
                .await?;
                yielded(t.name(), sent, received)?;
            }
            if async_on("queue") {
                let (tx, rx) = conduit::queue::<u64>()?;
                let (mut tx, mut rx) = (tx.into_async()?, rx.into_async()?);
                let sent = done_when_others_ran(async |i| Ok(tx.send(&i).await?)).await?;
                let received = done_when_others_ran(async |i| {
                    let got = rx.recv().await?;
                    check(got == i, format!("queue: got {got} for {i}"))
                })
                .await?;
                yielded("queue", sent, received)?;
            }
            Ok(())
        })
    }

    /// Polls `f` once (without `select!`, which yields the whole task when
    /// the budget is spent): its output, or `Pending` and `f` dropped.
    async fn poll_once<F: std::future::Future>(f: F) -> std::task::Poll<F::Output> {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(f.as_mut(), cx)))
            .await
    }

    /// Sends and receives `0..N` in one task, each `send` and `recv`
    /// polled once and dropped when that poll returns `Pending` (the
    /// channel is full or empty, or the task's cooperative budget is
    /// spent). Every message must
    /// still arrive once, whole and in order, and some polls must have
    /// been dropped with the budget spent (or the test proves nothing).
    fn budget_cancelled_ops_lose_nothing() -> Result<(), Failed> {
        use std::task::Poll;
        use tokio::task::coop::has_budget_remaining;
        const N: u64 = 3000;
        macro_rules! run {
            ($name:expr, $tx:expr, $rx:expr) => {{
                let (mut tx, mut rx) = ($tx, $rx);
                let (mut next_send, mut next_recv) = (0u64, 0u64);
                let mut spent = 0u64;
                let mut rounds = 0u64;
                while next_recv < N {
                    rounds += 1;
                    check(rounds < 100 * N, format!("{}: no progress", $name))?;
                    let mut progress = false;
                    if next_send < N {
                        match poll_once(tx.send(&next_send)).await {
                            Poll::Ready(r) => {
                                r?;
                                next_send += 1;
                                progress = true;
                            }
                            Poll::Pending => spent += u64::from(!has_budget_remaining()),
                        }
                    }
                    match poll_once(rx.recv()).await {
                        Poll::Ready(r) => {
                            let got = r?;
                            check(
                                got == next_recv,
                                format!("{}: got {got}, expected {next_recv}", $name),
                            )?;
                            next_recv += 1;
                            progress = true;
                        }
                        Poll::Pending => spent += u64::from(!has_budget_remaining()),
                    }
                    if !progress {
                        // Budget spent (or nothing to do yet): give the
                        // runtime a turn, which refills the budget.
                        tokio::task::yield_now().await;
                    }
                }
                check(spent > 0, format!("{}: the budget never ran out", $name))?;
                // A fresh budget: a message left over would be taken now.
                tokio::task::yield_now().await;
                let extra = poll_once(rx.recv()).await;
                check(
                    extra.is_pending(),
                    format!("{}: a message too many: {extra:?}", $name),
                )?;
            }};
        }
        runtime().block_on(async {
            for t in async_transports() {
                let (tx, rx) = t.channel::<u64>()?;
                run!(t.name(), tx.into_async()?, rx.into_async()?);
            }
            if async_on("queue") {
                let (tx, rx) = conduit::queue::<u64>()?;
                run!("queue", tx.into_async()?, rx.into_async()?);
            }
            Ok(())
        })
    }

    /// Child: takes numbers off the queue and puts their doubles on the
    /// other one, until the first queue's senders are gone.
    fn doubler((jobs, out): (QueueReceiver<u64>, QueueSender<u64>)) -> u64 {
        let mut n = 0;
        for x in jobs.iter().flatten() {
            let _ = out.send(&(2 * x));
            n += 1;
        }
        n
    }

    fn queue_async() -> Result<(), Failed> {
        runtime().block_on(async {
            let (jobs_tx, jobs_rx) = conduit::queue::<u64>()?;
            let (out_tx, out_rx) = conduit::queue::<u64>()?;
            let mut ps = Vec::new();
            for _ in 0..2 {
                ps.push(Process::spawn(doubler, (jobs_rx.clone(), out_tx.clone()))?);
            }
            drop((jobs_rx, out_tx));
            let mut jobs = jobs_tx.into_async()?;
            let mut out = out_rx.into_async()?;
            let mut sum = 0;
            for i in 0..500u64 {
                jobs.send(&i).await?;
            }
            drop(jobs);
            while let Some(x) = next(&mut out).await {
                sum += x?;
            }
            check(sum == 2 * (0..500u64).sum::<u64>(), format!("sum {sum}"))?;
            let mut n = 0;
            for p in &mut ps {
                n += p.join_async().await?;
            }
            check(n == 500, format!("{n} jobs"))
        })
    }

    /// Child: waits for the go, then receives until every sender is gone;
    /// returns the indices in arrival order (`u64::MAX`: a broken message).
    fn queue_drain((rx, go): (QueueReceiver<Vec<u8>>, Receiver<u64>)) -> Vec<u64> {
        let _ = go.recv();
        indices_until_gone(|| rx.recv())
    }

    /// Sends into a small queue whose consumer has not started, each send
    /// cancelled after a short time: a cancelled send went out whole or not
    /// at all (Windows: a message the pipe could not take stays in flight,
    /// whole, and the next send waits for it), in order.
    fn queue_cancelled_sends_on_a_full_queue() -> Result<(), Failed> {
        runtime().block_on(async {
            let cfg = conduit::QueueConfig::default().capacity_bytes(4096);
            let (tx, rx) = conduit::queue_with::<Vec<u8>>(cfg)?;
            let (go_tx, go_rx) = conduit::channel::<u64>()?;
            let mut p = Process::spawn(queue_drain, (rx, go_rx))?;
            let mut tx = tx.into_async()?;
            let mut sent = Vec::new();
            let mut cancelled = 0;
            for i in 0..96u64 {
                if i == 32 {
                    go_tx.send(&1)?;
                }
                let msg = payload(i, 700 + (i as usize * 37) % 900);
                let d = Duration::from_micros([0, 50, 300, 2000][i as usize % 4]);
                match tokio::time::timeout(d, tx.send(&msg)).await {
                    Ok(r) => {
                        r?;
                        sent.push(i);
                    }
                    Err(_) if i < 32 => cancelled += 1,
                    Err(_) => {
                        tokio::time::timeout(LONG, tx.send(&msg)).await??;
                        sent.push(i);
                    }
                }
            }
            check(cancelled > 0, "no send waited on the full queue")?;
            drop(tx);
            let got = p.join_async().await?;
            check(!got.contains(&u64::MAX), "a broken message")?;
            // A send cancelled after its message went out, then sent once
            // more, shows up twice in a row.
            let mut dedup = got.clone();
            dedup.dedup();
            check(
                dedup.windows(2).all(|w| w[0] < w[1]),
                format!("out of order: {got:?}"),
            )?;
            check(
                sent.iter().all(|i| dedup.contains(i)),
                format!("sent {sent:?}, received {got:?}"),
            )
        })
    }

    /// Child: holds a queue's only sender and another's only receiver until
    /// killed.
    fn hold_queues((ends, ready): ((QueueSender<u64>, QueueReceiver<u64>), Sender<u64>)) -> u64 {
        let _ = ready.send(&1);
        std::thread::sleep(Duration::from_secs(120));
        drop(ends);
        0
    }

    fn queue_peer_death() -> Result<(), Failed> {
        runtime().block_on(async {
            let (a_tx, a_rx) = conduit::queue::<u64>()?;
            let cfg = conduit::QueueConfig::default().capacity_bytes(4096);
            let (b_tx, b_rx) = conduit::queue_with::<u64>(cfg)?;
            let (ready_tx, ready_rx) = conduit::channel::<u64>()?;
            let mut p = Process::spawn(hold_queues, ((a_tx, b_rx), ready_tx))?;
            ready_rx.recv_timeout(LONG)?;
            let mut rx = a_rx.into_async()?;
            let mut tx = b_tx.into_async()?;
            let receiver = tokio::spawn(async move { rx.recv().await.err() });
            // Fills the queue first, then waits for room.
            let sender = tokio::spawn(async move {
                loop {
                    if let Err(e) = tx.send(&7).await {
                        return Some(e);
                    }
                }
            });
            // Let both reach their wait (not synchronisation: the checks
            // below hold whenever the kill lands).
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.kill()?;
            let killed = std::time::Instant::now();
            for (what, task) in [("receiver", receiver), ("sender", sender)] {
                let err = tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .map_err(|_| format!("{what}: no end within 5 s of the kill"))??
                    .ok_or(format!("{what}: no error"))?;
                check(err.is_disconnected(), format!("{what}: {err}"))?;
                let after = killed.elapsed();
                check(
                    after < Duration::from_secs(1),
                    format!("{what}: Disconnected after {after:?}"),
                )?;
            }
            Ok(())
        })
    }

    fn sleepy(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    fn join_async() -> Result<(), Failed> {
        runtime().block_on(async {
            let mut slow = Process::spawn(sleepy, 300)?;
            let mut fast = Process::spawn(sleepy, 1)?;
            // The first to finish wins; the other stays joinable.
            let first = tokio::select! {
                r = slow.join_async() => ("slow", r?),
                r = fast.join_async() => ("fast", r?),
            };
            check(first == ("fast", 1), format!("{first:?}"))?;
            check(slow.join_async().await? == 300, "slow")?;
            // A dropped join_async leaves the process joinable.
            let mut p = Process::spawn(sleepy, 200)?;
            let r = tokio::time::timeout(Duration::from_millis(1), p.join_async()).await;
            check(r.is_err(), "finished within 1 ms")?;
            check(p.join_async().await? == 200, "joined after a cancel")
        })
    }

    /// Child: holds its ends until killed.
    type Held = (Vec<Sender<u64>>, Vec<Duplex<u64, u64>>);

    fn hold((ends, ready): (Held, Sender<u64>)) -> u64 {
        let _ = ready.send(&1);
        std::thread::sleep(Duration::from_secs(120));
        drop(ends);
        0
    }

    fn peer_death() -> Result<(), Failed> {
        runtime().block_on(async {
            let mut theirs = (Vec::new(), Vec::new());
            let mut rxs = Vec::new();
            let mut duplexes = Vec::new();
            for t in async_transports() {
                let (tx, rx) = t.channel::<u64>()?;
                theirs.0.push(tx);
                rxs.push((t.name(), rx));
                let (a, b) = t.duplex::<u64, u64>()?;
                theirs.1.push(b);
                duplexes.push((t.name(), a));
            }
            let (ready_tx, ready_rx) = conduit::channel::<u64>()?;
            let mut p = Process::spawn(hold, (theirs, ready_tx))?;
            ready_rx.recv_timeout(LONG)?;
            let mut tasks = tokio::task::JoinSet::new();
            for (name, rx) in rxs {
                let mut rx = rx.into_async()?;
                tasks.spawn(async move { (name, "receiver", rx.recv().await.err()) });
            }
            for (name, a) in duplexes {
                // The sender half fills the channel first, then blocks.
                let (mut tx, _rx) = a.into_async()?.split();
                tasks.spawn(async move {
                    loop {
                        if let Err(e) = tx.send(&7).await {
                            return (name, "sender", Some(e));
                        }
                    }
                });
            }
            // Let every task reach its wait (not synchronisation: the
            // checks below hold whenever the kill lands).
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.kill()?;
            let killed = std::time::Instant::now();
            while let Some(r) = tokio::time::timeout(Duration::from_secs(5), tasks.join_next())
                .await
                .map_err(|_| "a task did not end within 5 s of the kill")?
            {
                let (name, what, err) = r?;
                let err = err.ok_or(format!("{name} {what}: no error"))?;
                check(err.is_disconnected(), format!("{name} {what}: {err}"))?;
                let after = killed.elapsed();
                check(
                    after < Duration::from_secs(1),
                    format!("{name} {what}: Disconnected after {after:?}"),
                )?;
            }
            Ok(())
        })
    }

    /// The pattern of message `i`: its bytes say which message they are.
    fn payload(i: u64, len: usize) -> Vec<u8> {
        let mut v = vec![(i % 251) as u8; len];
        if len >= 8 {
            v[..8].copy_from_slice(&i.to_le_bytes());
        }
        v
    }

    fn parse(v: &[u8]) -> Option<u64> {
        let i = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        v[8..].iter().all(|&b| b == (i % 251) as u8).then_some(i)
    }

    /// Child: sends `n` messages of the given sizes, each its index.
    fn send_sized((tx, sizes): (Sender<Vec<u8>>, Vec<usize>)) -> u64 {
        for (i, len) in sizes.iter().enumerate() {
            if tx.send(&payload(i as u64, *len)).is_err() {
                return i as u64;
            }
        }
        sizes.len() as u64
    }

    fn sizes(seed: u64, n: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| match rng.u8(..4) {
                0 => rng.usize(8..300_000),
                _ => rng.usize(8..2000),
            })
            .collect()
    }

    fn cancelled_recv_loses_nothing() -> Result<(), Failed> {
        let mut runner = TestRunner::new(Config {
            cases: 3,
            ..Config::default()
        });
        let strategy = (any::<u64>(), prop::collection::vec(0u64..300, 1..64));
        let transports = async_transports();
        runner
            .run(&strategy, |(seed, cancel_us)| {
                for t in &transports {
                    let r: Result<(), Failed> = runtime().block_on(async {
                        let n = 300;
                        let (tx, rx) = t.channel::<Vec<u8>>()?;
                        let mut p = Process::spawn(send_sized, (tx, sizes(seed, n)))?;
                        let mut rx = rx.into_async()?;
                        let mut want = 0u64;
                        let mut k = 0;
                        while want < n as u64 {
                            // Every other receive is cancelled after a tiny,
                            // random time; whatever it was doing must not
                            // lose a message.
                            let got = if k % 2 == 0 {
                                let d = Duration::from_micros(cancel_us[k / 2 % cancel_us.len()]);
                                match tokio::time::timeout(d, rx.recv()).await {
                                    Ok(r) => Some(r?),
                                    Err(_) => None,
                                }
                            } else {
                                Some(tokio::time::timeout(LONG, rx.recv()).await??)
                            };
                            k += 1;
                            if let Some(v) = got {
                                check(
                                    parse(&v) == Some(want),
                                    format!("{}: message {want} came as {:?}", t.name(), parse(&v)),
                                )?;
                                want += 1;
                            }
                        }
                        check(
                            rx.recv().await.err().is_some_and(|e| e.is_disconnected()),
                            "end",
                        )?;
                        check(p.join()? == n as u64, "child's count")
                    });
                    r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                }
                Ok(())
            })
            .map_err(|e| format!("{e}").into())
    }

    /// Child: receives until the parent's end closes; returns the indices in
    /// arrival order, or `u64::MAX` for a message that is not whole.
    fn receive_all(rx: Receiver<Vec<u8>>) -> Vec<u64> {
        indices_until_gone(|| rx.recv())
    }

    /// Receives with `recv` until the senders are gone; the indices in
    /// arrival order, ending with `u64::MAX` after a message that is not
    /// whole or another error.
    fn indices_until_gone(recv: impl Fn() -> conduit::Result<Vec<u8>>) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            match recv() {
                Ok(v) => out.push(parse(&v).unwrap_or(u64::MAX)),
                Err(e) if e.is_disconnected() => break,
                Err(_) => {
                    out.push(u64::MAX);
                    break;
                }
            }
        }
        out
    }

    fn cancelled_send_whole_or_nothing() -> Result<(), Failed> {
        let mut runner = TestRunner::new(Config {
            cases: 3,
            ..Config::default()
        });
        let strategy = (any::<u64>(), prop::collection::vec(0u64..300, 1..64));
        let transports = async_transports();
        runner
            .run(&strategy, |(seed, cancel_us)| {
                for t in &transports {
                    let r: Result<(), Failed> = runtime().block_on(async {
                        let n = 200;
                        let sizes = sizes(seed, n);
                        let (tx, rx) = t.channel::<Vec<u8>>()?;
                        let mut p = Process::spawn(receive_all, rx)?;
                        let mut tx = tx.into_async()?;
                        let mut sent = Vec::new();
                        for (i, len) in sizes.iter().enumerate() {
                            let msg = payload(i as u64, *len);
                            // A cancelled send either went out whole or not
                            // at all: send it once more in the second case;
                            // the first case shows up as a duplicate.
                            let d = Duration::from_micros(cancel_us[i % cancel_us.len()]);
                            match tokio::time::timeout(d, tx.send(&msg)).await {
                                Ok(r) => r?,
                                Err(_) => tokio::time::timeout(LONG, tx.send(&msg)).await??,
                            }
                            sent.push(i as u64);
                        }
                        tx.flush().await?;
                        drop(tx);
                        let got = p.join()?;
                        check(
                            !got.contains(&u64::MAX),
                            format!("{}: a broken message", t.name()),
                        )?;
                        let mut dedup = got.clone();
                        dedup.dedup();
                        check(
                            dedup == sent,
                            format!(
                                "{}: received {} distinct of {}",
                                t.name(),
                                dedup.len(),
                                sent.len()
                            ),
                        )
                    });
                    r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                }
                Ok(())
            })
            .map_err(|e| format!("{e}").into())
    }

    #[cfg(target_os = "linux")]
    fn threads() -> Result<usize, Failed> {
        Ok(std::fs::read_dir("/proc/self/task")?.count())
    }

    #[cfg(target_os = "linux")]
    fn cpu_time() -> Result<Duration, Failed> {
        // This thread's: the runtime is a current-thread one.
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        let rest = stat.rsplit(')').next().ok_or("stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ")".
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        Ok(Duration::from_millis(ticks * 10))
    }

    /// Child: sends `i` on sender `i` for each command, until the command
    /// channel closes.
    #[cfg(target_os = "linux")]
    fn send_on((txs, cmds): (Vec<Sender<u64>>, Receiver<u64>)) -> u64 {
        let mut n = 0;
        for i in cmds.iter().flatten() {
            if let Some(tx) = txs.get(i as usize) {
                let _ = tx.send(&i);
                n += 1;
            }
        }
        n
    }

    /// Runs in a child of its own, so that the threads and CPU time it
    /// measures are its own (the other tests run in parallel threads here).
    #[cfg(target_os = "linux")]
    fn thousand_idle_receivers_no_threads() -> Result<(), Failed> {
        let mut p = Process::spawn(idle_thousand, ())?;
        let r = p.join()?;
        check(r.is_empty(), r)
    }

    #[cfg(target_os = "linux")]
    fn idle_thousand(_: ()) -> String {
        match idle_thousand_in_child() {
            Ok(()) => String::new(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[cfg(target_os = "linux")]
    fn idle_thousand_in_child() -> Result<(), Failed> {
        let transports = async_transports();
        let mut rxs = Vec::new();
        let mut children = Vec::new();
        for c in 0..4 {
            let mut txs = Vec::new();
            for k in 0..250 {
                let t = transports[(c * 250 + k) % transports.len()];
                let (tx, rx) = t.channel::<u64>()?;
                txs.push(tx);
                rxs.push(rx);
            }
            let (cmd_tx, cmd_rx) = conduit::channel::<u64>()?;
            children.push((Process::spawn(send_on, (txs, cmd_rx))?, cmd_tx));
        }
        let rt = runtime();
        let before = threads()?;
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, rx) in rxs.into_iter().enumerate() {
                let mut rx = rx.into_async()?;
                tasks.spawn(async move { (i, rx.recv().await) });
            }
            // Every task is parked in the reactor now (not synchronisation:
            // the thread count holds at any time).
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let during = threads()?;
            check(
                during == before,
                format!("{before} threads before, {during} with 1000 receivers"),
            )?;
            let (cpu0, wall0) = (cpu_time()?, std::time::Instant::now());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (cpu, wall) = (cpu_time()? - cpu0, wall0.elapsed());
            // Generous: an idle runtime uses ~0% CPU; polling 1000 endpoints
            // in a loop would use ~100%.
            check(cpu < wall / 4, format!("{cpu:?} of CPU in {wall:?} idle"))?;
            // Child 2 sends on its sender 17: receiver 517 wakes.
            children[2].1.send(&17)?;
            let (i, r) = tokio::time::timeout(LONG, tasks.join_next())
                .await?
                .ok_or("no task")??;
            check(i == 517 && r? == 17, format!("woke receiver {i}"))?;
            tasks.abort_all();
            Ok::<(), Failed>(())
        })?;
        for (mut p, cmd) in children {
            drop(cmd);
            p.join()?;
        }
        Ok(())
    }

    #[cfg(feature = "named")]
    fn named_client((name, x): (String, u64)) -> u64 {
        match conduit::named::connect_timeout::<u64, u64>(&name, Duration::from_secs(10)) {
            Ok(conn) => {
                let _ = conn.send(&x);
                conn.recv().unwrap_or(0)
            }
            Err(_) => 0,
        }
    }

    #[cfg(feature = "named")]
    fn named_async() -> Result<(), Failed> {
        runtime().block_on(async {
            let name = format!(
                "conduit-async-test-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            );
            // An async listener (on Windows too, where `into_async` was
            // `Unsupported` before) serving blocking clients in children.
            let name2 = {
                let listener = conduit::named::Listener::<u64, u64>::bind(&name)?.into_async()?;
                // An accept cancelled while nobody connects leaves the
                // listener as it was.
                check(
                    tokio::time::timeout(Duration::from_millis(20), listener.accept())
                        .await
                        .is_err(),
                    "accepted without a client",
                )?;
                let mut ps = Vec::new();
                for x in 0..3 {
                    ps.push(Process::spawn(named_client, (name.clone(), x))?);
                }
                for _ in 0..3 {
                    let mut conn = tokio::time::timeout(LONG, listener.accept()).await??;
                    let x = conn.recv().await?;
                    conn.send(&(x + 10)).await?;
                }
                let mut got = Vec::new();
                for p in &mut ps {
                    got.push(p.join_async().await?);
                }
                got.sort_unstable();
                check(got == [10, 11, 12], format!("{got:?}"))?;
                format!("{name}-2")
            };
            // connect_async to a server that accepts on a blocking thread
            // and makes the connection async.
            let l2 = conduit::named::Listener::<u64, u64>::bind(&name2)?;
            let server = tokio::task::spawn_blocking(move || l2.accept());
            let mut c = conduit::named::connect_async::<u64, u64>(&name2).await?;
            let mut s = server.await??.into_async()?;
            c.send(&21).await?;
            let x = s.recv().await?;
            s.send(&(x * 2)).await?;
            check(c.recv().await? == 42, "connect_async reply")?;
            drop(s);
            check(
                c.recv().await.err().is_some_and(|e| e.is_disconnected()),
                "server gone",
            )
        })
    }

    /// An async accept dropped after every single poll (a `select!` whose
    /// other branch is always ready), while clients connect: each client
    /// is still accepted by a later accept, once. Then a listener dropped
    /// right after an accept future registered its wait and was dropped
    /// frees its name: a new listener binds it and serves the next client.
    #[cfg(feature = "named")]
    fn named_async_accept_cancelled_at_every_poll() -> Result<(), Failed> {
        runtime().block_on(async {
            let name = format!(
                "conduit-async-cancel-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            );
            let listener = conduit::named::Listener::<u64, u64>::bind(&name)?.into_async()?;
            let clients: Vec<_> = (0..4u64)
                .map(|x| {
                    let name = name.clone();
                    std::thread::spawn(move || -> conduit::Result<u64> {
                        let c = conduit::named::connect_timeout::<u64, u64>(&name, LONG)?;
                        c.send(&x)?;
                        c.recv()
                    })
                })
                .collect();
            let until = std::time::Instant::now() + LONG;
            let mut served = Vec::new();
            let mut dropped = 0u64;
            while served.len() < clients.len() {
                check(
                    std::time::Instant::now() < until,
                    format!("served {served:?} in 10 s ({dropped} accepts dropped)"),
                )?;
                let accepted = tokio::select! {
                    biased;
                    r = listener.accept() => Some(r?),
                    () = std::future::ready(()) => None,
                };
                match accepted {
                    Some(mut conn) => {
                        let x = tokio::time::timeout(LONG, conn.recv()).await??;
                        conn.send(&(x + 10)).await?;
                        served.push(x);
                    }
                    None => {
                        dropped += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
            let mut got = Vec::new();
            for c in clients {
                got.push(c.join().map_err(|_| "client panicked")??);
            }
            got.sort_unstable();
            served.sort_unstable();
            check(served == [0, 1, 2, 3], format!("served {served:?}"))?;
            check(got == [10, 11, 12, 13], format!("replies {got:?}"))?;
            // A registered wait, dropped with its future, then the listener.
            check(
                tokio::time::timeout(Duration::from_millis(20), listener.accept())
                    .await
                    .is_err(),
                "accepted without a client",
            )?;
            drop(listener);
            let again = conduit::named::Listener::<u64, u64>::bind(&name)?.into_async()?;
            let client = std::thread::spawn({
                let name = name.clone();
                move || -> conduit::Result<u64> {
                    let c = conduit::named::connect_timeout::<u64, u64>(&name, LONG)?;
                    c.send(&7)?;
                    c.recv()
                }
            });
            let mut conn = tokio::time::timeout(LONG, again.accept()).await??;
            let x = conn.recv().await?;
            conn.send(&(x * 3)).await?;
            check(
                client.join().map_err(|_| "client panicked")?? == 21,
                "reply from the new listener",
            )
        })
    }

    /// Client thread: connects to `name`, sends `x`, returns the reply.
    #[cfg(feature = "named")]
    fn named_thread_client(name: &str, x: u64) -> std::thread::JoinHandle<conduit::Result<u64>> {
        let name = name.to_owned();
        std::thread::spawn(move || {
            let c = conduit::named::connect_timeout::<u64, u64>(&name, LONG)?;
            c.send(&x)?;
            c.recv()
        })
    }

    /// Two tasks in `accept` on one async listener at once (it takes
    /// `&self`): each client wakes an accept, also the second client
    /// after the task that took the first one is gone, and a task whose
    /// accept future was dropped does not leave the other one deaf.
    #[cfg(feature = "named")]
    fn named_async_concurrent_accepts() -> Result<(), Failed> {
        use std::sync::Arc;
        type Listener = conduit::named::AsyncListener<u64, u64>;
        /// Accepts one client and answers it.
        async fn serve(l: Arc<Listener>) -> Result<u64, conduit::Error> {
            let mut conn = l.accept().await?;
            let x = conn.recv().await?;
            conn.send(&(x + 10)).await?;
            Ok(x)
        }
        runtime().block_on(async {
            let name = format!(
                "conduit-async-two-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            );
            let listener =
                Arc::new(conduit::named::Listener::<u64, u64>::bind(&name)?.into_async()?);
            for round in 0..3u64 {
                // Both accepts are parked before any client comes.
                let mut a = tokio::spawn(serve(Arc::clone(&listener)));
                tokio::task::yield_now().await;
                let mut b = tokio::spawn(serve(Arc::clone(&listener)));
                tokio::task::yield_now().await;
                if round > 0 {
                    // One accept gives up (a dropped future): the later
                    // one, then the earlier one.
                    let (gone, left) = if round == 1 { (b, a) } else { (a, b) };
                    gone.abort();
                    check(gone.await.is_err_and(|e| e.is_cancelled()), "cancelled")?;
                    let c = named_thread_client(&name, 7);
                    let x = tokio::time::timeout(LONG, left).await.map_err(|_| {
                        format!("round {round}: the client was not accepted in 10 s")
                    })???;
                    check(x == 7, format!("round {round}: served {x}"))?;
                    check(c.join().map_err(|_| "client panicked")?? == 17, "reply")?;
                    continue;
                }
                let c1 = named_thread_client(&name, 1);
                let first_was_a = tokio::select! {
                    r = &mut a => { r??; true }
                    r = &mut b => { r??; false }
                    () = tokio::time::sleep(LONG) => {
                        return Err("round 0: the first client was not accepted in 10 s".into());
                    }
                };
                check(c1.join().map_err(|_| "client panicked")?? == 11, "reply 1")?;
                let other = if first_was_a { b } else { a };
                let c2 = named_thread_client(&name, 2);
                let x = tokio::time::timeout(LONG, other).await.map_err(|_| {
                    format!(
                        "round 0: the second client was not accepted in 10 s \
                         (the {} accept was never woken)",
                        if first_was_a { "later" } else { "earlier" }
                    )
                })???;
                check(x == 2, format!("round 0: served {x}"))?;
                check(c2.join().map_err(|_| "client panicked")?? == 12, "reply 2")?;
            }
            Ok(())
        })
    }

    /// 40 clients that connect and leave at once, then more silent clients
    /// (connected, never answering) than the listener sets up at once
    /// (`MAX_PENDING`, 128): an async accept still gets the real client
    /// that comes after them, once the silent ones' handshake timeouts
    /// pass.
    #[cfg(feature = "named")]
    fn named_async_accept_past_silent_clients() -> Result<(), Failed> {
        #[cfg(windows)]
        fn raw(endpoint: &str) -> std::io::Result<std::fs::File> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(endpoint)
        }
        #[cfg(unix)]
        fn raw(endpoint: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
            std::os::unix::net::UnixStream::connect(endpoint)
        }
        /// Connects a raw client, polling an accept once after each failed
        /// try (none may return) so that the listener gets to look again.
        async fn connect_polling(
            endpoint: &str,
            listener: &conduit::named::AsyncListener<u64, u64>,
            what: &str,
        ) -> Result<impl Sized, Failed> {
            let mut tries = 0;
            loop {
                match raw(endpoint) {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tries += 1;
                        check(tries < 10_000, format!("{what}: {e}"))?;
                    }
                }
                check(
                    poll_once(listener.accept()).await.is_pending(),
                    format!("{what}: accepted"),
                )?;
                tokio::task::yield_now().await;
            }
        }
        runtime().block_on(async {
            let name = format!(
                "conduit-async-silent-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            );
            let listener = conduit::named::Listener::<u64, u64>::bind(&name)?
                .with_handshake_timeout(Duration::from_millis(1500));
            let endpoint = listener.endpoint().to_owned();
            let listener = listener.into_async()?;
            // Clients that connect and leave at once, each taken in by a
            // poll of an accept: none is returned, nor an error.
            for i in 0..40 {
                let what = format!("vanishing client {i}");
                drop(connect_polling(&endpoint, &listener, &what).await?);
                check(
                    poll_once(listener.accept()).await.is_pending(),
                    format!("vanishing client {i}: accepted"),
                )?;
            }
            let mut raws = Vec::new();
            for i in 0..129 {
                // One poll of an accept takes the client in (starts its
                // set-up); while the pipe instance is busy (Windows) each
                // poll lets the listener look again.
                let c = connect_polling(&endpoint, &listener, &format!("raw client {i}")).await?;
                raws.push(c);
                check(
                    poll_once(listener.accept()).await.is_pending(),
                    format!("raw client {i}: accepted"),
                )?;
            }
            let client = named_thread_client(&name, 9);
            let mut conn = tokio::time::timeout(Duration::from_secs(20), listener.accept())
                .await
                .map_err(|_| "the real client was not accepted in 20 s")??;
            let x = conn.recv().await?;
            conn.send(&(x + 10)).await?;
            check(
                client.join().map_err(|_| "client panicked")?? == 19,
                "reply",
            )?;
            drop(raws);
            Ok(())
        })
    }
}
