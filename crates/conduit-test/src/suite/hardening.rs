//! Conformance tests for the holes outside probes found (the hardening
//! issue): calls that must notice a killed peer whatever their timeout,
//! `poll` semantics, replayed or looping shared-memory records, and memory a
//! receiver commits for a frame that has not arrived.

use std::thread;
use std::time::{Duration, Instant};

use conduit::TestHooks;
use conduit::{Codec, Duplex, ErrorKind, Sender, Transport};

use super::cases::spawn_idle;
use super::echo::spawn_echo;
use super::liars::{handshake, shm_record, spawn_liar_as, Liar, MAX};
use super::{echo_loop, expect_kind, job, Scenario, HANG};
use crate::msg::Msg;
use crate::{ensure, fail, spawn, ChildFn, Failed};

/// The promise: every call reports a dead peer within this long.
const NOTICE: Duration = Duration::from_secs(1);

/// The child functions of these tests.
pub(crate) const CHILDREN: &[ChildFn] = &[
    ChildFn {
        name: "hardening_liar",
        run: child_liar,
    },
    ChildFn {
        name: "gated_echo",
        run: child_gated_echo,
    },
];

/// Reads nothing until the parent says "go" on `ctl`, then echoes `conn`.
fn child_gated_echo() {
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt conn");
    let ctl: Duplex<Msg, Msg> = conduit::adopt("ctl").expect("adopt ctl");
    assert_eq!(ctl.recv().expect("go"), Msg::Text("go".into()));
    echo_loop(&conn);
}

/// Plays the [`Scenario`] it is given on the sender handed under `conn`, tells the
/// parent "sent" on `ctl`, then waits to be killed (or for `ctl` to close).
fn child_liar() {
    let scenario = Scenario::from_env();
    let conn: Sender<Vec<u8>> = conduit::adopt("conn").expect("adopt conn");
    let ctl: Duplex<Msg, Msg> = conduit::adopt("ctl").expect("adopt ctl");
    let mut raw = conn.into_raw();
    let mut once = Vec::new();
    conduit::Cbor::encode(&Msg::Text("once".into()), &mut once).expect("encode");
    match scenario {
        // shm: one message, then a padding record that sends the receiver
        // back to the start of the ring, where that message still lies.
        Scenario::Replay => {
            raw.send_frame(&once).expect("send");
            raw.send_unframed(&shm_record(SHM_PAD, 0, &[]))
                .expect("write padding");
        }
        // shm: a padding record at ring offset 0, which would skip a whole
        // lap and land on itself again.
        Scenario::PadAtStart => {
            raw.send_unframed(&shm_record(SHM_PAD, 0, &[]))
                .expect("write padding");
        }
        // Streams: a frame header announcing 64 MiB, then 100 bytes of it.
        Scenario::Announce => {
            raw.send_unframed(&handshake(1, 1, MAX)).expect("write");
            raw.send_unframed(&(64u32 << 20).to_le_bytes())
                .expect("write");
            raw.send_unframed(&[1u8; 100]).expect("write");
        }
        other => panic!(
            "the hardening liar does not play scenario {}",
            other.as_str()
        ),
    }
    ctl.send(&Msg::Text("sent".into())).expect("status");
    while ctl.recv().is_ok() {}
}

/// The shm record kind of padding (see the `conduit-shm` crate docs).
const SHM_PAD: u32 = 5;

/// Spawns the liar with `scenario` and waits for its "sent".
fn spawn_liar(t: Transport, scenario: Scenario) -> Result<Liar, Failed> {
    let (child, rx, ctl) = spawn_liar_as("hardening_liar", t, scenario)?;
    let status = ctl.recv_timeout(HANG).map_err(fail("status"))?;
    ensure(status == Msg::Text("sent".into()), || format!("{status:?}"))?;
    Ok((child, rx, ctl))
}

/// How a test looks for the peer's death.
#[derive(Clone, Copy, Debug)]
enum Probe {
    TryRecv,
    ShortTimeout,
    Poll,
    Send,
}

/// Calls `probe` on `conn` until it reports the peer gone; fails after
/// [`NOTICE`].
fn until_disconnected(probe: Probe, conn: &Duplex<Msg, Msg>) -> Result<(), Failed> {
    let start = Instant::now();
    let mut calls = 0u64;
    loop {
        calls += 1;
        let gone = match probe {
            Probe::TryRecv => match conn.try_recv() {
                Err(e) if e.kind() == ErrorKind::Empty => false,
                other => expect_kind("try_recv", other, ErrorKind::Disconnected).map(|_| true)?,
            },
            Probe::ShortTimeout => match conn.recv_timeout(Duration::from_millis(10)) {
                Err(e) if e.is_timeout() => false,
                other => {
                    expect_kind("recv_timeout", other, ErrorKind::Disconnected).map(|_| true)?
                }
            },
            Probe::Poll => {
                if conn.poll(Duration::from_millis(20)).map_err(fail("poll"))? {
                    // Ready because the peer is gone: the receive says so.
                    expect_kind("recv after poll", conn.try_recv(), ErrorKind::Disconnected)?;
                    true
                } else {
                    false
                }
            }
            Probe::Send => match conn.send(&Msg::Int(calls as i64)) {
                Ok(()) => false,
                Err(e) => {
                    expect_kind("send", Err::<(), _>(e), ErrorKind::Disconnected)?;
                    true
                }
            },
        };
        if gone {
            return Ok(());
        }
        let took = start.elapsed();
        ensure(took < NOTICE, || {
            format!("{probe:?}: the killed peer was not noticed after {took:?} ({calls} calls)")
        })?;
    }
}

/// Item 4: non-blocking and short-timeout calls, and sends, notice a peer
/// killed with SIGKILL within a second.
pub(crate) fn nonblocking_calls_notice_a_killed_peer(t: Transport) -> Result<(), Failed> {
    for probe in [
        Probe::TryRecv,
        Probe::ShortTimeout,
        Probe::Poll,
        Probe::Send,
    ] {
        let (mut child, conn) = spawn_idle(t)?;
        child.kill()?;
        until_disconnected(probe, &conn)?;
    }
    Ok(())
}

/// Item 5: `poll(Duration::MAX)` waits (it is not "now"), and a gone peer
/// counts as ready, on every transport.
pub(crate) fn poll_waits_and_counts_a_gone_peer_as_ready(t: Transport) -> Result<(), Failed> {
    let (tx, rx) = t.channel::<Msg>().map_err(fail("channel"))?;
    let sender = thread::spawn(move || tx.send(&Msg::Int(1)).map(|()| tx));
    let ready = crate::watchdog("poll(Duration::MAX)", HANG, || rx.poll(Duration::MAX));
    ensure(ready.map_err(fail("poll"))?, || {
        "poll(Duration::MAX) returned false".into()
    })?;
    let tx = sender
        .join()
        .map_err(|_| Failed::from("sender panicked"))?
        .map_err(fail("send"))?;
    let got = rx.try_recv().map_err(fail("try_recv"))?;
    ensure(got == Msg::Int(1), || format!("{got:?}"))?;
    let dropper = thread::spawn(move || drop(tx));
    let ready = crate::watchdog("poll(Duration::MAX) on a gone peer", HANG, || {
        rx.poll(Duration::MAX)
    });
    ensure(ready.map_err(fail("poll on a gone peer"))?, || {
        "poll on a gone peer returned false".into()
    })?;
    dropper
        .join()
        .map_err(|_| Failed::from("dropper panicked"))?;
    ensure(rx.poll(Duration::ZERO).map_err(fail("poll"))?, || {
        "poll(0) on a gone peer returned false".into()
    })?;
    expect_kind("recv on a gone peer", rx.recv(), ErrorKind::Disconnected)?;
    Ok(())
}

/// Items 2 and 3 (shm): a padding record never makes the receiver read a
/// consumed record again or loop over the ring; after the sender is killed
/// every call reports `Disconnected`.
pub(crate) fn shm_records_are_never_replayed(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, _ctl) = spawn_liar(t, Scenario::Replay)?;
    let got = rx.recv_timeout(HANG).map_err(fail("the one message"))?;
    ensure(got == Msg::Text("once".into()), || format!("{got:?}"))?;
    child.kill()?;
    let start = Instant::now();
    let mut copies = 0u64;
    crate::watchdog("recv after a padding record", HANG, || loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(m) => {
                copies += 1;
                if copies >= 1000 {
                    return Err(Failed::from(format!(
                        "the consumed message was delivered again {copies} times: {m:?}"
                    )));
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) if e.is_disconnected() => return Ok(()),
            Err(e) => return Err(Failed::from(format!("unexpected error: {e}"))),
        }
        if start.elapsed() > NOTICE {
            return Err(Failed::from("not disconnected within 1 s of the kill"));
        }
    })?;
    ensure(copies == 0, || format!("replayed {copies} times"))?;

    // A padding record at the ring's start: an error or a timeout, at once.
    let (_child, rx, _ctl) = spawn_liar(t, Scenario::PadAtStart)?;
    let res = crate::watchdog(
        "recv_timeout over padding at offset 0",
        Duration::from_secs(5),
        || rx.recv_timeout(Duration::from_millis(200)),
    );
    match res {
        Err(e) if matches!(e.kind(), ErrorKind::Protocol | ErrorKind::Timeout) => Ok(()),
        other => {
            Err(format!("padding at offset 0: expected Protocol or Timeout, got {other:?}").into())
        }
    }
}

/// Item 10 (streams): a header announcing 64 MiB commits no 64 MiB before the
/// bytes arrive, and a receiver does not keep a large buffer after a large
/// message.
pub(crate) fn announced_frames_commit_memory_as_it_arrives(t: Transport) -> Result<(), Failed> {
    let (_child, rx, _ctl) = spawn_liar(t, Scenario::Announce)?;
    crate::alloc::reset_largest();
    expect_kind(
        "recv_timeout of a frame still arriving",
        rx.recv_timeout(Duration::from_millis(100)),
        ErrorKind::Timeout,
    )?;
    let largest = crate::alloc::largest();
    ensure(largest <= 2 << 20, || {
        format!("the receiver allocated {largest} bytes for 100 bytes of an announced 64 MiB frame")
    })?;

    // Retained memory after one large message, echoed by a child.
    let (mut child, typed, _raw) = spawn_echo(t)?;
    let big = job(1, "big", vec![0x5a; 32 << 20]);
    // A small round trip first, so that the endpoints' steady buffers exist.
    typed.send(&Msg::Int(0)).map_err(fail("send"))?;
    typed.recv_timeout(HANG).map_err(fail("recv"))?;
    let before = crate::alloc::net();
    typed.send(&big).map_err(fail("send big"))?;
    let back = typed.recv_timeout(HANG).map_err(fail("recv big"))?;
    ensure(back == big, || "the large message came back changed".into())?;
    drop(back);
    let after = crate::alloc::net();
    let kept = after - before;
    ensure(kept < 4 << 20, || {
        format!("the endpoints keep {kept} bytes after one 32 MiB message")
    })?;
    drop(big);
    drop((typed, _raw));
    child.wait_success()
}

/// Item 12: `try_send` fails with `Full` and `send_timeout` with `Timeout`
/// on a channel whose reader is stuck, sending nothing; every message that
/// was accepted arrives once, in order; a killed peer is `Disconnected`.
pub(crate) fn try_send_and_send_timeout_on_a_full_channel(t: Transport) -> Result<(), Failed> {
    if cfg!(windows) && t != Transport::Shm {
        // Windows anonymous pipes cannot report free space: sends block
        // (documented on `Sender::try_send`).
        return Ok(());
    }
    let (typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (ctl, ctl_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut child = spawn("gated_echo", |cmd| {
        conduit::handoff(cmd, "conn", typed_child)?;
        conduit::handoff(cmd, "ctl", ctl_child)
    })?;
    let job = |id: u64| job(id, "fill", vec![id as u8; 4096]);
    // The child reads nothing until "go": our direction fills up.
    let mut sent = 0u64;
    loop {
        match typed.try_send(&job(sent)) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == ErrorKind::Full => break,
            Err(e) => return Err(format!("try_send #{sent}: {e}").into()),
        }
        ensure(sent < 1_000_000, || "try_send never reported Full".into())?;
    }
    let start = Instant::now();
    expect_kind(
        "send_timeout on a full channel",
        typed.send_timeout(&job(sent), Duration::from_millis(30)),
        ErrorKind::Timeout,
    )?;
    ensure(start.elapsed() >= Duration::from_millis(30), || {
        "send_timeout gave up before its timeout".into()
    })?;
    // Everything accepted comes back once, in order, and nothing else. (A
    // message that only partly fitted is completed by the next send.)
    ctl.send(&Msg::Text("go".into())).map_err(fail("go"))?;
    typed
        .send(&Msg::Int(-1))
        .map_err(fail("send after the full channel"))?;
    for want in 0..sent {
        let got = typed.recv_timeout(HANG).map_err(fail("echo"))?;
        ensure(got == job(want), || {
            format!("echo #{want} of {sent}: got another message")
        })?;
    }
    let got = typed.recv_timeout(HANG).map_err(fail("last echo"))?;
    ensure(got == Msg::Int(-1), || format!("last echo: {got:?}"))?;
    child.kill()?;
    let start = Instant::now();
    loop {
        match typed.try_send(&Msg::Int(0)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Full => {}
            Err(e) if e.is_disconnected() => return Ok(()),
            Err(e) => return Err(format!("try_send to a killed peer: {e}").into()),
        }
        ensure(start.elapsed() < NOTICE, || {
            "try_send did not notice the killed peer within 1 s".into()
        })?;
    }
}

/// Dropping the sending half of a split duplex ends the peer's stream on
/// every transport (found by `cargo xtask soak`: on socketpair and named the
/// receiving half kept the socket open, so the peer waited forever), while
/// the other direction keeps working.
pub(crate) fn dropping_a_split_sender_ends_the_peer_stream(t: Transport) -> Result<(), Failed> {
    let (a, b) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (a_tx, a_rx) = a.split();
    a_tx.send(&Msg::Int(1)).map_err(fail("send"))?;
    drop(a_tx);
    let first = b.recv_timeout(HANG).map_err(fail("recv"))?;
    ensure(first == Msg::Int(1), || format!("{first:?}"))?;
    crate::watchdog("recv after the peer dropped its sender", HANG, || {
        expect_kind(
            "recv after the peer dropped its sender",
            b.recv_timeout(Duration::from_secs(5)),
            ErrorKind::Disconnected,
        )
    })?;
    // The other direction still works.
    b.send(&Msg::Int(2)).map_err(fail("send back"))?;
    let back = a_rx.recv_timeout(HANG).map_err(fail("recv back"))?;
    ensure(back == Msg::Int(2), || format!("{back:?}"))
}
