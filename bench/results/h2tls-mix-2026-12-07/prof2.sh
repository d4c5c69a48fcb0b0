#!/bin/bash
# prof.sh BENCH OUTDIR "variant1 variant2" suite-args...   (perf on each named proxy during the suite)
BENCH=$1; OUT=$2; NAMES=$3; shift 3
mkdir -p $OUT
ulimit -n 20000
$BENCH suite "$@" > $OUT/suite.out 2> $OUT/suite.err &
SP=$!
D=/tmp/permgate-bench-$SP
PP=()
for n in $NAMES; do
  for i in $(seq 1 300); do
    if [ $n = nginx ]; then pid=$(pgrep -f "nginx -p $D/nginx" | head -1);
    elif [ $n = haproxy ]; then pid=$(pgrep -f "haproxy -db -f $D/haproxy" | head -1);
    else pid=$(pgrep -f "serve --config $D/$n/permgate.toml" | head -1); fi
    [ -n "$pid" ] && break; sleep 0.2
  done
  echo "$n pid $pid" >> $OUT/pids.txt
  perf record -F 999 -g -p $pid -o /work/h2tls-tmp/perf-$(basename $OUT)-$n.data > /dev/null 2> $OUT/perf-$n.err &
  PP+=($!)
done
cat /proc/loadavg > $OUT/loadavg-start.txt
wait $SP
cat /proc/loadavg > $OUT/loadavg-end.txt
for p in "${PP[@]}"; do wait $p; done
for n in $NAMES; do
  perf report -i /work/h2tls-tmp/perf-$(basename $OUT)-$n.data --no-children --sort dso,sym --stdio -g none 2>/dev/null > /work/h2tls-tmp/report-$(basename $OUT)-$n.txt
  head -c 0 /dev/null
  python3 /work/h2tls-tmp/groups.py /work/h2tls-tmp/report-$(basename $OUT)-$n.txt > $OUT/shares-$n.txt
  grep -v '^#' /work/h2tls-tmp/report-$(basename $OUT)-$n.txt | grep -v '^$' | head -60 > $OUT/top-$n.txt
done
