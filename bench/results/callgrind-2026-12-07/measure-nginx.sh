#!/usr/bin/env bash
# measure-nginx.sh SCENARIO PROTO N OUTDIR: nginx (one process) under callgrind, as measure.sh
set -u
SCEN=$1; PROTO=$2; N=$3; OUT=$4
D=/work/targets/lanelev-bench
mkdir -p $OUT/nginx-tmp/{body,proxy,fastcgi,uwsgi,scgi}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
CRM=$(free_port); H1=$(free_port); H2=$(free_port)
$D/base/permgate sample-crm --listen 127.0.0.1:$CRM > $OUT/crm.log 2>&1 &
CRMPID=$!
cat > $OUT/nginx.conf <<NG
daemon off; master_process off; worker_processes 1;
pid $OUT/nginx.pid; error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off;
  client_body_temp_path $OUT/nginx-tmp/body; proxy_temp_path $OUT/nginx-tmp/proxy;
  fastcgi_temp_path $OUT/nginx-tmp/fastcgi; uwsgi_temp_path $OUT/nginx-tmp/uwsgi; scgi_temp_path $OUT/nginx-tmp/scgi;
  keepalive_requests 1000000; keepalive_timeout 60s; http2_max_requests 1000000;
  upstream crm { server 127.0.0.1:$CRM; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$H1 backlog=4096; listen 127.0.0.1:$H2 http2 backlog=4096;
    location / { proxy_pass http://crm; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$CRM) 2>/dev/null && break; sleep 0.1; done
valgrind --tool=callgrind --callgrind-out-file=$OUT/cg.out nginx -p $OUT -c $OUT/nginx.conf -e $OUT/nginx-error.log > $OUT/nginx.out 2>&1 &
VGPID=$!
PORT=$H1; H2F=""; [ "$PROTO" = h2 ] && { PORT=$H2; H2F=--http2; }
for i in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
$D/base/permgate-bench load --target http://127.0.0.1:$PORT --scenario $SCEN --connections 1 --requests $N \
  --warmup 0 --duration 900 $H2F --plain --json $OUT/load.json > $OUT/load.log 2>&1
kill -QUIT $VGPID; wait $VGPID
kill -TERM $CRMPID; wait $CRMPID 2>/dev/null
echo "$(grep -E "^(summary|totals):" $OUT/cg.out | head -1 | awk '{print $2}') $(grep statuses $OUT/load.log)"
