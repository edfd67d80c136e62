#!/usr/bin/env bash
# Prepare a bare GPU host that has no network, then run one benchmark step, a group, or one bench script.
#
#   scripts/gpu_host.sh gpu --only geometry          one step of the GPU suite (python -m bench.run --list)
#   scripts/gpu_host.sh gpu                          the whole GPU suite (make bench)
#   scripts/gpu_host.sh e2e synthetic --seeds 0      one bench script with its own arguments
#   scripts/gpu_host.sh pytest [ARGS]                the test suite on the GPU host (the CUDA-only tests run there);
#                                                    with $OUT set, its JUnit report comes back as $OUT/pytest.xml
#   scripts/gpu_host.sh                              only the set-up
#
# - Installs the wheels carried in .whl/ (our dependencies the host lacks: gsplat, plyfile, lpips, ...) into a
#   private site folder; the host's own torch/numpy/scikit-image are used as they are.
# - gsplat's CUDA extension: a build carried in .gsplat_ext/prebuilt/ (gsplat_cuda.so + build.json) is loaded
#   directly when it was built for the same gsplat/torch/CUDA/Python/architecture (scripts/gsplat_prebuilt.py says
#   why and how); otherwise gsplat compiles it once (about a minute), and the new build is stored in
#   .gsplat_ext/prebuilt/ and, with $OUT set, copied to $OUT/gsplat_ext_prebuilt/. Carry it to the next host:
#   copy those two files into .gsplat_ext/prebuilt/ here and pass `.gsplat_ext/prebuilt` (and `.whl`) as carry.
# - LPIPS: .cache/lpips/alex.safetensors, when carried, is used as the LPIPS backbone (no download there).
# - The host's copy of the checkout may carry a stale .git: write the local commit into the command, e.g.
#   `PAGE4DGS_GIT_COMMIT=<git rev-parse HEAD here> scripts/gpu_host.sh ...`, and results record that commit.
# - Runs `python3 -m bench.run ARGS...`; results land in bench/results/ and, with $OUT set, the files this call
#   wrote are copied to $OUT/results/ (a few files: what comes back from $OUT is limited in number and size).
#   The benchmark is stopped (SIGINT) when $GPU_HOST_BUDGET_S seconds (default 570) have passed since this script
#   started, so that the copy still happens inside a 10-minute call; benchmarks write their JSON as they go, so a
#   stopped one keeps what finished (the end-to-end suites continue from there when the same command runs again).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
started=$(mktemp /tmp/gpu_host_started.XXXXXX)   # results newer than this file were written by this call
start_s=$(date +%s)
SITE=/tmp/page4dgs-site
if compgen -G ".whl/*.whl" >/dev/null; then
  # Once per host and set of wheels (by content), under a lock: several benchmarks may start side by side.
  wheels=$(sha256sum .whl/*.whl | sha256sum | cut -c1-16)
  mkdir -p "$SITE"
  (
    flock 9
    if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$wheels" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
      echo "$wheels" > "$SITE/.wheels"
    fi
  ) 9>"$SITE.lock"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
# LPIPS backbone weights (stages/evaluate/lpips_weights.py): the host cannot fetch them; carry .cache/lpips
# (alex.safetensors from `make install`'s cache, ~10 MB) and evaluation computes LPIPS-alex there too.
if [ -d .cache/lpips ]; then export PAGE4DGS_LPIPS_DIR="$PWD/.cache/lpips"; fi
export TORCH_EXTENSIONS_DIR="$PWD/.gsplat_ext"
export MAX_JOBS="${MAX_JOBS:-16}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

python3 scripts/gsplat_prebuilt.py ensure .gsplat_ext/prebuilt --site "$SITE" | tee /tmp/gsplat_prebuilt.log
if [ -n "${OUT:-}" ] && grep -q "(compiled)" /tmp/gsplat_prebuilt.log; then
  mkdir -p "$OUT/gsplat_ext_prebuilt" && cp .gsplat_ext/prebuilt/gsplat_cuda.so .gsplat_ext/prebuilt/build.json \
    "$OUT/gsplat_ext_prebuilt/"
fi
status=0
if [ "$#" -gt 0 ]; then
  left=$(( ${GPU_HOST_BUDGET_S:-570} - ($(date +%s) - start_s) ))
  if [ "$1" = pytest ]; then
    shift
    # The tests read the LPIPS weights from $PAGE4DGS_LPIPS_DIR (set above when .cache/lpips was carried).
    timeout --signal=INT --kill-after=30 "$(( left > 30 ? left : 30 ))" python3 -m pytest -p no:cacheprovider -rfEs \
      ${OUT:+--junitxml="$OUT/pytest.xml"} "$@" || status=$?
  else
    timeout --signal=INT --kill-after=30 "$(( left > 30 ? left : 30 ))" python3 -m bench.run "$@" || status=$?
  fi
fi
if [ -n "${OUT:-}" ] && [ -d bench/results ]; then
  (cd bench && find results -type f -newer "$started" -exec cp --parents {} "$OUT/" \;)
fi
exit "$status"
