"""Spawn + join of an empty function with Python multiprocessing.

Driven by conduit-bench (src/spawn.rs) over stdin/stdout so that its batches
interleave with the Rust systems' batches. Each input line is
`<start method> <seconds> <at least>`: run `Process(target=f).start(); join()`
with that start method (`fork` or `spawn`) until `seconds` have passed and at
least `at least` times, then print one JSON line: {"times": [seconds, ...]}
(each start+join), or {"error": "..."}. `quit` or end of input ends it.
"""

import json
import multiprocessing as mp
import sys
import time


def f():
    pass


def batch(ctx, seconds, least):
    times = []
    start = time.perf_counter()
    while len(times) < least or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        p = ctx.Process(target=f)
        p.start()
        p.join()
        times.append(time.perf_counter() - t0)
        if p.exitcode != 0:
            return {"error": f"the child exited with {p.exitcode}"}
    return {"times": times}


def main():
    contexts = {}
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        method, seconds, least = parts[0], float(parts[1]), int(parts[2])
        try:
            if method not in contexts:
                contexts[method] = mp.get_context(method)
            out = batch(contexts[method], seconds, least)
        except Exception as e:  # an unavailable start method, a failed start
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
