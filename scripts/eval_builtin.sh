#!/usr/bin/env bash
# Every number of the built-in models' card (docs/models.md), from dlm commands, on the TEST split.
#   bash scripts/eval_builtin.sh [OUT_DIR]      # default runs/model-card; ~15 min on a 2-core CPU
# Needs the corpus: `dlm data prepare python` (the script runs it when data/python/test.jsonl is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/model-card}
DLM=${DLM:-.venv/bin/dlm}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
[ -f data/python/test.jsonl ] || "$DLM" data prepare python
TEST=data/python/test.jsonl

for m in builtin builtin-ar; do
  "$DLM" eval ppl --model "$m" --data "$TEST" --samples 8 --json | tee "$OUT/ppl-$m.json"
  "$DLM" eval code --model "$m" --data "$TEST" --task complete -n 100 --gen-length 64 --json | tee "$OUT/complete-$m.json"
  for t in infill-line infill-span; do
    "$DLM" eval code --model "$m" --data "$TEST" --task "$t" -n 100 --json | tee "$OUT/$t-$m.json"
  done
done
# the floor both must beat: a unigram model fit on the train split, scored on the same test tokens
"$PY" benchmarks/unigram_ppl.py --model builtin --train data/python/train.jsonl --data "$TEST" \
  | tee "$OUT/ppl-unigram.json"
# honest samples: seeded, the models' default settings
for m in builtin builtin-ar; do
  "$DLM" generate "def fibonacci(n):" "def read_config(path):" "class Stack:" $'import os\n\n\ndef ' \
    --model "$m" --seed 0 --json | tee "$OUT/samples-$m.jsonl"
done
"$PY" scripts/model_card_tables.py "$OUT"   # the tables of docs/models.md
"$PY" scripts/model_card_samples.py "$OUT"  # the samples of docs/models.md
