#!/usr/bin/env bash
# Time the optimize stage's training step at two commits on one GPU host, in turn (new, old, new, old), so that a
# change of speed between them is not a change of host. Speed figures of different calls come from different hosts,
# which differ by up to ~30 % (docs/gaussians.md, "The cost of a training step").
#
#   here:  rm -rf ab_old && mkdir ab_old && git archive OLD stages pipeline bench configs scripts pyproject.toml \
#            | tar x -C ab_old && rm -rf ab_old/stages/geometry/page4d/weights ab_old/bench/results
#          (ab_old/ stays untracked, so it travels with the checkout; delete it afterwards, never commit it)
#   host:  PAGE4DGS_GIT_COMMIT=<HEAD> AB_OLD_COMMIT=<OLD> scripts/speed_ab.sh [optimize_bench speed arguments]
#
# Default arguments: --gpu --only speed --variants eager --models mlp planes none --repeats 1. Results:
# bench/results/sweeps/ab_new_{1,2}.json (copied to $OUT/results/ by gpu_host.sh) and ab_old_{1,2}.json (copied to
# $OUT/old/); the `speed:` lines of each run are printed (the newer tree's bench prints them), then a table of both
# (bench/speed_ab_table.py), also written to $OUT/ab_summary.json (without $OUT: bench/results/sweeps/).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ab_old/bench ]; then
  echo "speed_ab.sh: no old tree in ab_old/ (make it here with git archive, see the header)" >&2
  exit 2
fi
root=$PWD
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(--gpu --only speed --variants eager --models mlp planes none --repeats 1)
scripts/gpu_host.sh >/dev/null || exit $?             # set-up: wheels into /tmp/page4dgs-site, gsplat's extension
new() { GPU_HOST_BUDGET_S="${GPU_HOST_BUDGET_S:-560}" scripts/gpu_host.sh optimize "${args[@]}" --json "sweeps/$1.json" \
          2>&1 | grep -a '^speed:'; }
old() {
  (cd ab_old && mkdir -p bench/results/sweeps && PAGE4DGS_GIT_COMMIT="${AB_OLD_COMMIT:-unknown}" PYTHONPATH="$PWD:/tmp/page4dgs-site" \
     TORCH_EXTENSIONS_DIR="$root/.gsplat_ext" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
     python3 -m bench.optimize_bench "${args[@]}" --json "sweeps/$1.json" 2>&1 | grep -a '^speed:'
   if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/old" && cp "bench/results/sweeps/$1.json" "$OUT/old/"; fi)
}
echo "== new 1"; new ab_new_1
echo "== old 1"; old ab_old_1
echo "== new 2"; new ab_new_2
echo "== old 2"; old ab_old_2
echo "== both, side by side"
summary="${OUT:-bench/results/sweeps}/ab_summary.json"
python3 -m bench.speed_ab_table --new bench/results/sweeps/ab_new_{1,2}.json \
  --old ab_old/bench/results/sweeps/ab_old_{1,2}.json --out "$summary"
