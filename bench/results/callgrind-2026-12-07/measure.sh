#!/usr/bin/env bash
# measure.sh BIN BENCH SCENARIO PROTO N OUTDIR -> prints "thread1_total calls"
# Gateway (threads=1) under callgrind, sample CRM outside it, one keep-alive connection,
# N calls; the total instructions of thread 1 (the data plane).
set -u
BIN=$1; BENCH=$2; SCEN=$3; PROTO=$4; N=$5; OUT=$6
CFGDIR=/work/targets/lanelev-bench/cfg
mkdir -p $OUT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
CRM=$(free_port); GW=$(free_port)
$BIN sample-crm --listen 127.0.0.1:$CRM > $OUT/crm.log 2>&1 &
CRMPID=$!
sed -e "s/^address = \"127.0.0.1:[0-9]*\"/address = \"__X__\"/" $CFGDIR/permgate.toml > /dev/null
python3 - "$CFGDIR" "$OUT" "$GW" "$CRM" <<'PY'
import sys,re
cfgdir,out,gw,crm=sys.argv[1:]
import tomllib
s=open(cfgdir+"/permgate.toml").read()
# rewrite [listen] address / threads and [upstream] address, snapshot path
sec=None; lines=[]
for line in s.splitlines():
    m=re.match(r'^\[([^\]]+)\]',line)
    if m: sec=m.group(1)
    if sec=="listen" and line.startswith("address ="): line=f'address = "127.0.0.1:{gw}"'
    if sec=="listen" and line.startswith("threads ="): line='threads = 1'
    if sec=="upstream" and line.startswith("address ="): line=f'address = "127.0.0.1:{crm}"'
    if sec=="snapshot" and line.startswith("path ="): line=f'path = "{cfgdir}/snapshot.json"'
    lines.append(line)
open(out+"/permgate.toml","w").write("\n".join(lines)+"\n")
PY
for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$CRM) 2>/dev/null && break; sleep 0.1; done
RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=$OUT/cg.out \
  $BIN serve --config $OUT/permgate.toml > $OUT/gw.log 2>&1 &
VGPID=$!
for i in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$GW) 2>/dev/null && break; sleep 0.2; done
H2=""; [ "$PROTO" = h2 ] && H2=--http2
$BENCH load --target http://127.0.0.1:$GW --scenario $SCEN --connections 1 --requests $N \
  --warmup 0 --duration 900 $H2 --json $OUT/load.json > $OUT/load.log 2>&1
kill -TERM $VGPID; wait $VGPID
kill -TERM $CRMPID; wait $CRMPID 2>/dev/null
T1=$(ls $OUT/cg.out*-01 | head -1)
echo "$(grep -E "^(summary|totals):" $T1 | head -1 | awk "{print \$2}") $(grep statuses $OUT/load.log)"
