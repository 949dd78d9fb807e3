#!/usr/bin/env python3
"""Where the fixed rate's p99 comes from: each server in turn takes the harness's open-loop
load (`oha -q 10000 -z 5s -c 64 --latency-correction`, pinned to CPU 1) for ROUNDS rounds,
with every request's times kept in a sqlite file (oha --db-url) and both CPUs' steal read
from /proc/stat. Prints per run: p50, p99, the slow episodes (requests over 5 ms, grouped
in 20 ms windows of their scheduled start), and the steal; then the rank correlation of
steal and p99 over all runs, and each server's p99 in the runs with little steal.

    tail_latency.py ROUNDS NAME:PID:PORT...

Loopback only; every load is bounded by oha's -z.
"""
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile

OHA = os.environ.get("OHA", os.path.expanduser("~/.cargo/bin/oha"))
RATE, SECONDS, CONNS = 10000, 5, 64
SLOW_S, WINDOW_S = 0.005, 0.02
# Steal ticks (both CPUs, USER_HZ) in a run below which the host left it alone.
QUIET_TICKS = 10


def steal_ticks():
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(("cpu0 ", "cpu1 ")):
                total += int(line.split()[8])
    return total


def episodes(rows):
    """Runs of consecutive 20 ms windows holding slow requests, largest first:
    (first window, last window, slow requests, worst latency)."""
    t0 = rows[0][0]
    windows = {}
    for start, duration in rows:
        if duration > SLOW_S:
            w = windows.setdefault(int((start - t0) / WINDOW_S), [0, 0.0])
            w[0] += 1
            w[1] = max(w[1], duration)
    found = []
    for w in sorted(windows):
        count, worst = windows[w]
        if found and w <= found[-1][1] + 1:
            found[-1][1] = w
            found[-1][2] += count
            found[-1][3] = max(found[-1][3], worst)
        else:
            found.append([w, w, count, worst])
    return sorted(found, key=lambda e: -e[2])


def one_run(port, db):
    subprocess.run(
        ["taskset", "-c", "1", OHA, "--no-tui", "--output-format", "quiet",
         "--worker-threads", "1", "-z", f"{SECONDS}s", "-c", str(CONNS), "-q", str(RATE),
         "--latency-correction", "--db-url", db, f"http://127.0.0.1:{port}/dynamic/1k"],
        capture_output=True, check=True)
    with sqlite3.connect(db) as c:
        return c.execute("select start_latency_correction, duration from oha "
                         "where status < 500 order by start_latency_correction").fetchall()


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0] * len(values)
    for rank, i in enumerate(order):
        out[i] = rank
    return out


def main(argv):
    rounds = int(argv[1])
    targets = [t.split(":") for t in argv[2:]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, _pid, port in targets:
                db = os.path.join(tmp, f"{name}-{r}.db")
                before = steal_ticks()
                rows = one_run(port, db)
                steal = steal_ticks() - before
                if not rows:
                    print(f"r{r} {name}: no successful requests", flush=True)
                    continue
                durations = sorted(d for _, d in rows)
                n = len(durations)
                p50, p99 = durations[n // 2] * 1e3, durations[int(n * 0.99)] * 1e3
                eps = episodes(rows)
                top = " ".join(
                    f"@{e[0] * WINDOW_S:.2f}s+{(e[1] - e[0] + 1) * WINDOW_S * 1e3:.0f}ms:"
                    f"{e[2]}req/max{e[3] * 1e3:.0f}ms" for e in eps[:3])
                print(f"r{r} {name:8} n={n} p50={p50:.2f} p99={p99:.2f} ms steal={steal} "
                      f"ticks episodes={len(eps)} largest: {top}", flush=True)
                runs.append((name, steal, p99))
    if len(runs) < 3:
        return
    rs, rp = ranks([s for _, s, _ in runs]), ranks([p for _, _, p in runs])
    n = len(runs)
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rs, rp)) / (n * (n * n - 1))
    print(f"Spearman rank correlation of steal and p99 over {n} runs: {rho:.2f}")
    for name, _, _ in targets:
        mine = [(s, p) for t, s, p in runs if t == name]
        quiet = [p for s, p in mine if s <= QUIET_TICKS]
        print(f"{name:8} p99 median {statistics.median(p for _, p in mine):.1f} ms; "
              f"in runs with <= {QUIET_TICKS} steal ticks: "
              + (", ".join(f"{p:.1f}" for p in quiet) or "none"))


if __name__ == "__main__":
    main(sys.argv)
