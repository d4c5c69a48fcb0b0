#!/bin/bash
# A half hour of builds, 1M users / 10M leads / 10,000 tenants, two builds interleaved, each line
# with the UTC time, the load average and the host's steal time (% of the CPU time since the
# line before, from /proc/stat): series.sh MINUTES NAME=BINARY... (bounded: stops by itself).
minutes=$1; shift
end=$(( $(date +%s) + minutes * 60 ))
read -r _ u n s i w q sq st _ < /proc/stat; prev_tot=$((u+n+s+i+w+q+sq+st)); prev_st=$st
while [ "$(date +%s)" -lt "$end" ]; do
  for nb in "$@"; do
    n=${nb%%=*}; b=${nb#*=}
    line=$($b snapshot --users 1000000 --records 10000000 --runs 1 --batches 0 --tenants 10000 2>&1 \
      | grep -E 'build:|build CPU' | sed 's/(runs: [0-9.]*)//; s/build CPU (last run)://' | tr '\n' ' ')
    read -r _ u nn s i w q sq st _ < /proc/stat; tot=$((u+nn+s+i+w+q+sq+st))
    steal=$(awk -v a=$((st-prev_st)) -v b=$((tot-prev_tot)) 'BEGIN{printf "%.1f", (b>0)?(100*a/b):0}')
    prev_tot=$tot; prev_st=$st
    echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg) steal ${steal}% $n t=10000 $line"
  done
done
