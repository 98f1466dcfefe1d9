#!/bin/bash
# Benchmark: CRI RunPodSandbox (`crictl runp`, CNI network included) for a hyper pod that
# boots its VM, one restored from a VM template (`[factory] template = true`, built by a
# warm-up pod first) and a runc pod, alternated in one test-host boot, BENCH_N (5) each;
# every pod is removed before the next. Prints the medians and their ratios. Not in the
# default suite.
# timeout: 1800
# needs: containerd cni cri hyper-vmm containerd-shim-hyper-v1
# shellcheck source=lib.sh
. "$TH_LIB"
need_bin containerd crictl hyper-vmm containerd-shim-hyper-v1 runc
n=${BENCH_N:-5}
W=/tmp/bench-runp
mkdir -p $W
HYPER_TEMPLATE=false HYPER_DEBUG_CONSOLE=false hyper_config
cp $CTD-hyper.toml $W/cold.toml
sed 's/^template = .*/template = true/' $CTD-hyper.toml > $W/template.toml
trap 'cri_remove_pods; _th_cleanup; rm -rf "$W"' EXIT
cri_start
declare -A MS=()
one() { # one MODE ROUND: runp (timed), then stopp and rmp
  local mode=$1 handler=hyper pod t0 ms
  [ "$mode" = runc ] && handler=runc
  # Each pod's shim reads the config when it starts.
  [ "$mode" = runc ] || cp "$W/$mode.toml" $CTD-hyper.toml
  printf '{"metadata": {"name": "%s-%s", "namespace": "bench", "uid": "runp-%s-%s"}, "log_directory": "%s"}\n' \
    "$mode" "$2" "$mode" "$2" "$W" > "$W/pod.json"
  t0=$(now_ms)
  pod=$(crictl runp --runtime "$handler" "$W/pod.json") || fail "runp ($mode) failed"
  ms=$(( $(now_ms) - t0 ))
  crictl stopp "$pod" > /dev/null || fail "stopp ($mode) failed"
  crictl rmp "$pod" > /dev/null || fail "rmp ($mode) failed"
  MS[$mode]+="$ms "
  echo "round $2 $mode: $ms ms"
}
one template 0 > /dev/null
MS[template]=""
modes=(cold template runc)
for ((i = 1; i <= n; i++)); do
  for ((j = 0; j < 3; j++)); do one "${modes[(i + j) % 3]}" "$i"; done
done
restored=$(grep -c 'agent ready.*restored=true' "$TH_ART/containerd.log" || true)
[ "$restored" -eq $((n + 1)) ] || fail "$restored template pods were restored, not $((n + 1))"
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)) }'; }
mc=$(median <<<"${MS[cold]}") mt=$(median <<<"${MS[template]}") mr=$(median <<<"${MS[runc]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
log "RESULT crictl runp, median of $n: hyper cold ${mc} ms, hyper from a template ${mt} ms, runc ${mr} ms; cold/template $(ratio "$mc" "$mt"), template/runc $(ratio "$mt" "$mr")"
