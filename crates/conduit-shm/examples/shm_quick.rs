//! A quick measurement of the shm transport against its raw limits, across
//! two processes (this executable re-runs itself as the child).
//!
//! ```text
//! cargo run --release -p conduit-shm --example shm_quick [-- --pin] [--rounds N]
//! ```
//!
//! Prints: single-core memcpy of 1 MiB; a raw shared-memory spin ping-pong
//! (two atomics, no protocol); 64-byte round trips over a typed
//! `Duplex<Vec<u8>, Vec<u8>>`; 64-byte one-way messages per second over a
//! typed `Sender<Vec<u8>>`; 1 MiB one-way throughput received three ways
//! (typed `recv`, `recv_frame` into a reused buffer, zero-copy `recv_with`).
//! `--cap BYTES` sets the ring capacity. `--pin` pins the parent to CPU 0 and the child to CPU 1 (Linux).
//! This is a development aid; `cargo xtask bench` is the benchmark.

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use conduit::{Duplex, FrameReceiver, Receiver, Sender};
use conduit_shm::raw::SpinPair;

const MODE: &str = "SHM_QUICK_CHILD";
const SPIN_HANDLE: &str = "SHM_QUICK_SPIN";
const MIB: usize = 1 << 20;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res {
    let pin = std::env::args().any(|a| a == "--pin");
    if let Ok(mode) = std::env::var(MODE) {
        if pin {
            pin_to(1);
        }
        return child(&mode);
    }
    if pin {
        pin_to(0);
    }
    let rounds: usize = arg("--rounds").unwrap_or(1);
    for r in 0..rounds {
        if rounds > 1 {
            println!("-- round {}", r + 1);
        }
        run(pin)?;
    }
    Ok(())
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_cpu: usize) {}

fn spawn(
    mode: &str,
    pin: bool,
    setup: impl FnOnce(&mut Command) -> Res,
) -> Res<std::process::Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(MODE, mode);
    if pin {
        cmd.arg("--pin");
    }
    setup(&mut cmd)?;
    Ok(cmd.spawn()?)
}

/// The ring configuration: `--cap BYTES` overrides the default capacity.
fn cfg() -> conduit::shm::ShmConfig {
    let cfg = conduit::shm::ShmConfig::default();
    match arg("--cap") {
        Some(cap) => cfg.with_capacity(cap),
        None => cfg,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn run(pin: bool) -> Res {
    // 1. memcpy of 1 MiB on one core.
    let src = vec![1u8; MIB];
    let mut dst = vec![0u8; MIB];
    for _ in 0..100 {
        dst.copy_from_slice(black_box(&src));
    }
    let n = 4000;
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    let memcpy = (n * MIB) as f64 / start.elapsed().as_secs_f64() / 1e9;
    println!("memcpy 1 MiB, one core:          {memcpy:6.1} GB/s");

    // Cost of making a connection (two rings).
    let start = Instant::now();
    for _ in 0..20 {
        black_box(conduit::shm::duplex_with::<Vec<u8>, Vec<u8>>(cfg())?);
    }
    println!(
        "shm duplex creation:             {:?}",
        start.elapsed() / 20
    );

    // 2. Raw spin ping-pong.
    let pair = SpinPair::create()?;
    let handle = pair.handle()?;
    let mut child = spawn("spin", pin, |cmd| {
        let part = conduit_core::sys::send_handles(cmd, vec![handle])?;
        cmd.env(SPIN_HANDLE, part);
        Ok(())
    })?;
    let rtts = {
        let (ping, pong) = (pair.ping(), pair.pong());
        let mut rtts = Vec::with_capacity(200_000);
        for k in 1..=220_000u32 {
            let start = Instant::now();
            ping.store(k, Ordering::Release);
            while pong.load(Ordering::Acquire) != k {
                std::hint::spin_loop();
            }
            if k > 20_000 {
                rtts.push(start.elapsed());
            }
        }
        ping.store(u32::MAX, Ordering::Release);
        rtts.sort();
        rtts
    };
    child.wait()?;
    let (raw_med, raw_p99) = (pct(&rtts, 0.5), pct(&rtts, 0.99));
    println!("raw spin ping-pong RTT:          median {raw_med:?}, p99 {raw_p99:?}");

    // 3. 64 B round trips over shm.
    let (conn, theirs) = conduit::shm::duplex_with::<Vec<u8>, Vec<u8>>(cfg())?;
    let mut child = spawn("echo", pin, |cmd| {
        Ok(conduit::handoff(cmd, "conn", theirs)?)
    })?;
    let msg = vec![7u8; 64];
    for _ in 0..20_000 {
        conn.send(&msg)?;
        conn.recv()?;
    }
    let mut rtts = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        let start = Instant::now();
        conn.send(&msg)?;
        black_box(conn.recv()?);
        rtts.push(start.elapsed());
    }
    drop(conn);
    child.wait()?;
    rtts.sort();
    let (med, p99) = (pct(&rtts, 0.5), pct(&rtts, 0.99));
    println!(
        "shm 64 B RTT (typed duplex):     median {med:?}, p99 {p99:?}  ({:.2}x / {:.2}x raw)",
        med.as_secs_f64() / raw_med.as_secs_f64(),
        p99.as_secs_f64() / raw_p99.as_secs_f64()
    );

    // 3b. The same over the byte-level endpoints (no typed layer).
    let (conn, theirs) = conduit::shm::duplex_with::<Vec<u8>, Vec<u8>>(cfg())?;
    let mut child = spawn("echo-raw", pin, |cmd| {
        Ok(conduit::handoff(cmd, "conn", theirs)?)
    })?;
    let (tx, rx) = conn.split();
    let (mut tx, mut rx) = (tx.into_raw(), rx.into_raw());
    let mut rtts = Vec::with_capacity(200_000);
    for i in 0..220_000 {
        let start = Instant::now();
        tx.send_frame(&msg)?;
        rx.recv_with(None, &mut |f| {
            black_box(f);
        })?;
        if i >= 20_000 {
            rtts.push(start.elapsed());
        }
    }
    drop((tx, rx));
    child.wait()?;
    rtts.sort();
    let (med, p99) = (pct(&rtts, 0.5), pct(&rtts, 0.99));
    println!(
        "shm 64 B RTT (byte-level):       median {med:?}, p99 {p99:?}  ({:.2}x / {:.2}x raw)",
        med.as_secs_f64() / raw_med.as_secs_f64(),
        p99.as_secs_f64() / raw_p99.as_secs_f64()
    );

    // 4. 64 B one-way message rate.
    let n = 4_000_000u64;
    let (tx, rx) = conduit::shm::channel_with::<Vec<u8>>(cfg())?;
    let (done_child, done) = conduit::shm::channel::<u64>()?;
    let mut child = spawn("count", pin, |cmd| {
        conduit::handoff(cmd, "rx", rx)?;
        Ok(conduit::handoff(cmd, "done", done_child)?)
    })?;
    tx.send(&vec![0u8; 64])?; // the child is up once this is received
    let ready = done.recv()?;
    assert_eq!(ready, 0);
    let start = Instant::now();
    for _ in 0..n {
        tx.send(&msg)?;
    }
    let got = done.recv()?;
    let secs = start.elapsed().as_secs_f64();
    drop(tx);
    child.wait()?;
    assert_eq!(got, n);
    println!(
        "shm 64 B one-way (typed):        {:6.2} M msg/s",
        n as f64 / secs / 1e6
    );

    // 5. 1 MiB one-way, three ways of receiving.
    for how in ["typed", "recv_frame", "recv_with"] {
        let n = 4000u64;
        let (tx, rx) = conduit::shm::channel_with::<Vec<u8>>(cfg())?;
        let (done_child, done) = conduit::shm::channel::<u64>()?;
        let mut child = spawn(&format!("bulk-{how}"), pin, |cmd| {
            conduit::handoff(cmd, "rx", rx)?;
            Ok(conduit::handoff(cmd, "done", done_child)?)
        })?;
        let big = vec![3u8; MIB];
        tx.send(&big)?;
        assert_eq!(done.recv()?, 0);
        let start = Instant::now();
        for _ in 0..n {
            tx.send(&big)?;
        }
        let got = done.recv()?;
        let secs = start.elapsed().as_secs_f64();
        drop(tx);
        child.wait()?;
        assert_eq!(got, n);
        let gbs = (n as usize * MIB) as f64 / secs / 1e9;
        println!(
            "shm 1 MiB one-way ({how:>10}):  {gbs:6.1} GB/s  ({:.0}% of memcpy)",
            gbs / memcpy * 100.0
        );
    }
    Ok(())
}

fn child(mode: &str) -> Res {
    match mode {
        "spin" => {
            let part = std::env::var(SPIN_HANDLE)?;
            let handle = conduit_core::sys::receive_handles(&part, 1)?
                .pop()
                .ok_or("no handle")?;
            let pair = SpinPair::open(handle)?;
            let (ping, pong) = (pair.ping(), pair.pong());
            let mut last = 0;
            loop {
                let k = ping.load(Ordering::Acquire);
                if k == u32::MAX {
                    return Ok(());
                }
                if k != last {
                    last = k;
                    pong.store(k, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        "echo" => {
            let conn: Duplex<Vec<u8>, Vec<u8>> = conduit::adopt("conn")?;
            while let Ok(m) = conn.recv() {
                conn.send(&m)?;
            }
            Ok(())
        }
        "echo-raw" => {
            let conn: Duplex<Vec<u8>, Vec<u8>> = conduit::adopt("conn")?;
            let (tx, rx) = conn.split();
            let (mut tx, mut rx) = (tx.into_raw(), rx.into_raw());
            let mut buf = Vec::new();
            while rx.recv_frame(&mut buf, None).is_ok() {
                tx.send_frame(&buf)?;
            }
            Ok(())
        }
        "count" => {
            let rx: Receiver<Vec<u8>> = conduit::adopt("rx")?;
            let done: Sender<u64> = conduit::adopt("done")?;
            rx.recv()?;
            done.send(&0)?;
            let mut count = 0u64;
            while count < 4_000_000 {
                black_box(rx.recv()?);
                count += 1;
            }
            done.send(&count)?;
            while rx.recv().is_ok() {}
            Ok(())
        }
        bulk => {
            let how = bulk.trim_start_matches("bulk-");
            let rx: Receiver<Vec<u8>> = conduit::adopt("rx")?;
            let done: Sender<u64> = conduit::adopt("done")?;
            rx.recv()?;
            done.send(&0)?;
            let n = 4000u64;
            let mut sum = 0u64;
            match how {
                "typed" => {
                    for _ in 0..n {
                        let m = rx.recv()?;
                        sum += u64::from(m[MIB / 2]);
                    }
                }
                "recv_frame" => {
                    let mut raw = rx.into_raw();
                    let mut buf = Vec::new();
                    for _ in 0..n {
                        raw.recv_frame(&mut buf, None)?;
                        sum += u64::from(buf[MIB / 2]);
                    }
                    return finish(&done, n, sum, raw);
                }
                _ => {
                    let mut raw = rx.into_raw();
                    for _ in 0..n {
                        raw.recv_with(None, &mut |f| sum += u64::from(f[f.len() / 2]))?;
                    }
                    return finish(&done, n, sum, raw);
                }
            }
            black_box(sum);
            done.send(&n)?;
            while rx.recv().is_ok() {}
            Ok(())
        }
    }
}

fn finish(done: &Sender<u64>, n: u64, sum: u64, mut raw: Box<dyn FrameReceiver>) -> Res {
    black_box(sum);
    done.send(&n)?;
    let mut buf = Vec::new();
    while raw.recv_frame(&mut buf, None).is_ok() {}
    Ok(())
}
