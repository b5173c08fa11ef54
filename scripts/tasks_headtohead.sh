#!/usr/bin/env bash
# Issue 6 head-to-head: for each task, make its data, train the diffusion model and its AR twin (same network,
# data, token budget and trainer; configs in examples/configs/tasks/), and evaluate both on the test split.
#   bash scripts/tasks_headtohead.sh [TASK ...]      # default: countdown arithmetic facts
# Sudoku is not in the default: its pair shipped (builtin-sudoku, and builtin-sudoku-ar until its weights were retired
# on 2026-12-03; the claims report reads the built-ins when runs/tasks has no Sudoku run and both ship, see
# docs/models.md to restore the AR twin); `bash scripts/tasks_headtohead.sh sudoku` retrains it (two ~2.4 h runs).
# Outputs: runs/tasks/<task>-{diffusion,ar}/ (checkpoints, final model), runs/tasks/eval/<task>-*.json.
# Each training run resumes where it stopped (--resume), so the script can be interrupted and rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
N_TEST=${N_TEST:-200}
N_SUDOKU=${N_SUDOKU:-100}   # a diffusion Sudoku answer costs 96 forwards of a 192-token canvas
export HF_HUB_OFFLINE=1
declare -A TRAIN_N=([sudoku]=100000 [countdown]=50000 [arithmetic]=100000 [facts]=700)
mkdir -p runs/tasks/eval
for task in "${@:-countdown arithmetic facts}"; do
  for t in $task; do
    data=data/tasks/$t/train.jsonl
    [ -f "$data" ] || "$DLM" tasks make "$t" --split train -n "${TRAIN_N[$t]}" --out "$data"
    for obj in diffusion ar; do
      run=runs/tasks/$t-$obj
      [ -f "$run/final/model.safetensors" ] || "$DLM" train "examples/configs/tasks/$t-$obj.yaml" --resume
      n=$N_TEST; [ "$t" = sudoku ] && n=$N_SUDOKU
      ev=runs/tasks/eval/$t-$obj.json
      if [ ! -s "$ev" ]; then
        "$DLM" eval task "$t" --model "$run/final" -n "$n" --batch-size 25 --json > "$ev.tmp"
        mv "$ev.tmp" "$ev"
      fi
    done
  done
done
