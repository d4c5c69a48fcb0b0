#!/bin/bash
# The tenant build side by side (bench/RESULTS.md, "Tenant build: users read at a glance ...").
# OLD: main at 217d8d2's permgate-bench (glibc malloc, as the bench ran then); NEW: this build's
# (the gateway's allocator, mimalloc). One process per build, alternating, 5 rounds.
OLD=${OLD:?path to the old permgate-bench}; NEW=${NEW:-target/release/permgate-bench}
for r in 1 2 3 4 5; do for b in $OLD $NEW; do for t in 0 10000; do
  echo "$b t=$t $($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t 2>&1 | grep -o 'build: median [0-9.]* s')"
done; done; done
# A version in the text (no content hash, as the database source writes it):
for r in 1 2 3 4 5; do for t in 0 10000; do
  echo "versioned t=$t $($NEW snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t --versioned 2>&1 | grep -o 'build: median [0-9.]* s')"
done; done
