//! The child's side: what each role does with the endpoint it was handed.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use conduit::ErrorKind;

use crate::{
    link, soak,
    wire::{SoakMsg, Typed},
};

/// The size of the large messages of the `source-large` role.
pub const SIZE_ENV: &str = "CONDUIT_RELIABILITY_SIZE";
/// The number of messages a soak receiver expects.
pub const COUNT_ENV: &str = "CONDUIT_RELIABILITY_COUNT";
/// Set for chaos children that say "ready" once they hold their endpoint.
pub const READY_ENV: &str = "CONDUIT_RELIABILITY_READY";
/// The ready message.
pub const READY: &[u8] = b"ready";
/// A chaos child never outlives this, whatever happens to its parent.
const LIFETIME: Duration = Duration::from_secs(30);

/// Runs the role and exits.
pub fn main(role: &str) -> ExitCode {
    let result = match role {
        "soak-sink-raw" => soak_sink::<Vec<u8>>(),
        "soak-sink-typed" => soak_sink::<Typed>(),
        "soak-echo-raw" => soak_echo::<Vec<u8>>(),
        "soak-echo-typed" => soak_echo::<Typed>(),
        "idle" => idle(),
        "sink" => sink(),
        "source-large" => source_large(),
        "trickle" => trickle(),
        _ => Err(format!("unknown role {role:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conduit-reliability child ({role}): {e}");
            ExitCode::from(3)
        }
    }
}

/// The chaos child's end of the connection; it says [`READY`] first when
/// [`READY_ENV`] is set.
fn chaos_conn() -> Result<conduit::Duplex<Vec<u8>, Vec<u8>>, String> {
    let conn = link::child_duplex::<Vec<u8>>().map_err(|e| format!("adopt: {e}"))?;
    if std::env::var_os(READY_ENV).is_some() {
        conn.send(&READY.to_vec())
            .map_err(|e| format!("sending ready: {e}"))?;
    }
    Ok(conn)
}

fn env_number(name: &str) -> Result<u64, String> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{name} is not set to a number"))
}

/// Receives a soak stream and prints the counts on stdout (one line).
fn soak_sink<M: SoakMsg>() -> Result<(), String> {
    let n = env_number(COUNT_ENV)?;
    let rx = link::child_receiver::<M>().map_err(|e| format!("adopt: {e}"))?;
    let out = soak::receive(&rx, n);
    let line = soak::report_line(&out);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing the report: {e}"))
}

/// Sends every message back as it came, until the parent is gone.
fn soak_echo<M: SoakMsg>() -> Result<(), String> {
    let conn = link::child_duplex::<M>().map_err(|e| format!("adopt: {e}"))?;
    let (tx, rx) = conn.split();
    loop {
        match rx.recv() {
            Ok(m) => tx.send(&m).map_err(|e| format!("echo send: {e}"))?,
            // Not echoed: the parent counts it as lost.
            Err(e) if e.kind() == ErrorKind::Decode => {}
            Err(e) if e.is_disconnected() => return Ok(()),
            Err(e) => return Err(format!("echo recv: {e}")),
        }
    }
}

/// Takes the endpoint and does nothing with it until killed.
fn idle() -> Result<(), String> {
    let _conn = chaos_conn()?;
    std::thread::sleep(LIFETIME);
    Ok(())
}

/// Receives and drops messages until killed (or the parent is gone).
fn sink() -> Result<(), String> {
    let conn = chaos_conn()?;
    let end = Instant::now() + LIFETIME;
    while Instant::now() < end {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(_) => {}
            Err(e) if e.is_timeout() => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Sends one large message over and over until killed.
fn source_large() -> Result<(), String> {
    let size = env_number(SIZE_ENV)? as usize;
    let conn = chaos_conn()?;
    let (tx, _rx) = conn.split();
    let mut raw = tx.into_raw();
    let big: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let end = Instant::now() + LIFETIME;
    while Instant::now() < end {
        if raw.send_frame(&big).is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends a small message every millisecond until killed.
fn trickle() -> Result<(), String> {
    let conn = chaos_conn()?;
    let end = Instant::now() + LIFETIME;
    let msg = vec![7u8; 64];
    while Instant::now() < end {
        if conn.send(&msg).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
