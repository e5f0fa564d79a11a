//! The message layout every system uses, the two link traits (bytes and
//! typed), and the parent and child sides of the workloads written once over
//! them.
//!
//! Byte messages (any size `n`, at least 64):
//!
//! | offset | content |
//! |---|---|
//! | 0 | tag: [`PING`], [`DATA`], [`END`] or [`REPORT`] |
//! | 8..16 | sequence number, `u64` little-endian |
//! | `k * 4096` for `k >= 1`, below `n - 1` | `(seq + k) as u8` |
//! | `n - 1` | `(seq as u8) ^ 0xA5` |
//!
//! The receiver checks the length, the sequence number (which must count up
//! from 0 in each repetition, so loss, duplication and reordering are caught)
//! and those sentinel bytes: one byte per 4 KiB page, cheap next to the copy.
//! After the data messages the sender sends [`END`] and the receiver answers
//! with a 64-byte [`REPORT`]: how many messages it got and how many were bad.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::plan::{Kind, Workload};
use crate::stats::Rep;
use crate::{err, Budget, Res};

/// Echo this message back.
pub const PING: u8 = 1;
/// Count and check this message.
pub const DATA: u8 = 2;
/// The repetition is over: answer with a [`REPORT`].
pub const END: u8 = 3;
/// The receiver's count (`seq`) and bad-message count (bytes 16..24).
pub const REPORT: u8 = 4;
/// The length of a [`REPORT`] byte message.
pub const REPORT_LEN: usize = 64;
/// Round-trip samples kept per repetition at most.
const MAX_SAMPLES: usize = 4_000_000;
/// The page size of the sentinel bytes.
const PAGE: usize = 4096;

/// Writes tag, sequence number and sentinels into `msg`.
pub fn stamp(msg: &mut [u8], tag: u8, seq: u64) {
    let n = msg.len();
    msg[0] = tag;
    msg[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut off = PAGE;
    let mut k = 1u64;
    while off < n - 1 {
        msg[off] = seq.wrapping_add(k) as u8;
        off += PAGE;
        k += 1;
    }
    msg[n - 1] = (seq as u8) ^ 0xA5;
}

/// True when `msg` has length `len` and the sentinels of sequence number `seq`.
pub fn check(msg: &[u8], len: usize, seq: u64) -> bool {
    if msg.len() != len || len < 16 || msg[8..16] != seq.to_le_bytes() {
        return false;
    }
    let mut off = PAGE;
    let mut k = 1u64;
    while off < len - 1 {
        if msg[off] != seq.wrapping_add(k) as u8 {
            return false;
        }
        off += PAGE;
        k += 1;
    }
    msg[len - 1] == (seq as u8) ^ 0xA5
}

/// The sequence number of a message.
pub fn seq_of(msg: &[u8]) -> u64 {
    msg.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// A two-way byte link between the two processes.
pub trait BytesLink {
    /// Sends one message. (`&Vec<u8>`: conduit's `Sender<Vec<u8>>::send`
    /// takes one, and this keeps its raw path free of copies.)
    #[allow(clippy::ptr_arg, reason = "conduit's Sender<Vec<u8>> takes &Vec<u8>")]
    fn send(&mut self, msg: &Vec<u8>) -> Res<()>;

    /// Receives one message into `buf`. Links without framing read exactly
    /// `len` bytes; framed links ignore `len`. `Ok(false)`: the peer is gone.
    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> Res<bool>;
}

/// The typed message: a small struct, about 64 B as CBOR.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Sample {
    /// [`PING`], [`DATA`], [`END`] or [`REPORT`].
    pub kind: u8,
    /// Sequence number (in a report: the count).
    pub seq: u64,
    /// Some float (in a report: the number of bad messages).
    pub value: f64,
    /// Some text.
    pub label: String,
}

/// The label every typed message carries.
pub const LABEL: &str = "conduit-bench typed sample";

impl Sample {
    /// A message of `kind` with `seq`.
    pub fn new(kind: u8, seq: u64) -> Sample {
        Sample {
            kind,
            seq,
            value: seq as f64 * 0.1,
            label: LABEL.to_owned(),
        }
    }

    /// Sets kind and sequence number without allocating.
    pub fn set(&mut self, kind: u8, seq: u64) {
        self.kind = kind;
        self.seq = seq;
        self.value = seq as f64 * 0.1;
    }

    /// The CBOR size of a typed message with a large sequence number.
    pub fn cbor_len() -> usize {
        let mut buf = Vec::new();
        match ciborium::into_writer(&Sample::new(DATA, 1_000_000), &mut buf) {
            Ok(()) => buf.len(),
            Err(_) => 0,
        }
    }
}

/// A two-way typed link between the two processes.
pub trait TypedLink {
    /// Sends one message.
    fn send(&mut self, msg: &Sample) -> Res<()>;
    /// Receives one message; `Ok(None)`: the peer is gone.
    fn recv(&mut self) -> Res<Option<Sample>>;
}

fn gone() -> Box<dyn std::error::Error + Send + Sync> {
    err("the child closed the connection early")
}

/// Runs `once` until `dur` has passed; the number of calls.
fn for_duration(dur: Duration, mut once: impl FnMut() -> Res<()>) -> Res<u64> {
    let start = Instant::now();
    let mut n = 0;
    loop {
        once()?;
        n += 1;
        if start.elapsed() >= dur {
            return Ok(n);
        }
    }
}

/// Times round trips: `once(seq)` does one; warm-up, then the repetitions.
pub fn time_round_trips(b: &Budget, mut once: impl FnMut(u64) -> Res<()>) -> Res<Vec<Rep>> {
    let mut seq = 0u64;
    for_duration(b.warmup, || {
        seq += 1;
        once(seq)
    })?;
    let mut reps = Vec::with_capacity(b.reps);
    let mut samples: Vec<u64> = Vec::new();
    for _ in 0..b.reps {
        samples.clear();
        let start = Instant::now();
        let mut prev = start;
        while prev.duration_since(start) < b.rep && samples.len() < MAX_SAMPLES {
            seq += 1;
            once(seq)?;
            let now = Instant::now();
            samples.push(now.duration_since(prev).as_nanos() as u64);
            prev = now;
        }
        reps.push(Rep::latency(&mut samples));
    }
    Ok(reps)
}

/// Times one-way streams: `run(dur)` sends for about `dur` and returns the
/// message count and the time until the receiver's report arrived.
pub fn time_streams(
    b: &Budget,
    w: Workload,
    mut run: impl FnMut(Duration) -> Res<(u64, Duration)>,
) -> Res<Vec<Rep>> {
    run(b.warmup)?;
    let mut reps = Vec::with_capacity(b.reps);
    for _ in 0..b.reps {
        let (n, elapsed) = run(b.rep)?;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let value = match w.kind() {
            Kind::Bandwidth => n as f64 * w.size() as f64 / secs,
            _ => n as f64 / secs,
        };
        reps.push(Rep::rate(value, n));
    }
    Ok(reps)
}

/// How many messages to send between clock reads.
fn clock_every(size: usize) -> u64 {
    if size <= 1024 {
        64
    } else {
        1
    }
}

/// Checks a receiver's report against the number of messages sent.
pub fn check_report(sent: u64, got: u64, bad: u64) -> Res<()> {
    if got != sent || bad != 0 {
        return Err(err(format!(
            "the receiver got {got} messages ({bad} bad) of {sent} sent"
        )));
    }
    Ok(())
}

/// The parent side of a byte workload.
pub fn parent_bytes(link: &mut dyn BytesLink, w: Workload, b: &Budget) -> Res<Vec<Rep>> {
    match w.kind() {
        Kind::Latency => {
            let mut msg = vec![0u8; 64];
            let mut reply = Vec::with_capacity(64);
            time_round_trips(b, |seq| {
                stamp(&mut msg, PING, seq);
                link.send(&msg)?;
                if !link.recv(&mut reply, 64)? {
                    return Err(gone());
                }
                if reply.first() != Some(&PING) || !check(&reply, 64, seq) {
                    return Err(err(format!("bad echo for round trip {seq}")));
                }
                Ok(())
            })
        }
        Kind::Rate | Kind::Bandwidth => {
            let size = w.size();
            let mut msg = vec![0u8; size];
            let mut report = Vec::with_capacity(REPORT_LEN);
            let every = clock_every(size);
            time_streams(b, w, |dur| {
                let start = Instant::now();
                let mut n = 0u64;
                loop {
                    stamp(&mut msg, DATA, n);
                    link.send(&msg)?;
                    n += 1;
                    if n.is_multiple_of(every) && start.elapsed() >= dur {
                        break;
                    }
                }
                stamp(&mut msg, END, n);
                link.send(&msg)?;
                if !link.recv(&mut report, REPORT_LEN)? {
                    return Err(gone());
                }
                let elapsed = start.elapsed();
                if report.first() != Some(&REPORT) || report.len() < 24 {
                    return Err(err("bad report"));
                }
                let bad = u64::from_le_bytes(report[16..24].try_into()?);
                check_report(n, seq_of(&report), bad)?;
                Ok((n, elapsed))
            })
        }
    }
}

/// The child side of a byte workload: echoes pings, counts and checks data,
/// reports on END, returns when the parent is gone.
pub fn child_bytes(link: &mut dyn BytesLink, w: Workload) -> Res<()> {
    let size = w.size();
    let mut buf = Vec::with_capacity(size);
    let mut report = vec![0u8; REPORT_LEN];
    let (mut count, mut bad) = (0u64, 0u64);
    while link.recv(&mut buf, size)? {
        match buf.first() {
            Some(&PING) => link.send(&buf)?,
            Some(&DATA) => {
                if !check(&buf, size, count) {
                    bad += 1;
                }
                count += 1;
            }
            Some(&END) => {
                report.fill(0);
                report[0] = REPORT;
                report[8..16].copy_from_slice(&count.to_le_bytes());
                report[16..24].copy_from_slice(&bad.to_le_bytes());
                link.send(&report)?;
                (count, bad) = (0, 0);
            }
            _ => return Err(err("unexpected message")),
        }
    }
    Ok(())
}

/// The parent side of a typed workload.
pub fn parent_typed(link: &mut dyn TypedLink, w: Workload, b: &Budget) -> Res<Vec<Rep>> {
    let mut msg = Sample::new(PING, 0);
    match w.kind() {
        Kind::Latency => time_round_trips(b, |seq| {
            msg.set(PING, seq);
            link.send(&msg)?;
            let reply = link.recv()?.ok_or_else(gone)?;
            if reply != msg {
                return Err(err(format!("bad echo for round trip {seq}")));
            }
            Ok(())
        }),
        Kind::Rate | Kind::Bandwidth => time_streams(b, w, |dur| {
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                msg.set(DATA, n);
                link.send(&msg)?;
                n += 1;
                if n.is_multiple_of(64) && start.elapsed() >= dur {
                    break;
                }
            }
            msg.set(END, n);
            link.send(&msg)?;
            let report = link.recv()?.ok_or_else(gone)?;
            let elapsed = start.elapsed();
            if report.kind != REPORT {
                return Err(err("bad report"));
            }
            check_report(n, report.seq, report.value as u64)?;
            Ok((n, elapsed))
        }),
    }
}

/// The child side of a typed workload.
pub fn child_typed(link: &mut dyn TypedLink) -> Res<()> {
    let (mut count, mut bad) = (0u64, 0u64);
    while let Some(msg) = link.recv()? {
        match msg.kind {
            PING => link.send(&msg)?,
            DATA => {
                if msg.seq != count || msg.label.len() != LABEL.len() {
                    bad += 1;
                }
                count += 1;
            }
            END => {
                let mut report = Sample::new(REPORT, count);
                report.value = bad as f64;
                link.send(&report)?;
                (count, bad) = (0, 0);
            }
            _ => return Err(err("unexpected message")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_and_check() {
        for n in [64usize, 4096, 4097, 64 << 10, 1 << 20] {
            let mut m = vec![0u8; n];
            stamp(&mut m, DATA, 300);
            assert!(check(&m, n, 300), "{n}");
            assert!(!check(&m, n, 301));
            assert!(!check(&m[..n - 1], n, 300));
            if n > 8192 {
                m[8192] ^= 1;
                assert!(!check(&m, n, 300));
            }
        }
    }

    #[test]
    fn typed_message_is_about_64_bytes() {
        let n = Sample::cbor_len();
        assert!((56..=72).contains(&n), "{n}");
    }
}
