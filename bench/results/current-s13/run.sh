#!/usr/bin/env bash
# Quiet bench run, session 13 (2026-12-07). Sequential; logs each step's time and loadavg.
# BASE = main at the session's start (3ca49ee), NEW = the build this table is of.
set -u
cd /work/main
ulimit -n 20000
B=${B:-target/release/permgate-bench}
NEW=${NEW:-/work/bin/permgate-new}
BASE=${BASE:-/work/bin/permgate-base}
OUT=${OUT:-/work/bench/out}
mkdir -p $OUT
V=permgate-hyper,permgate-hyper-pass,nginx,haproxy-authz,haproxy-plain
log() { echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg) $*" >> $OUT/steps.log; }
log start
# 1. base vs new, alternating, allowed-get/post/crm-mix (the issue-18 targets), h1 and h2c
for i in 1 2; do
  for b in base new; do
    BIN=$BASE; [ $b = new ] && BIN=$NEW
    log "ab $b $i"
    $B suite --only allowed-get,post,crm-mix --variants permgate-hyper,permgate-hyper-pass,nginx \
      --rounds 2 --idle-connections 0 --open-loop-fraction 0 --permgate-bin $BIN --out $OUT/ab-$b-$i > $OUT/ab-$b-$i.log 2>&1
    $B suite --protocols h2 --only allowed-get --variants permgate-hyper,nginx \
      --rounds 2 --idle-connections 0 --open-loop-fraction 0 --permgate-bin $BIN --out $OUT/ab-h2-$b-$i > $OUT/ab-h2-$b-$i.log 2>&1
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
# 3. one thread against two (nginx two workers, HAProxy two threads)
log threads
$B suite --threads 1,2 --only allowed-get,post --variants $V --rounds 3 --idle-connections 0 --open-loop-fraction 0 \
  --permgate-bin $NEW --out $OUT/threads > $OUT/threads.log 2>&1
log done
