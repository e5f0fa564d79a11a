//! Blocking behaviour of the shm transport: an idle receiver costs no CPU,
//! and long streams of tiny messages never lose a wake-up.

// Test code: helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use conduit_core::{ErrorKind, FrameReceiver, FrameSender};
use conduit_shm::{channel, ShmConfig};

/// CPU time consumed so far by the calling thread.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time consumed so far by the calling thread.
#[cfg(windows)]
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentThread, GetThreadTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
    // SAFETY: GetCurrentThread returns a pseudo-handle valid in this thread;
    // the four out-pointers are valid FILETIMEs on our stack.
    let ok = unsafe { GetThreadTimes(GetCurrentThread(), &mut c, &mut e, &mut k, &mut u) };
    assert_ne!(ok, 0, "GetThreadTimes failed");
    let ticks = |f: FILETIME| (u64::from(f.dwHighDateTime) << 32) | u64::from(f.dwLowDateTime);
    // FILETIME counts 100 ns units.
    Duration::from_nanos((ticks(k) + ticks(u)) * 100)
}

/// Runs `f` in a thread and fails the test if it has not finished by `limit`
/// (a lost wake-up shows up as a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(f());
    });
    match done_rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("did not finish within {limit:?}: a lost wake-up?"),
    }
}

#[test]
fn idle_blocked_receiver_uses_almost_no_cpu() {
    let (tx, mut rx) = channel(ShmConfig::default()).unwrap();
    let (cpu, wall, res) = within(Duration::from_secs(60), move || {
        let start_cpu = thread_cpu_time();
        let start = Instant::now();
        let mut out = Vec::new();
        let res = rx.recv_frame(&mut out, Some(start + Duration::from_secs(2)));
        (thread_cpu_time() - start_cpu, start.elapsed(), res)
    });
    drop(tx);
    assert_eq!(res.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(wall >= Duration::from_secs(2));
    eprintln!("receiver blocked {wall:?}, used {cpu:?} of CPU");
    assert!(
        cpu < Duration::from_millis(50),
        "used {cpu:?} of CPU while idle"
    );
}

/// One million 1-byte messages echoed through a second thread, with no
/// spinning (every wait parks) and a tiny ring (the sender parks on a full
/// ring too), and a liveness interval of an hour so that a lost wake-up
/// cannot be rescued by a timeout: it would hang the test.
fn echo_tiny_messages(n: u32, spin: Duration) {
    let cfg = ShmConfig::default()
        .with_capacity(4096)
        .with_spin(spin)
        .with_liveness_interval(Duration::from_secs(3600));
    let (mut to_echo, mut echo_in) = channel(cfg).unwrap();
    let (mut echo_out, mut back) = channel(cfg).unwrap();
    within(Duration::from_secs(600), move || {
        let echo = thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                match echo_in.recv_frame(&mut buf, None) {
                    Ok(()) => echo_out.send_frame(&buf).unwrap(),
                    Err(e) if e.is_disconnected() => return,
                    Err(e) => panic!("echo: {e}"),
                }
            }
        });
        let sender = thread::spawn(move || {
            for i in 0..n {
                to_echo.send_frame(&[i as u8]).unwrap();
            }
        });
        let mut buf = Vec::new();
        for i in 0..n {
            back.recv_frame(&mut buf, None).unwrap();
            assert_eq!(buf, [i as u8], "message {i}");
        }
        sender.join().unwrap();
        echo.join().unwrap();
        let e = back.recv_frame(&mut buf, None).unwrap_err();
        assert!(e.is_disconnected(), "{e}");
    });
}

#[test]
fn a_million_tiny_messages_echoed_without_spinning_lose_no_wake_up() {
    echo_tiny_messages(1_000_000, Duration::ZERO);
}

#[test]
fn tiny_messages_echoed_with_a_short_spin_lose_no_wake_up() {
    echo_tiny_messages(200_000, Duration::from_micros(2));
}
