//! Spawns a child process over every enabled transport, exchanges messages
//! with it, and prints one-way messages/s and round-trip latency.
//!
//! ```text
//! cargo run --release -p conduit --example demo
//! ```
//!
//! The child is this same executable, started with the endpoint handed to it
//! by `conduit::handoff`. With the `named` feature
//! (`--features named`, or `all-transports`) a last row measures a named
//! endpoint: the child connects by name to a listener of the parent.
//! Numbers depend on the machine and its load; the `cargo xtask bench`
//! command measures more carefully.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use conduit::{Duplex, Transport};

const CHILD_ENV: &str = "CONDUIT_DEMO_CHILD";
/// Tells the child to connect to this name instead of adopting an endpoint.
const NAME_ENV: &str = "CONDUIT_DEMO_NAME";
const PING: u8 = 0;
const DATA: u8 = 1;
const END: u8 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let round_trips: usize = arg("--round-trips").unwrap_or(20_000);
    let messages: usize = arg("--messages").unwrap_or(200_000);
    println!("conduit demo: 64-byte messages, {round_trips} round trips, {messages} one-way messages per transport");
    println!(
        "{:<12} {:>14} {:>12} {:>12}",
        "transport", "one-way msg/s", "rtt median", "rtt p99"
    );
    for t in Transport::enabled() {
        let (conn, theirs) = t.duplex::<Vec<u8>, Vec<u8>>()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(CHILD_ENV, "1");
        conduit::handoff(&mut cmd, "conn", theirs)?;
        let child = cmd.spawn()?;
        measure(t.name(), conn, child, round_trips, messages)?;
    }
    #[cfg(feature = "named")]
    {
        let name = format!("conduit-demo-{}", std::process::id());
        let listener = conduit::named::Listener::<Vec<u8>, Vec<u8>>::bind(&name)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(CHILD_ENV, "1").env(NAME_ENV, &name);
        let child = cmd.spawn()?;
        let conn = listener.accept_timeout(Duration::from_secs(30))?;
        measure("named", conn, child, round_trips, messages)?;
    }
    Ok(())
}

/// Round trips, then a one-way stream, with `child` at the other end of `conn`.
fn measure(
    label: &str,
    conn: Duplex<Vec<u8>, Vec<u8>>,
    mut child: Child,
    round_trips: usize,
    messages: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut ping = vec![0u8; 64];
    ping[0] = PING;
    for _ in 0..1000 {
        conn.send(&ping)?;
        conn.recv()?;
    }
    let mut rtts = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let start = Instant::now();
        conn.send(&ping)?;
        conn.recv()?;
        rtts.push(start.elapsed());
    }
    rtts.sort();

    let mut data = vec![0u8; 64];
    data[0] = DATA;
    let start = Instant::now();
    for _ in 0..messages {
        conn.send(&data)?;
    }
    conn.send(&vec![END])?;
    let count = conn.recv()?;
    let elapsed = start.elapsed();
    let got = u64::from_le_bytes(count.as_slice().try_into()?);
    if got != messages as u64 {
        return Err(format!("{label}: child counted {got} messages, sent {messages}").into());
    }
    drop(conn);
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{label}: child failed: {status}").into());
    }
    println!(
        "{:<12} {:>14.0} {:>12} {:>12}",
        label,
        messages as f64 / elapsed.as_secs_f64(),
        micros(rtts[rtts.len() / 2]),
        micros(rtts[rtts.len() * 99 / 100]),
    );
    Ok(())
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let conn: Duplex<Vec<u8>, Vec<u8>> = match std::env::var(NAME_ENV) {
        #[cfg(feature = "named")]
        Ok(name) => conduit::named::connect_timeout(&name, Duration::from_secs(30))?,
        _ => conduit::adopt("conn")?,
    };
    let mut count = 0u64;
    for msg in conn.iter() {
        let msg = msg?;
        match msg.first() {
            Some(&PING) => conn.send(&msg)?,
            Some(&DATA) => count += 1,
            Some(&END) => {
                conn.send(&count.to_le_bytes().to_vec())?;
                count = 0;
            }
            _ => return Err("unexpected message".into()),
        }
    }
    Ok(())
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
