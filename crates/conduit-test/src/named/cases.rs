//! Connections by name: echo, many clients, handshakes (mismatched,
//! silent, late), timeouts and bad names, dying peers, and handing an
//! accepted connection to a child.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use conduit::named::{connect, connect_timeout, connect_with, Listener};
use conduit::{Duplex, ErrorKind, FrameConfig};

use super::{
    connect_to_server, retype, spawn_with_name, unique, Reply, Request, CLIENTS, NAME_ENV, REQUESTS,
};
use crate::msg::Msg;
use crate::suite::{echo_property, expect_kind, HANG};
use crate::{ensure, fail, spawn, Failed};

pub(super) fn prop_echo_by_name() -> Result<(), Failed> {
    let name = unique("echo");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    let mut child = spawn_with_name("named_echo", &name)?;
    let typed = listener
        .accept_timeout(HANG)
        .map_err(fail("accept typed"))?;
    // The child connects its raw connection only after the typed one is
    // accepted, so the second connection is the raw one.
    let raw: Duplex<Vec<u8>, Vec<u8>> =
        retype(listener.accept_timeout(HANG).map_err(fail("accept raw"))?);
    echo_property(
        "named echo case",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/named_echo.txt"
        ),
        &typed,
        &raw,
    )?;
    drop((typed, raw));
    child.wait_success()
}

pub(super) fn many_clients() -> Result<(), Failed> {
    let name = unique("many");
    let listener = Listener::<Reply, Request>::bind(&name).map_err(fail("bind"))?;
    let mut children = Vec::with_capacity(CLIENTS);
    for id in 0..CLIENTS {
        children.push(spawn("named_client", |cmd: &mut Command| {
            cmd.env(NAME_ENV, &name)
                .env("CONDUIT_TEST_ID", id.to_string());
            Ok(())
        })?);
    }
    // All clients are connected at the same time before any is served.
    let conns = (0..CLIENTS)
        .map(|i| {
            listener
                .accept_timeout(HANG)
                .map_err(fail(&format!("accept {i}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let served = crate::watchdog("serving 64 clients", HANG * 2, || {
        thread::scope(|s| {
            let handles: Vec<_> = conns
                .iter()
                .map(|conn| {
                    s.spawn(move || -> Result<u64, String> {
                        let mut n = 0;
                        loop {
                            match conn.recv() {
                                Ok((id, seq, text)) => {
                                    conn.send(&(id, seq, text.len()))
                                        .map_err(|e| e.to_string())?;
                                    n += 1;
                                }
                                Err(e) if e.is_disconnected() => return Ok(n),
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("server thread panicked".into()))
                })
                .collect::<Vec<_>>()
        })
    });
    for (i, res) in served.into_iter().enumerate() {
        let n = res.map_err(|e| Failed::from(format!("connection {i}: {e}")))?;
        ensure(n == REQUESTS, || {
            format!("connection {i} served {n} requests, not {REQUESTS}")
        })?;
    }
    for mut child in children {
        child.wait_success()?;
    }
    Ok(())
}

/// Silent clients that connected first (and never send their handshake)
/// must not keep `accept` from serving a well-behaved client that came
/// after them: handshakes run side by side, each with its own deadline.
#[cfg(unix)]
pub(super) fn silent_clients() -> Result<(), Failed> {
    use std::os::unix::net::UnixStream;
    let name = unique("silent");
    let listener = Listener::<Reply, Request>::bind(&name).map_err(fail("bind"))?;
    // Connected before the good client, so they are ahead of it in the
    // backlog; they never write anything.
    let silent = (0..3)
        .map(|_| UnixStream::connect(listener.endpoint()).map_err(fail("silent connect")))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let mut good = spawn("named_client", |cmd: &mut Command| {
        cmd.env(NAME_ENV, &name).env("CONDUIT_TEST_ID", "3");
        Ok(())
    })?;
    let conn = listener
        .accept_timeout(HANG)
        .map_err(fail("accept the well-behaved client"))?;
    let served_after = start.elapsed();
    for _ in 0..REQUESTS {
        let (id, seq, text) = conn.recv_timeout(HANG).map_err(fail("request"))?;
        conn.send(&(id, seq, text.len())).map_err(fail("reply"))?;
    }
    good.wait_success()?;
    // Generous: the old sequential handshakes took 10 s per silent client.
    ensure(served_after < Duration::from_secs(3), || {
        format!(
            "the well-behaved client was accepted {served_after:?} after it started, behind {} silent ones",
            silent.len()
        )
    })?;
    drop(silent);
    Ok(())
}

/// Windows: the silent clients open the rendezvous pipe and never answer
/// the server's hello. Only one instance waits for a client at a time, so
/// they are opened one after the other while `accept` runs (each as soon as
/// the server offers the next instance), then the well-behaved client.
#[cfg(windows)]
pub(super) fn silent_clients() -> Result<(), Failed> {
    use std::fs::{File, OpenOptions};
    /// `ERROR_PIPE_BUSY`: every instance is taken; the next comes soon.
    const PIPE_BUSY: i32 = 231;
    let name = unique("silent");
    let listener = Listener::<Reply, Request>::bind(&name).map_err(fail("bind"))?;
    let endpoint = listener.endpoint().to_string();
    let good_name = name.clone();
    let clients = thread::spawn(move || -> Result<(Vec<File>, _, Instant), String> {
        let until = Instant::now() + HANG;
        let mut silent = Vec::new();
        while silent.len() < 3 {
            match OpenOptions::new().read(true).write(true).open(&endpoint) {
                Ok(f) => silent.push(f),
                Err(e) if e.raw_os_error() == Some(PIPE_BUSY) && Instant::now() < until => {
                    thread::yield_now()
                }
                Err(e) => return Err(format!("silent client {}: {e}", silent.len())),
            }
        }
        let start = Instant::now();
        let good = spawn("named_client", |cmd: &mut Command| {
            cmd.env(NAME_ENV, &good_name).env("CONDUIT_TEST_ID", "3");
            Ok(())
        })
        .map_err(|e| format!("spawn the well-behaved client: {e:?}"))?;
        Ok((silent, good, start))
    });
    let conn = listener
        .accept_timeout(HANG)
        .map_err(fail("accept the well-behaved client"));
    let served = Instant::now();
    let (silent, mut good, start) = clients
        .join()
        .map_err(|_| Failed::from("the clients' thread panicked"))?
        .map_err(Failed::from)?;
    let conn = conn?;
    let served_after = served.saturating_duration_since(start);
    for _ in 0..REQUESTS {
        let (id, seq, text) = conn.recv_timeout(HANG).map_err(fail("request"))?;
        conn.send(&(id, seq, text.len())).map_err(fail("reply"))?;
    }
    good.wait_success()?;
    // Generous: the old sequential set-ups took 10 s per silent client.
    ensure(served_after < Duration::from_secs(3), || {
        format!(
            "the well-behaved client was accepted {served_after:?} after it started, behind {} silent ones",
            silent.len()
        )
    })?;
    drop(silent);
    Ok(())
}

#[cfg(not(any(unix, windows)))]
pub(super) fn silent_clients() -> Result<(), Failed> {
    Ok(())
}

/// A listener dropped while a silent client's set-up is in progress (taken
/// in by an `accept` that then timed out) ends that set-up at once: the
/// name can be bound again right away, and the drop does not wait for the
/// client's handshake timeout (Windows sets clients up on threads of their
/// own, which hold the rendezvous pipe instance until they end).
pub(super) fn drop_during_set_up() -> Result<(), Failed> {
    let name = unique("dropsetup");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    #[cfg(unix)]
    let silent = std::os::unix::net::UnixStream::connect(listener.endpoint())
        .map_err(fail("silent connect"))?;
    #[cfg(windows)]
    let silent = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(listener.endpoint())
        .map_err(fail("silent connect"))?;
    expect_kind(
        "accept with only a silent client",
        listener.accept_timeout(Duration::from_millis(200)),
        ErrorKind::Timeout,
    )?;
    let start = Instant::now();
    drop(listener);
    let dropped_in = start.elapsed();
    drop(silent);
    let again = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind again after the drop"))?;
    drop(again);
    // The default handshake timeout is 10 s.
    ensure(dropped_in < Duration::from_secs(2), || {
        format!("dropping the listener took {dropped_in:?}")
    })
}

/// A listener with a short handshake timeout drops a silent client after
/// that timeout, while `accept` goes on waiting (the client sees the
/// server's handshake, then end of file), well before the 10 s default.
#[cfg(unix)]
pub(super) fn handshake_timeout_configurable() -> Result<(), Failed> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let name = unique("hstimeout");
    let listener = Listener::<Msg, Msg>::bind(&name)
        .map_err(fail("bind"))?
        .with_handshake_timeout(Duration::from_millis(200));
    ensure(
        listener.handshake_timeout() == Duration::from_millis(200),
        || format!("handshake_timeout() is {:?}", listener.handshake_timeout()),
    )?;
    let mut silent = UnixStream::connect(listener.endpoint()).map_err(fail("silent connect"))?;
    silent
        .set_read_timeout(Some(HANG))
        .map_err(fail("read timeout"))?;
    let start = Instant::now();
    // Once dropped, the silent client makes way for a good one, which is
    // what ends the accept below.
    let client = thread::spawn(move || -> Result<usize, String> {
        let mut got = Vec::new();
        silent
            .read_to_end(&mut got)
            .map_err(|e| format!("the silent client was not dropped: {e}"))?;
        let conn = connect::<Msg, Msg>(&name).map_err(|e| e.to_string())?;
        conn.send(&Msg::Int(5)).map_err(|e| e.to_string())?;
        Ok(got.len())
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    let elapsed = start.elapsed();
    let got = client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(Failed::from)?;
    // The server's 12-byte handshake (docs/wire-format.md), then end of file.
    ensure(got == 12, || {
        format!("the silent client got {got} bytes before end of file")
    })?;
    ensure(
        conn.recv_timeout(HANG).map_err(fail("recv"))? == Msg::Int(5),
        || "not Int(5)".into(),
    )?;
    ensure(elapsed < Duration::from_secs(5), || {
        format!("the silent client was dropped after {elapsed:?}, not after ~200 ms")
    })
}

#[cfg(not(unix))]
pub(super) fn handshake_timeout_configurable() -> Result<(), Failed> {
    Ok(())
}

/// A client taken in by one `accept` whose handshake arrives in time, but
/// while nobody is in `accept`, is returned by the next `accept` even if
/// that comes after its handshake deadline: its `connect` already
/// succeeded, so dropping it would break a connection the client uses.
#[cfg(unix)]
pub(super) fn handshake_before_late_accept() -> Result<(), Failed> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let name = unique("late-accept");
    let timeout = Duration::from_millis(200);
    let listener = Listener::<Msg, Msg>::bind(&name)
        .map_err(fail("bind"))?
        .with_handshake_timeout(timeout);
    // Ahead of the good client in the backlog, so the first accept takes
    // it in too, and keeps it while its handshake is missing.
    let mut raw = UnixStream::connect(listener.endpoint()).map_err(fail("raw connect"))?;
    raw.set_read_timeout(Some(HANG))
        .map_err(fail("read timeout"))?;
    let good = thread::spawn({
        let name = name.clone();
        move || connect::<Msg, Msg>(&name).and_then(|c| c.send(&Msg::Int(1)))
    });
    let first = listener
        .accept_timeout(HANG)
        .map_err(fail("first accept"))?;
    good.join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("good client"))?;
    ensure(
        first.recv_timeout(HANG).map_err(fail("recv"))? == Msg::Int(1),
        || "the first accept did not return the good client".into(),
    )?;
    // The raw client was taken in: it has the server's handshake. It
    // answers with the same bytes (same configuration) while nobody is in
    // accept.
    let mut hs = [0u8; 12];
    raw.read_exact(&mut hs)
        .map_err(fail("read the server's handshake"))?;
    raw.write_all(&hs).map_err(fail("send the handshake"))?;
    // Let its handshake deadline pass before accepting again: the late
    // accept is the condition under test, not a synchronisation.
    thread::sleep(timeout * 2);
    let late = listener
        .accept_timeout(Duration::from_secs(5))
        .map_err(fail("late accept of the client that answered in time"))?;
    late.send(&Msg::Int(2)).map_err(fail("send"))?;
    let mut head = [0u8; 4];
    raw.read_exact(&mut head).map_err(fail("read a frame"))?;
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn handshake_before_late_accept() -> Result<(), Failed> {
    Ok(())
}

pub(super) fn client_killed_mid_message() -> Result<(), Failed> {
    let name = unique("partial");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    let mut child = spawn_with_name("named_partial", &name)?;
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    let whole = conn.recv_timeout(HANG).map_err(fail("recv whole"))?;
    ensure(whole == Msg::Text("whole".into()), || format!("{whole:?}"))?;
    // The rest of the write (a frame header and 10 of its 100 bytes) is in
    // the channel: kill the child in the middle of that message.
    ensure(
        !conn.poll(Duration::from_millis(20)).map_err(fail("poll"))?,
        || "poll true on a partial frame".into(),
    )?;
    child.kill()?;
    crate::watchdog("recv after the client was killed", HANG, || {
        expect_kind(
            "recv of the truncated frame",
            conn.recv(),
            ErrorKind::Protocol,
        )
    })?;
    expect_kind("recv after that", conn.recv(), ErrorKind::Disconnected)?;
    // The listener keeps serving.
    let mut other = spawn("named_client", |cmd: &mut Command| {
        cmd.env(NAME_ENV, &name).env("CONDUIT_TEST_ID", "7");
        Ok(())
    })?;
    let conn: Duplex<Reply, Request> = retype(
        listener
            .accept_timeout(HANG)
            .map_err(fail("accept the next client"))?,
    );
    for _ in 0..REQUESTS {
        let (id, seq, text) = conn.recv_timeout(HANG).map_err(fail("request"))?;
        conn.send(&(id, seq, text.len())).map_err(fail("reply"))?;
    }
    other.wait_success()
}

pub(super) fn server_killed() -> Result<(), Failed> {
    let name = unique("srvkill");
    let mut server = spawn_with_name("named_server", &name)?;
    let a = connect_to_server(&name)?;
    let b = connect_to_server(&name)?;
    let me = crate::current_thread();
    let (res, elapsed) = thread::scope(|s| {
        let killer = s.spawn(move || {
            crate::wait_until_blocked(me, HANG);
            let at = Instant::now();
            server.kill().map(|()| at)
        });
        let res = crate::watchdog("recv after the server was killed", HANG, || a.recv());
        let done = Instant::now();
        let killed_at = killer
            .join()
            .map_err(|_| Failed::from("killer thread panicked"))??;
        Ok::<_, Failed>((res, done.saturating_duration_since(killed_at)))
    })?;
    expect_kind("blocked recv", res, ErrorKind::Disconnected)?;
    ensure(elapsed < Duration::from_secs(1), || {
        format!("recv took {elapsed:?} to see the server's death")
    })?;
    // The other client finds out as well, on receive and on send.
    expect_kind(
        "recv on the other client",
        b.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    let e = crate::watchdog("send after the server was killed", HANG, || loop {
        if let Err(e) = b.send(&Msg::Int(2)) {
            return e;
        }
    });
    ensure(e.is_disconnected(), || {
        format!("send: expected Disconnected, got {e}")
    })?;
    // Binding replaces the killed server's socket; dropping removes it.
    drop(Listener::<Msg, Msg>::bind(&name).map_err(fail("bind over the killed server"))?);
    Ok(())
}

pub(super) fn handshake_mismatch() -> Result<(), Failed> {
    let name = unique("mismatch");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    let mut child = spawn_with_name("named_other_config", &name)?;
    let e = expect_kind(
        "accept of a client with another max_frame",
        listener.accept_timeout(HANG),
        ErrorKind::Protocol,
    )?;
    ensure(e.to_string().contains("max_frame"), || format!("{e}"))?;
    child.wait_success()?;
    // The listener is still usable, and a matching client gets through.
    let client = thread::spawn({
        let name = name.clone();
        move || {
            connect_with::<Msg, Msg>(&name, FrameConfig::default())
                .and_then(|c| c.send(&Msg::Int(3)))
        }
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("client"))?;
    let got = conn.recv_timeout(HANG).map_err(fail("recv"))?;
    ensure(got == Msg::Int(3), || format!("{got:?}"))
}

pub(super) fn timeouts_and_bad_names() -> Result<(), Failed> {
    let name = unique("timeouts");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    let start = Instant::now();
    let e = expect_kind(
        "accept_timeout with no client",
        listener.accept_timeout(Duration::from_millis(50)),
        ErrorKind::Timeout,
    )?;
    ensure(
        e.is_timeout() && start.elapsed() >= Duration::from_millis(50),
        || format!("accept_timeout returned after {:?}", start.elapsed()),
    )?;
    let unbound = unique("unbound");
    let e = expect_kind(
        "connect to an unbound name",
        connect::<Msg, Msg>(&unbound).map(|_| ()),
        ErrorKind::Io,
    )?;
    ensure(e.to_string().contains("no server"), || format!("{e}"))?;
    let start = Instant::now();
    expect_kind(
        "connect_timeout to an unbound name",
        connect_timeout::<Msg, Msg>(&unbound, Duration::from_millis(50)).map(|_| ()),
        ErrorKind::Timeout,
    )?;
    ensure(start.elapsed() >= Duration::from_millis(50), || {
        format!("connect_timeout returned after {:?}", start.elapsed())
    })?;
    // connect_timeout waits for a server that binds later.
    let late = unique("late");
    let client = thread::spawn({
        let late = late.clone();
        move || connect_timeout::<Msg, Msg>(&late, HANG).and_then(|c| c.recv())
    });
    thread::sleep(Duration::from_millis(100));
    let late_listener = Listener::<Msg, Msg>::bind(&late).map_err(fail("late bind"))?;
    late_listener
        .accept_timeout(HANG)
        .map_err(fail("accept the waiting client"))?
        .send(&Msg::Int(9))
        .map_err(fail("send"))?;
    let got = client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("client"))?;
    ensure(got == Msg::Int(9), || format!("{got:?}"))?;
    let long = "x".repeat(65);
    for bad in [
        "",
        ".hidden",
        "a/b",
        "a b",
        "ü",
        "..",
        long.as_str(),
        "a\\b",
    ] {
        let e = expect_kind(
            &format!("bind {bad:?}"),
            Listener::<Msg, Msg>::bind(bad).map(|_| ()),
            ErrorKind::InvalidInput,
        )?;
        ensure(e.to_string().contains("letters, digits"), || format!("{e}"))?;
        expect_kind(
            &format!("connect {bad:?}"),
            connect::<Msg, Msg>(bad).map(|_| ()),
            ErrorKind::InvalidInput,
        )?;
    }
    drop(listener);
    Ok(())
}

pub(super) fn handoff_accepted() -> Result<(), Failed> {
    let name = unique("handoff");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    let client = thread::spawn({
        let name = name.clone();
        move || -> conduit::Result<Vec<Msg>> {
            let conn = connect::<Msg, Msg>(&name)?;
            (0..3)
                .map(|i| conn.send(&Msg::Int(i)).and_then(|()| conn.recv()))
                .collect()
        }
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    let mut worker = spawn("named_adopt_echo", |cmd: &mut Command| {
        conduit::handoff(cmd, "conn", conn)
    })?;
    let got = client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("client"))?;
    ensure(got == [Msg::Int(0), Msg::Int(1), Msg::Int(2)], || {
        format!("{got:?}")
    })?;
    worker.wait_success()
}
