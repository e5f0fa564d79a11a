//! Unit tests of the ring: wrap-around, messages larger than the ring,
//! validation of corrupted indices and records, disconnection, polling.

use std::thread;
use std::time::{Duration, Instant};

use conduit_core::{ErrorKind, FrameReceiver, FrameSender, TestHooks};

use crate::layout::{self, kind, Word};
use crate::{channel, ShmConfig, ShmReceiver, ShmSender};

fn small(cap: usize) -> ShmConfig {
    ShmConfig::default()
        .with_capacity(cap)
        .with_spin(Duration::from_micros(5))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand_like(seed);
    (0..len).map(|_| rng()).collect()
}

/// A tiny xorshift so that the unit tests need no extra dependency.
fn fastrand_like(seed: u64) -> impl FnMut() -> u8 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }
}

fn recv(rx: &mut ShmReceiver) -> conduit_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    rx.recv_frame(&mut out, Some(Instant::now() + Duration::from_secs(20)))?;
    Ok(out)
}

fn recv_lent(rx: &mut ShmReceiver) -> conduit_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    rx.recv_with(Some(Instant::now() + Duration::from_secs(20)), &mut |f| {
        out.extend_from_slice(f)
    })?;
    Ok(out)
}

fn word(tx: &mut ShmSender, w: Word, value: u32) {
    tx.poke_shared(w.offset() as u64, &value.to_ne_bytes())
        .unwrap();
}

fn kind_of(r: conduit_core::Result<Vec<u8>>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {} bytes", v.len()),
        Err(e) => e.kind(),
    }
}

#[test]
fn wraparound_in_one_thread_keeps_order_and_content() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    // Sizes that do not divide the ring, so records and padding land everywhere.
    for i in 0..5000u64 {
        let len = (i as usize * 37) % 1500;
        let msg = pattern(len, i);
        tx.send_frame(&msg).unwrap();
        let got = if i % 2 == 0 {
            recv(&mut rx).unwrap()
        } else {
            recv_lent(&mut rx).unwrap()
        };
        assert_eq!(got, msg, "message {i} of {len} bytes");
    }
    assert!(!rx.poll_frame(Some(Instant::now())).unwrap());
}

#[test]
fn wraparound_across_threads_with_a_full_ring() {
    let (mut tx, mut rx) = channel(small(4096).with_spin(Duration::ZERO)).unwrap();
    let n = 20_000u64;
    let producer = thread::spawn(move || {
        for i in 0..n {
            let len = (i as usize * 131) % 2000;
            tx.send_frame(&pattern(len, i)).unwrap();
        }
    });
    for i in 0..n {
        let len = (i as usize * 131) % 2000;
        assert_eq!(recv(&mut rx).unwrap(), pattern(len, i), "message {i}");
    }
    producer.join().unwrap();
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
}

#[test]
fn messages_larger_than_the_ring_are_streamed_and_reassembled() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    let sizes = [2033usize, 2048, 4096, 10_000, 1 << 20, 3 << 20, 5];
    let producer = thread::spawn(move || {
        for (i, len) in sizes.iter().enumerate() {
            tx.send_frame(&pattern(*len, i as u64)).unwrap();
        }
    });
    for (i, len) in sizes.iter().enumerate() {
        let got = if i % 2 == 0 {
            recv(&mut rx).unwrap()
        } else {
            recv_lent(&mut rx).unwrap()
        };
        assert_eq!(got.len(), *len);
        assert!(got == pattern(*len, i as u64), "message {i} differs");
    }
    producer.join().unwrap();
}

#[test]
fn too_large_for_max_frame_is_refused_by_the_sender_and_the_channel_survives() {
    let (mut tx, mut rx) = channel(small(4096).with_max_frame(100)).unwrap();
    let e = tx.send_frame(&[0; 101]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    tx.send_frame(&[1; 100]).unwrap();
    assert_eq!(recv(&mut rx).unwrap(), [1; 100]);
}

#[test]
fn dropping_the_sender_delivers_everything_then_disconnects() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_frame(b"a").unwrap();
    // Whole records only: with nobody receiving, a streamed one would block.
    tx.send_frame(&[9; 2000]).unwrap();
    drop(tx);
    assert_eq!(recv(&mut rx).unwrap(), b"a");
    assert_eq!(recv(&mut rx).unwrap(), [9; 2000]);
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
}

#[test]
fn dropping_a_parked_receiver_wakes_a_sender_blocked_on_a_full_ring() {
    let (mut tx, rx) = channel(small(4096)).unwrap();
    let start = Instant::now();
    let sender = thread::spawn(move || loop {
        if let Err(e) = tx.send_frame(&[0; 1000]) {
            return e;
        }
    });
    thread::sleep(Duration::from_millis(100));
    drop(rx);
    let e = sender.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::Disconnected);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn dropping_the_sender_wakes_a_parked_receiver_at_once() {
    let cfg = small(4096).with_liveness_interval(Duration::from_secs(60));
    let (tx, mut rx) = channel(cfg).unwrap();
    let waiter = thread::spawn(move || {
        let start = Instant::now();
        let r = recv(&mut rx);
        (r.map(|_| ()), start.elapsed())
    });
    thread::sleep(Duration::from_millis(50));
    drop(tx);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Disconnected);
    // Not rescued by the (one minute) liveness interval.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn deadlines_give_timeout_and_poll_false() {
    let (_tx, mut rx) = channel(small(4096)).unwrap();
    let mut out = Vec::new();
    let e = rx.recv_frame(&mut out, Some(Instant::now())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let start = Instant::now();
    let e = rx
        .recv_frame(&mut out, Some(Instant::now() + Duration::from_millis(30)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert!(!rx
        .poll_frame(Some(Instant::now() + Duration::from_millis(5)))
        .unwrap());
}

#[test]
fn poll_is_true_only_once_the_record_is_published() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    // A whole record with its kind word still EMPTY: written, not published.
    let mut rec = layout::header(5, kind::EMPTY, 0).to_vec();
    rec.extend_from_slice(b"hello");
    rec.resize(32, 0);
    tx.send_unframed(&rec).unwrap();
    assert!(!rx.poll_frame(Some(Instant::now())).unwrap());
    assert!(!rx
        .poll_frame(Some(Instant::now() + Duration::from_millis(5)))
        .unwrap());
    // The sender stores the kind last; the ring starts at DATA_OFFSET.
    let kind_at = (layout::DATA_OFFSET as u32 + layout::KIND_AT) as u64;
    tx.poke_shared(kind_at, &kind::WHOLE.to_ne_bytes()).unwrap();
    assert!(rx.poll_frame(Some(Instant::now())).unwrap());
    assert_eq!(recv(&mut rx).unwrap(), b"hello");
    assert!(!rx.poll_frame(Some(Instant::now())).unwrap());
}

#[test]
fn a_stale_record_from_an_earlier_lap_is_not_taken_for_a_new_one() {
    // Messages of one size fill the ring lap after lap; each lap's records sit
    // where the previous lap's were, so a slot that the sender failed to mark
    // empty would be read again.
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    for i in 0..200u32 {
        tx.send_frame(&i.to_ne_bytes()).unwrap();
        assert_eq!(recv(&mut rx).unwrap(), i.to_ne_bytes());
        assert!(
            !rx.poll_frame(Some(Instant::now())).unwrap(),
            "after message {i}"
        );
    }
}

#[test]
fn poll_consumes_pieces_until_a_whole_message_is_assembled() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    let first = [layout::header(3, kind::FIRST, 6).to_vec(), b"abc".to_vec()].concat();
    tx.send_unframed(&[first, vec![0; 13]].concat()).unwrap();
    assert!(!rx.poll_frame(Some(Instant::now())).unwrap());
    let last = [layout::header(3, kind::LAST, 0).to_vec(), b"def".to_vec()].concat();
    tx.send_unframed(&[last, vec![0; 13]].concat()).unwrap();
    assert!(rx.poll_frame(Some(Instant::now())).unwrap());
    assert_eq!(recv_lent(&mut rx).unwrap(), b"abcdef");
}

#[test]
fn oversized_record_is_too_large_without_allocating_and_closes() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_unframed(&layout::header(2 << 30, kind::WHOLE, 0))
        .unwrap();
    let e = recv(&mut rx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert!(e.to_string().contains("2147483648"), "{e}");
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::TooLarge);
    // The sender learns that the receiver gave up.
    assert_eq!(
        tx.send_frame(b"x").unwrap_err().kind(),
        ErrorKind::Disconnected
    );
}

#[test]
fn oversized_first_piece_total_is_too_large() {
    let (mut tx, mut rx) = channel(small(4096).with_max_frame(1000)).unwrap();
    tx.send_unframed(&[layout::header(16, kind::FIRST, 1001).to_vec(), vec![0; 16]].concat())
        .unwrap();
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::TooLarge);
}

#[test]
fn corrupted_records_are_protocol_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown kind", layout::header(1, 99, 0).to_vec()),
        (
            "record past the ring's end",
            layout::header(4090, kind::WHOLE, 0).to_vec(),
        ),
        (
            "piece outside a message",
            layout::header(1, kind::MORE, 0).to_vec(),
        ),
        (
            "last piece outside a message",
            layout::header(1, kind::LAST, 0).to_vec(),
        ),
        (
            "first piece longer than its message",
            layout::header(32, kind::FIRST, 16).to_vec(),
        ),
        (
            "pieces that overrun the total",
            [
                layout::header(16, kind::FIRST, 20).to_vec(),
                vec![0; 16],
                layout::header_at(16, kind::MORE, 0, 32).to_vec(),
                vec![0; 16],
            ]
            .concat(),
        ),
        (
            "a last piece that falls short",
            [
                layout::header(16, kind::FIRST, 40).to_vec(),
                vec![0; 16],
                layout::header_at(16, kind::LAST, 0, 32).to_vec(),
                vec![0; 16],
            ]
            .concat(),
        ),
        (
            "a new message inside a message",
            [
                layout::header(16, kind::FIRST, 40).to_vec(),
                vec![0; 16],
                layout::header_at(1, kind::WHOLE, 0, 32).to_vec(),
                vec![0; 16],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let (mut tx, mut rx) = channel(small(4096)).unwrap();
        let mut padded = bytes.clone();
        padded.resize(bytes.len().max(64), 0);
        tx.send_unframed(&padded).unwrap();
        let r = recv(&mut rx);
        assert_eq!(kind_of(r), ErrorKind::Protocol, "{what}");
        assert_eq!(
            kind_of(recv(&mut rx)),
            ErrorKind::Protocol,
            "{what}: stays closed"
        );
    }
}

#[test]
fn corrupted_head_is_a_protocol_error_for_the_sender() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_frame(&[1; 100]).unwrap();
    recv(&mut rx).unwrap();
    // The head jumps past the tail: the sender must not believe it.
    rx.poke_shared(Word::Head.offset() as u64, &5000u32.to_ne_bytes())
        .unwrap();
    let e = loop {
        // Fill the ring so that the sender has to look at the head.
        if let Err(e) = tx.send_frame(&[2; 1000]) {
            break e;
        }
    };
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

#[test]
fn bad_segment_header_is_a_protocol_error() {
    let cases: [(Word, u32, &str); 5] = [
        (Word::Magic, 0x5054_5448, "not a conduit endpoint"),
        (Word::Version, 5, "protocol v5"),
        (Word::Codec, 9, "codec id 9"),
        (Word::MaxFrame, 1024, "max_frame"),
        (Word::Capacity, 8192, "corrupted"),
    ];
    for (w, value, hint) in cases {
        let (mut tx, mut rx) = channel(small(4096)).unwrap();
        tx.send_frame(b"ok").unwrap();
        assert_eq!(recv(&mut rx).unwrap(), b"ok");
        word(&mut tx, w, value);
        tx.send_frame(b"after").unwrap();
        let e = recv(&mut rx).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{w:?}: {e}");
        assert!(e.to_string().contains(hint), "{w:?}: {e} lacks {hint:?}");
    }
}

#[test]
fn truncated_message_when_the_sender_goes_is_protocol_then_disconnected() {
    // Records are published whole, so a message is cut short only between
    // pieces: the first piece of 100 bytes, then the sender is gone.
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_unframed(&[layout::header(16, kind::FIRST, 100).to_vec(), vec![7; 16]].concat())
        .unwrap();
    drop(tx);
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Protocol);
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
}

/// Scribbles random bytes over the whole segment (header, indices, records)
/// while another thread receives: the receiver must only ever see data or
/// errors, and never hang past its deadline.
#[test]
fn random_scribbling_never_panics_or_hangs() {
    for round in 0..40u64 {
        let cfg = small(4096).with_max_frame(1 << 16);
        let (mut tx, mut rx) = channel(cfg).unwrap();
        let receiver = thread::spawn(move || {
            // [data, timeouts, other errors]
            let mut outcomes = [0usize; 3];
            let start = Instant::now();
            loop {
                let deadline = Some(Instant::now() + Duration::from_secs(1));
                let mut out = Vec::new();
                let r = if outcomes[0] % 2 == 0 {
                    rx.recv_frame(&mut out, deadline)
                } else {
                    rx.recv_with(deadline, &mut |f| out.extend_from_slice(f))
                };
                match r {
                    Ok(()) => outcomes[0] += 1,
                    Err(e) if e.kind() == ErrorKind::Disconnected => break,
                    // A scribbled index can make both sides wait for each
                    // other: the receiver gives up at its deadline (and its
                    // drop releases the sender).
                    Err(e) if e.kind() == ErrorKind::Timeout => {
                        outcomes[1] += 1;
                        break;
                    }
                    Err(_) => {
                        outcomes[2] += 1;
                        break;
                    }
                }
                assert!(start.elapsed() < Duration::from_secs(30), "hang");
            }
            outcomes
        });
        let mut rng = fastrand_like(round * 7919 + 1);
        let mut rand32 = move || u32::from_ne_bytes([rng(), rng(), rng(), rng()]);
        let seg_len = tx.poke_shared(0, &[]).unwrap();
        for i in 0..300u32 {
            let len = (rand32() % 3000) as usize;
            if tx.send_frame(&vec![i as u8; len]).is_err() {
                break;
            }
            let n = 1 + rand32() % 16;
            let junk: Vec<u8> = (0..n).map(|_| rand32() as u8).collect();
            // Half the rounds aim at the control words, the others anywhere.
            let at = if round % 2 == 0 {
                u64::from(rand32()) % 640
            } else {
                u64::from(rand32()) % (seg_len - u64::from(n))
            };
            let _ = tx.poke_shared(at, &junk);
        }
        drop(tx);
        let outcomes = receiver.join().expect("the receiver panicked");
        assert!(outcomes.iter().sum::<usize>() > 0);
    }
}

#[test]
fn export_and_import_carry_the_position() {
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    for i in 0..100u8 {
        tx.send_frame(&[i; 50]).unwrap();
        assert_eq!(recv(&mut rx).unwrap(), [i; 50]);
    }
    tx.send_frame(b"in flight").unwrap();
    let tx_pkg = Box::new(tx).export().unwrap();
    let rx_pkg = Box::new(rx).export().unwrap();
    let mut tx = crate::import_sender(tx_pkg).unwrap();
    let mut rx = crate::import_receiver(rx_pkg).unwrap();
    assert_eq!(recv(&mut rx).unwrap(), b"in flight");
    tx.send_frame(b"after").unwrap();
    assert_eq!(recv(&mut rx).unwrap(), b"after");
}

#[test]
fn import_rejects_bad_parameters() {
    let (tx, _rx) = channel(small(4096)).unwrap();
    let mut pkg = Box::new(tx).export().unwrap();
    pkg.meta[1] = 3000; // not a power of two
    assert_eq!(
        crate::import_sender(pkg).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let (tx, _rx) = channel(small(4096)).unwrap();
    let mut pkg = Box::new(tx).export().unwrap();
    pkg.meta[1] = 1 << 20; // larger than the segment
    assert_eq!(
        crate::import_sender(pkg).unwrap_err().kind(),
        ErrorKind::Protocol
    );
}

#[test]
fn recv_with_lends_a_private_copy_that_the_peer_cannot_change() {
    // Hardening item 9: no reference to peer-writable memory is formed.
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_frame(b"hello").unwrap();
    let payload_at = (layout::DATA_OFFSET as u32 + layout::RECORD_HEADER) as u64;
    let mut seen = Vec::new();
    rx.recv_with(Some(Instant::now() + Duration::from_secs(20)), &mut |f| {
        // The peer scribbles over the payload while it is lent.
        tx.poke_shared(payload_at, b"HELLO").unwrap();
        seen.extend_from_slice(f);
    })
    .unwrap();
    assert_eq!(seen, b"hello");
}

#[test]
fn padding_at_the_ring_start_is_an_error_not_an_endless_loop() {
    // Hardening item 2: before, the receiver skipped a whole lap onto the
    // same padding record forever, at 100% CPU, ignoring its deadline.
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_unframed(&layout::header(0, kind::PAD, 0)).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        let res = rx.recv_frame(&mut out, Some(Instant::now() + Duration::from_millis(50)));
        let _ = done_tx.send(res.map_err(|e| e.kind()));
    });
    let res = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("recv over padding at offset 0 did not return: endless loop");
    assert_eq!(res, Err(ErrorKind::Protocol));
}

#[test]
fn a_consumed_record_is_never_delivered_again() {
    // Hardening item 3: one message, then padding that leads the receiver
    // back to the ring's start, where the consumed message still lies; then
    // the sender closes. Before, the message came back forever.
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    tx.send_frame(b"once").unwrap();
    tx.send_unframed(&layout::header(0, kind::PAD, 0)).unwrap();
    drop(tx);
    assert_eq!(recv(&mut rx).unwrap(), b"once");
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
}

#[test]
fn poll_without_deadline_waits_and_a_gone_sender_counts_as_ready() {
    // Hardening item 5: `None` used to mean "now".
    let (mut tx, mut rx) = channel(small(4096)).unwrap();
    let sender = thread::spawn(move || {
        tx.send_frame(b"late").unwrap();
        tx
    });
    assert!(rx.poll_frame(None).unwrap());
    assert_eq!(recv(&mut rx).unwrap(), b"late");
    drop(sender.join().unwrap());
    assert!(rx.poll_frame(None).unwrap());
    assert_eq!(kind_of(recv(&mut rx)), ErrorKind::Disconnected);
}
