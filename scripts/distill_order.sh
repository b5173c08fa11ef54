#!/usr/bin/env bash
# Issue 16: does trajectory-ordered masking (`distill.mask_order: left_to_right`) let the distilled block model
# commit more tokens per forward than independent masking, at the same quality? The loop-free teacher's data
# (the AR twin, greedy, no repeated 8-gram), then the block student once per order with the same recipe
# (examples/configs/builtin-block-distill.yaml: certainty forcing, 240 steps of 16), then for each student
# `dlm bench` against the AR twin in one process (batch 1 and 8, gen 256) and the paired quality test against it.
#   bash scripts/distill_order.sh [ORDER ...]       # default: random left_to_right
# Outputs under runs/distill-<order>/ (the run, final/, bench.json, quality.json). Each step is skipped when its
# output exists and every training resumes (--resume), so the script can be interrupted and rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
data=data/distill/python-ar-nr8
[ -f data/python/train.jsonl ] || "$DLM" data prepare python
"$DLM" distill data --teacher builtin-ar --data data/python/train.jsonl --out "$data" --prompts 4096 \
  --no-repeat-ngram-size 8  # resumes; a finished dataset is left as it is
for order in "${@:-random left_to_right}"; do
  for o in $order; do
    run=runs/distill-$o
    [ -f "$run/final/model.safetensors" ] || "$DLM" train examples/configs/builtin-block-distill.yaml \
      --set "out_dir=$run" --set "data.train=[$data/part-*.jsonl]" --set "distill.mask_order=$o" \
      --set train.progress=false --resume
    [ -s "$run/bench.json" ] || "$DLM" bench --methods ar,block-1,block --block-model "$run/final" \
      --batch-size 1 8 --gen-length 256 --json > "$run/bench.json"
    [ -s "$run/quality.json" ] || "$PY" benchmarks/paired_quality.py --a "$run/final" --out "$run/quality.json"
  done
done
