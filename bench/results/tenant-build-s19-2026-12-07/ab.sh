#!/bin/bash
# Interleaved A/B of release builds of permgate-bench: ab.sh ROUNDS TENANTS NAME=BINARY...
# One process per build per round; the host's speed moves +-15% within minutes, so compare
# only within one file.
rounds=$1; tenants=$2; shift 2
for r in $(seq "$rounds"); do
  for nb in "$@"; do
    n=${nb%%=*}; b=${nb#*=}
    echo "$n t=$tenants $($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants "$tenants" 2>&1 \
      | grep -E 'build:|build phases|build CPU' | sed 's/(runs: [0-9.]*)//; s/build phases (last run)://; s/owner names (wait) 0 ms, //; s/version 0 ms, //; s/build CPU (last run)://; s/records read (wait) 0 ms, //; s/, assemble 0 ms//' | tr '\n' ' ')"
  done
done
