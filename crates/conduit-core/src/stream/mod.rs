//! Framing for stream transports (pipes, sockets, named pipes).
//!
//! Each direction of a connection starts with a 12-byte handshake written by
//! the sender before its first frame:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..4  | magic `b"CNDT"` |
//! | 4..6  | protocol version, `u16` little-endian (currently 1) |
//! | 6     | codec id (1 = CBOR, 2 = postcard) |
//! | 7     | flags, must be 0 |
//! | 8..12 | maximum frame size, `u32` little-endian |
//!
//! then frames: a `u32` little-endian payload length and the payload. The
//! receiver checks every handshake field against its own configuration and
//! checks each length against its maximum *before* allocating; any mismatch
//! closes the channel with `Protocol` or `TooLarge`. See `docs/wire-format.md`.

use crate::channel::FrameConfig;
use crate::error::{Error, Result};
use crate::handoff::Package;

/// The handshake magic.
pub const MAGIC: [u8; 4] = *b"CNDT";
/// The wire protocol version.
pub const VERSION: u16 = 1;
/// Length of the handshake in bytes.
pub const HANDSHAKE_LEN: usize = 12;
pub(super) const HEADER_LEN: usize = 4;
/// Frames up to this size are copied behind their header and written with one
/// `write`; larger ones are written with a gather write and no copy.
pub(super) const COALESCE_LIMIT: usize = 16 * 1024;
/// Size of the receive buffer: several small frames are read per system call.
pub(super) const READ_BUF: usize = 64 * 1024;
/// The most a receiver sets aside for a frame body before its bytes arrive;
/// larger bodies grow (doubling) as they arrive, so a header announcing a
/// huge frame commits no memory for bytes that never come.
pub(super) const BODY_CHUNK: usize = 1 << 20;
/// A body buffer above this capacity is released once its frame has been
/// delivered, so one large message does not pin its memory.
pub(super) const BODY_KEEP: usize = 2 << 20;

/// Encodes the handshake for `cfg`.
pub fn handshake(cfg: FrameConfig) -> [u8; HANDSHAKE_LEN] {
    let mut h = [0u8; HANDSHAKE_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6] = cfg.codec;
    h[7] = 0;
    h[8..12].copy_from_slice(&cfg.max_frame.to_le_bytes());
    h
}

/// Checks a peer's handshake against our configuration.
pub fn check_handshake(h: &[u8; HANDSHAKE_LEN], cfg: FrameConfig) -> Result<()> {
    if h[0..4] != MAGIC {
        return Err(Error::protocol(format!(
            "bad handshake: magic {:02x?} is not {:?}; the peer is not a conduit endpoint",
            &h[0..4],
            "CNDT"
        )));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(Error::protocol(format!(
            "the peer speaks conduit wire protocol v{version}, this side v{VERSION}: build both with the same conduit version"
        )));
    }
    if h[6] != cfg.codec {
        return Err(Error::protocol(format!(
            "the peer encodes messages with codec id {} ({}), this side expects codec id {} ({}): use the same codec on both sides",
            h[6],
            crate::codec::codec_name(h[6]),
            cfg.codec,
            crate::codec::codec_name(cfg.codec)
        )));
    }
    if h[7] != 0 {
        return Err(Error::protocol(format!(
            "unknown handshake flags {:#04x}",
            h[7]
        )));
    }
    let max = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if max != cfg.max_frame {
        return Err(Error::protocol(format!(
            "the peer's maximum frame size is {max} bytes, ours is {}: configure both ends with the same max_frame",
            cfg.max_frame
        )));
    }
    Ok(())
}

pub(super) fn meta(cfg: FrameConfig, handshake_done: bool) -> Vec<u64> {
    vec![
        cfg.max_frame as u64,
        cfg.codec as u64,
        handshake_done as u64,
    ]
}

/// Reads `[max_frame, codec, handshake_done]` back from a package's meta.
pub(super) fn parse_meta(meta: &[u64]) -> Result<(FrameConfig, bool)> {
    match meta {
        [max, codec, done, ..] if *max <= u32::MAX as u64 && *codec <= 255 && *done <= 1 => Ok((
            FrameConfig {
                max_frame: *max as u32,
                codec: *codec as u8,
            },
            *done == 1,
        )),
        _ => Err(Error::invalid_input(
            "bad stream parameters in handoff token",
        )),
    }
}

pub(super) fn take_one(package: Package) -> Result<(crate::sys::OsHandle, Vec<u64>)> {
    let Package {
        mut handles, meta, ..
    } = package;
    if handles.len() != 1 {
        return Err(Error::invalid_input(
            "a stream endpoint is made of exactly one handle",
        ));
    }
    Ok((handles.remove(0), meta))
}

mod receiver;
mod sender;

pub use receiver::StreamReceiver;
pub use sender::StreamSender;
