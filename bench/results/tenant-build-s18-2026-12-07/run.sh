#!/bin/bash
# Session 18 (2026-12-07), the tenant build, issue 16. Release builds of permgate-bench (fat LTO,
# mimalloc) of the commit named, copied aside and run interleaved (ab.sh: one process per build
# per round; the host's speed moves by +-15% within minutes, so compare only within one file).
# Summaries: python3 summary.py FILE...   python3 series-summary.py series.txt
#
#   head   460580a (the session's start)
#   blake  4934f0c (an unversioned snapshot's version is the BLAKE3 of its text, not SHA-256)
#   aside  217a7f8 (the owners' tenants mapped on another core while the related objects are
#          inserted; the build of 217a7f8's code before a refactor of build_with's arguments)
#   h217   217a7f8 itself
#
# ./ab.sh 5 10000 head=BIN blake=BIN      > blake-ab.txt    (19:17-19:19 UTC)
# ./ab.sh 8 10000 head=BIN blake=BIN      > blake-ab2.txt   (19:22-19:26 UTC)
#   13 rounds: build user time median 3.32 -> 2.98 s, build median 2.34 -> 2.29 s
# ./ab.sh 6 10000 blake=BIN aside=BIN     > aside-ab.txt    (19:33-19:35 UTC)
#   record tenants ~72 -> ~55 ms; build median 2.23 -> 2.19 s (within noise)
# ./series.sh 30 old=HEAD_BIN new=H217_BIN > series.txt     (19:47-20:17 UTC)
# ./series.sh 30 old=HEAD_BIN new=H0553_BIN > series2.txt  (21:01-21:31 UTC; 0553df8, the final build)
#   a half hour, the session's first build against 217a7f8, interleaved
#
# Timeline of 4934f0c (frame pointers; commands in ../tenant-build-s16-2026-12-07/run.sh, and
# timeline.py there now also labels blake3): the other core idle 0.85-1.1 s (the users' compile
# ends alone), during the children's inserts and during record tenants.
#
# Tried and dropped (no code kept):
#   one-reader-ab.txt: the records read by one thread, not two, while the users compile (the
#     compile then had a core to itself): 8 rounds, 2.49 s against 2.52 s: no faster
#     (a temporary TMP_SPLIT variable chose the split; not in the code)
#   MIMALLOC_PURGE_DELAY=-1 (freed memory never given back): 325k page faults against
#     370k-490k, builds 2.39/1.98/2.04 s against 2.44/2.15/2.33 s (3 rounds). Not kept: mimalloc's
#     options are set by environment or an unsafe call (the crates forbid unsafe code), and much
#     of the gain is the bench's own generator memory reused, which a gateway does not have;
#     MIMALLOC_PURGE_DELAY=1000 (the default of mimalloc v3) changes nothing.
