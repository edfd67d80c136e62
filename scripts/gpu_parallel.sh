#!/usr/bin/env bash
# Run several benchmark calls side by side on one GPU host (sweeps of the quality section, which are bound by the
# host, not the GPU: running them together changes their times, not their results).
#
#   scripts/gpu_parallel.sh SWEEP_FILE
#
# Each non-empty line of SWEEP_FILE that does not start with '#' is the argument list of one `scripts/gpu_host.sh`
# call, for example
#
#   optimize --gpu --only quality --kinds object --seeds 0 --models bases --json sweep_depth01.json --set optimize.depth_lambda=0.1
#
# (gpu_host.sh sets the host up once, under a lock, and copies each call's results to $OUT/results/). Give every
# line its own --json name; each line gets its own --workdir (/tmp/parallel.N) unless it names one as
# `--workdir DIR`. Lines are split on spaces (no quoting). Prints the last lines of each call's output; exits
# non-zero if any call failed.
#
# With GPU_SEQUENTIAL=1 the lines run one after another instead (timings of lone runs), each with what is left of
# GPU_HOST_BUDGET_S since the sweep began; a line with less than GPU_MIN_LINE_S (default 60) seconds left is skipped
# (exit 3 in its log): a benchmark stopped by the budget may take up to 30 s more to end, and a call that overran
# its 10 minutes would bring back neither logs nor the other lines' results.
#
# On a host with several GPUs the lines are dealt out round robin (line n on GPU (n-1) mod count, through
# CUDA_VISIBLE_DEVICES), so 16 lines on four GPUs run four to a GPU. Unless CUDA_VISIBLE_DEVICES is set already.
# Each call's whole output (progress bars left out) lands in $OUT/logs/call_N.log. At most 8 files come back from
# $OUT: when the calls left more than 8 files there (result files, logs, and the two files of a gsplat build that
# gpu_host.sh compiled), the result files and logs come back as one archive, $OUT/results.tar.gz (unpack it with
# `tar xzf results.tar.gz`: results/NAME.json, logs/call_N.log).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/gpu_parallel.sh SWEEP_FILE (one gpu_host.sh argument list per line)" >&2
  exit 2
fi
scripts/gpu_host.sh >/dev/null || exit $?        # the set-up once, before the calls race for it
gpus=1
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "$gpus" -ge 1 ] 2>/dev/null || gpus=1
fi
pids=() logs=() codes=()
sweep_start=$(date +%s)
n=0
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  n=$((n + 1))
  log=$(mktemp "/tmp/parallel.$n.XXXXXX.log")
  read -r -a args <<<"$line"
  case " $line " in
    *" --workdir "*) ;;
    *) # only scripts that take one (e2e, optimize, geometry_ablation; not e.g. deformation)
       # (grep -qs, not cat | grep: under pipefail cat's missing second file failed the test, and e2e lines
       # side by side shared a work folder)
       if grep -qs -- '"--workdir"' "bench/${args[0]}_bench.py" "bench/${args[0]}.py"; then
         args+=(--workdir "/tmp/parallel.$n")
       fi ;;
  esac
  if [ -n "${GPU_SEQUENTIAL:-}" ]; then          # one after another, each with what is left of the budget
    left=$(( ${GPU_HOST_BUDGET_S:-570} - ($(date +%s) - sweep_start) ))
    if [ "$left" -lt "${GPU_MIN_LINE_S:-60}" ]; then   # too little left to start (see the header)
      echo "[$n] skipped (${left} s left, under ${GPU_MIN_LINE_S:-60}) : $line"
      echo "skipped: ${left} s of the budget left, under GPU_MIN_LINE_S=${GPU_MIN_LINE_S:-60}" >"$log"
      codes+=(3) logs+=("$log")
      continue
    fi
    echo "[$n] (sequential, ${left} s left) : $line"
    GPU_HOST_BUDGET_S=$left scripts/gpu_host.sh "${args[@]}" >"$log" 2>&1
    codes+=($?) logs+=("$log")
    continue
  fi
  if [ "$gpus" -gt 1 ]; then
    CUDA_VISIBLE_DEVICES=$(( (n - 1) % gpus )) scripts/gpu_host.sh "${args[@]}" >"$log" 2>&1 &
  else
    scripts/gpu_host.sh "${args[@]}" >"$log" 2>&1 &
  fi
  pids+=($!) logs+=("$log")
  if [ "$gpus" -gt 1 ]; then where="GPU $(( (n - 1) % gpus )) of $gpus"; else where="CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-all}"; fi
  echo "[$n] pid $! ($where) : $line"
done <"$1"
status=0
for i in "${!logs[@]}"; do
  if [ -n "${GPU_SEQUENTIAL:-}" ]; then code=${codes[$i]}; else wait "${pids[$i]}"; code=$?; fi
  [ "$code" -eq 0 ] || status=1
  echo "===== [$((i + 1))] exit $code ====="
  grep -v '^\s*$' "${logs[$i]}" | grep -v 'it/s\]\|step/s\]' | tail -n 12
  if [ -n "${OUT:-}" ]; then                      # the whole output too (a profile's tables are longer than 12 lines)
    mkdir -p "$OUT/logs" && grep -v 'it/s\]\|step/s\]' "${logs[$i]}" >"$OUT/logs/call_$((i + 1)).log"
  fi
done
if [ -n "${OUT:-}" ] && [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  parts=$(cd "$OUT" && ls -d results logs 2>/dev/null | tr '\n' ' ')
  # shellcheck disable=SC2086
  tar czf "$OUT/results.tar.gz" -C "$OUT" $parts && (cd "$OUT" && rm -rf $parts) && echo "results: \$OUT/results.tar.gz"
fi
exit "$status"
