//! Cross-process tests of named endpoints (feature `named`): children are
//! this test binary, re-executed, and they find the server by *name* (passed
//! in `CONDUIT_TEST_NAME`), not by handoff. Every name gets a random suffix,
//! so parallel tests never collide.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use conduit::named::{connect, connect_timeout, connect_with, Listener};
use conduit::{Codec, Duplex, ErrorKind, FrameConfig};

use crate::msg::Msg;
use crate::suite::{echo_loop, echo_property, HANG};
use crate::{ensure, fail, spawn, ChildFn, Failed, Spawned, Trial};

/// The environment variable that gives a child the name to connect to.
const NAME_ENV: &str = "CONDUIT_TEST_NAME";
/// Clients in the many-clients test.
const CLIENTS: usize = 64;
/// Requests each of them sends.
const REQUESTS: u64 = 20;

/// The child functions of these tests.
pub const CHILDREN: &[ChildFn] = &[
    ChildFn {
        name: "named_echo",
        run: child_echo,
    },
    ChildFn {
        name: "named_client",
        run: child_client,
    },
    ChildFn {
        name: "named_server",
        run: child_server,
    },
    ChildFn {
        name: "named_expect_in_use",
        run: child_expect_in_use,
    },
    ChildFn {
        name: "named_dir_checks",
        run: child_dir_checks,
    },
    ChildFn {
        name: "named_partial",
        run: child_partial,
    },
    ChildFn {
        name: "named_other_config",
        run: child_other_config,
    },
    ChildFn {
        name: "named_adopt_echo",
        run: child_adopt_echo,
    },
    ChildFn {
        name: "named_sweep",
        run: child_sweep,
    },
    ChildFn {
        name: "named_stale",
        run: child_stale,
    },
];

type TestFn = fn() -> Result<(), Failed>;

/// The named-endpoint trials, named `named::<test>`.
pub fn trials() -> Vec<Trial> {
    let tests: &[(&str, TestFn)] = &[
        ("prop_echo_sequences_by_name", prop_echo_by_name),
        (
            "many_clients_in_separate_processes_get_their_own_replies",
            many_clients,
        ),
        ("stale_socket_of_a_killed_server_is_replaced", stale_socket),
        ("binding_a_live_name_is_address_in_use", address_in_use),
        (
            "socket_directory_must_be_private",
            directory_must_be_private,
        ),
        (
            "socket_directory_parent_writable_by_another_user_is_refused",
            parent_writable_by_others,
        ),
        (
            "stale_files_of_killed_servers_are_swept_by_any_bind",
            stale_files_swept,
        ),
        (
            "client_killed_mid_message_then_listener_serves_others",
            client_killed_mid_message,
        ),
        ("server_killed_clients_get_disconnected", server_killed),
        (
            "handshake_mismatch_is_protocol_on_both_sides",
            handshake_mismatch,
        ),
        (
            "timeouts_unbound_names_and_bad_names",
            timeouts_and_bad_names,
        ),
        (
            "accepted_connection_can_be_handed_to_a_child",
            handoff_accepted,
        ),
        (
            "silent_clients_do_not_stall_accept_for_others",
            silent_clients,
        ),
        (
            "handshake_timeout_is_configurable",
            handshake_timeout_configurable,
        ),
        (
            "handshake_that_arrived_in_time_survives_a_late_accept",
            handshake_before_late_accept,
        ),
    ];
    tests
        .iter()
        .map(|&(name, f)| Trial::test(format!("named::{name}"), f))
        .collect()
}

fn unique(tag: &str) -> String {
    format!("ct-{tag}-{:016x}", fastrand::u64(..))
}

fn name_env() -> String {
    std::env::var(NAME_ENV).expect("CONDUIT_TEST_NAME")
}

fn expect_kind<T>(
    what: &str,
    res: conduit::Result<T>,
    kind: ErrorKind,
) -> Result<conduit::Error, Failed> {
    match res {
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(format!("{what}: expected a {kind:?} error, got {:?}: {e}", e.kind()).into()),
        Ok(_) => Err(format!("{what}: expected a {kind:?} error, got Ok").into()),
    }
}

fn io_source(e: &conduit::Error) -> Option<std::io::ErrorKind> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

fn spawn_with_name(child: &str, name: &str) -> Result<Spawned, Failed> {
    spawn(child, |cmd: &mut Command| {
        cmd.env(NAME_ENV, name);
        Ok(())
    })
}

// ---------------------------------------------------------------- children

/// Connects twice by name (typed, then raw) and echoes on both.
fn child_echo() {
    let name = name_env();
    let typed = connect_timeout::<Msg, Msg>(&name, HANG).expect("connect typed");
    let raw = connect_timeout::<Vec<u8>, Vec<u8>>(&name, HANG).expect("connect raw");
    thread::scope(|s| {
        s.spawn(|| echo_loop(&typed));
        s.spawn(|| echo_loop(&raw));
    });
}

/// Request of the many-clients test: (client id, sequence number, text).
type Request = (u64, u64, String);
/// Reply: the request's id and sequence number, and the text's length.
type Reply = (u64, u64, usize);

fn child_client() {
    let name = name_env();
    let id: u64 = std::env::var("CONDUIT_TEST_ID")
        .expect("id")
        .parse()
        .expect("numeric id");
    let conn = connect_timeout::<Request, Reply>(&name, HANG).expect("connect");
    for seq in 0..REQUESTS {
        let text = format!("client {id} request {seq}").repeat((id % 7 + 1) as usize);
        conn.send(&(id, seq, text.clone())).expect("send request");
        let reply = conn.recv_timeout(HANG).expect("reply");
        assert_eq!(
            reply,
            (id, seq, text.len()),
            "client {id} got someone else's reply"
        );
    }
}

/// Binds the name and echoes `Msg`s on every connection until killed.
fn child_server() {
    let listener = Listener::<Msg, Msg>::bind(&name_env()).expect("bind");
    for conn in listener.incoming() {
        let conn = conn.expect("accept");
        thread::spawn(move || echo_loop(&conn));
    }
}

fn child_expect_in_use() {
    let err = Listener::<Msg, Msg>::bind(&name_env()).expect_err("second bind succeeded");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(
        io_source(&err),
        Some(std::io::ErrorKind::AddrInUse),
        "{err}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
}

fn child_dir_checks() {
    let name = name_env();
    match std::env::var("CONDUIT_SCENARIO")
        .expect("scenario")
        .as_str()
    {
        "refused" => {
            let expect = std::env::var("CONDUIT_EXPECT").expect("expected words");
            for err in [
                Listener::<Msg, Msg>::bind(&name)
                    .map(|_| ())
                    .expect_err("bind in an unsafe dir"),
                connect::<Msg, Msg>(&name)
                    .map(|_| ())
                    .expect_err("connect in an unsafe dir"),
            ] {
                assert_eq!(err.kind(), ErrorKind::Io, "{err}");
                assert_eq!(
                    io_source(&err),
                    Some(std::io::ErrorKind::PermissionDenied),
                    "{err}"
                );
                let text = err.to_string();
                for word in expect.split('|') {
                    assert!(text.contains(word), "{text:?} does not say {word:?}");
                }
            }
        }
        "fresh" => check_fresh_dir(&name),
        other => panic!("unknown scenario {other}"),
    }
}

#[cfg(unix)]
fn check_fresh_dir(name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::PathBuf::from(std::env::var_os("CONDUIT_NAMED_DIR").expect("dir"));
    assert!(!dir.exists(), "the directory exists before the first bind");
    let listener = Listener::<Msg, Msg>::bind(name).expect("bind in a fresh dir");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "directory mode");
    let sock = dir.join(format!("{name}.sock"));
    assert_eq!(mode(&sock), 0o600, "socket mode");
    assert_eq!(listener.endpoint(), sock.to_string_lossy());
    drop(listener);
    assert!(!sock.exists(), "the socket file outlived its listener");
    assert!(
        !dir.join(format!("{name}.lock")).exists(),
        "the lock file outlived its listener"
    );
}

#[cfg(not(unix))]
fn check_fresh_dir(_name: &str) {}

/// Servers killed by the harness in the sweep test.
#[cfg(unix)]
const SWEPT_SERVERS: usize = 5;

/// Runs in its own socket directory (`CONDUIT_NAMED_DIR`): starts
/// [`SWEPT_SERVERS`] servers on distinct names, kills them (`SIGKILL`), then
/// binds another name and checks that the killed servers' files are gone.
#[cfg(unix)]
fn child_sweep() {
    let dir = std::path::PathBuf::from(std::env::var_os("CONDUIT_NAMED_DIR").expect("dir"));
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .expect("read the socket directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // All bound before any is killed: every bind sweeps, so a server
    // started after a kill would already clean up after it.
    let servers: Vec<Spawned> = (0..SWEPT_SERVERS)
        .map(|i| {
            let name = unique(&format!("swept{i}"));
            let server = spawn_with_name("named_server", &name).expect("spawn a server");
            // Connecting (and one echo) shows that the server has bound its name.
            connect_to_server(&name).expect("reach the server");
            server
        })
        .collect();
    for mut server in servers {
        server.kill().expect("kill the server");
    }
    let before = files();
    assert_eq!(
        before.len(),
        2 * SWEPT_SERVERS,
        "the killed servers should have left a .sock and a .lock each: {before:?}"
    );
    let name = unique("sweeper");
    let listener = Listener::<Msg, Msg>::bind(&name).expect("bind a new name");
    let after = files();
    assert_eq!(
        after,
        [format!("{name}.lock"), format!("{name}.sock")],
        "binding {name} left stale files of killed servers behind"
    );
    drop(listener);
    assert!(files().is_empty(), "files left after drop: {:?}", files());
}

#[cfg(not(unix))]
fn child_sweep() {}

/// Sends one whole message and part of another in one write, then waits to
/// be killed.
fn child_partial() {
    let conn = connect_timeout::<Msg, Msg>(&name_env(), HANG).expect("connect");
    let (tx, _rx) = conn.split();
    let mut raw = tx.into_raw();
    let mut whole = Vec::new();
    conduit::Cbor::encode(&Msg::Text("whole".into()), &mut whole).expect("encode");
    let mut bytes = (whole.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&whole);
    bytes.extend_from_slice(&100u32.to_le_bytes());
    bytes.extend_from_slice(&[7u8; 10]);
    raw.send_unframed(&bytes).expect("write");
    loop {
        thread::park();
    }
}

fn child_other_config() {
    let cfg = FrameConfig::default().with_max_frame(1024);
    let err = conduit::named::connect_timeout_with::<Msg, Msg>(&name_env(), cfg, HANG)
        .map(|_| ())
        .expect_err("connect with another max_frame succeeded");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("max_frame"), "{err}");
}

fn child_adopt_echo() {
    let conn: Duplex<Msg, Msg> = conduit::adopt("conn").expect("adopt");
    echo_loop(&conn);
}

// ---------------------------------------------------------------- tests

fn prop_echo_by_name() -> Result<(), Failed> {
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

/// Views a connection accepted as `Duplex<Msg, Msg>` with other message
/// types: the typed layer is only a view over the byte-level halves.
fn retype<S, R>(d: Duplex<Msg, Msg>) -> Duplex<S, R>
where
    S: serde::Serialize + 'static,
    R: serde::de::DeserializeOwned + 'static,
{
    let (tx, rx) = d.split();
    Duplex::from_parts(
        conduit::Sender::from_raw(tx.into_raw()),
        conduit::Receiver::from_raw(rx.into_raw()),
    )
}

fn many_clients() -> Result<(), Failed> {
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

/// Connects to the server child, waiting for it to bind.
fn connect_to_server(name: &str) -> Result<Duplex<Msg, Msg>, Failed> {
    let conn = connect_timeout::<Msg, Msg>(name, HANG).map_err(fail("connect"))?;
    conn.send(&Msg::Int(1)).map_err(fail("send"))?;
    let back = conn.recv_timeout(HANG).map_err(fail("recv"))?;
    ensure(back == Msg::Int(1), || format!("echo gave {back:?}"))?;
    Ok(conn)
}

/// Runs [`stale_socket_body`] in a child with its own socket directory:
/// binds in the shared directory sweep killed servers' files, so a parallel
/// test could remove the stale socket this test needs.
#[cfg(unix)]
fn stale_socket() -> Result<(), Failed> {
    use std::fs::{create_dir, set_permissions, Permissions};
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(unique("stale-dir"));
    create_dir(&base).map_err(fail("mkdir"))?;
    let _cleanup = RemoveOnDrop(base.clone());
    set_permissions(&base, Permissions::from_mode(0o700)).map_err(fail("chmod"))?;
    let mut child = spawn("named_stale", |cmd: &mut Command| {
        cmd.env("CONDUIT_NAMED_DIR", base.join("run"));
        Ok(())
    })?;
    crate::watchdog("the stale-socket child", HANG * 2, || child.wait_success())
}

#[cfg(not(unix))]
fn stale_socket() -> Result<(), Failed> {
    stale_socket_body()
}

fn child_stale() {
    if let Err(e) = stale_socket_body() {
        panic!("{e:?}");
    }
}

fn stale_socket_body() -> Result<(), Failed> {
    let name = unique("stale");
    let mut server = spawn_with_name("named_server", &name)?;
    let conn = connect_to_server(&name)?;
    server.kill()?;
    expect_kind(
        "recv from the killed server",
        conn.recv_timeout(HANG),
        ErrorKind::Disconnected,
    )?;
    #[cfg(unix)]
    {
        let path = conduit_named::unix::socket_path(&name).map_err(fail("socket path"))?;
        ensure(path.exists(), || {
            format!(
                "{} vanished with the killed server: nothing stale to test",
                path.display()
            )
        })?;
    }
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind over the stale socket"))?;
    let client = thread::spawn({
        let name = name.clone();
        move || connect_timeout::<Msg, Msg>(&name, HANG).map(|c| c.recv())
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    conn.send(&Msg::Text("fresh".into()))
        .map_err(fail("send"))?;
    let got = client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("connect"))?
        .map_err(fail("recv"))?;
    ensure(got == Msg::Text("fresh".into()), || format!("{got:?}"))
}

fn address_in_use() -> Result<(), Failed> {
    let name = unique("inuse");
    let listener = Listener::<Msg, Msg>::bind(&name).map_err(fail("bind"))?;
    spawn_with_name("named_expect_in_use", &name)?.wait_success()?;
    // The same process cannot bind it twice either.
    let e = expect_kind(
        "second bind",
        Listener::<Msg, Msg>::bind(&name).map(|_| ()),
        ErrorKind::Io,
    )?;
    ensure(io_source(&e) == Some(std::io::ErrorKind::AddrInUse), || {
        format!("{e}")
    })?;
    // The listener still works after the failed attempts.
    let client = thread::spawn({
        let name = name.clone();
        move || connect::<Msg, Msg>(&name).and_then(|c| c.send(&Msg::Unit))
    });
    let conn = listener.accept_timeout(HANG).map_err(fail("accept"))?;
    client
        .join()
        .map_err(|_| Failed::from("client panicked"))?
        .map_err(fail("client"))?;
    ensure(
        conn.recv_timeout(HANG).map_err(fail("recv"))? == Msg::Unit,
        || "not Unit".into(),
    )?;
    #[cfg(unix)]
    let path = conduit_named::unix::socket_path(&name).map_err(fail("socket path"))?;
    drop(listener);
    #[cfg(unix)]
    ensure(!path.exists(), || {
        format!("{} outlived its listener", path.display())
    })?;
    expect_kind(
        "connect after drop",
        connect::<Msg, Msg>(&name).map(|_| ()),
        ErrorKind::Io,
    )?;
    Listener::<Msg, Msg>::bind(&name).map_err(fail("bind after drop"))?;
    Ok(())
}

#[cfg(unix)]
fn directory_must_be_private() -> Result<(), Failed> {
    use std::fs::{create_dir, set_permissions, Permissions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = std::env::temp_dir().join(unique("dir"));
    create_dir(&base).map_err(fail("mkdir"))?;
    let _cleanup = RemoveOnDrop(base.clone());
    let mkdir = |name: &str, mode: u32| -> Result<std::path::PathBuf, Failed> {
        let dir = base.join(name);
        create_dir(&dir).map_err(fail("mkdir"))?;
        set_permissions(&dir, Permissions::from_mode(mode)).map_err(fail("chmod"))?;
        Ok(dir)
    };
    let name = unique("perm");
    let refused = |dir: &std::path::Path, expect: &str| -> Result<(), Failed> {
        spawn("named_dir_checks", |cmd: &mut Command| {
            cmd.env(NAME_ENV, &name)
                .env("CONDUIT_SCENARIO", "refused")
                .env("CONDUIT_EXPECT", expect)
                .env("CONDUIT_NAMED_DIR", dir);
            Ok(())
        })?
        .wait_success()
    };
    // Group and others can enter it.
    refused(&mkdir("loose", 0o755)?, "0755|chmod 700")?;
    // A symbolic link, even to a private directory.
    let link = base.join("link");
    std::os::unix::fs::symlink(mkdir("private", 0o700)?, &link).map_err(fail("symlink"))?;
    refused(&link, "symbolic link")?;
    // Its parent lets anyone replace it.
    let open = mkdir("open", 0o777)?;
    create_dir(open.join("inner")).map_err(fail("mkdir"))?;
    refused(&open.join("inner"), "writable by every user")?;
    // Another user's directory (only root can make one).
    if std::fs::metadata(&base).map_err(fail("stat"))?.uid() == 0 {
        let foreign = mkdir("foreign", 0o700)?;
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).map_err(fail("chown"))?;
        refused(&foreign, "owned by uid 65534")?;
    }
    set_permissions(&base, Permissions::from_mode(0o700)).map_err(fail("chmod"))?;
    spawn("named_dir_checks", |cmd: &mut Command| {
        cmd.env(NAME_ENV, &name)
            .env("CONDUIT_SCENARIO", "fresh")
            .env("CONDUIT_NAMED_DIR", base.join("fresh"));
        Ok(())
    })?
    .wait_success()
}

/// A socket directory whose parent another user can write to (here: owns,
/// group-writable) must be refused, since that user could rename it away
/// and put a directory of theirs in its place; parents that only this user
/// and root can change stay accepted.
#[cfg(unix)]
fn parent_writable_by_others() -> Result<(), Failed> {
    use std::fs::{create_dir, set_permissions, Permissions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = std::env::temp_dir().join(unique("parent"));
    create_dir(&base).map_err(fail("mkdir"))?;
    let _cleanup = RemoveOnDrop(base.clone());
    set_permissions(&base, Permissions::from_mode(0o700)).map_err(fail("chmod"))?;
    let me = std::fs::metadata(&base).map_err(fail("stat"))?.uid();
    let mkdir = |name: &str, mode: u32| -> Result<std::path::PathBuf, Failed> {
        let dir = base.join(name);
        create_dir(&dir).map_err(fail("mkdir"))?;
        set_permissions(&dir, Permissions::from_mode(mode)).map_err(fail("chmod"))?;
        Ok(dir)
    };
    let name = unique("parent");
    let run = |dir: &std::path::Path, scenario: &str, expect: &str| -> Result<(), Failed> {
        spawn("named_dir_checks", |cmd: &mut Command| {
            cmd.env(NAME_ENV, &name)
                .env("CONDUIT_SCENARIO", scenario)
                .env("CONDUIT_EXPECT", expect)
                .env("CONDUIT_NAMED_DIR", dir);
            Ok(())
        })?
        .wait_success()
    };
    // Group-writable (no sticky bit), owned by this user: group members
    // could replace the directory.
    let group = mkdir("group", 0o770)?;
    run(&group.join("run"), "refused", "group|chmod")?;
    ensure(!group.join("run").exists(), || {
        "the directory was created in a refused parent".into()
    })?;
    // Accepted: a parent only this user can write to, and a sticky
    // world-writable one (like /tmp), where others cannot rename our entry.
    run(&mkdir("mine", 0o755)?.join("run"), "fresh", "")?;
    run(&mkdir("sticky", 0o1777)?.join("run"), "fresh", "")?;
    if me == 0 {
        // Group-writable and owned by another user (only root can make one).
        let other = mkdir("other", 0o775)?;
        std::os::unix::fs::chown(&other, Some(65534), Some(65534)).map_err(fail("chown"))?;
        run(&other.join("run"), "refused", "owned by uid 65534")?;
        ensure(!other.join("run").exists(), || {
            "the directory was created in a refused parent".into()
        })?;
        // Owned by another user, even closed to group and others: the owner
        // can still rename our directory.
        let owned = mkdir("owned", 0o755)?;
        std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).map_err(fail("chown"))?;
        run(&owned.join("run"), "refused", "owned by uid 65534")?;
        // The same further up: a grandparent another user owns.
        let upper = mkdir("upper", 0o775)?;
        let mid = upper.join("mid");
        create_dir(&mid).map_err(fail("mkdir"))?;
        std::os::unix::fs::chown(&upper, Some(65534), Some(65534)).map_err(fail("chown"))?;
        run(&mid.join("run"), "refused", "owned by uid 65534")?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn parent_writable_by_others() -> Result<(), Failed> {
    Ok(())
}

/// Silent clients that connected first (and never send their handshake)
/// must not keep `accept` from serving a well-behaved client that came
/// after them: handshakes run side by side, each with its own deadline.
#[cfg(unix)]
fn silent_clients() -> Result<(), Failed> {
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

#[cfg(not(unix))]
fn silent_clients() -> Result<(), Failed> {
    Ok(())
}

/// A listener with a short handshake timeout drops a silent client after
/// that timeout, while `accept` goes on waiting (the client sees the
/// server's handshake, then end of file), well before the 10 s default.
#[cfg(unix)]
fn handshake_timeout_configurable() -> Result<(), Failed> {
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
fn handshake_timeout_configurable() -> Result<(), Failed> {
    Ok(())
}

/// A client taken in by one `accept` whose handshake arrives in time, but
/// while nobody is in `accept`, is returned by the next `accept` even if
/// that comes after its handshake deadline: its `connect` already
/// succeeded, so dropping it would break a connection the client uses.
#[cfg(unix)]
fn handshake_before_late_accept() -> Result<(), Failed> {
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
fn handshake_before_late_accept() -> Result<(), Failed> {
    Ok(())
}

/// Killed servers leave `.sock`/`.lock` pairs; binding any name sweeps them.
#[cfg(unix)]
fn stale_files_swept() -> Result<(), Failed> {
    use std::fs::{create_dir, set_permissions, Permissions};
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(unique("sweep"));
    create_dir(&base).map_err(fail("mkdir"))?;
    let _cleanup = RemoveOnDrop(base.clone());
    set_permissions(&base, Permissions::from_mode(0o700)).map_err(fail("chmod"))?;
    let mut child = spawn("named_sweep", |cmd: &mut Command| {
        cmd.env("CONDUIT_NAMED_DIR", base.join("run"));
        Ok(())
    })?;
    crate::watchdog("the sweep child", HANG * 2, || child.wait_success())
}

#[cfg(not(unix))]
fn stale_files_swept() -> Result<(), Failed> {
    Ok(())
}

#[cfg(unix)]
struct RemoveOnDrop(std::path::PathBuf);

#[cfg(unix)]
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Windows has no socket directory: the pipe's DACL does that job.
#[cfg(not(unix))]
fn directory_must_be_private() -> Result<(), Failed> {
    Ok(())
}

fn client_killed_mid_message() -> Result<(), Failed> {
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

fn server_killed() -> Result<(), Failed> {
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

fn handshake_mismatch() -> Result<(), Failed> {
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

fn timeouts_and_bad_names() -> Result<(), Failed> {
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

fn handoff_accepted() -> Result<(), Failed> {
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
