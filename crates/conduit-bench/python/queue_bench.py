"""Many-producer, many-consumer throughput of Python multiprocessing.Queue.

Driven by conduit-bench (src/queue.rs) over stdin/stdout so that its rounds
interleave with conduit's. Each input line is
`run <producers> <consumers> <typed|bytes> <messages per producer>`: make a
Queue, start the producer and consumer processes (not timed), release them
together with a Barrier, let every producer put its messages, then put one
None per consumer after the producers are done. Each consumer times itself
from the barrier to the last data message it got and checks that every
producer's sequence numbers grow. The answer is one JSON line:
{"count": <messages received>, "seconds": <longest consumer time>,
 "counts": [<received per producer>], "sums": [<sum of seq per producer>],
 "bad": <bad messages>} or {"error": "..."}. `info` answers {"start_method": ...}; `quit` or end of input ends it.

Messages: `bytes` is a 64-byte bytes object (tag, producer, sequence number,
padding); `typed` is a 4-field dict (producer, seq, value, label), pickled by
the Queue like any object.
"""

import json
import multiprocessing as mp
import struct
import sys
import time

LABEL = "conduit-bench queue item"
HEAD = struct.Struct("<BB6xQ")
PAD = bytes(64 - HEAD.size)
DATA = 2
WAIT = 60.0


def producer(q, barrier, pid, n, typed):
    barrier.wait(WAIT)
    put = q.put
    if typed:
        for seq in range(n):
            put({"producer": pid, "seq": seq, "value": seq * 0.1, "label": LABEL})
    else:
        pack = HEAD.pack
        for seq in range(n):
            put(pack(DATA, pid, seq) + PAD)
    # Returning flushes the Queue's feeder thread before the process exits.


def consumer(q, barrier, results, producers, typed):
    counts = [0] * producers
    sums = [0] * producers
    last = [-1] * producers
    bad = 0
    barrier.wait(WAIT)
    clock = time.perf_counter
    t0 = clock()
    end = t0
    get = q.get
    while True:
        m = get(timeout=WAIT)
        if m is None:
            break
        end = clock()
        if typed:
            pid, seq = m["producer"], m["seq"]
            ok = m["label"] == LABEL
        else:
            tag, pid, seq = HEAD.unpack_from(m)
            ok = tag == DATA and len(m) == 64
        if not ok or pid >= producers or seq <= last[pid]:
            bad += 1
            continue
        last[pid] = seq
        counts[pid] += 1
        sums[pid] += seq
    results.put({"counts": counts, "sums": sums, "bad": bad, "seconds": end - t0})


def run(ctx, producers, consumers, typed, n):
    q = ctx.Queue()
    results = ctx.Queue()
    barrier = ctx.Barrier(producers + consumers + 1)
    cons = [
        ctx.Process(target=consumer, args=(q, barrier, results, producers, typed))
        for _ in range(consumers)
    ]
    prods = [
        ctx.Process(target=producer, args=(q, barrier, pid, n, typed))
        for pid in range(producers)
    ]
    try:
        for p in cons + prods:
            p.start()
        barrier.wait(WAIT)
        for p in prods:
            p.join(WAIT)
            if p.exitcode != 0:
                return {"error": f"a producer exited with {p.exitcode}"}
        for _ in range(consumers):
            q.put(None)
        reports = [results.get(timeout=WAIT) for _ in range(consumers)]
        for p in cons:
            p.join(WAIT)
            if p.exitcode != 0:
                return {"error": f"a consumer exited with {p.exitcode}"}
    finally:
        for p in cons + prods:
            if p.is_alive():
                p.kill()
                p.join()
    counts = [sum(r["counts"][i] for r in reports) for i in range(producers)]
    sums = [sum(r["sums"][i] for r in reports) for i in range(producers)]
    return {
        "count": sum(counts),
        "seconds": max(r["seconds"] for r in reports),
        "counts": counts,
        "sums": sums,
        "bad": sum(r["bad"] for r in reports),
    }


def main():
    # fork where there is one: start-up is not timed, and the Queue works the
    # same whatever the start method.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods and sys.platform == "linux" else None)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        if parts[0] == "info":
            print(json.dumps({"start_method": ctx.get_start_method()}), flush=True)
            continue
        try:
            producers, consumers = int(parts[1]), int(parts[2])
            typed, n = parts[3] == "typed", int(parts[4])
            out = run(ctx, producers, consumers, typed, n)
        except Exception as e:  # a failed start, a timeout
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
