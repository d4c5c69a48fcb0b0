#!/usr/bin/env bash
cd /work/main
for b in base new; do
  echo "$(date -u +%T) $(cat /proc/loadavg) $b" >> /work/bench/fresh/steps10m.log
  python3 bench/freshness.py --scale 1 --load-only --permgate-bin /work/bin/permgate-$b --bench-bin /work/bin/permgate-bench --json /work/bench/fresh/10m-$b.json > /work/bench/fresh/10m-$b.log 2>&1
done
echo "$(date -u +%T) done" >> /work/bench/fresh/steps10m.log
