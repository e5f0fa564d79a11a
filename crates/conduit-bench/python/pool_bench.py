"""Pool.map with Python multiprocessing, for conduit-bench's pool section.

Driven by conduit-bench (src/pool.rs) over stdin/stdout so that its rounds
interleave with the Rust systems' rounds. One `multiprocessing.Pool(W)` is
started first (W from the command line, default 2) and kept, as the Rust pools are.
Each input line is `tiny <n> <k>` (k times Pool.map of `square` over
range(n), default chunksize; the seconds are their sum) or `big <n> <bytes>` (Pool.map of `blob` over n bytes objects of
that size, made before the clock starts); it prints one JSON line
{"seconds": s} or {"error": "..."}. `quit` or end of input ends it.
"""

import json
import multiprocessing as mp
import sys
import time


def square(x):
    return x * x


def blob(b):
    return len(b) ^ b[0]


def main():
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(square, range(1000))  # the workers are up
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "quit":
                break
            try:
                if parts[0] == "tiny":
                    n = int(parts[1])
                    k = int(parts[2]) if len(parts) > 2 else 1
                    seconds, ok = 0.0, True
                    for _ in range(k):
                        t0 = time.perf_counter()
                        out = pool.map(square, range(n))
                        seconds += time.perf_counter() - t0
                        ok = ok and len(out) == n and out[-1] == (n - 1) ** 2
                else:
                    n, size = int(parts[1]), int(parts[2])
                    data = [bytes([i % 251]) * size for i in range(n)]
                    t0 = time.perf_counter()
                    out = pool.map(blob, data)
                    seconds = time.perf_counter() - t0
                    ok = out == [size ^ (i % 251) for i in range(n)]
                res = {"seconds": seconds} if ok else {"error": "wrong results"}
            except Exception as e:
                res = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
