//! The suite's child functions (run in a re-executed test binary) and the
//! table [`CHILDREN`] that names them.

use std::thread;
use std::time::{Duration, Instant};

use conduit::TestHooks;
use conduit::{Codec, Duplex, ErrorKind, Receiver, Sender};

use super::job;
use super::liars::child_liar;
use crate::msg::Msg;
use crate::ChildFn;

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
                _ => job(i, "scribble", vec![i as u8; (next() % 5000) as usize]),
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
    let e = conduit::adopt::<conduit::Duplex<Msg, Msg>>("overflow")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("too many handles"), "{e}");
}
