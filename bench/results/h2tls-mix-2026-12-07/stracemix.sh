#!/bin/bash
BENCH=$1; OUT=$2; shift 2
mkdir -p $OUT; ulimit -n 20000
$BENCH suite "$@" > $OUT/suite.out 2> $OUT/suite.err &
SP=$!; D=/tmp/permgate-bench-$SP
for i in $(seq 1 300); do pid=$(pgrep -f "serve --config $D/permgate-hyper/permgate.toml" | head -1); [ -n "$pid" ] && break; sleep 0.2; done
sleep 4
timeout 2 strace -f -p $pid -e trace=recvfrom,sendto,write,accept4,close -o /work/h2tls-tmp/strace-mix.txt 2>/dev/null
wait $SP
