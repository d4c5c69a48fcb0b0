#!/bin/bash
# Build phases (Snapshot::build_phases, printed by permgate-bench snapshot), with and without
# tenants, with and without a version in the text; 2 rounds. BIN: a release permgate-bench.
BIN=${BIN:-target/release/permgate-bench}
for r in 1 2; do for v in "" "--versioned"; do for t in 10000 0; do
  echo "t=$t $v $($BIN snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $t $v 2>&1 \
    | grep -E "build:|build phases" | sed 's/(runs: [0-9.]*)//' | tr '\n' ' ')"
done; done; done
