//! The parent's side of the tests with well-behaved peers: killed peers,
//! timeouts, handed roles, unrelated children, long streams and `adopt`
//! errors.

use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use conduit::{Duplex, ErrorKind, Receiver, Transport};

use super::echo::spawn_echo;
use super::{expect_kind, job, HANG};
use crate::msg::Msg;
use crate::{ensure, fail, spawn, Failed};

pub(super) fn spawn_idle(t: Transport) -> Result<(crate::Spawned, Duplex<Msg, Msg>), Failed> {
    let (conn, conn_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let child = spawn("idle", |cmd| conduit::handoff(cmd, "conn", conn_child))?;
    let ready = conn
        .recv_timeout(HANG)
        .map_err(fail("waiting for the child"))?;
    ensure(ready == Msg::Text("ready".into()), || {
        format!("unexpected {ready:?}")
    })?;
    Ok((child, conn))
}

/// Runs `blocked` in this thread while another thread kills `child` as soon as
/// this thread is seen asleep in the kernel.
fn kill_when_blocked<T>(
    child: &mut crate::Spawned,
    blocked: impl FnOnce() -> T,
) -> Result<(T, bool), Failed> {
    let me = crate::current_thread();
    thread::scope(|s| {
        let killer = s.spawn(move || {
            let seen = crate::wait_until_blocked(me, HANG);
            child.kill().map(|_| seen)
        });
        let out = crate::watchdog("blocked call after the peer was killed", HANG, blocked);
        let seen = killer
            .join()
            .map_err(|_| Failed::from("killer thread panicked"))??;
        Ok((out, seen))
    })
}

pub(super) fn kill_while_blocked_in_recv(t: Transport) -> Result<(), Failed> {
    let (mut child, conn) = spawn_idle(t)?;
    let (res, seen) = kill_when_blocked(&mut child, || conn.recv())?;
    if cfg!(target_os = "linux") {
        ensure(seen, || {
            "the receiving thread was never seen blocked".into()
        })?;
    }
    expect_kind(
        "recv after the peer was killed",
        res,
        ErrorKind::Disconnected,
    )?;
    // It stays disconnected.
    expect_kind("second recv", conn.recv(), ErrorKind::Disconnected).map(|_| ())
}

pub(super) fn kill_while_blocked_in_send(t: Transport) -> Result<(), Failed> {
    let (mut child, conn) = spawn_idle(t)?;
    let big = job(1, "big", vec![0xab; 1 << 20]);
    let (res, seen) = kill_when_blocked(&mut child, || loop {
        if let Err(e) = conn.send(&big) {
            return e;
        }
    })?;
    if cfg!(target_os = "linux") {
        ensure(seen, || {
            "the sending thread was never seen blocked on a full channel".into()
        })?;
    }
    ensure(res.is_disconnected(), || {
        format!("send after the peer was killed: expected Disconnected, got {res}")
    })
}

pub(super) fn timeout_and_empty(t: Transport) -> Result<(), Failed> {
    let (mut child, typed, _raw) = spawn_echo(t)?;
    expect_kind(
        "try_recv on an empty channel",
        typed.try_recv(),
        ErrorKind::Empty,
    )?;
    let start = Instant::now();
    let e = expect_kind(
        "recv_timeout on an empty channel",
        typed.recv_timeout(Duration::from_millis(50)),
        ErrorKind::Timeout,
    )?;
    ensure(e.is_timeout(), || "is_timeout() is false".into())?;
    ensure(start.elapsed() >= Duration::from_millis(50), || {
        "recv_timeout returned before its timeout".into()
    })?;
    typed.send(&Msg::Int(5)).map_err(fail("send"))?;
    let back = typed
        .recv_timeout(HANG)
        .map_err(fail("recv_timeout with a message coming"))?;
    ensure(back == Msg::Int(5), || format!("echo gave {back:?}"))?;
    expect_kind(
        "try_recv after draining",
        typed.try_recv(),
        ErrorKind::Empty,
    )?;
    drop(typed);
    drop(_raw);
    child.wait_success()
}

pub(super) fn unrelated_children(t: Transport) -> Result<(), Failed> {
    let (tx, rx) = t.channel::<Msg>().map_err(fail("channel"))?;
    let mut cmd_setup = Some(tx);
    // Children spawned between handoff and spawn, and concurrently with it.
    let barrier = Barrier::new(2);
    let (intended, sleepers) = thread::scope(|s| {
        let others = s.spawn(|| {
            barrier.wait();
            (0..8)
                .map(|_| spawn("sleeper", |_| Ok(())))
                .collect::<Result<Vec<_>, _>>()
        });
        let intended = spawn("hello_exit", |cmd| {
            let tx = cmd_setup
                .take()
                .ok_or_else(|| conduit::Error::invalid_input("twice"))?;
            conduit::handoff(cmd, "conn", tx)?;
            barrier.wait();
            Ok(())
        });
        (intended, others.join())
    });
    let mut intended = intended?;
    let sleepers = sleepers.map_err(|_| Failed::from("spawner panicked"))??;
    let more: Vec<_> = (0..4)
        .map(|_| spawn("sleeper", |_| Ok(())))
        .collect::<Result<_, _>>()?;
    let hi = rx.recv_timeout(HANG).map_err(fail("recv hi"))?;
    ensure(hi == Msg::Text("hi".into()), || format!("{hi:?}"))?;
    intended.wait_success()?;
    // Twelve unrelated children are alive; none may hold the sender.
    expect_kind(
        "recv after the intended child exited",
        rx.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    drop((sleepers, more));
    Ok(())
}

pub(super) fn handed_roles(t: Transport) -> Result<(), Failed> {
    // A handed receiver, a handed sender and a handed duplex at once.
    let (typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (raw, raw_child) = t.duplex::<Vec<u8>, Vec<u8>>().map_err(fail("duplex"))?;
    // Use the connection before handing it off: handshake state must carry over.
    typed
        .send(&Msg::Int(1))
        .map_err(fail("send before handoff"))?;
    let mut child = spawn("echo", |cmd| {
        conduit::handoff(cmd, "typed", typed_child)?;
        conduit::handoff(cmd, "raw", raw_child)
    })?;
    let (tx, rx) = typed.split();
    tx.send(&Msg::Int(2)).map_err(fail("send"))?;
    for want in [1, 2] {
        let got = rx.recv_timeout(HANG).map_err(fail("recv"))?;
        ensure(got == Msg::Int(want), || {
            format!("got {got:?}, want Int({want})")
        })?;
    }
    raw.send(&vec![]).map_err(fail("send empty"))?;
    let got = raw.recv_timeout(HANG).map_err(fail("recv empty"))?;
    ensure(got.is_empty(), || {
        "empty payload came back non-empty".into()
    })?;
    drop((tx, rx, raw));
    child.wait_success()
}

pub(super) fn many_tiny_messages(t: Transport) -> Result<(), Failed> {
    // Long streams of 1-byte messages are where a lost wake-up shows (a
    // stall until a timeout, or a hang).
    const N: usize = 100_000;
    let (mut child, _typed, raw) = spawn_echo(t)?;
    let (tx, rx) = raw.split();
    crate::watchdog("echo of many tiny messages", HANG, || {
        thread::scope(|s| {
            s.spawn(|| {
                for i in 0..N {
                    tx.send(&vec![i as u8]).expect("send");
                }
            });
            for i in 0..N {
                let got = rx.recv_timeout(HANG).map_err(fail("recv"))?;
                ensure(got == [i as u8], || format!("message {i}: got {got:?}"))?;
            }
            Ok::<(), Failed>(())
        })
    })?;
    drop((tx, rx, _typed));
    child.wait_success()
}

pub(super) fn adopt_errors() -> Result<(), Failed> {
    let missing = conduit::adopt::<Receiver<Msg>>("never_handed");
    let e = expect_kind("missing key", missing, ErrorKind::InvalidInput)?;
    ensure(e.to_string().contains("never_handed"), || format!("{e}"))?;
    let bad_key = conduit::adopt::<Receiver<Msg>>("bad key!");
    expect_kind("bad key", bad_key, ErrorKind::InvalidInput)?;
    let (tx, _rx) = conduit::channel::<Msg>().map_err(fail("channel"))?;
    let mut cmd = Command::new("x");
    expect_kind(
        "handoff bad key",
        conduit::handoff(&mut cmd, "no-dashes", tx),
        ErrorKind::InvalidInput,
    )?;
    // Malformed and unsupported tokens are checked in a child, whose
    // environment we control.
    // A compiled-in transport, so that only the token's defect is reported.
    let on = conduit::Transport::enabled()
        .first()
        .map_or("pipe", |t| t.name());
    let mut child = spawn("adopt_checks", |cmd| {
        cmd.env("CONDUIT_HANDOFF_garbage", "hello");
        cmd.env(
            "CONDUIT_HANDOFF_badfd",
            format!("conduit1;receiver;fd=notanumber;{on},1,67108864,1,0"),
        );
        cmd.env(
            "CONDUIT_HANDOFF_unknown",
            "conduit1;receiver;none;carrier-pigeon,0",
        );
        let off = Transport::ALL
            .iter()
            .find(|t| !t.is_enabled())
            .map_or("", |t| t.name());
        cmd.env(
            "CONDUIT_HANDOFF_disabled",
            format!("conduit1;receiver;none;{off},0"),
        );
        cmd.env("CONDUIT_DISABLED_TRANSPORT", off);
        cmd.env(
            "CONDUIT_HANDOFF_role",
            format!("conduit1;sender;none;{on},0"),
        );
        // Handle counts whose sum overflows a u64 (found by the
        // handoff_token fuzz target): an error, not a panic.
        cmd.env(
            "CONDUIT_HANDOFF_overflow",
            format!("conduit1;duplex;none;{on},18446744073709551615,1;{on},1,1"),
        );
        Ok(())
    })?;
    child.wait_success()
}

/// `send_bytes` and `recv_bytes_into` across processes: raw frames of many
/// sizes (empty, tiny, around the stream buffer, larger than it) through a
/// child that echoes them, read back into one reused buffer; and on the
/// typed channel, a message encoded by the caller goes out with
/// `send_bytes`, is decoded and re-encoded by the child, and comes back as
/// the same CBOR bytes through `recv_bytes_into`.
pub(super) fn bytes_api(t: Transport) -> Result<(), Failed> {
    use conduit::{Cbor, Codec};
    let (mut child, typed, raw) = spawn_echo(t)?;
    let sizes = [0usize, 1, 7, 64, 4095, 4096, 4097, 65_537, 300_000, 3];
    let payload = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + n) as u8).collect() };
    let mut buf = vec![0xEE; 17];
    crate::watchdog("send_bytes / recv_bytes_into echo", HANG, || {
        thread::scope(|s| {
            let sent = s.spawn(|| {
                for &n in &sizes {
                    raw.send_bytes(&payload(n)[..])
                        .map_err(fail("send_bytes"))?;
                }
                Ok::<_, Failed>(())
            });
            for &n in &sizes {
                let got = raw
                    .recv_bytes_into(&mut buf)
                    .map_err(fail("recv_bytes_into"))?;
                ensure(got == n && buf == payload(n), || {
                    format!(
                        "echo of {n} bytes came back as {got} bytes, equal: {}",
                        buf == payload(n)
                    )
                })?;
            }
            sent.join().map_err(|_| Failed::from("sender panicked"))?
        })
    })?;
    let msg = job(7, "bytes", vec![1, 2, 3]);
    let mut encoded = Vec::new();
    Cbor::encode(&msg, &mut encoded).map_err(fail("encode"))?;
    typed
        .send_bytes(&encoded)
        .map_err(fail("send_bytes on the typed channel"))?;
    let n = typed
        .recv_bytes_into(&mut buf)
        .map_err(fail("recv_bytes_into on the typed channel"))?;
    ensure(n == encoded.len() && buf == encoded, || {
        format!("the typed echo came back as {n} other bytes")
    })?;
    // And a typed message read as bytes is its CBOR encoding.
    typed.send(&Msg::Int(-3)).map_err(fail("send"))?;
    typed
        .recv_bytes_into(&mut buf)
        .map_err(fail("recv_bytes_into"))?;
    ensure(buf == [0xa1, 0x63, b'I', b'n', b't', 0x22], || {
        format!("Msg::Int(-3) read as bytes: {buf:02x?}")
    })?;
    drop(typed);
    drop(raw);
    child.wait_success()
}
