#!/usr/bin/env python3
"""A conduit peer written in Python from docs/wire-format.md, with cbor2.

The conformance suite (crates/conduit-test/src/python.rs) runs it to prove
that the documented wire format is the real one:

    peer.py handoff KEY     adopt the duplex endpoint a Rust parent handed
                            over with conduit::handoff(&mut cmd, KEY, end)
                            (pipe or socketpair transport)
    peer.py named PATH      connect to a conduit::named listener's Unix
                            socket PATH

Either way it then echoes every message it receives, re-encoded by cbor2
(shortest float widths), until the unit variant "End"; then it sends its
own messages (built here, in Python) and "End", and exits 0. Any protocol
error makes it exit non-zero with a message on stderr.
"""

import os
import socket
import struct
import sys

import cbor2

MAGIC = b"CNDT"
VERSION = 1
CODEC_CBOR = 1
HANDSHAKE = struct.Struct("<4sHBBI")


def handshake(max_frame):
    return HANDSHAKE.pack(MAGIC, VERSION, CODEC_CBOR, 0, max_frame)


def check_handshake(data, max_frame):
    magic, version, codec, flags, peer_max = HANDSHAKE.unpack(data)
    if (magic, version, codec, flags, peer_max) != (MAGIC, VERSION, CODEC_CBOR, 0, max_frame):
        sys.exit(f"peer.py: bad handshake {data.hex()}")


class Stream:
    """One direction in, one direction out, over file descriptors."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd

    def read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = os.read(self.rfd, n - len(out))
            if not chunk:
                return None if not out else sys.exit("peer.py: truncated frame")
            out += chunk
        return bytes(out)

    def write_all(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def recv(self):
        head = self.read_exact(4)
        if head is None:
            return None
        (n,) = struct.unpack("<I", head)
        return self.read_exact(n)

    def send(self, obj):
        payload = cbor2.dumps(obj, canonical=True)
        self.write_all(struct.pack("<I", len(payload)) + payload)


def adopt(key):
    """conduit::adopt in Python: parse the token, take the handed fds."""
    token = os.environ.pop(f"CONDUIT_HANDOFF_{key}")
    fields = token.split(";")
    if fields[0] != "conduit1" or fields[1] != "duplex":
        sys.exit(f"peer.py: unexpected token {token!r}")
    fd_part = fields[2]
    number, dev, ino = fd_part.removeprefix("fd=").split(":")
    number = int(number)
    st = os.fstat(number)
    if (st.st_dev, st.st_ino) != (int(dev), int(ino)):
        sys.exit("peer.py: the carrier descriptor is not the one in the token")
    halves = []
    for half in fields[3:]:
        transport, count, max_frame, codec, done = half.split(",")[:5]
        if transport not in ("pipe", "socketpair") or count != "1" or codec != "1":
            sys.exit(f"peer.py: unexpected half {half!r}")
        halves.append((int(max_frame), done == "1"))
    carrier = socket.socket(fileno=number)
    _, fds, _, _ = socket.recv_fds(carrier, 1, 16)
    carrier.close()
    if len(fds) != 2:
        sys.exit(f"peer.py: expected 2 descriptors, got {len(fds)}")
    # The sending half comes first, then the receiving half.
    (max_frame, tx_done), (_, rx_done) = halves
    return Stream(fds[1], fds[0]), max_frame, tx_done, rx_done


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    fd = sock.detach()
    return Stream(fd, fd), 64 << 20, False, False


def own_messages():
    """Messages made here; the Rust side checks each value and width."""
    return [
        "Unit",
        {"Text": "hello from python ✓"},
        {
            "Sample": {
                "id": 2**64 - 1,
                "neg": -(2**63),
                "name": "π",
                "blob": bytes(range(256)),
                "maybe": 7,
                "none": None,
                "half": 1.5,  # shortest form: a half-precision float
                "single": struct.unpack("<f", struct.pack("<f", 0.1))[0],  # single
                "double": 0.1,  # needs a double
                "tags": ["a", "", "ç"],
                "map": {3: "three", 1: "one"},
                "status": {"Failed": -2},
            }
        },
        {"Nested": [{"Text": "inner"}, "Unit", {"Nested": []}]},
    ]


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    stream, max_frame, tx_done, rx_done = adopt(arg) if mode == "handoff" else connect(arg)
    if not tx_done:
        stream.write_all(handshake(max_frame))
    if not rx_done:
        data = stream.read_exact(HANDSHAKE.size)
        if data is None:
            sys.exit("peer.py: the peer closed before its handshake")
        check_handshake(data, max_frame)
    while True:
        payload = stream.recv()
        if payload is None:
            sys.exit("peer.py: the peer closed before End")
        obj = cbor2.loads(payload)
        if obj == "End":
            break
        stream.send(obj)
    for obj in own_messages():
        stream.send(obj)
    stream.send("End")
    # Wait for the peer to close (it has read everything by then).
    while stream.recv() is not None:
        pass


if __name__ == "__main__":
    main()
