//! `soak`: numbered, checksummed messages one-way and echoed, raw and typed,
//! on every transport; counts lost / duplicated / reordered / corrupt ones.

use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

use conduit::{ErrorKind, Receiver};

use crate::{
    child::COUNT_ENV,
    link::{self, Link},
    table,
    wire::{self, SoakMsg, Tracker, Typed},
};

/// A receiver that gets nothing for this long reports a stall.
const STALL: Duration = Duration::from_secs(60);

/// What a receiver reports.
pub struct Received {
    /// The counts.
    pub tracker: Tracker,
    /// From the first message to the end of the stream.
    pub elapsed: Duration,
    /// An error that ended the stream early.
    pub error: Option<String>,
}

/// After the last message, duplicates are looked for this long.
const TAIL: Duration = Duration::from_millis(200);

/// Receives messages `0..n` until all arrived (then for [`TAIL`] more, to
/// catch duplicates) or the sender is gone. (A receiver cannot wait for the
/// end of the stream alone: on socketpair and named connections, the two
/// halves of a `Duplex` share one socket, so dropping the sending half does
/// not end the peer's stream while the receiving half lives.)
pub fn receive<M: SoakMsg>(rx: &Receiver<M>, n: u64) -> Received {
    let mut tracker = Tracker::new(n);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let error = loop {
        match rx.recv_timeout(STALL) {
            Ok(m) => {
                last = Instant::now();
                first.get_or_insert(last);
                tracker.add(&m);
                if tracker.complete() {
                    break drain(rx, &mut tracker);
                }
            }
            Err(e) if e.kind() == ErrorKind::Decode => tracker.add_undecodable(),
            Err(e) if e.is_disconnected() => break None,
            Err(e) if e.is_timeout() => break Some(format!("stalled: nothing for {STALL:?}")),
            Err(e) => break Some(format!("recv: {e}")),
        }
    };
    Received {
        elapsed: first.map_or(Duration::ZERO, |f| last - f),
        tracker,
        error,
    }
}

/// Counts what arrives within [`TAIL`] after the last message.
fn drain<M: SoakMsg>(rx: &Receiver<M>, tracker: &mut Tracker) -> Option<String> {
    loop {
        match rx.recv_timeout(TAIL) {
            Ok(m) => tracker.add(&m),
            Err(e) if e.kind() == ErrorKind::Decode => tracker.add_undecodable(),
            Err(e) if e.is_disconnected() || e.is_timeout() => return None,
            Err(e) => return Some(format!("recv after the last message: {e}")),
        }
    }
}

/// The child's report on one line of stdout.
pub fn report_line(r: &Received) -> String {
    let t = &r.tracker;
    format!(
        "soak-report {} {} {} {} {} {} {} {}",
        t.received,
        t.dup,
        t.reordered,
        t.corrupt,
        t.lost(),
        t.bytes,
        r.elapsed.as_nanos(),
        r.error.as_deref().unwrap_or("-")
    )
}

/// One table row.
struct Row {
    transport: &'static str,
    mode: &'static str,
    messages: u64,
    lost: u64,
    dup: u64,
    reordered: u64,
    corrupt: u64,
    bytes: u64,
    elapsed: Duration,
    note: Option<String>,
}

impl Row {
    fn new(link: Link, mode: &'static str, messages: u64) -> Row {
        Row {
            transport: link.name(),
            mode,
            messages,
            lost: 0,
            dup: 0,
            reordered: 0,
            corrupt: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            note: None,
        }
    }

    fn failed(&self) -> bool {
        self.lost + self.dup + self.reordered + self.corrupt > 0 || self.note.is_some()
    }

    fn with_received(mut self, r: &Received) -> Row {
        let t = &r.tracker;
        (
            self.lost,
            self.dup,
            self.reordered,
            self.corrupt,
            self.bytes,
        ) = (t.lost(), t.dup, t.reordered, t.corrupt, t.bytes);
        self.elapsed = r.elapsed;
        self.note = r.error.clone();
        self
    }

    fn cells(&self) -> Vec<String> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        vec![
            self.transport.to_owned(),
            self.mode.to_owned(),
            self.messages.to_string(),
            self.lost.to_string(),
            self.dup.to_string(),
            self.reordered.to_string(),
            self.corrupt.to_string(),
            format!("{:.0}", (self.messages - self.lost) as f64 / secs),
            format!("{:.1}", self.bytes as f64 / secs / 1e6),
            self.note.clone().unwrap_or_default(),
        ]
    }
}

/// Runs the soak; true when no defect was found.
pub fn run(links: &[Link], messages: u64, seed: u64) -> Result<bool, String> {
    let typed = (messages / 10).max(1);
    println!(
        "soak: {messages} raw and {typed} typed messages per transport and direction, seed {seed}"
    );
    let pattern = wire::pattern(seed);
    let mut rows = Vec::new();
    for &link in links {
        for row in [
            one_way::<Vec<u8>>(link, messages, seed, &pattern),
            echo::<Vec<u8>>(link, messages, seed, &pattern),
            one_way::<Typed>(link, typed, seed, &pattern),
            echo::<Typed>(link, typed, seed, &pattern),
        ] {
            let failed = row.failed();
            let cells = row.cells();
            println!(
                "  {:<10} {:<14} {:>9} msg/s {:>7} MB/s{}",
                cells[0],
                cells[1],
                cells[7],
                cells[8],
                if failed { "  DEFECT" } else { "" }
            );
            rows.push(row);
        }
    }
    println!();
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    table::print(
        &[
            "transport",
            "mode",
            "messages",
            "lost",
            "dup",
            "reordered",
            "corrupt",
            "msg/s",
            "MB/s",
        ],
        2,
        &cells,
    );
    let failed = rows.iter().filter(|r| r.failed()).count();
    if failed > 0 {
        println!("\nsoak: {failed} row(s) with defects (seed {seed})");
    }
    Ok(failed == 0)
}

/// Sends messages `0..n` (sizes from `seed`) through `send`.
fn send_all<M: SoakMsg>(
    n: u64,
    seed: u64,
    pattern: &[u8],
    mut send: impl FnMut(&M) -> conduit::Result<()>,
) -> Option<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for seq in 0..n {
        let len = wire::body_len(&mut rng);
        if let Err(e) = send(&M::make(seq, wire::body(pattern, seq, len))) {
            return Some(format!("send #{seq}: {e}"));
        }
    }
    None
}

fn one_way<M: SoakMsg>(link: Link, n: u64, seed: u64, pattern: &[u8]) -> Row {
    let mode = M::MODES[0];
    let row = Row::new(link, mode, n);
    let role = if mode.starts_with("typed") {
        "soak-sink-typed"
    } else {
        "soak-sink-raw"
    };
    let mut cmd = match link::command(role) {
        Ok(cmd) => cmd,
        Err(e) => {
            return Row {
                note: Some(e),
                ..row
            }
        }
    };
    cmd.env(COUNT_ENV, n.to_string()).stdout(Stdio::piped());
    let (mut child, tx) = match link::spawn_receiver::<M>(link, cmd) {
        Ok(x) => x,
        Err(e) => {
            return Row {
                note: Some(e),
                ..row
            }
        }
    };
    let send_error = send_all::<M>(n, seed, pattern, |m| tx.send(m));
    drop(tx);
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let status = child.wait();
    let mut row = match parse_report(&out, n) {
        Some(r) => row.with_received(&r),
        None => Row {
            lost: n,
            note: Some(format!("no report from the receiver ({status:?})")),
            ..row
        },
    };
    if let Some(e) = send_error {
        row.note = Some(e);
    }
    row
}

fn parse_report(out: &str, n: u64) -> Option<Received> {
    let line = out.lines().find(|l| l.starts_with("soak-report "))?;
    let mut words = line.split(' ').skip(1);
    let mut num = || words.next()?.parse::<u64>().ok();
    let (received, dup, reordered, corrupt, lost, bytes, nanos) =
        (num()?, num()?, num()?, num()?, num()?, num()?, num()?);
    let error = line.splitn(9, ' ').nth(8).filter(|e| *e != "-");
    let mut tracker = Tracker::new(0);
    tracker.received = received;
    tracker.dup = dup;
    tracker.reordered = reordered;
    tracker.corrupt = corrupt;
    tracker.bytes = bytes;
    // `lost` is n minus what the receiver saw; rebuild a tracker that says so.
    tracker.set_lost(n, lost);
    Some(Received {
        tracker,
        elapsed: Duration::from_nanos(nanos),
        error: error.map(str::to_owned),
    })
}

fn echo<M: SoakMsg>(link: Link, n: u64, seed: u64, pattern: &[u8]) -> Row {
    let mode = M::MODES[1];
    let row = Row::new(link, mode, n);
    let role = if mode.starts_with("typed") {
        "soak-echo-typed"
    } else {
        "soak-echo-raw"
    };
    let spawned = link::command(role).and_then(|cmd| link::spawn_duplex::<M>(link, cmd));
    let (mut child, conn) = match spawned {
        Ok(x) => x,
        Err(e) => {
            return Row {
                note: Some(e),
                ..row
            }
        }
    };
    let (tx, rx) = conn.split();
    let (send_error, received) = std::thread::scope(|s| {
        let sender = s.spawn(move || send_all::<M>(n, seed, pattern, |m| tx.send(m)));
        let received = receive(&rx, n);
        // The echoing child stops when this end is gone.
        drop(rx);
        let send_error = sender
            .join()
            .unwrap_or_else(|_| Some("the sending thread panicked".to_owned()));
        (send_error, received)
    });
    let _ = child.wait();
    let mut row = row.with_received(&received);
    if let Some(e) = send_error {
        row.note = Some(e);
    }
    row
}
