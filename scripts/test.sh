#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DAGSTER_DISABLE_TELEMETRY=1
exec .venv/bin/python -m pytest -q "$@"
