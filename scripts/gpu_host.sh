#!/usr/bin/env bash
# Prepare a bare GPU host that has no network, then run one named benchmark (or any python module).
#
#   scripts/gpu_host.sh BENCH [ARGS...]      e.g. scripts/gpu_host.sh rasterizer --gpu
#
# - Installs the wheels carried in .whl/ (our dependencies the host lacks: gsplat, plyfile, lpips) into a private
#   site folder; the host's own torch/numpy/scikit-image are used as they are.
# - Builds gsplat's CUDA extension once into .gsplat_ext/ (TORCH_EXTENSIONS_DIR) and reuses it when that folder is
#   carried back to the next host; with $OUT set, the built extension is copied there so it can be carried.
# - Runs `python3 -m bench.run BENCH ARGS...` (see bench/run.py for the names).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
SITE=/tmp/page4dgs-site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TORCH_EXTENSIONS_DIR="$PWD/.gsplat_ext"
export MAX_JOBS="${MAX_JOBS:-16}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

start=$(date +%s)
python3 - <<'PY'
import time, torch
t = time.time()
from gsplat.cuda._backend import _C
assert _C is not None, "gsplat CUDA extension failed to build"
print(f"gsplat extension ready in {time.time() - t:.1f} s (torch {torch.__version__}, cuda {torch.version.cuda})")
PY
if [ -n "${OUT:-}" ] && [ "$(( $(date +%s) - start ))" -gt 20 ]; then
  # Freshly built: send it back so the next call can carry it (.gsplat_ext/ is git-ignored).
  so=$(find .gsplat_ext -name 'gsplat_cuda.so' | head -n 1)
  [ -n "$so" ] && mkdir -p "$OUT/gsplat_ext" && cp "$so" "$OUT/gsplat_ext/" && echo "$so" > "$OUT/gsplat_ext/path.txt"
fi
if [ "$#" -gt 0 ]; then python3 -m bench.run "$@"; fi
