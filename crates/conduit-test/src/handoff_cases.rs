//! Handoff edge cases found by outside probes, run as part of the suite:
//!
//! - a child that exits before it adopts its endpoint must not leave the
//!   parent blocked while the `Command` lives (per transport);
//! - a `Command` with a handed endpoint spawned twice fails cleanly, and one
//!   dropped without being spawned releases the endpoint;
//! - a send to a gone reader is `Disconnected`, never a `SIGPIPE`, even with
//!   the signal at its default disposition (per transport);
//! - a stale handoff token (inherited by a grandchild, or copied after the
//!   carrier's descriptor number was reused) is refused without touching
//!   the descriptor that now has that number, and does not leak.

use std::process::Command;
use std::time::Duration;

use conduit::{Duplex, ErrorKind, Sender, Transport};

use crate::msg::Msg;
use crate::suite::{expect_kind, HANG};
use crate::{ensure, fail, ChildFn, Failed, Trial, CHILD_ENV};

/// The child functions these cases use.
pub const CHILDREN: &[ChildFn] = &[
    ChildFn {
        name: "exit_without_adopt",
        run: child_exit_without_adopt,
    },
    ChildFn {
        name: "hello_duplex_exit",
        run: child_hello_duplex_exit,
    },
    ChildFn {
        name: "sigpipe_sender",
        run: child_sigpipe_sender,
    },
    ChildFn {
        name: "stale_token_child",
        run: child_stale_token,
    },
    ChildFn {
        name: "stale_token_grandchild",
        run: grandchild_stale_token,
    },
    ChildFn {
        name: "adopt_with_another_codec",
        run: child_adopt_with_another_codec,
    },
];

type TestFn = fn(Transport) -> Result<(), Failed>;

/// The per-transport cases, named `<transport>::handoff::<case>`.
pub fn trials(t: Transport) -> Vec<Trial> {
    // Windows: the parent's handles are closed only when the child duplicates
    // them out (see conduit-core's sys/windows.rs), so a child that never
    // adopts leaves them open until the parent exits.
    let tests: Vec<(&str, TestFn, bool)> = vec![
        (
            "child_exiting_before_adopt_disconnects_while_command_lives",
            exit_before_adopt,
            cfg!(windows),
        ),
        (
            "send_to_gone_reader_with_default_sigpipe_is_disconnected",
            sigpipe_default,
            false,
        ),
        (
            "adopting_with_another_codec_is_a_protocol_error_naming_both",
            adopt_with_another_codec,
            false,
        ),
    ];
    tests
        .into_iter()
        .map(|(name, f, ignored)| {
            Trial::test(format!("{}::handoff::{name}", t.name()), move || f(t))
                .with_ignored_flag(ignored)
        })
        .collect()
}

/// The cases that do not depend on a transport.
pub fn general_trials() -> Vec<Trial> {
    vec![
        // Windows cannot tell a second spawn from the first (no pre-exec
        // hook): both children get the token, and the first to adopt wins.
        Trial::test(
            "handoff::spawning_a_command_twice_fails_cleanly",
            spawn_twice,
        )
        .with_ignored_flag(cfg!(windows)),
        // Windows: a `Command` owns nothing of the handoff (no pre-exec
        // closure), so the handles stay in the parent until it exits.
        Trial::test(
            "handoff::dropping_an_unspawned_command_disconnects",
            drop_unspawned,
        )
        .with_ignored_flag(cfg!(windows)),
        Trial::test(
            "handoff::stale_token_is_refused_in_a_grandchild_and_after_fd_reuse",
            stale_token,
        ),
    ]
}

// ---------------------------------------------------------------- children

fn child_exit_without_adopt() {}

fn child_hello_duplex_exit() {
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt conn");
    conn.send(&Msg::Text("hi".into())).expect("send hi");
}

/// Sets `SIGPIPE` to its default disposition (terminate), as many non-Rust
/// programs and some Rust ones (`-Zon-broken-pipe=kill`) have it, then sends
/// on a channel whose reader the parent has dropped.
#[allow(unsafe_code)]
fn child_sigpipe_sender() {
    #[cfg(unix)]
    // SAFETY: changes this process's SIGPIPE disposition to the default, before
    // any other thread of the child exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let tx: Sender<Msg> = conduit::adopt("conn").expect("adopt conn");
    let ctl: Duplex<Msg, Msg> = conduit::adopt("ctl").expect("adopt ctl");
    ctl.send(&Msg::Text("ready".into())).expect("send ready");
    let go = ctl.recv().expect("recv go");
    assert_eq!(go, Msg::Text("reader gone".into()));
    let e = crate::watchdog("sending to a gone reader", HANG, || loop {
        if let Err(e) = tx.send(&Msg::Int(1)) {
            break e;
        }
    });
    assert!(e.is_disconnected(), "send to a gone reader: {e}");
}

/// A codec no transport knows by name: CBOR under another id.
struct OtherCodec;

impl conduit::Codec for OtherCodec {
    const ID: u8 = 200;
    const NAME: &'static str = "test-codec";
    fn encode<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> conduit::Result<()> {
        <conduit::Cbor as conduit::Codec>::encode(value, out)
    }
    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> conduit::Result<T> {
        <conduit::Cbor as conduit::Codec>::decode(bytes)
    }
}

/// Adopts a CBOR duplex as an `OtherCodec` one: `adopt` itself must refuse
/// it with a `Protocol` error naming both codecs (before any message, so
/// that a peer that never sends still gets a clear error).
fn child_adopt_with_another_codec() {
    let res = conduit::adopt::<Duplex<Msg, Msg, OtherCodec>>("conn");
    let e = match res {
        Ok(_) => panic!("adopt with another codec than the parent's took the endpoint"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("cbor") && text.contains("test-codec"),
        "the error does not name both codecs: {text}"
    );
}

const STALE_VAR: &str = "CONDUIT_HANDOFF_conn";

/// The carrier's descriptor number in a Unix token (`...;fd=<n>[:...];...`).
fn carrier_number(token: &str) -> Option<i64> {
    let part = token.split(';').nth(2)?.strip_prefix("fd=")?;
    part.split(':').next()?.parse().ok()
}

/// Opens unrelated sockets (listening TCP sockets on the loopback) until one
/// has descriptor number `n` or a larger one, so that a stale token's number
/// names a socket that is not conduit's.
fn occupy(n: Option<i64>) -> Vec<std::net::TcpListener> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let mut held = Vec::new();
        if let Some(n) = n {
            while held.len() < 256 {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
                let fd = i64::from(l.as_raw_fd());
                held.push(l);
                if fd >= n {
                    break;
                }
            }
        }
        held
    }
    // Windows tokens name no descriptor number.
    #[cfg(not(unix))]
    {
        let _ = n;
        Vec::new()
    }
}

/// Adopting a stale token must fail at once with a clear error and leave
/// the process's own descriptors alone.
fn expect_stale(key: &str, held: &[std::net::TcpListener]) {
    let res = crate::watchdog("adopt with a stale token", HANG, || {
        conduit::adopt::<Duplex<Msg, Msg>>(key)
    });
    let e = match res {
        Ok(_) => panic!("adopt({key:?}) with a stale token took an endpoint"),
        Err(e) => e,
    };
    assert!(
        matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Disconnected),
        "adopt({key:?}) with a stale token: unexpected {:?}: {e}",
        e.kind()
    );
    assert!(
        e.to_string().contains("stale"),
        "adopt({key:?}): the error does not say the token is stale: {e}"
    );
    for l in held {
        l.local_addr()
            .expect("an unrelated socket was closed by adopt with a stale token");
    }
}

/// Adopts its endpoint, checks the token left the environment, hands a fresh
/// channel plus the stale token to a grandchild, then copies the token to
/// another key after reusing the carrier's descriptor number.
fn child_stale_token() {
    let token = std::env::var(STALE_VAR).expect("token");
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt conn");
    let leaked = std::env::var_os(STALE_VAR).is_some();
    // A grandchild with the same key: the token as an inherited environment
    // carries it (explicit here, since adopt removed it from ours).
    let (fresh, fresh_child) = conduit::duplex::<Msg, Msg>().expect("duplex");
    let mut grandchild = crate::spawn("stale_token_grandchild", |cmd| {
        cmd.env(STALE_VAR, &token);
        conduit::handoff(cmd, "fresh", fresh_child)
    })
    .expect("spawn the grandchild");
    fresh.send(&Msg::Text("ping".into())).expect("send ping");
    let pong = fresh.recv_timeout(HANG).expect("recv pong");
    assert_eq!(pong, Msg::Text("pong".into()));
    grandchild.wait_success().expect("the grandchild");
    // The carrier's number now names an unrelated socket of ours.
    let held = occupy(carrier_number(&token));
    std::env::set_var("CONDUIT_HANDOFF_copy", &token);
    expect_stale("copy", &held);
    assert!(
        std::env::var_os("CONDUIT_HANDOFF_copy").is_none(),
        "a refused token stays in the environment"
    );
    drop(held);
    assert!(
        !leaked,
        "{STALE_VAR} is still set after adopt: it leaks to children"
    );
    conn.send(&Msg::Text("ok".into())).expect("send ok");
}

fn grandchild_stale_token() {
    let token = std::env::var(STALE_VAR).expect("token");
    let held = occupy(carrier_number(&token));
    expect_stale("conn", &held);
    drop(held);
    let fresh: Duplex<Msg, Msg> = conduit::adopt("fresh").expect("adopt the fresh channel");
    let ping = fresh.recv_timeout(HANG).expect("recv ping");
    assert_eq!(ping, Msg::Text("ping".into()));
    fresh.send(&Msg::Text("pong".into())).expect("send pong");
}

// ---------------------------------------------------------------- tests

/// A command that re-executes this test binary as child `name`. Unlike
/// [`crate::spawn`], the caller keeps the `Command` alive after spawning.
fn child_command(name: &str) -> Result<Command, Failed> {
    let exe = std::env::current_exe().map_err(fail("cannot find the test binary"))?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, name).stdin(std::process::Stdio::null());
    Ok(cmd)
}

/// A child that exits without adopting (like `/bin/true`): the parent's end
/// must see `Disconnected` although the `Command` holding the handoff is
/// still in scope.
fn exit_before_adopt(t: Transport) -> Result<(), Failed> {
    let (conn, conn_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut cmd = child_command("exit_without_adopt")?;
    conduit::handoff(&mut cmd, "conn", conn_child).map_err(fail("handoff"))?;
    let mut child = cmd.spawn().map_err(fail("spawn"))?;
    let status = child.wait().map_err(fail("wait"))?;
    ensure(status.success(), || format!("child failed: {status}"))?;
    // Well under the 5 s: a timeout here means the in-flight handles are
    // still held on the parent's side.
    expect_kind(
        "recv after the child exited without adopting (Command alive)",
        conn.recv_timeout(Duration::from_secs(5)),
        ErrorKind::Disconnected,
    )?;
    drop(cmd);
    Ok(())
}

/// A CBOR duplex handed to a child that adopts it with another codec: the
/// child's `adopt` fails (checked in the child), and the parent's end sees
/// the child go.
fn adopt_with_another_codec(t: Transport) -> Result<(), Failed> {
    let (conn, conn_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut child = crate::spawn("adopt_with_another_codec", |cmd| {
        conduit::handoff(cmd, "conn", conn_child)
    })?;
    child.wait_success()?;
    expect_kind(
        "recv after the child refused the endpoint",
        conn.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    Ok(())
}

/// The second `spawn` of a `Command` whose endpoint went to the first child
/// fails with an error (it must not hand a descriptor it cannot vouch for),
/// and the first child gets the endpoint.
fn spawn_twice() -> Result<(), Failed> {
    let (conn, conn_child) = conduit::duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut cmd = child_command("hello_duplex_exit")?;
    conduit::handoff(&mut cmd, "conn", conn_child).map_err(fail("handoff"))?;
    let mut first = cmd.spawn().map_err(fail("first spawn"))?;
    let second = cmd.spawn();
    let second_failed = match second {
        Ok(mut c) => {
            let _ = c.kill();
            let _ = c.wait();
            false
        }
        Err(_) => true,
    };
    let hi = conn.recv_timeout(HANG).map_err(fail("recv hi"))?;
    ensure(hi == Msg::Text("hi".into()), || format!("{hi:?}"))?;
    let status = first.wait().map_err(fail("wait"))?;
    ensure(status.success(), || format!("first child failed: {status}"))?;
    expect_kind(
        "recv after the first child exited",
        conn.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    ensure(second_failed, || {
        "the second spawn of the same Command succeeded".into()
    })
}

/// A `Command` dropped without being spawned releases the handed endpoint.
fn drop_unspawned() -> Result<(), Failed> {
    let (conn, conn_child) = conduit::duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut cmd = child_command("hello_duplex_exit")?;
    conduit::handoff(&mut cmd, "conn", conn_child).map_err(fail("handoff"))?;
    drop(cmd);
    expect_kind(
        "recv after the Command was dropped unspawned",
        conn.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )
    .map(|_| ())
}

/// A child with `SIGPIPE` at its default disposition sends to a reader that is
/// gone: it must get `Disconnected` and exit normally, not die of signal 13.
fn sigpipe_default(t: Transport) -> Result<(), Failed> {
    let (tx, rx) = t.channel::<Msg>().map_err(fail("channel"))?;
    let (ctl, ctl_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut child = crate::spawn("sigpipe_sender", |cmd| {
        conduit::handoff(cmd, "conn", tx)?;
        conduit::handoff(cmd, "ctl", ctl_child)
    })?;
    let ready = ctl.recv_timeout(HANG).map_err(fail("recv ready"))?;
    ensure(ready == Msg::Text("ready".into()), || format!("{ready:?}"))?;
    drop(rx);
    ctl.send(&Msg::Text("reader gone".into()))
        .map_err(fail("send go"))?;
    let status = child.wait()?;
    ensure(status.success(), || {
        format!("the sender did not exit normally: {status}")
    })
}

/// A stale handoff token is refused in a grandchild (which inherits it) and in
/// a child that copies it after the carrier's number was reused; neither
/// aborts, and the grandchild's own fresh channel works.
fn stale_token() -> Result<(), Failed> {
    let (conn, conn_child) = conduit::duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let mut child = crate::spawn("stale_token_child", |cmd| {
        conduit::handoff(cmd, "conn", conn_child)
    })?;
    let res = conn.recv_timeout(HANG);
    child.wait_success()?;
    let ok = res.map_err(fail("recv the child's report"))?;
    ensure(ok == Msg::Text("ok".into()), || format!("{ok:?}"))
}
