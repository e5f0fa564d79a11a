//! The shm ring consumer over an arbitrary segment image and scribbles: the
//! input is a list of (offset, bytes) writes. Some are applied to the
//! segment before the first receive, the rest by a second thread while the
//! receiver runs. Every receive must end (message, error or timeout) within
//! its deadline, never panic, never allocate past max_frame.
#![no_main]

use std::time::{Duration, Instant};

use conduit_core::{FrameReceiver, FrameSender, TestHooks};
use conduit_shm::ShmConfig;
use libfuzzer_sys::fuzz_target;

/// Splits the input into (offset, bytes) writes: 2 bytes of offset (scaled
/// to the segment), 1 byte of length, then the bytes.
fn writes(mut data: &[u8], seg_len: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let off = u64::from(u16::from_le_bytes([data[0], data[1]]));
        let len = usize::from(data[2]).min(data.len() - 3);
        let bytes = data[3..3 + len].to_vec();
        data = &data[3 + len..];
        // Header and control words (first 1 KiB) or the ring's start.
        let at = if off & 1 == 0 {
            off % 1024
        } else {
            1024 + off % (seg_len - 1024)
        };
        if at + bytes.len() as u64 <= seg_len {
            out.push((at, bytes));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let cfg = ShmConfig::default()
        .with_capacity(4096)
        .with_max_frame(1 << 16)
        .with_spin(Duration::ZERO)
        .with_liveness_interval(Duration::from_millis(1));
    let Ok((mut tx, mut rx)) = conduit_shm::channel(cfg) else {
        return;
    };
    let _ = tx.send_frame(b"hello");
    let Ok(seg_len) = tx.poke_shared(0, &[]) else {
        return;
    };
    let ws = writes(data, seg_len);
    let (now, later) = ws.split_at(ws.len() / 2);
    for (at, bytes) in now {
        let _ = tx.poke_shared(*at, bytes);
    }
    let later = later.to_vec();
    let scribbler = std::thread::spawn(move || {
        for (at, bytes) in later {
            let _ = tx.poke_shared(at, &bytes);
        }
        tx
    });
    let mut out = Vec::new();
    for i in 0..8 {
        // Mostly non-blocking tries (fast), one short wait.
        let start = Instant::now();
        let wait = if i == 7 {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        let res = rx.recv_frame(&mut out, Some(start + wait));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a receive overran its deadline"
        );
        match res {
            Ok(()) => assert!(out.len() <= 1 << 16),
            Err(e) if e.is_timeout() => {}
            Err(_) => break,
        }
    }
    let _ = scribbler.join();
});
