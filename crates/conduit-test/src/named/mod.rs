//! Cross-process tests of named endpoints (feature `named`): children are
//! this test binary, re-executed, and they find the server by *name* (passed
//! in `CONDUIT_TEST_NAME`), not by handoff. Every name gets a random suffix,
//! so parallel tests never collide.
//!
//! The pieces: `children` (the child functions and [`CHILDREN`]), `cases`
//! (connections, handshakes and dying peers) and `dirs` (names on disk: the
//! socket directory, stale files, a name in use).

use std::process::Command;

use conduit::named::connect_timeout;
use conduit::Duplex;

use crate::msg::Msg;
use crate::suite::HANG;
use crate::{ensure, fail, spawn, Failed, Spawned, Trial};

mod cases;
mod children;
mod dirs;

pub use children::CHILDREN;

use cases::{
    client_killed_mid_message, drop_during_set_up, handoff_accepted, handshake_before_late_accept,
    handshake_mismatch, handshake_timeout_configurable, many_clients, prop_echo_by_name,
    server_killed, silent_clients, timeouts_and_bad_names,
};
use dirs::{
    address_in_use, directory_must_be_private, parent_writable_by_others, stale_files_swept,
    stale_socket,
};

/// The environment variable that gives a child the name to connect to.
const NAME_ENV: &str = "CONDUIT_TEST_NAME";
/// Clients in the many-clients test.
const CLIENTS: usize = 64;
/// Requests each of them sends.
const REQUESTS: u64 = 20;

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
            "dropping_a_listener_with_a_set_up_in_progress_frees_the_name",
            drop_during_set_up,
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

/// Request of the many-clients test: (client id, sequence number, text).
type Request = (u64, u64, String);
/// Reply: the request's id and sequence number, and the text's length.
type Reply = (u64, u64, usize);

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

/// Connects to the server child, waiting for it to bind.
fn connect_to_server(name: &str) -> Result<Duplex<Msg, Msg>, Failed> {
    let conn = connect_timeout::<Msg, Msg>(name, HANG).map_err(fail("connect"))?;
    conn.send(&Msg::Int(1)).map_err(fail("send"))?;
    let back = conn.recv_timeout(HANG).map_err(fail("recv"))?;
    ensure(back == Msg::Int(1), || format!("echo gave {back:?}"))?;
    Ok(conn)
}
