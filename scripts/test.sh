#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# tests/test_postgres_instance.py starts a throwaway PostgreSQL server: make sure the server binaries
# are installed (nothing is done when they already are). Only root with apt-get can install them; the
# Debian package registry is the only network this needs.
have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! have_postgres; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing PostgreSQL (apt-get) for tests/test_postgres_instance.py" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null; } || echo "scripts/test.sh: warning: installing PostgreSQL failed" >&2
  else
    echo "scripts/test.sh: PostgreSQL not found (needs root and apt-get to install it):" \
         "tests/test_postgres_instance.py will be skipped, or fail when CI is set" >&2
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DAGSTER_DISABLE_TELEMETRY=1
# One pytest worker per core (pytest-xdist); `--dist loadscope` keeps each test module on one worker, so a
# module-scoped fixture (a built model, a registry that has run) is built once. `-n 0` runs in one process.
# The tests' tiny models are fastest on one thread, and two workers each running two torch threads only fight
# over the cores: torch and its subprocesses (scoring workers, CLI runs) start with one thread unless told.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n auto --dist loadscope --durations=10 "$@"
