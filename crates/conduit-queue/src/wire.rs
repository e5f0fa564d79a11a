//! The queue's datagram header (all platforms).
//!
//! Every message is one datagram: an 8-byte header, then the payload (or,
//! for a spilled message on Unix, nothing: the payload is in the file that
//! travels with the datagram).
//!
//! | bytes | field                                             |
//! |-------|---------------------------------------------------|
//! | 0..2  | magic `cq`                                        |
//! | 2     | version (1)                                       |
//! | 3     | kind: 0 inline, 1 spilled to a memory file        |
//! | 4..8  | payload length, `u32` little-endian               |

use conduit_core::{Error, Result};

/// Header size in bytes.
pub(crate) const HEADER_LEN: usize = 8;
const MAGIC: [u8; 2] = *b"cq";
const VERSION: u8 = 1;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Payload length.
    pub(crate) len: usize,
    /// The payload travels in a file, not in the datagram.
    pub(crate) spilled: bool,
}

impl Header {
    /// A header for a payload of `len` bytes (`len` fits in a `u32`: the
    /// caller checked it against the queue's maximum).
    pub(crate) fn new(len: usize, spilled: bool) -> Header {
        Header { len, spilled }
    }

    /// The 8 bytes on the wire.
    pub(crate) fn encode(self) -> [u8; HEADER_LEN] {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX).to_le_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            VERSION,
            u8::from(self.spilled),
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }

    /// Parses the start of a datagram.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Header> {
        let misbehaving = |what: &str| {
            Error::protocol(format!(
                "{what} in a queue datagram; a participant is misbehaving or runs another version of conduit"
            ))
        };
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(misbehaving("a short header"));
        };
        if h[..2] != MAGIC {
            return Err(misbehaving("a wrong magic number"));
        }
        if h[2] != VERSION {
            return Err(misbehaving(&format!("protocol version {}", h[2])));
        }
        let spilled = match h[3] {
            0 => false,
            1 => true,
            k => return Err(misbehaving(&format!("unknown kind {k}"))),
        };
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        Ok(Header { len, spilled })
    }
}

/// Checks an inline payload against its header and copies it out.
pub(crate) fn inline_payload(header: &Header, body: &[u8]) -> Result<Vec<u8>> {
    if body.len() != header.len {
        return Err(Error::protocol(format!(
            "a queue datagram announces {} payload bytes but carries {}; a participant is misbehaving",
            header.len,
            body.len()
        )));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        for (len, spilled) in [(0, false), (5, false), (1 << 30, true)] {
            let h = Header::new(len, spilled);
            assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
        }
        assert!(Header::decode(b"cq").is_err());
        assert!(Header::decode(b"xx\x01\x00\0\0\0\0").is_err());
        assert!(Header::decode(b"cq\x02\x00\0\0\0\0").is_err());
        assert!(Header::decode(b"cq\x01\x07\0\0\0\0").is_err());
    }
}
