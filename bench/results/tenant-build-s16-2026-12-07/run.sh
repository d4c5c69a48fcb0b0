#!/bin/bash
# Session 16 (2026-12-07), the tenant build, issue 16. Each binary is a release build of
# permgate-bench (fat LTO, mimalloc) of the commit named, copied aside:
#   bin-base    d692489 (+ b377f17's CPU line in the bench; the core unchanged)
#   bin-reserve 3ce1a3b   bin-aside 4e75784   bin-fix/bin-final fddfc13   bin-more a0da5b0
# A/B lines: interleaved, one process per build, each line the build, its phases and its CPU:
# for r in 1 2 3 4 5; do for t in 10000 0; do for b in $OLD $NEW; do
#   echo "$(basename $b) t=$t $($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t 2>&1 \
#     | grep -E 'build:|build phases|build CPU' | sed 's/(runs: [0-9.]*)//; s/build phases (last run)://; s/owner names (wait) 0 ms, //; s/version 0 ms, //; s/build CPU (last run)://' | tr '\n' ' ')"
# done; done; done
#   reserve-aside-ab.txt: 3ce1a3b against d692489, then 4e75784 against 3ce1a3b
#   fix-ab.txt: 3ce1a3b, 4e75784, fddfc13, 3 rounds (a busier half hour: the same build 2.7 -> 3.7 s)
#   final-ab.txt: d692489 against fddfc13, 5 rounds, with and without tenants
#   more-ab.txt: fddfc13 against a0da5b0, 5 rounds, tenants
#   last-ab.txt: fddfc13 ("bin-final") against 3041374 ("bin-last"), 3 rounds, with and without tenants
#   last2-ab.txt: 3041374 against the fix after it ("bin-last2": without tenants the owners' name
#     table starts with the compile), 3 rounds, no tenants (a busier moment: compare the waits)
# Timelines (which thread does what, 100 ms windows): a build with frame pointers
#   RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -p permgate-bench
#   perf record -F 1000 --call-graph=fp -o cyc.data target/release/permgate-bench snapshot \
#     --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants 10000
#   perf script -i cyc.data -F tid,time,ip,sym > cyc.txt; python3 timeline.py cyc.txt
#   timeline-d692489.txt (before: note the second core idle 0.8-1.7 s) and timeline-fddfc13.txt
# Page faults by caller: perf record -e page-faults -c 8 --call-graph=fp (the finding behind 3ce1a3b).
