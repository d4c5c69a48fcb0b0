#!/bin/bash
# cg.sh BIN tenants: callgrind instructions of the build only (1/10 scale), via toggle on Snapshot::build
BIN=$1; T=$2
valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$$ --toggle-collect='permgate_core::snapshot::Snapshot::build*' $BIN snapshot --users 100000 --records 1000000 --runs 1 --batches 0 --tenants $T >/dev/null 2>&1
callgrind_annotate /tmp/cg.$$ 2>/dev/null | grep -m1 "PROGRAM TOTALS"
rm -f /tmp/cg.$$
