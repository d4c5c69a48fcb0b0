#!/usr/bin/env python3
"""Per build name: median and range of the build, and the medians of user/system time and
page faults, from ab.sh's lines (files given as arguments)."""
import re, statistics, sys
by = {}
for f in sys.argv[1:]:
    for line in open(f):
        m = re.match(r"(\S+) t=(\d+) build: median ([0-9.]+) s", line)
        if not m:
            continue
        d = by.setdefault((m.group(1), m.group(2)), {"build": [], "user": [], "sys": [], "faults": [], "owners": []})
        d["build"].append(float(m.group(3)))
        for k, pat in (("user", r"user ([0-9.]+) s"), ("sys", r"system ([0-9.]+) s"),
                       ("faults", r"(\d+) minor page faults"), ("owners", r"record owners (\d+) ms")):
            x = re.search(pat, line)
            if x:
                d[k].append(float(x.group(1)))
for (n, t), d in by.items():
    b = d["build"]
    med = lambda k: statistics.median(d[k]) if d[k] else float("nan")
    print(f"{n:10} t={t:5} n={len(b):2} build median {statistics.median(b):.2f} s ({min(b):.2f}-{max(b):.2f})"
          f"  user {med('user'):.2f} s  sys {med('sys'):.2f} s  faults {med('faults'):.0f}  owners {med('owners'):.0f} ms")
