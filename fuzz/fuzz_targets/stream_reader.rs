//! The stream handshake and frame reader fed arbitrary bytes: the input is
//! written to a pipe as it is (no framing), the sender is dropped, and the
//! receiver reads until it reports an error. It must never panic, allocate
//! without bound or hang. The first input byte picks the receiver's maximum
//! frame size (so that small announced lengths also hit `TooLarge`).
#![no_main]

use std::time::{Duration, Instant};

use conduit_core::{FrameConfig, FrameReceiver, TestHooks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    // The pipe buffer (64 KiB or more) takes the whole input without a reader.
    if bytes.len() > 60 * 1024 {
        return;
    }
    let max = [16u32, 1024, 1 << 20, 64 << 20][usize::from(pick % 4)];
    let cfg = FrameConfig::default().with_max_frame(max);
    let Ok((mut tx, mut rx)) = conduit_pipe::channel(cfg) else {
        return;
    };
    let _ = tx.send_unframed(bytes);
    drop(tx);
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let mut out = Vec::new();
    for _ in 0..bytes.len() + 2 {
        match rx.recv_frame(&mut out, deadline) {
            Ok(()) => assert!(out.len() <= max as usize),
            Err(e) => {
                assert!(!e.is_timeout(), "a closed stream timed out: {e}");
                // Closed for good: the next call fails at once too.
                assert!(rx.recv_frame(&mut out, deadline).is_err());
                return;
            }
        }
    }
    panic!("more frames than input bytes");
});
