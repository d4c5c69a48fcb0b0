#!/usr/bin/env bash
# series2.sh LABEL BINDIR [kinds] [protos]: warm token cache (N1 large), per-call over N2-N1
D=/work/targets/lanelev-bench; L=$1; B=$2
KINDS=${3:-"allowed-get post crm-mix"}; PROTOS=${4:-"h1 h2"}
for k in $KINDS; do for p in $PROTOS; do
  if [ $k = crm-mix ]; then N1=4000; N2=8000; else N1=1500; N2=4500; fi
  a=$($D/measure.sh $B/permgate $D/base/permgate-bench /work/wt/lanelev/bench/scenarios/$k.toml $p $N1 $D/runs/$L-$k-$p-$N1)
  b=$($D/measure.sh $B/permgate $D/base/permgate-bench /work/wt/lanelev/bench/scenarios/$k.toml $p $N2 $D/runs/$L-$k-$p-$N2)
  ta=${a%% *}; tb=${b%% *}
  echo "$L $k $p per_call=$(( (tb - ta) / (N2 - N1) )) [$a] [$b]"
done; done
