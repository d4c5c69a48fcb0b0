#!/bin/bash
# ab.sh A B tenants rounds: interleaved full-scale builds (wall, task-clock, faults)
A=$1; B=$2; T=$3; R=${4:-3}
for r in $(seq $R); do for bin in $A $B; do
  out=$(perf stat -x, -e page-faults,task-clock $bin snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants $T 2>&1)
  b=$(echo "$out" | grep -oP "build: median \K[0-9.]+")
  pf=$(echo "$out" | grep "page-faults" | cut -d, -f1)
  tc=$(echo "$out" | grep "task-clock" | cut -d, -f1)
  printf "%-16s build %s s  faults %s  task %.0f ms\n" $(basename $bin) $b $pf $tc
done; done
