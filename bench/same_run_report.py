#!/usr/bin/env python3
"""Reads what bench/same-run.sh wrote and prints, per scenario and rep, the ratio of the
best peer to geoedge (requests/s: ours / best; CPU per request: best / ours; above 1
means geoedge is ahead) with the steal each server's slot had, then the medians.

    same_run_report.py ROOT STEAL_LOG              the report
    same_run_report.py --worst-steal REPDIR STEAL_LOG   the largest steal % of one rep
"""
import glob
import json
import os
import statistics
import sys


def read_steal(path):
    samples = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 5:
                samples.append([int(x) for x in fields])
    return samples


def steal_pct(samples, start, end):
    """Steal of the busier CPU's share over [start, end]: the server's CPU (cpu0) and
    the load generator's (cpu1) both matter; the larger is reported."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return 0.0
    a, b = inside[0], inside[-1]
    cpu0 = 100.0 * (b[1] - a[1]) / max(1, b[2] - a[2])
    cpu1 = 100.0 * (b[3] - a[3]) / max(1, b[4] - a[4])
    return max(cpu0, cpu1)


def slots(rep_dir, samples):
    """Per server: (requests/s, CPU µs per request, steal %)."""
    out = {}
    try:
        with open(os.path.join(rep_dir, "results.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return out
    for r in rows:
        rate = float(r.get("rps") or 0)
        cpu = r.get("server_cpu_pct")
        if not rate or cpu in (None, ""):
            continue
        res = os.path.join(rep_dir, r["target"], f"{r['scenario']}.{r['run']}.res")
        end = os.path.getmtime(res)
        start = end - float(r.get("elapsed") or 10)
        out[r["target"]] = (rate, float(cpu) / 100 * 1e6 / rate, steal_pct(samples, start, end))
    return out


def main(argv):
    if argv[1] == "--worst-steal":
        found = slots(argv[2], read_steal(argv[3]))
        print(f"{max((s for _, _, s in found.values()), default=100.0):.1f}")
        return
    root, samples = argv[1], read_steal(argv[2])
    ratios = {}
    for rep_dir in sorted(glob.glob(os.path.join(root, "*-*"))):
        if not os.path.isdir(rep_dir):
            continue
        scenario, rep = os.path.basename(rep_dir).rsplit("-", 1)
        found = slots(rep_dir, samples)
        peers = {t: v for t, v in found.items() if t != "cand"}
        if "cand" not in found or not peers:
            continue
        ours = found["cand"]
        rps = ours[0] / max(v[0] for v in peers.values())
        cpu = min(v[1] for v in peers.values()) / ours[1]
        worst = max(v[2] for v in found.values())
        ratios.setdefault(scenario, []).append((rps, cpu, worst))
        detail = "  ".join(f"{t} {v[0]:.0f}/s {v[1]:.1f}µs steal {v[2]:.0f}%" for t, v in found.items())
        print(f"{scenario:14} rep {rep}  rps {rps:.2f}  cpu {cpu:.2f}   {detail}")
    quiet_max = float(os.environ.get("STEAL_MAX", "5"))
    print(f"\nmedians: requests/s ratio, CPU ratio (reps) | the same over reps under {quiet_max:g} % steal")
    for scenario, rows in ratios.items():
        quiet = [r for r in rows if r[2] <= quiet_max]
        print(f"{scenario:14} {medians(rows)} | {medians(quiet)}")


def medians(rows):
    if not rows:
        return "-"
    rps = statistics.median(r[0] for r in rows)
    cpu = statistics.median(r[1] for r in rows)
    return f"{rps:.2f}  {cpu:.2f}  (n={len(rows)})"


if __name__ == "__main__":
    main(sys.argv)
