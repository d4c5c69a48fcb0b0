#!/bin/bash
# Build phases (Snapshot::build_phases, printed by permgate-bench snapshot), with and without
# tenants, with and without a version in the text; 2 rounds. BIN: a release permgate-bench.
BIN=${BIN:-target/release/permgate-bench}
for r in 1 2; do for v in "" "--versioned"; do for t in 10000 0; do
  echo "t=$t $v $($BIN snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t $v 2>&1 \
    | grep -E "build:|build phases" | sed 's/(runs: [0-9.]*)//' | tr '\n' ' ')"
done; done; done
# ids-first-ab.txt: OLD=a819ff1, NEW=the split, 3 rounds, each line the build and its phases with
# sed 's/(runs: [0-9.]*)//; s/build phases (last run)://; s/owner names (wait) 0 ms, //; s/version 0 ms//'
# Whole builds, OLD against NEW interleaved, 5 rounds (final-ab.txt):
# for r in 1 2 3 4 5; do for t in 10000 0; do for b in $OLD $NEW; do
#   echo "$b t=$t $($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t 2>&1 | grep -oE 'build: median [0-9.]+ s')"
# done; done; done
