#!/usr/bin/env python3
"""Alternating rounds: each server in turn takes `wrk -t1 -c64 -d3` (pinned to CPU 1), for
ROUNDS rounds, so that drift in the machine's speed falls on all of them alike. Prints
each round and the medians: requests/s and the server's user, system and total CPU µs per
request, read from /proc/PID/stat.

    alternate.py ROUNDS PATH NAME:PID:PORT...
"""
import os
import re
import statistics
import subprocess
import sys

HZ = os.sysconf("SC_CLK_TCK")
SECONDS = 3


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv):
    rounds, path = int(argv[1]), argv[2]
    targets = [t.split(":") for t in argv[3:]]
    results = {name: [] for name, _, _ in targets}
    for r in range(rounds):
        for name, pid, port in targets:
            user0, sys0 = cpu_ticks(pid)
            out = subprocess.run(
                ["taskset", "-c", "1", "timeout", "10", "wrk", "-t1", "-c64", f"-d{SECONDS}",
                 f"http://127.0.0.1:{port}{path}"],
                capture_output=True, text=True, check=False,
            ).stdout
            found = re.search(r"(\d+) requests in", out)
            if not found or int(found.group(1)) == 0:
                sys.exit(f"{name}: wrk measured nothing:\n{out}")
            n = int(found.group(1))
            user1, sys1 = cpu_ticks(pid)
            user = (user1 - user0) / HZ * 1e6 / n
            system = (sys1 - sys0) / HZ * 1e6 / n
            results[name].append((n / SECONDS, user, system, user + system))
            print(f"round {r} {name:10} {n / SECONDS:8.0f}/s  user {user:5.1f}  sys {system:5.1f}"
                  f"  total {user + system:5.1f} µs", flush=True)
    print("medians:")
    for name, rows in results.items():
        rps, user, system, total = (statistics.median(c) for c in zip(*rows))
        print(f"{name:10} {rps:8.0f}/s  user {user:5.1f}  sys {system:5.1f}  total {total:5.1f} µs")


if __name__ == "__main__":
    main(sys.argv)
