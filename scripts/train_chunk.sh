#!/usr/bin/env bash
# One resumable training chunk of page4d-tiny (or another configs/train/ recipe) on a GPU host, under 10 minutes.
#
#   scripts/train_chunk.sh [CONFIG=page4d-tiny] [MINUTES=8] [key=value ...]
#   GPUS=4 scripts/train_chunk.sh ...     data-parallel over 4 GPUs of the host (torchrun; data_parallel.py): each
#                                         GPU draws its own batch of max_images frames, so a step sees 4x the frames
#
# Where it continues from, in this order:
#   1. runs/train/CONFIG/checkpoint.pt  - left by the previous chunk on the same (still warm) machine: an exact resume
#                                         (fp32 weights, AdamW state, RNG states);
#   2. runs/carry/CONFIG-weights.safetensors.part00 (+ .part01 ..., .parts.json) - the parts a previous chunk
#                                         returned, carried back in: a weights-only resume (fp16 weights, the step and
#                                         the data stream restored; AdamW moments restart with a short learning-rate
#                                         re-warm-up);
#   3. $RESUME_FROM - exported weights with their training state (e.g. the bundled
#                                         stages/geometry/page4d/weights/page4d-tiny.safetensors, which travels with
#                                         the checkout): weights only, as in 2; with a larger `steps=` this continues
#                                         training on a longer schedule. The bundled file is 8-bit: training then
#                                         starts from its dequantized weights (the log warns); prefer fp16 parts;
#   4. nothing: a fresh start.
# The chunk trains for MINUTES minutes of wall time (the loop stops cleanly before that with a checkpoint), then
# writes to $OUT (files of at most 16 MiB, at most 8 of them):
#   CONFIG-weights.safetensors.part00, .part01  the fp16 weights with the training state (split at 15 MiB)
#   CONFIG-weights.safetensors.parts.json        sizes and SHA-256 of the parts
#   train_log.csv, summary.json, chunk.json      the loss/throughput log, the run summary, this chunk's timing
# To continue in a later session: copy those parts into runs/carry/ here and carry runs/carry to the next call.
# When the schedule is complete the final weights are also written to the config's `export` path in its
# `export_format` (for page4d-tiny: 8-bit, stages/geometry/page4d/weights/page4d-tiny.safetensors) and copied to $OUT;
# joining the fp16 parts and re-encoding them gives nearly the same file (8-bit steps of the fp16-rounded weights):
#   python -m stages.geometry.page4d.export_weights --join runs/carry/page4d-tiny-weights.safetensors.part00 \
#       --out /tmp/page4d-tiny-fp16.safetensors
#   python -m stages.geometry.page4d.export_weights /tmp/page4d-tiny-fp16.safetensors --int8 \
#       --out stages/geometry/page4d/weights/page4d-tiny.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-page4d-tiny}"
MINUTES="${2:-8}"
shift $(( $# > 2 ? 2 : $# ))
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"   # the host's python (with torch); PYTHON=.venv/bin/python elsewhere
start=$(date +%s)

# Our pure-Python dependencies the host may lack, carried as wheels in .whl/ (see scripts/gpu_host.sh).
SITE=/tmp/page4dgs-site
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

RUN="runs/train/$CONFIG"
CARRY="runs/carry/$CONFIG-weights.safetensors"
RESUME=()
if [ -f "$RUN/checkpoint.pt" ]; then
  echo "resuming exactly from $RUN/checkpoint.pt"
  RESUME=(--resume "$RUN/checkpoint.pt")
elif [ -f "$CARRY.part00" ]; then
  "$PY" -m stages.geometry.page4d.export_weights --join "$CARRY.part00" --out "$RUN/carried.safetensors"
  echo "resuming (weights only) from the carried $CARRY parts"
  RESUME=(--resume "$RUN/carried.safetensors")
elif [ -n "${RESUME_FROM:-}" ]; then
  echo "resuming (weights only) from $RESUME_FROM"
  RESUME=(--resume "$RESUME_FROM")
else
  echo "no checkpoint: starting $CONFIG from scratch"
fi

# The budget covers the whole loop; setup and the copy below take well under a minute.
GPUS="${GPUS:-1}"
if [ "$GPUS" -gt 1 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m pipeline.cli train-model \
    --config "$CONFIG" "${RESUME[@]}" "max_minutes=$MINUTES" "$@"
else
  "$PY" -m pipeline.cli train-model --config "$CONFIG" "${RESUME[@]}" "max_minutes=$MINUTES" "$@"
fi

if [ -n "${OUT:-}" ]; then
  NAME=$("$PY" -c "import yaml,sys; print(yaml.safe_load(open('configs/train/$CONFIG.yaml')).get('model','page4d-tiny'))")
  cp "$RUN/export/$NAME.safetensors" "$RUN/$CONFIG-weights.safetensors"
  "$PY" -m stages.geometry.page4d.export_weights --split "$RUN/$CONFIG-weights.safetensors" --part-mib 15 --to "$OUT"
  cp "$RUN/train_log.csv" "$RUN/summary.json" "$OUT/"
  # A finished schedule also returns the shipped file (for page4d-tiny 8-bit, 15 MB: one file under 16 MiB), as
  # the run wrote it (summary.json's final_export: overrides included).
  FINAL=$("$PY" -c "import json; print(json.load(open('$RUN/summary.json')).get('final_export') or '')")
  if [ -n "$FINAL" ] && [ -f "$FINAL" ]; then
    cp "$FINAL" "$OUT/"
  fi
fi
end=$(date +%s)
"$PY" - "$start" "$end" "$CONFIG" "${OUT:-}" "$GPUS" <<'PY'
import json, sys, torch
start, end, config, out, gpus = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
summary = json.load(open(f"runs/train/{config}/summary.json"))
record = {"config": config, "chunk_wall_s": end - start, "train_s_this_chunk": summary["run_wall_s"], "gpus": gpus,
          "step": summary["state"]["step"], "finished": summary["finished"], "stop_reason": summary["stop_reason"],
          "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
print(json.dumps(record))
if out:
    json.dump(record, open(f"{out}/chunk.json", "w"), indent=2)
PY
