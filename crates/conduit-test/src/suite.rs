//! The cross-process conformance suite, written once and instantiated for
//! every transport by [`trials`]. Each test spawns real child processes
//! (this test binary, re-executed) and hands them endpoints with
//! `conduit::handoff`.
//!
//! Tests that play a misbehaving peer write the wire format by hand, from
//! `docs/wire-format.md` (stream transports) or the segment layout in the
//! `conduit-shm` crate documentation (shm), rather than with conduit's own
//! encoder: the liar child picks the format by the transport it was handed,
//! and the parent's checks are the same for every transport. For shm the
//! "handshake" is the segment header and a "frame" is a ring record, so those
//! trials carry shm names. shm also gets a hostile peer that scribbles random
//! bytes over the shared pages.

use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use conduit::{Codec, Duplex, ErrorKind, FrameSender, Receiver, Sender, Transport};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use crate::msg::{any_sequence, Item, Msg};
use crate::{ensure, fail, spawn, ChildFn, Failed, Trial};

pub(crate) mod hardening;

/// Generous bound after which a blocked call counts as hung.
pub(crate) const HANG: Duration = Duration::from_secs(30);

/// The child functions the suite uses.
pub const CHILDREN: &[ChildFn] = &[
    ChildFn {
        name: "echo",
        run: child_echo,
    },
    ChildFn {
        name: "idle",
        run: child_idle,
    },
    ChildFn {
        name: "liar",
        run: child_liar,
    },
    ChildFn {
        name: "hello_exit",
        run: child_hello_exit,
    },
    ChildFn {
        name: "sleeper",
        run: child_sleeper,
    },
    ChildFn {
        name: "adopt_checks",
        run: child_adopt_checks,
    },
    ChildFn {
        name: "scribbler",
        run: child_scribbler,
    },
];

type TestFn = fn(Transport) -> Result<(), Failed>;

/// The suite's tests for transport `t`, named `<transport>::<test>`.
pub fn trials(t: Transport) -> Vec<Trial> {
    let shm = t == Transport::Shm;
    // (stream name, shm name): the misbehaving-peer tests speak each
    // transport's own format, so their names say what they corrupt.
    let named = |stream: &'static str, shm_name: &'static str| if shm { shm_name } else { stream };
    let mut tests: Vec<(&str, TestFn)> = vec![
        ("prop_echo_sequences", prop_echo_sequences),
        (
            "kill_child_while_parent_blocked_in_recv",
            kill_while_blocked_in_recv,
        ),
        (
            "kill_child_while_parent_blocked_in_send",
            kill_while_blocked_in_send,
        ),
        ("recv_timeout_and_try_recv_on_empty", timeout_and_empty),
        (
            "poll_is_true_exactly_when_a_whole_message_is_ready",
            poll_exact,
        ),
        (
            named(
                "oversized_frame_is_too_large_without_allocating",
                "oversized_record_is_too_large_without_allocating",
            ),
            oversized_frame,
        ),
        (
            named(
                "truncated_frame_is_protocol_error",
                "truncated_record_is_protocol_error",
            ),
            truncated_frame,
        ),
        (
            "garbage_cbor_is_decode_error_and_channel_survives",
            garbage_cbor,
        ),
        (
            named(
                "wrong_handshake_is_protocol_error",
                "bad_segment_header_is_protocol_error",
            ),
            wrong_handshake,
        ),
        (
            "unrelated_concurrent_children_do_not_keep_channel_alive",
            unrelated_children,
        ),
        (
            "handed_receiver_and_duplex_work_in_both_directions",
            handed_roles,
        ),
        ("many_tiny_messages_echoed_in_order", many_tiny_messages),
    ];
    tests.extend([
        (
            "nonblocking_calls_notice_a_killed_peer_within_1s",
            hardening::nonblocking_calls_notice_a_killed_peer as TestFn,
        ),
        (
            "poll_waits_and_counts_a_gone_peer_as_ready",
            hardening::poll_waits_and_counts_a_gone_peer_as_ready,
        ),
        (
            "try_send_and_send_timeout_on_a_full_channel",
            hardening::try_send_and_send_timeout_on_a_full_channel,
        ),
    ]);
    if shm {
        tests.push((
            "hostile_peer_scribbling_shared_memory_never_panics_or_hangs",
            hostile_scribbler,
        ));
        tests.push((
            "records_are_never_replayed_nor_looped_over",
            hardening::shm_records_are_never_replayed,
        ));
    } else {
        tests.push((
            "announced_frames_commit_memory_as_it_arrives",
            hardening::announced_frames_commit_memory_as_it_arrives,
        ));
    }
    tests
        .into_iter()
        .map(|(name, f)| Trial::test(format!("{}::{name}", t.name()), move || f(t)))
        .chain(crate::handoff_cases::trials(t))
        .collect()
}

/// Tests that do not depend on a transport.
pub fn general_trials() -> Vec<Trial> {
    let mut trials = vec![Trial::test(
        "handoff::adopt_reports_missing_malformed_and_unsupported",
        adopt_errors,
    )];
    trials.extend(crate::handoff_cases::general_trials());
    trials
}

// ---------------------------------------------------------------- children

fn child_echo() {
    let typed: Duplex<Msg, Msg> = conduit::adopt("typed").expect("adopt typed");
    let raw: Duplex<Vec<u8>, Vec<u8>> = conduit::adopt("raw").expect("adopt raw");
    thread::scope(|s| {
        s.spawn(|| echo_loop(&typed));
        s.spawn(|| echo_loop(&raw));
    });
}

/// Echoes every message on `d` until the peer is gone.
pub(crate) fn echo_loop<T: serde::Serialize + serde::de::DeserializeOwned + 'static>(
    d: &Duplex<T, T>,
) {
    loop {
        match d.recv() {
            Ok(m) => d.send(&m).expect("echo send"),
            Err(e) if e.is_disconnected() => return,
            Err(e) => panic!("echo child: {e}"),
        }
    }
}

fn child_idle() {
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt conn");
    conn.send(&Msg::Text("ready".into())).expect("send ready");
    // Hold the endpoint and never read: the parent kills us.
    loop {
        thread::park();
    }
}

fn child_hello_exit() {
    let tx: Sender<Msg> = conduit::adopt("conn").expect("adopt conn");
    tx.send(&Msg::Text("hi".into())).expect("send hi");
}

fn child_sleeper() {
    loop {
        thread::park();
    }
}

/// A tiny deterministic generator (the child must not depend on the parent's
/// proptest state).
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// The hostile shm peer: for a while, sends valid messages and receives the
/// parent's while scribbling random bytes over both shared segments
/// (`CONDUIT_SCRIBBLE=control` aims at the header and index words), then
/// exits without ever blocking for long.
fn child_scribbler() {
    let seed: u64 = std::env::var("CONDUIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let control = std::env::var("CONDUIT_SCRIBBLE").as_deref() == Ok("control");
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt conn");
    let (tx, rx) = conn.split();
    let (mut tx, mut rx) = (tx.into_raw(), rx.into_raw());
    let run_for = Duration::from_millis(700);
    let target = move |next: &mut dyn FnMut() -> u64, seg_len: u64, n: u64| {
        if control && next() % 4 != 0 {
            next() % 640
        } else {
            next() % seg_len.saturating_sub(n).max(1)
        }
    };
    // Neither thread is joined: when the time is up the process exits, even
    // if a send is blocked on a ring the scribbling made look full.
    thread::spawn(move || {
        let mut next = xorshift(seed);
        let seg_len = tx.poke_shared(0, &[]).unwrap_or(0);
        let start = Instant::now();
        let mut buf = Vec::new();
        let mut i = 0u64;
        while start.elapsed() < run_for {
            let msg = match i % 3 {
                0 => Msg::Int(i as i64),
                1 => Msg::Text("x".repeat((next() % 300) as usize)),
                _ => Msg::Job {
                    id: i,
                    name: "scribble".into(),
                    tags: vec![],
                    payload: vec![i as u8; (next() % 5000) as usize],
                    priority: None,
                },
            };
            buf.clear();
            if conduit::Cbor::encode(&msg, &mut buf).is_err() || tx.send_frame(&buf).is_err() {
                break;
            }
            // Scribble after every fourth message on average, so that
            // stretches of good data alternate with corruption.
            if next() % 4 == 0 {
                let n = 1 + next() % 16;
                let junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                let _ = tx.poke_shared(target(&mut next, seg_len, n), &junk);
            }
            i += 1;
        }
    });
    thread::spawn(move || {
        let mut next = xorshift(seed ^ 0x5eed);
        let seg_len = rx.poke_shared(0, &[]).unwrap_or(0);
        let start = Instant::now();
        let mut buf = Vec::new();
        while start.elapsed() < run_for {
            let _ = rx.recv_frame(&mut buf, Some(Instant::now() + Duration::from_millis(20)));
            let n = 1 + next() % 16;
            let junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = rx.poke_shared(target(&mut next, seg_len, n), &junk);
        }
    });
    thread::sleep(run_for + Duration::from_millis(50));
}

/// The documented handshake (docs/wire-format.md), written by hand.
fn handshake(version: u16, codec: u8, max_frame: u32) -> Vec<u8> {
    let mut h = b"CNDT".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.push(codec);
    h.push(0);
    h.extend_from_slice(&max_frame.to_le_bytes());
    h
}

const MAX: u32 = conduit::DEFAULT_MAX_FRAME;

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn child_liar() {
    let scenario = std::env::var("CONDUIT_SCENARIO").expect("scenario");
    let conn: Sender<Vec<u8>> = conduit::adopt("conn").expect("adopt conn");
    let ctl: Duplex<Msg, Msg> = conduit::adopt("ctl").expect("adopt ctl");
    let mut raw = conn.into_raw();
    let stay = if scenario == "garbage" {
        // Well-framed garbage needs no hand-written wire format: any transport.
        raw.send_frame(&[0xff, 0xfe, 0x1c, 0x00, 0x9f])
            .expect("send garbage");
        let mut ok = Vec::new();
        conduit::Cbor::encode(&Msg::Text("after".into()), &mut ok).expect("encode");
        raw.send_frame(&ok).expect("send after");
        true
    } else if raw.transport() == "shm" {
        liar_shm(&scenario, raw.as_mut(), &ctl)
    } else {
        liar_stream(&scenario, raw.as_mut(), &ctl)
    };
    if stay {
        // Stay until the parent is done reading (it drops the control channel).
        while ctl.recv().is_ok() {}
    }
}

/// Plays `scenario` in the stream wire format (docs/wire-format.md), written
/// by hand; false when the child should exit at once.
fn liar_stream(scenario: &str, raw: &mut dyn FrameSender, ctl: &Duplex<Msg, Msg>) -> bool {
    let mut write = |b: &[u8]| raw.send_unframed(b).expect("write");
    let good = |v: u16| handshake(v, 1, MAX);
    match scenario {
        "huge" => {
            write(&good(1));
            write(&(2u32 << 30).to_le_bytes());
            write(&[0u8; 64]);
        }
        "truncated" => {
            write(&good(1));
            write(&100u32.to_le_bytes());
            write(&[7u8; 10]);
            return false; // exit: the stream ends mid-frame
        }
        "magic" => {
            write(b"HTTP/1.1 200");
            write(&frame(b"x"));
        }
        "version" => {
            write(&good(9)); // a version from the future
            write(&frame(b"x"));
        }
        "codec" => {
            write(&handshake(1, 9, MAX));
            write(&frame(b"x"));
        }
        "maxframe" => {
            write(&handshake(1, 1, 1024));
            write(&frame(b"x"));
        }
        "partial" => {
            let mut ok = Vec::new();
            conduit::Cbor::encode(&Msg::Text("whole".into()), &mut ok).expect("encode");
            let whole = [good(1), frame(&ok)].concat();
            let cut = whole.len() - 3;
            write(&whole[..cut]);
            partial_handshake(ctl);
            write(&whole[cut..]);
            ctl.send(&Msg::Text("rest written".into())).expect("status");
        }
        other => panic!("unknown scenario {other}"),
    }
    true
}

fn partial_handshake(ctl: &Duplex<Msg, Msg>) {
    ctl.send(&Msg::Text("partial written".into()))
        .expect("status");
    assert_eq!(ctl.recv().expect("go"), Msg::Text("go".into()));
}

/// An shm ring record, written by hand from the layout in the `conduit-shm`
/// crate documentation: a 16-byte header (`len`, `kind`, `total`, reserved:
/// `u32`s in the machine's byte order), the payload, zero padding to a
/// multiple of 16.
fn shm_record(kind: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    shm_record_with_total(kind, len, 0, payload)
}

/// A piece of a message streamed in pieces; a first piece carries the
/// message's `total` length.
fn shm_piece(kind: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    shm_record_with_total(kind, payload.len() as u32, total, payload)
}

fn shm_record_with_total(kind: u32, len: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for w in [len, kind, total, 0] {
        r.extend_from_slice(&w.to_ne_bytes());
    }
    r.extend_from_slice(payload);
    r.resize(r.len().div_ceil(16) * 16, 0);
    r
}

/// Record kinds: a whole message, the first and the last piece of one.
const SHM_WHOLE: u32 = 1;
const SHM_FIRST: u32 = 2;
const SHM_LAST: u32 = 4;

/// Overwrites the shm segment header word at `offset` (layout in the
/// `conduit-shm` crate documentation).
fn shm_header_word(raw: &mut dyn FrameSender, offset: u64, value: u32) {
    raw.poke_shared(offset, &value.to_ne_bytes()).expect("poke");
}

/// Plays `scenario` against an shm receiver: records written by hand into the
/// ring (`send_unframed` copies bytes verbatim at the tail and publishes them
/// by storing the first record's kind word last)
/// or a corrupted segment header; false when the child should exit at once.
fn liar_shm(scenario: &str, raw: &mut dyn FrameSender, ctl: &Duplex<Msg, Msg>) -> bool {
    match scenario {
        "huge" => {
            // A whole-message record announcing 2 GiB.
            let mut r = shm_record(SHM_WHOLE, 2 << 30, &[]);
            r.extend_from_slice(&[0u8; 64]);
            raw.send_unframed(&r).expect("write");
        }
        "truncated" => {
            // Records are published whole (their kind word is stored last),
            // so a message is cut short between pieces: the first piece of a
            // 100-byte message, then the sender is gone.
            let r = shm_piece(SHM_FIRST, 100, &[7u8; 10]);
            raw.send_unframed(&r).expect("write");
            return false; // exit: the message stays incomplete
        }
        "magic" => {
            shm_header_word(raw, 0, u32::from_le_bytes(*b"HTTP"));
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        "version" => {
            shm_header_word(raw, 4, 9);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        "codec" => {
            shm_header_word(raw, 8, 9);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        "maxframe" => {
            shm_header_word(raw, 12, 1024);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        "partial" => {
            let mut ok = Vec::new();
            conduit::Cbor::encode(&Msg::Text("whole".into()), &mut ok).expect("encode");
            // The message in two pieces: the first is published, the
            // last (3 bytes) only after the parent has looked.
            let cut = ok.len() - 3;
            let first = shm_piece(SHM_FIRST, ok.len() as u32, &ok[..cut]);
            raw.send_unframed(&first).expect("write");
            partial_handshake(ctl);
            let last = shm_piece(SHM_LAST, 0, &ok[cut..]);
            raw.send_unframed(&last).expect("write");
            ctl.send(&Msg::Text("rest written".into())).expect("status");
        }
        other => panic!("unknown scenario {other}"),
    }
    true
}

// ---------------------------------------------------------------- helpers

/// Property cases per test: `PROPTEST_CASES`, else 16.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

pub(crate) fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    res: conduit::Result<T>,
    kind: ErrorKind,
) -> Result<conduit::Error, Failed> {
    match res {
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(format!("{what}: expected a {kind:?} error, got {:?}: {e}", e.kind()).into()),
        Ok(v) => Err(format!("{what}: expected a {kind:?} error, got Ok({v:?})").into()),
    }
}

/// The liar child, the parent's receiver of its frames, and a control channel.
type Liar = (crate::Spawned, Receiver<Msg>, Duplex<Msg, Msg>);

/// Spawns the liar child with `scenario`; returns it with the parent's typed
/// receiver and control channel.
fn spawn_liar(t: Transport, scenario: &str) -> Result<Liar, Failed> {
    let (tx, rx) = t.channel::<Msg>().map_err(fail("channel"))?;
    let (ctl, ctl_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let child = spawn("liar", |cmd: &mut Command| {
        cmd.env("CONDUIT_SCENARIO", scenario);
        conduit::handoff(cmd, "conn", tx)?;
        conduit::handoff(cmd, "ctl", ctl_child)
    })?;
    Ok((child, rx, ctl))
}

/// The echo property: random sequences of typed and raw messages sent over
/// `typed` and `raw` to a child that echoes both; failing cases persist in
/// `regressions`.
pub(crate) fn echo_property(
    what: &str,
    regressions: &'static str,
    typed: &Duplex<Msg, Msg>,
    raw: &Duplex<Vec<u8>, Vec<u8>>,
) -> Result<(), Failed> {
    let config = Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&any_sequence(), |seq| echo_case(what, seq, typed, raw))
        .map_err(|e| Failed::from(e.to_string()))
}

/// One case of the echo property: sends `seq` over `typed` and `raw` (a child
/// echoes both) and checks that everything came back once, intact, in order.
fn echo_case(
    what: &str,
    seq: Vec<Item>,
    typed: &Duplex<Msg, Msg>,
    raw: &Duplex<Vec<u8>, Vec<u8>>,
) -> Result<(), TestCaseError> {
    let typed_sent: Vec<Msg> = seq
        .iter()
        .filter_map(|i| {
            if let Item::Typed(m) = i {
                Some(m.clone())
            } else {
                None
            }
        })
        .collect();
    let raw_sent: Vec<_> = seq
        .iter()
        .filter_map(|i| if let Item::Raw(p) = i { Some(*p) } else { None })
        .collect();
    let (typed_got, raw_got) = crate::watchdog(what, HANG * 4, || {
        thread::scope(|s| {
            s.spawn(|| {
                for item in &seq {
                    match item {
                        Item::Typed(m) => typed.send(m).expect("send typed"),
                        Item::Raw(p) => raw.send(&p.bytes()).expect("send raw"),
                    }
                }
            });
            let tg = s.spawn(|| {
                (0..typed_sent.len())
                    .map(|_| typed.recv())
                    .collect::<Vec<_>>()
            });
            let rg = s.spawn(|| (0..raw_sent.len()).map(|_| raw.recv()).collect::<Vec<_>>());
            (tg.join(), rg.join())
        })
    });
    let typed_got = typed_got.map_err(|_| TestCaseError::fail("typed receiver panicked"))?;
    let raw_got = raw_got.map_err(|_| TestCaseError::fail("raw receiver panicked"))?;
    for (i, (got, want)) in typed_got.into_iter().zip(&typed_sent).enumerate() {
        let got = got.map_err(|e| TestCaseError::fail(format!("typed echo {i}: {e}")))?;
        prop_assert_eq!(&got, want, "typed message {} differs", i);
    }
    for (i, (got, want)) in raw_got.into_iter().zip(&raw_sent).enumerate() {
        let got = got.map_err(|e| TestCaseError::fail(format!("raw echo {i}: {e}")))?;
        prop_assert!(
            got == want.bytes(),
            "raw message {} ({} bytes) differs",
            i,
            want.len
        );
    }
    // Nothing extra arrived (no duplicates).
    prop_assert!(!typed
        .poll(Duration::ZERO)
        .map_err(|e| TestCaseError::fail(e.to_string()))?);
    prop_assert!(!raw
        .poll(Duration::ZERO)
        .map_err(|e| TestCaseError::fail(e.to_string()))?);
    Ok(())
}

// ---------------------------------------------------------------- tests

fn prop_echo_sequences(t: Transport) -> Result<(), Failed> {
    let (typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (raw, raw_child) = t.duplex::<Vec<u8>, Vec<u8>>().map_err(fail("duplex"))?;
    let mut child = spawn("echo", |cmd| {
        conduit::handoff(cmd, "typed", typed_child)?;
        conduit::handoff(cmd, "raw", raw_child)
    })?;
    echo_property(
        "echo case",
        concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/echo.txt"),
        &typed,
        &raw,
    )?;
    drop(typed);
    drop(raw);
    child.wait_success()
}

use proptest::{prop_assert, prop_assert_eq};

fn spawn_idle(t: Transport) -> Result<(crate::Spawned, Duplex<Msg, Msg>), Failed> {
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

fn kill_while_blocked_in_recv(t: Transport) -> Result<(), Failed> {
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

fn kill_while_blocked_in_send(t: Transport) -> Result<(), Failed> {
    let (mut child, conn) = spawn_idle(t)?;
    let big = Msg::Job {
        id: 1,
        name: "big".into(),
        tags: vec![],
        payload: vec![0xab; 1 << 20],
        priority: None,
    };
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

fn timeout_and_empty(t: Transport) -> Result<(), Failed> {
    let (typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (_raw, raw_child) = t.duplex::<Vec<u8>, Vec<u8>>().map_err(fail("duplex"))?;
    let mut child = spawn("echo", |cmd| {
        conduit::handoff(cmd, "typed", typed_child)?;
        conduit::handoff(cmd, "raw", raw_child)
    })?;
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

fn poll_exact(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, "partial")?;
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

fn oversized_frame(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, "huge")?;
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

fn truncated_frame(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, _ctl) = spawn_liar(t, "truncated")?;
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

fn garbage_cbor(t: Transport) -> Result<(), Failed> {
    let (mut child, rx, ctl) = spawn_liar(t, "garbage")?;
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

fn wrong_handshake(t: Transport) -> Result<(), Failed> {
    for scenario in ["magic", "version", "codec", "maxframe"] {
        let (mut child, rx, ctl) = spawn_liar(t, scenario)?;
        let e = expect_kind(scenario, rx.recv_timeout(HANG), ErrorKind::Protocol)?;
        let why = e.to_string();
        let hint = match scenario {
            "magic" => "not a conduit endpoint",
            "version" => "protocol v9",
            "codec" => "codec id 9",
            _ => "max_frame",
        };
        ensure(why.contains(hint), || {
            format!("{scenario}: error {why:?} does not say {hint:?}")
        })?;
        drop(ctl);
        child.wait_success()?;
    }
    Ok(())
}

fn unrelated_children(t: Transport) -> Result<(), Failed> {
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

fn handed_roles(t: Transport) -> Result<(), Failed> {
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

fn many_tiny_messages(t: Transport) -> Result<(), Failed> {
    // Long streams of 1-byte messages are where a lost wake-up shows (a
    // stall until a timeout, or a hang).
    const N: usize = 100_000;
    let (_typed, typed_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let (raw, raw_child) = t.duplex::<Vec<u8>, Vec<u8>>().map_err(fail("duplex"))?;
    let mut child = spawn("echo", |cmd| {
        conduit::handoff(cmd, "typed", typed_child)?;
        conduit::handoff(cmd, "raw", raw_child)
    })?;
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

fn hostile_scribbler(t: Transport) -> Result<(), Failed> {
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

fn adopt_errors() -> Result<(), Failed> {
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
        Ok(())
    })?;
    child.wait_success()
}

/// Child for the `adopt_errors` test: checks each prepared token and panics
/// (failing the parent's test) on any unexpected answer.
pub fn child_adopt_checks() {
    let kind = |key: &str| {
        conduit::adopt::<Receiver<Msg>>(key)
            .map(|_| ())
            .unwrap_err()
    };
    let e = kind("garbage");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("malformed"), "{e}");
    let e = kind("badfd");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = kind("unknown");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("carrier-pigeon"), "{e}");
    let off = std::env::var("CONDUIT_DISABLED_TRANSPORT").unwrap_or_default();
    if !off.is_empty() {
        let e = kind("disabled");
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("enable the `{off}` cargo feature")),
            "{e}"
        );
    }
    let e = kind("role");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("sender"), "{e}");
}
