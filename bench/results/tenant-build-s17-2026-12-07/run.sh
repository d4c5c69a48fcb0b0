#!/bin/bash
# Session 17 (2026-12-07), the tenant build, issue 16. Each binary a release build of
# permgate-bench (fat LTO, mimalloc) of the commit named, copied aside; lines interleaved, one
# process per build (the host's speed moved +-15% within minutes: compare only within a file):
#   laps   5fdb00b (the records phase cut in three: record owners, related records, record shares)
#   rel    16f8961 (parents' map in bucket order, parent flag at the child's insert)
# for r in 1 2 3 4; do for b in $OLD $NEW; do
#   echo "$b t=10000 $($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants 10000 2>&1 \
#     | grep -E 'build:|build phases|build CPU' | sed 's/(runs: [0-9.]*)//; s/build phases (last run)://; s/owner names (wait) 0 ms, //; s/version 0 ms, //; s/build CPU (last run)://; s/records read (wait) 0 ms, //' | tr '\n' ' ')"
# done; done
#   related-ab.txt: laps against rel: "related records" 312-412 ms -> 213-257 ms (kept)
# Tried and dropped (no gain within the noise; the code is not kept):
#   tenants-ab.txt: record tenants mapped straight into the table's chunks, half on each core
#     (no copy through one 60 MB vector): 72-95 ms against 75-118 ms
#   pieces-ab.txt: the owners' prepare in 32 pieces taken in turn by both threads (instead of
#     two halves): record owners 783-901 ms against 842-932 ms
#   children inserted / parents looked up in the order of their home slots (counting sort):
#     children 172 ms against 115-160 ms, lookups no faster (the entries' own reads missed)
#   the owners' name probes in the order of their home slots, in blocks of 4096 or 65536
#     entries, or each block's slots read first in a loop of loads: prepare 440-600 ms either way
#     (perf annotate puts half of the prepare's samples on the probe's first load: memory-bound
#     random reads of a 64 MB table; sorting did not make them cheaper)
#   MIMALLOC_ALLOW_THP=1 MIMALLOC_LARGE_OS_PAGES=1: no huge pages appear (AnonHugePages 0 kB;
#     the host's THP is "madvise" and the tables are not madvised)
# Timeline of 16f8961 (frame pointers; see ../tenant-build-s16-2026-12-07/run.sh for the commands):
#   timeline-16f8961.txt
# review-fix-ab.txt: 16f8961 ("rel") against the review's fixes (4 commits later, "head": the
#   first entry of a child keeps its parent through the map's entry API; the children's id
#   errors merged in entry order): the same within noise, 3 rounds
# insert-run-ab.txt: 744c3aa ("head"; the two commits after it touch only error paths) against
#   95bf8d2, the owners' place step taking each table chunk once
#   per run of entries (Part::insert_run; "run"), 8 rounds: record owners median ~934 -> ~724 ms,
#   build median 2.55 -> 2.38 s (the first rounds right after a CI run, noisier)
