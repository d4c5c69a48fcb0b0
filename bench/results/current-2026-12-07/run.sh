#!/usr/bin/env bash
# Quiet bench run, session 12. Sequential; logs each step's time and loadavg.
set -u
cd /work/main
ulimit -n 20000
B=target/release/permgate-bench
NEW=/work/bin/permgate-new
BASE=/work/bin/permgate-base
OUT=/work/bench/out
mkdir -p $OUT
V=permgate-hyper,permgate-hyper-pass,nginx,haproxy-authz,haproxy-plain
log() { echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg) $*" >> $OUT/steps.log; }
log start
# 1. base vs new, alternating, allowed-get/post/crm-mix (the issue-18 targets)
for i in 1 2; do
  for b in base new; do
    BIN=$BASE; [ $b = new ] && BIN=$NEW
    log "ab $b $i"
    $B suite --only allowed-get,post,crm-mix --variants permgate-hyper,permgate-hyper-pass,nginx \
      --rounds 2 --idle-connections 0 --open-loop-fraction 0 --permgate-bin $BIN --out $OUT/ab-$b-$i > $OUT/ab-$b-$i.log 2>&1
  done
done
# 2. the top table, new build
log h1
$B suite --variants $V,permgate-hyper-nolane --only allowed-get,denied,post,crm-mix,bulk-trim-1k,list-filter \
  --rounds 3 --idle-connections 10000 --permgate-bin $NEW --out $OUT/h1 > $OUT/h1.log 2>&1
log h2
$B suite --protocols h2 --only allowed-get,post --variants $V --rounds 3 --idle-connections 0 --open-loop-fraction 0 \
  --permgate-bin $NEW --out $OUT/h2 > $OUT/h2.log 2>&1
log tls
$B suite --tls --only allowed-get --variants $V --rounds 3 --idle-connections 0 --open-loop-fraction 0 \
  --permgate-bin $NEW --out $OUT/tls > $OUT/tls.log 2>&1
log h2tls
$B suite --tls --tls-modes keepalive --protocols h2 --only allowed-get,post --variants $V --rounds 3 --idle-connections 0 --open-loop-fraction 0 \
  --permgate-bin $NEW --out $OUT/h2tls > $OUT/h2tls.log 2>&1
# 3. tenant snapshot build, each build's own harness
for b in base new; do
  BB=/work/bin/permgate-bench-$b
  log "snap $b"
  /usr/bin/time -v $BB snapshot --users 1000000 --records 10000000 --runs 1 --batches 3 --tenants 10000 > $OUT/snap-$b.log 2>&1
done
log "snap new notenants"
/usr/bin/time -v /work/bin/permgate-bench-new snapshot --users 1000000 --records 10000000 --runs 1 --batches 3 > $OUT/snap-new-notenants.log 2>&1
log done
