#!/bin/bash
# sysc.sh BENCH OUTDIR "names" suite-args... : perf stat syscall counts per proxy during the suite
BENCH=$1; OUT=$2; NAMES=$3; shift 3
mkdir -p $OUT; ulimit -n 20000
$BENCH suite "$@" > $OUT/suite.out 2> $OUT/suite.err &
SP=$!; D=/tmp/permgate-bench-$SP; PP=()
EV=$(for s in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_ctl accept4 close getsockopt setsockopt; do printf "syscalls:sys_enter_%s," $s; done | sed 's/,$//')
for n in $NAMES; do
  for i in $(seq 1 300); do
    if [ $n = nginx ]; then pid=$(pgrep -f "nginx -p $D/nginx" | head -1);
    else pid=$(pgrep -f "serve --config $D/$n/permgate.toml" | head -1); fi
    [ -n "$pid" ] && break; sleep 0.2
  done
  perf stat -e $EV -p $pid -o $OUT/syscalls-$n.txt > /dev/null 2>&1 &
  PP+=($!)
done
wait $SP
for p in "${PP[@]}"; do wait $p; done
