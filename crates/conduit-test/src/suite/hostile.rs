//! The parent's side of the tests with misbehaving peers (the liar child of
//! `liars`, and the shm scribbler): the checks are the same for every
//! transport.

use std::thread;
use std::time::{Duration, Instant};

use conduit::{ErrorKind, Transport};

use super::liars::spawn_liar;
use super::{expect_kind, Scenario, HANG};
use crate::msg::Msg;
use crate::{ensure, fail, spawn, Failed};

pub(super) fn poll_exact(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, Scenario::Partial)?;
    ensure(!rx.poll(Duration::ZERO).map_err(fail("poll"))?, || {
        "poll true before anything was sent".into()
    })?;
    let status = ctl.recv_timeout(HANG).map_err(fail("status"))?;
    ensure(status == Msg::Text("partial written".into()), || {
        format!("{status:?}")
    })?;
    // All but the last 3 bytes of a frame are in the channel (shm: all but
    // the last piece of the message): not ready.
    ensure(
        !rx.poll(Duration::from_millis(20)).map_err(fail("poll"))?,
        || "poll true on a partial frame".into(),
    )?;
    expect_kind(
        "try_recv on a partial frame",
        rx.try_recv(),
        ErrorKind::Empty,
    )?;
    ctl.send(&Msg::Text("go".into())).map_err(fail("go"))?;
    let status = ctl.recv_timeout(HANG).map_err(fail("status"))?;
    ensure(status == Msg::Text("rest written".into()), || {
        format!("{status:?}")
    })?;
    ensure(rx.poll(HANG).map_err(fail("poll"))?, || {
        "poll false on a whole frame".into()
    })?;
    let got = rx.try_recv().map_err(fail("try_recv after poll"))?;
    ensure(got == Msg::Text("whole".into()), || format!("{got:?}"))?;
    ensure(!rx.poll(Duration::ZERO).map_err(fail("poll"))?, || {
        "poll true after the only message was taken".into()
    })?;
    drop(ctl);
    child.wait_success()
}

pub(super) fn oversized_frame(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, Scenario::Huge)?;
    crate::alloc::reset_largest();
    let e = crate::watchdog("recv of a 2 GiB frame", HANG, || {
        expect_kind("recv", rx.recv(), ErrorKind::TooLarge)
    })?;
    let largest = crate::alloc::largest();
    ensure(largest < 1 << 20, || {
        format!("the receiver allocated {largest} bytes for a rejected frame")
    })?;
    ensure(e.to_string().contains("2147483648"), || {
        format!("error does not name the size: {e}")
    })?;
    // The channel is closed for good: no hang, no garbage.
    expect_kind("recv after TooLarge", rx.recv(), ErrorKind::TooLarge)?;
    drop(ctl);
    child.wait_success()
}

pub(super) fn truncated_frame(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, _ctl) = spawn_liar(t, Scenario::Truncated)?;
    crate::watchdog("recv of a truncated frame", HANG, || {
        expect_kind("recv", rx.recv(), ErrorKind::Protocol)
    })?;
    expect_kind(
        "recv after the truncated frame",
        rx.recv(),
        ErrorKind::Disconnected,
    )?;
    child.wait_success()
}

pub(super) fn garbage_cbor(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, Scenario::Garbage)?;
    expect_kind(
        "recv of garbage cbor",
        rx.recv_timeout(HANG),
        ErrorKind::Decode,
    )?;
    let next = rx
        .recv_timeout(HANG)
        .map_err(fail("recv after a decode error"))?;
    ensure(next == Msg::Text("after".into()), || format!("{next:?}"))?;
    drop(ctl);
    child.wait_success()
}

pub(super) fn wrong_handshake(t: Transport) -> Result<(), Failed> {
    for scenario in [
        Scenario::Magic,
        Scenario::Version,
        Scenario::Codec,
        Scenario::MaxFrame,
    ] {
        let (mut child, rx, ctl) = spawn_liar(t, scenario)?;
        let what = scenario.as_str();
        let e = expect_kind(what, rx.recv_timeout(HANG), ErrorKind::Protocol)?;
        let why = e.to_string();
        let hint = match scenario {
            Scenario::Magic => "not a conduit endpoint",
            Scenario::Version => "protocol v9",
            // Both codecs, by id and by name.
            Scenario::Codec => "codec id 2 (postcard), this side expects codec id 1 (cbor)",
            _ => "max_frame",
        };
        ensure(why.contains(hint), || {
            format!("{what}: error {why:?} does not say {hint:?}")
        })?;
        drop(ctl);
        child.wait_success()?;
    }
    Ok(())
}

pub(super) fn hostile_scribbler(t: Transport) -> Result<(), Failed> {
    let mut totals = [0usize; 6];
    for round in 0..8u64 {
        let (conn, conn_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
        let mut child = spawn("scribbler", |cmd| {
            cmd.env("CONDUIT_SEED", (round * 7919 + 17).to_string());
            if round % 2 == 0 {
                cmd.env("CONDUIT_SCRIBBLE", "control");
            }
            conduit::handoff(cmd, "conn", conn_child)
        })?;
        let (tx, rx) = conn.split();
        let start = Instant::now();
        // [data, decode errors, protocol/too-large, timeouts, disconnected, sent]
        let outcome = crate::watchdog("parent of a scribbling child", HANG, || {
            thread::scope(|s| {
                let sender = s.spawn(|| {
                    let mut sent = 0usize;
                    let msg = Msg::Text("from the parent".into());
                    while sent < 100_000 && tx.send(&msg).is_ok() {
                        sent += 1;
                    }
                    sent
                });
                let mut seen = [0usize; 5];
                loop {
                    match rx.recv_timeout(Duration::from_secs(2)) {
                        Ok(_) => seen[0] += 1,
                        Err(e) => match e.kind() {
                            ErrorKind::Decode => seen[1] += 1,
                            ErrorKind::Protocol | ErrorKind::TooLarge => {
                                seen[2] += 1;
                                break;
                            }
                            ErrorKind::Timeout => {
                                seen[3] += 1;
                                if seen[3] > 10 {
                                    break;
                                }
                            }
                            ErrorKind::Disconnected => {
                                seen[4] += 1;
                                break;
                            }
                            other => panic!("unexpected {other:?} error: {e}"),
                        },
                    }
                }
                // Let the sender see the end too: the child exits on its own.
                drop(rx);
                let sent = sender.join().expect("the parent's sender panicked");
                (seen, sent)
            })
        });
        let (seen, sent) = outcome;
        for (total, n) in totals.iter_mut().zip(seen.iter().chain([&sent])) {
            *total += n;
        }
        let took = start.elapsed();
        ensure(took < Duration::from_secs(25), || {
            format!("round {round} took {took:?}")
        })?;
        drop(tx);
        // The child only pokes and exits; it must not have crashed either.
        child.wait_success()?;
    }
    eprintln!(
        "scribbler: {} messages, {} decode errors, {} protocol/too-large, {} timeouts, {} disconnects; {} sent",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    Ok(())
}
