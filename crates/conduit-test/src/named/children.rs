//! The child functions of the named trials, and [`CHILDREN`].

use std::thread;

use conduit::named::{connect, connect_timeout, Listener};
use conduit::TestHooks;
use conduit::{Codec, Duplex, ErrorKind, FrameConfig};

use super::dirs::stale_socket_body;
#[cfg(unix)]
use super::{connect_to_server, spawn_with_name, unique};
use super::{io_source, name_env, Reply, Request, REQUESTS};
use crate::msg::Msg;
use crate::suite::{echo_loop, Scenario, HANG};
use crate::ChildFn;
#[cfg(unix)]
use crate::Spawned;

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
    match Scenario::from_env() {
        Scenario::Refused => {
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
        Scenario::Fresh => check_fresh_dir(&name),
        other => panic!("named_dir_checks does not play scenario {}", other.as_str()),
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

fn child_stale() {
    if let Err(e) = stale_socket_body() {
        panic!("{e:?}");
    }
}
