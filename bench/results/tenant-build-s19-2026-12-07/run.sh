#!/bin/bash
# Session 19 (2026-12-07), the tenant build, issue 16. Release builds of permgate-bench (fat LTO,
# mimalloc) of the commit named, copied aside and run interleaved with session 18's scripts
# (one process per build per round; the host's speed moves by +-15% within minutes, so compare
# only within one file):
S=../tenant-build-s18-2026-12-07
#   $S/ab.sh ROUNDS 10000 NAME=BINARY...       $S/series.sh MINUTES NAME=BINARY...
#   python3 $S/summary.py FILE                 python3 $S/series-summary.py series.txt
#
#   base    e645dd9 (the session's start)
#   tail1   f321ff2 first form (the related objects' tenants and the shares on the other core
#           while the parent map is filled); tail2 f321ff2 itself (the shares looked up on this
#           core after the parent map when the other gives the tenants: balanced)
#   ahead1  e2f2f54 (the reader makes the owners' name table, then prepares the owners until
#           the compile calls for the records); ahead2 = f967e5a (the table on its own thread
#           again, from the memberships on; helper-56's review)
#
# $S/ab.sh 6 10000 base=BIN tail1=BIN               > tail1-ab.txt   (22:26-22:28 UTC, a slow stretch:
#   base median 3.10 s, tail1 2.85 s; related + shares + tenants ~633 -> ~527 ms)
# $S/ab.sh 8 10000 base=BIN tail1=BIN tail2=BIN     > tail2-ab.txt   (22:33-22:35 UTC)
#   related + shares + tenants: base 455, tail1 415, tail2 405 ms (medians)
# $S/ab.sh 8 10000 tail2=BIN ahead1=BIN             > ahead1-ab.txt  (22:42-22:44 UTC)
#   record owners 942 -> 839 ms; build 2.75 -> 2.69 s
# $S/ab.sh 8 10000 tail2=BIN ahead1=BIN ahead2=BIN  > ahead2-ab.txt  (22:51-22:55 UTC)
#   record owners 793 / 792 / 743 ms; build 2.50 / 2.54 / 2.48 s
# $S/series.sh 30 old=BASE_BIN new=F967E5A_BIN      > series.txt     (22:55-23:25 UTC)
#   201 builds each: old median 2.40 s (p90 2.88, p99 3.13, max 3.18, 9 at 3 s or more),
#   new median 2.28 s (p90 2.65, p99 2.93, max 2.96, none at 3 s or more)
# $S/series.sh 30 old=BASE_BIN new=1568FB9_BIN      > series2.txt    (23:51-00:21 UTC)
#   211 builds each: old median 2.30 s (p90 2.80, p99 3.11, max 3.30, 8 at 3 s or more),
#   new median 2.22 s (p90 2.53, p99 2.83, max 3.07, 1 at 3 s or more)
# $S/ab.sh 5 10000 f967e5a=BIN h1568=BIN           > final-ab.txt   (23:31-23:33 UTC, a fast stretch)
#   1568fb9 (helper-57's review: the table not made when unwanted; its thread joined): build
#   2.18 -> 2.10 s median, record owners 644 -> 604 ms (the same path when all goes well)
#
# Timelines (frame pointers; commands in ../tenant-build-s16-2026-12-07/run.sh, timeline.py
# there): at e645dd9 in a slow stretch the other core was idle 1.4-1.7 s (the memberships end)
# and during the children's inserts; at e2f2f54 the owners' preparation filled the first window.
