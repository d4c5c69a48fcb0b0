#!/usr/bin/env python3
"""series.sh's lines: per build, the median, the range, how many builds took 3 s or more, and
the same per 10-minute window (the host's speed moves within the hour)."""
import re, statistics, sys, collections
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"(\d\d):(\d\d):\d\d load ([0-9.]+) steal ([0-9.]+)% (\S+) t=\d+ build: median ([0-9.]+) s", line)
    if m:
        rows.append((int(m.group(1)) * 60 + int(m.group(2)), float(m.group(3)), float(m.group(4)), m.group(5), float(m.group(6))))
def show(label, rs):
    for name in sorted({r[3] for r in rs}):
        b = [r[4] for r in rs if r[3] == name]
        over = sum(x >= 3.0 for x in b)
        print(f"{label:13} {name:4} n={len(b):3} median {statistics.median(b):.2f} s "
              f"({min(b):.2f}-{max(b):.2f}), p90 {sorted(b)[int(0.9 * (len(b) - 1))]:.2f}, >=3 s: {over}")
t0 = rows[0][0]
first = rows[0][0]
show("all", rows)
win = collections.defaultdict(list)
for r in rows:
    win[(r[0] - first) // 10].append(r)
for k in sorted(win):
    a = first + 10 * k
    show(f"{a // 60:02d}:{a % 60:02d}+10 min", win[k])
print("load", min(r[1] for r in rows), "-", max(r[1] for r in rows), " steal max", max(r[2] for r in rows), "%")
