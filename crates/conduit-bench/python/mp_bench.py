#!/usr/bin/env python3
"""Python multiprocessing.Pipe / multiprocessing.Queue between two processes.

`--kind asyncio` is multiprocessing.Pipe with the parent on an asyncio loop
(`loop.add_reader` on the connection's fd; Unix only), the child blocking;
byte workloads rtt64 and msgs64 only.

Run by conduit-bench (`cargo xtask bench`), which embeds this file and
writes it next to its results. It measures one workload and prints one JSON
line on stdout:

    {"values": [...], "p99": [...] or null, "counts": [...], ...}

`values` has one number per repetition: the median seconds per round trip
(rtt*), messages per second (msgs*) or bytes per second (bulk*).

Messages follow conduit-bench's layout: byte 0 is the tag, bytes 8..16 the
sequence number (u64 little-endian), one sentinel byte per 4 KiB page and a
last sentinel byte; the receiver checks length, sequence and sentinels. Typed
messages are a 4-field dict (pickled by multiprocessing).
"""

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time

PING, DATA, END, REPORT = 1, 2, 3, 4
PAGE = 4096
LABEL = "conduit-bench typed sample"
SIZES = {
    "rtt64": 64,
    "rtt64-typed": 64,
    "rtt64-unpinned": 64,
    "msgs64": 64,
    "msgs64-typed": 64,
    "bulk64k": 64 << 10,
    "bulk1m": 1 << 20,
}
# ADD[s] maps byte b to (b + s) & 0xFF (for the page sentinels).
ADD = [bytes((i + s) & 0xFF for i in range(256)) for s in range(256)]


class Layout:
    """Stamping and checking byte messages of one size."""

    def __init__(self, size):
        self.size = size
        pages = len(range(PAGE, size - 1, PAGE))
        self.base = bytes((k & 0xFF) for k in range(1, pages + 1))

    def pages(self, seq):
        return self.base.translate(ADD[seq & 0xFF])

    def stamp(self, buf, tag, seq):
        n = self.size
        buf[0] = tag
        buf[8:16] = seq.to_bytes(8, "little")
        if self.base:
            buf[PAGE : n - 1 : PAGE] = self.pages(seq)
        buf[n - 1] = (seq & 0xFF) ^ 0xA5

    def check(self, m, seq):
        n = self.size
        return (
            len(m) == n
            and m[8:16] == seq.to_bytes(8, "little")
            and m[n - 1] == ((seq & 0xFF) ^ 0xA5)
            and (not self.base or m[PAGE : n - 1 : PAGE] == self.pages(seq))
        )


def sample(kind, seq):
    return {"kind": kind, "seq": seq, "value": seq * 0.1, "label": LABEL}


def pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def alarm(seconds):
    if hasattr(signal, "alarm"):
        signal.alarm(max(1, int(seconds)))


class PipeEnd:
    """One end of multiprocessing.Pipe(): bytes use send_bytes/recv_bytes."""

    def __init__(self, conn, typed):
        self.conn = conn
        self.typed = typed

    def send(self, m):
        if self.typed:
            self.conn.send(m)
        else:
            self.conn.send_bytes(m)

    def recv(self):
        try:
            return self.conn.recv() if self.typed else self.conn.recv_bytes()
        except EOFError:
            return None

    def close(self):
        # With the fork start method the child also holds this end, so it
        # would never see EOF: tell it to stop instead.
        try:
            if self.typed:
                self.conn.send(None)
            else:
                self.conn.send_bytes(b"")
        except OSError:
            pass
        self.conn.close()


class AsyncPipeEnd:
    """The parent's end of multiprocessing.Pipe() on an asyncio loop.

    A reader registered once with loop.add_reader on the connection's fd
    takes each message as it becomes readable (recv_bytes: the child writes
    a frame with one write, so it is all there) and wakes the task awaiting
    it; level-triggered, so several queued messages take several callbacks.
    send_bytes is called as is: a Connection has no non-blocking send, and a
    64 B write waits only when the socket's buffer is full.
    """

    def __init__(self, conn, loop):
        self.conn = conn
        self.loop = loop
        self.fd = conn.fileno()
        self.inbox = collections.deque()
        self.waiter = None
        loop.add_reader(self.fd, self._readable)

    def _readable(self):
        try:
            m = self.conn.recv_bytes()
        except (EOFError, OSError):
            self.loop.remove_reader(self.fd)
            m = None
        self.inbox.append(m)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def send(self, m):
        self.conn.send_bytes(m)

    async def recv(self):
        while not self.inbox:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.inbox.popleft()

    def close(self):
        self.loop.remove_reader(self.fd)
        PipeEnd(self.conn, False).close()


class QueueEnd:
    """Two multiprocessing.Queue()s: one each way (everything is pickled)."""

    def __init__(self, out_q, in_q, typed, watch_parent=False):
        self.out_q = out_q
        self.in_q = in_q
        self.typed = typed
        self.ppid = os.getppid() if watch_parent else None

    def send(self, m):
        # put() pickles later on a feeder thread: hand it an immutable copy.
        self.out_q.put(m if self.typed else bytes(m))

    def recv(self):
        while True:
            try:
                m = self.in_q.get(timeout=0.5)
            except queue.Empty:
                if self.ppid is not None and os.getppid() != self.ppid:
                    return None
                continue
            return m

    def close(self):
        self.out_q.put(None)


def child_main(kind, workload, ends, cpu, timeout):
    alarm(timeout)
    pin(cpu)
    typed = workload.endswith("typed")
    size = SIZES[workload]
    lay = Layout(size)
    if kind == "pipe":
        end = PipeEnd(ends, typed)
    else:
        to_child, to_parent = ends
        end = QueueEnd(to_parent, to_child, typed, watch_parent=True)
    count = bad = 0
    while True:
        m = end.recv()
        if not m:  # None (stop, or the parent is gone) or b"" (stop)
            return
        k = m["kind"] if typed else m[0]
        if k == PING:
            end.send(m)
        elif k == DATA:
            if typed:
                ok = m["seq"] == count and m["label"] == LABEL
            else:
                ok = lay.check(m, count)
            if not ok:
                bad += 1
            count += 1
        elif k == END:
            if typed:
                r = sample(REPORT, count)
                r["value"] = float(bad)
            else:
                r = bytearray(64)
                r[0] = REPORT
                r[8:16] = count.to_bytes(8, "little")
                r[16:24] = bad.to_bytes(8, "little")
            end.send(r)
            count = bad = 0
        else:
            raise SystemExit("unexpected message")


def percentile(sorted_samples, q):
    n = len(sorted_samples)
    rank = min(max(int(-(-n * q // 1)), 1), n)
    return sorted_samples[rank - 1]


def for_duration(seconds, once):
    start = time.perf_counter()
    while True:
        once()
        if time.perf_counter() - start >= seconds:
            return


def round_trips(end, typed, args):
    seq = [0]
    if typed:
        msg = sample(PING, 0)
    else:
        lay = Layout(64)
        msg = bytearray(64)

    def once():
        seq[0] += 1
        s = seq[0]
        if typed:
            msg["seq"] = s
            msg["value"] = s * 0.1
            end.send(msg)
            r = end.recv()
            if r != msg:
                raise SystemExit("bad echo")
        else:
            lay.stamp(msg, PING, s)
            end.send(msg)
            r = end.recv()
            if r is None or r[0] != PING or not lay.check(r, s):
                raise SystemExit("bad echo")

    for_duration(args.warmup_seconds, once)
    values, p99s, counts = [], [], []
    rep_ns = int(args.rep_seconds * 1e9)
    for _ in range(args.reps):
        samples = []
        start = prev = time.perf_counter_ns()
        while prev - start < rep_ns:
            once()
            now = time.perf_counter_ns()
            samples.append(now - prev)
            prev = now
        samples.sort()
        values.append(percentile(samples, 0.5) * 1e-9)
        p99s.append(percentile(samples, 0.99) * 1e-9)
        counts.append(len(samples))
    return values, p99s, counts


def streams(end, typed, size, bandwidth, args):
    lay = Layout(size)
    buf = bytearray(size)
    every = 64 if size <= 1024 else 1

    def run(seconds):
        start = time.perf_counter()
        n = 0
        while True:
            if typed:
                end.send(sample(DATA, n))
            else:
                lay.stamp(buf, DATA, n)
                end.send(buf)
            n += 1
            if n % every == 0 and time.perf_counter() - start >= seconds:
                break
        if typed:
            end.send(sample(END, n))
        else:
            lay.stamp(buf, END, n)
            end.send(buf)
        r = end.recv()
        elapsed = time.perf_counter() - start
        if r is None:
            raise SystemExit("the child closed the connection early")
        if typed:
            got, bad = r["seq"], int(r["value"])
        else:
            got = int.from_bytes(r[8:16], "little")
            bad = int.from_bytes(r[16:24], "little")
        if got != n or bad != 0:
            raise SystemExit(f"the receiver got {got} messages ({bad} bad) of {n} sent")
        return n, elapsed

    run(args.warmup_seconds)
    values, counts = [], []
    for _ in range(args.reps):
        n, elapsed = run(args.rep_seconds)
        per_s = n / max(elapsed, 1e-9)
        values.append(per_s * size if bandwidth else per_s)
        counts.append(n)
    return values, None, counts


async def round_trips_async(end, args):
    """round_trips for bytes on an AsyncPipeEnd: the same messages, checks
    and statistics, each send and receive awaited."""
    lay = Layout(64)
    msg = bytearray(64)
    seq = 0

    async def once():
        nonlocal seq
        seq += 1
        lay.stamp(msg, PING, seq)
        await end.send(msg)
        r = await end.recv()
        if r is None or r[0] != PING or not lay.check(r, seq):
            raise SystemExit("bad echo")

    start = time.perf_counter()
    while True:
        await once()
        if time.perf_counter() - start >= args.warmup_seconds:
            break
    values, p99s, counts = [], [], []
    rep_ns = int(args.rep_seconds * 1e9)
    for _ in range(args.reps):
        samples = []
        start = prev = time.perf_counter_ns()
        while prev - start < rep_ns:
            await once()
            now = time.perf_counter_ns()
            samples.append(now - prev)
            prev = now
        samples.sort()
        values.append(percentile(samples, 0.5) * 1e-9)
        p99s.append(percentile(samples, 0.99) * 1e-9)
        counts.append(len(samples))
    return values, p99s, counts


async def streams_async(end, args):
    """streams for 64 B bytes on an AsyncPipeEnd (sends awaited, the
    receiver's report awaited)."""
    size = 64
    lay = Layout(size)
    buf = bytearray(size)

    async def run(seconds):
        start = time.perf_counter()
        n = 0
        while True:
            lay.stamp(buf, DATA, n)
            await end.send(buf)
            n += 1
            if n % 64 == 0 and time.perf_counter() - start >= seconds:
                break
        lay.stamp(buf, END, n)
        await end.send(buf)
        r = await end.recv()
        elapsed = time.perf_counter() - start
        if r is None:
            raise SystemExit("the child closed the connection early")
        got = int.from_bytes(r[8:16], "little")
        bad = int.from_bytes(r[16:24], "little")
        if got != n or bad != 0:
            raise SystemExit(f"the receiver got {got} messages ({bad} bad) of {n} sent")
        return n, elapsed

    await run(args.warmup_seconds)
    values, counts = [], []
    for _ in range(args.reps):
        n, elapsed = await run(args.rep_seconds)
        values.append(n / max(elapsed, 1e-9))
        counts.append(n)
    return values, None, counts


async def async_parent(mine, args):
    end = AsyncPipeEnd(mine, asyncio.get_running_loop())
    try:
        if args.workload == "rtt64":
            return await round_trips_async(end, args)
        return await streams_async(end, args)
    finally:
        end.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["pipe", "queue", "asyncio"], required=True)
    p.add_argument("--workload", choices=sorted(SIZES), required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rep-seconds", type=float, default=0.1)
    p.add_argument("--warmup-seconds", type=float, default=0.05)
    p.add_argument("--cpus", help="parent,child CPUs to pin to")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    alarm(args.timeout)

    cpu_parent = cpu_child = None
    if args.cpus:
        cpu_parent, cpu_child = (int(c) for c in args.cpus.split(","))
    pin(cpu_parent)
    typed = args.workload.endswith("typed")
    size = SIZES[args.workload]
    if args.kind == "asyncio" and args.workload not in ("rtt64", "msgs64"):
        raise SystemExit(f"--kind asyncio measures rtt64 and msgs64, not {args.workload}")

    if args.kind == "asyncio":
        mine, theirs = mp.Pipe()
        end = None
        child_ends = theirs
    elif args.kind == "pipe":
        mine, theirs = mp.Pipe()
        end = PipeEnd(mine, typed)
        child_ends = theirs
    else:
        # Bounded, so a fast producer cannot queue gigabytes: ~4 MiB in flight.
        maxsize = max(4, min(1024, (4 << 20) // size))
        to_child, to_parent = mp.Queue(maxsize), mp.Queue(maxsize)
        end = QueueEnd(to_child, to_parent, typed)
        child_ends = (to_child, to_parent)
    # The asyncio parent's child is the blocking Pipe child.
    child_kind = "pipe" if args.kind == "asyncio" else args.kind
    proc = mp.Process(
        target=child_main,
        args=(child_kind, args.workload, child_ends, cpu_child, args.timeout),
        daemon=True,
    )
    proc.start()
    if child_kind == "pipe":
        theirs.close()

    if args.kind == "asyncio":
        values, p99s, counts = asyncio.run(async_parent(mine, args))
    elif args.workload.startswith("rtt"):
        values, p99s, counts = round_trips(end, typed, args)
    else:
        values, p99s, counts = streams(
            end, typed, size, args.workload.startswith("bulk"), args
        )
    if end is not None:
        end.close()
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
    print(
        json.dumps(
            {
                "values": values,
                "p99": p99s,
                "counts": counts,
                "python": sys.version.split()[0],
                "start_method": mp.get_start_method(),
            }
        )
    )


if __name__ == "__main__":
    main()
