#!/bin/bash
BENCH=$1; OUT=$2; shift 2
mkdir -p $OUT; ulimit -n 20000
$BENCH suite "$@" > $OUT/suite.out 2> $OUT/suite.err &
SP=$!; D=/tmp/permgate-bench-$SP
for i in $(seq 1 300); do pid=$(pgrep -f "serve --config $D/permgate-hyper/permgate.toml" | head -1); [ -n "$pid" ] && break; sleep 0.2; done
sleep 3
perf record -F 499 --call-graph dwarf,16384 -p $pid -o /work/h2tls-tmp/perf-dwarf.data -- sleep 4 > /dev/null 2>&1
wait $SP
