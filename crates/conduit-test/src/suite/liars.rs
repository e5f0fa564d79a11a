//! The misbehaving peers: a liar child that writes the wire format by hand
//! (docs/wire-format.md for streams, the segment layout in the `conduit-shm`
//! crate documentation for shm) to play a [`Scenario`], and the parent's way
//! of starting it.

use std::process::Command;

use conduit::TestHooks;
use conduit::{Codec, Duplex, FrameSender, Receiver, Sender, Transport};

use super::Scenario;
use crate::msg::Msg;
use crate::{fail, spawn, Failed};

/// The documented handshake (docs/wire-format.md), written by hand.
pub(super) fn handshake(version: u16, codec: u8, max_frame: u32) -> Vec<u8> {
    let mut h = b"CNDT".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.push(codec);
    h.push(0);
    h.extend_from_slice(&max_frame.to_le_bytes());
    h
}

pub(super) const MAX: u32 = conduit::DEFAULT_MAX_FRAME;

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

pub(super) fn child_liar() {
    let scenario = Scenario::from_env();
    let conn: Sender<Vec<u8>> = conduit::adopt("conn").expect("adopt conn");
    let ctl: Duplex<Msg, Msg> = conduit::adopt("ctl").expect("adopt ctl");
    let mut raw = conn.into_raw();
    let stay = if scenario == Scenario::Garbage {
        // Well-framed garbage needs no hand-written wire format: any transport.
        raw.send_frame(&[0xff, 0xfe, 0x1c, 0x00, 0x9f])
            .expect("send garbage");
        let mut ok = Vec::new();
        conduit::Cbor::encode(&Msg::Text("after".into()), &mut ok).expect("encode");
        raw.send_frame(&ok).expect("send after");
        true
    } else if Transport::from_name(raw.transport()) == Some(Transport::Shm) {
        liar_shm(scenario, raw.as_mut(), &ctl)
    } else {
        liar_stream(scenario, raw.as_mut(), &ctl)
    };
    if stay {
        // Stay until the parent is done reading (it drops the control channel).
        while ctl.recv().is_ok() {}
    }
}

/// Plays `scenario` in the stream wire format (docs/wire-format.md), written
/// by hand; false when the child should exit at once.
fn liar_stream(scenario: Scenario, raw: &mut dyn FrameSender, ctl: &Duplex<Msg, Msg>) -> bool {
    let mut write = |b: &[u8]| raw.send_unframed(b).expect("write");
    let good = |v: u16| handshake(v, 1, MAX);
    match scenario {
        Scenario::Huge => {
            write(&good(1));
            write(&(2u32 << 30).to_le_bytes());
            write(&[0u8; 64]);
        }
        Scenario::Truncated => {
            write(&good(1));
            write(&100u32.to_le_bytes());
            write(&[7u8; 10]);
            return false; // exit: the stream ends mid-frame
        }
        Scenario::Magic => {
            write(b"HTTP/1.1 200");
            write(&frame(b"x"));
        }
        Scenario::Version => {
            write(&good(9)); // a version from the future
            write(&frame(b"x"));
        }
        Scenario::Codec => {
            // postcard's id, on a channel the parent reads as CBOR
            write(&handshake(1, 2, MAX));
            write(&frame(b"x"));
        }
        Scenario::MaxFrame => {
            write(&handshake(1, 1, 1024));
            write(&frame(b"x"));
        }
        Scenario::Partial => {
            let mut ok = Vec::new();
            conduit::Cbor::encode(&Msg::Text("whole".into()), &mut ok).expect("encode");
            let whole = [good(1), frame(&ok)].concat();
            let cut = whole.len() - 3;
            write(&whole[..cut]);
            partial_handshake(ctl);
            write(&whole[cut..]);
            ctl.send(&Msg::Text("rest written".into())).expect("status");
        }
        other => panic!("the liar child does not play scenario {}", other.as_str()),
    }
    true
}

fn partial_handshake(ctl: &Duplex<Msg, Msg>) {
    ctl.send(&Msg::Text("partial written".into()))
        .expect("status");
    assert_eq!(ctl.recv().expect("go"), Msg::Text("go".into()));
}

/// An shm ring record, written by hand from the layout in the `conduit-shm`
/// crate documentation: a 16-byte header (`len`, `kind`, `total`, reserved:
/// `u32`s in the machine's byte order), the payload, zero padding to a
/// multiple of 16.
pub(super) fn shm_record(kind: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    shm_record_with_total(kind, len, 0, payload)
}

/// A piece of a message streamed in pieces; a first piece carries the
/// message's `total` length.
fn shm_piece(kind: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    shm_record_with_total(kind, payload.len() as u32, total, payload)
}

fn shm_record_with_total(kind: u32, len: u32, total: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for w in [len, kind, total, 0] {
        r.extend_from_slice(&w.to_ne_bytes());
    }
    r.extend_from_slice(payload);
    r.resize(r.len().div_ceil(16) * 16, 0);
    r
}

/// Record kinds: a whole message, the first and the last piece of one.
const SHM_WHOLE: u32 = 1;
const SHM_FIRST: u32 = 2;
const SHM_LAST: u32 = 4;

/// Overwrites the shm segment header word at `offset` (layout in the
/// `conduit-shm` crate documentation).
fn shm_header_word(raw: &mut dyn FrameSender, offset: u64, value: u32) {
    raw.poke_shared(offset, &value.to_ne_bytes()).expect("poke");
}

/// Plays `scenario` against an shm receiver: records written by hand into the
/// ring (`send_unframed` copies bytes verbatim at the tail and publishes them
/// by storing the first record's kind word last)
/// or a corrupted segment header; false when the child should exit at once.
fn liar_shm(scenario: Scenario, raw: &mut dyn FrameSender, ctl: &Duplex<Msg, Msg>) -> bool {
    match scenario {
        Scenario::Huge => {
            // A whole-message record announcing 2 GiB.
            let mut r = shm_record(SHM_WHOLE, 2 << 30, &[]);
            r.extend_from_slice(&[0u8; 64]);
            raw.send_unframed(&r).expect("write");
        }
        Scenario::Truncated => {
            // Records are published whole (their kind word is stored last),
            // so a message is cut short between pieces: the first piece of a
            // 100-byte message, then the sender is gone.
            let r = shm_piece(SHM_FIRST, 100, &[7u8; 10]);
            raw.send_unframed(&r).expect("write");
            return false; // exit: the message stays incomplete
        }
        Scenario::Magic => {
            shm_header_word(raw, 0, u32::from_le_bytes(*b"HTTP"));
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        Scenario::Version => {
            shm_header_word(raw, 4, 9);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        Scenario::Codec => {
            shm_header_word(raw, 8, 2);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        Scenario::MaxFrame => {
            shm_header_word(raw, 12, 1024);
            // The receiver may notice the header (and give up) before
            // this send: a Disconnected here is fine.
            let _ = raw.send_frame(b"x");
        }
        Scenario::Partial => {
            let mut ok = Vec::new();
            conduit::Cbor::encode(&Msg::Text("whole".into()), &mut ok).expect("encode");
            // The message in two pieces: the first is published, the
            // last (3 bytes) only after the parent has looked.
            let cut = ok.len() - 3;
            let first = shm_piece(SHM_FIRST, ok.len() as u32, &ok[..cut]);
            raw.send_unframed(&first).expect("write");
            partial_handshake(ctl);
            let last = shm_piece(SHM_LAST, 0, &ok[cut..]);
            raw.send_unframed(&last).expect("write");
            ctl.send(&Msg::Text("rest written".into())).expect("status");
        }
        other => panic!("the liar child does not play scenario {}", other.as_str()),
    }
    true
}

/// The liar child, the parent's receiver of its frames, and a control channel.
pub(super) type Liar = (crate::Spawned, Receiver<Msg>, Duplex<Msg, Msg>);

/// Spawns the liar child with `scenario`; returns it with the parent's typed
/// receiver and control channel.
pub(super) fn spawn_liar(t: Transport, scenario: Scenario) -> Result<Liar, Failed> {
    spawn_liar_as("liar", t, scenario)
}

/// Spawns child function `child` with `scenario`, handing it a sender
/// (`conn`) and a control channel (`ctl`); returns it with the parent's
/// typed receiver and control channel.
pub(super) fn spawn_liar_as(child: &str, t: Transport, scenario: Scenario) -> Result<Liar, Failed> {
    let (tx, rx) = t.channel::<Msg>().map_err(fail("channel"))?;
    let (ctl, ctl_child) = t.duplex::<Msg, Msg>().map_err(fail("duplex"))?;
    let child = spawn(child, |cmd: &mut Command| {
        scenario.set(cmd);
        conduit::handoff(cmd, "conn", tx)?;
        conduit::handoff(cmd, "ctl", ctl_child)
    })?;
    Ok((child, rx, ctl))
}
