#!/usr/bin/env python3
"""TCP connection setup time to one address: the SYN round trip as the client sees it.

    connect_rtt.py --ip IP --port P [--count 2000] [--warmup 100]

For each sample: a non-blocking connect(), then poll() until the socket is writable (the
SYN-ACK arrived: the kernel has completed the handshake), timed with
CLOCK_MONOTONIC around both; then SO_ERROR is checked and the socket closed with
SO_LINGER 0 (an RST: no TIME_WAIT piles up over thousands of samples, and the server
sees a reset connection it drops). One connection at a time, so a sample is one SYN
through the client's node (the Service translation included) and back.

Prints one JSON object: count, errors (first few verbatim), and in microseconds the
median, p90, p99, mean, min, max of the successful samples (nearest rank).
"""

import argparse
import errno
import json
import math
import select
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


def one(ip, port, timeout_ms):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    p = select.poll()
    p.register(s, select.POLLOUT)
    t0 = time.perf_counter_ns()
    rc = s.connect_ex((ip, port))
    if rc not in (0, errno.EINPROGRESS):
        s.close()
        return None, f"connect: {errno.errorcode.get(rc, rc)}"
    ready = p.poll(timeout_ms)
    t1 = time.perf_counter_ns()
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.close()
    if not ready:
        return None, f"no answer in {timeout_ms} ms"
    if err:
        return None, f"connect: {errno.errorcode.get(err, err)}"
    return (t1 - t0) / 1000.0, None


def pct(v, p):
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--timeout-ms", type=int, default=2000)
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count: must be at least 1")

    for _ in range(args.warmup):
        one(args.ip, args.port, args.timeout_ms)
    samples, errors, first = [], 0, []
    for _ in range(args.count):
        us, e = one(args.ip, args.port, args.timeout_ms)
        if e:
            errors += 1
            if len(first) < 5:
                first.append(e)
        else:
            samples.append(us)
    samples.sort()
    out = {"count": len(samples), "errors": errors, "first_errors": first}
    if samples:
        out.update(
            median_us=round(pct(samples, 50), 1),
            p90_us=round(pct(samples, 90), 1),
            p99_us=round(pct(samples, 99), 1),
            mean_us=round(sum(samples) / len(samples), 1),
            min_us=round(samples[0], 1),
            max_us=round(samples[-1], 1),
        )
    json.dump(out, sys.stdout)
    print()
    return 0 if samples else 1


if __name__ == "__main__":
    sys.exit(main())
