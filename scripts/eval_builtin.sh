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
# Python the corpus never saw: six third-party packages of this environment (versions in the manifest)
"$PY" benchmarks/thirdparty_data.py --out data/thirdparty/test.jsonl | tee "$OUT/thirdparty-manifest.json"
# every built-in that ships (builtin-block only once it does)
MODELS=$("$PY" -c "from dlm.builtin import BUILTIN_MODELS as B; print(' '.join(m for m in ('builtin-diffusion', 'builtin-block', 'builtin-ar') if m in B))")

for m in $MODELS; do
  "$DLM" eval ppl --model "$m" --data "$TEST" --samples 8 --json | tee "$OUT/ppl-$m.json"
  "$DLM" eval ppl --model "$m" --data data/thirdparty/test.jsonl --samples 8 --json | tee "$OUT/ppl-thirdparty-$m.json"
  "$DLM" eval code --model "$m" --data "$TEST" --task complete -n 100 --gen-length 64 --json | tee "$OUT/complete-$m.json"
  for t in infill-line infill-span; do
    "$DLM" eval code --model "$m" --data "$TEST" --task "$t" -n 100 --json | tee "$OUT/$t-$m.json"
  done
done
# the floor both must beat: a unigram model fit on the train split, scored on the same test tokens
"$PY" benchmarks/unigram_ppl.py --model builtin-ar --train data/python/train.jsonl --data "$TEST" \
  | tee "$OUT/ppl-unigram.json"
# honest samples: seeded, the models' default settings
for m in $MODELS; do
  "$DLM" generate "def fibonacci(n):" "def read_config(path):" "class Stack:" $'import os\n\n\ndef ' \
    --model "$m" --seed 0 --json | tee "$OUT/samples-$m.jsonl"
done
"$PY" scripts/model_card_tables.py "$OUT"   # the tables of docs/models.md
"$PY" scripts/model_card_samples.py "$OUT"  # the samples of docs/models.md
