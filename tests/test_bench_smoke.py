"""Every benchmark under bench/ runs in its ``--smoke`` mode as a user runs it (``python -m bench.<name> --smoke``,
a real process from the project root) and prints the figures it promises, so that no benchmark can break
silently (bench/scoring.py once stopped parsing and nobody noticed).

- A new module under bench/ fails ``test_every_bench_module_is_smoke_tested`` until its lines are listed in
  ``PROMISED``.
- Each smoke run must exit 0 and print every promised line (a regular expression, matched against whole lines
  of stdout); the workload sizes in them are the smoke modes' own, so a run that silently did less fails.
- The runs go one after another; most of each is importing torch, transformers and dagster (all five: about
  55 s of CPU time on 2 cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"

PROMISED = {
    "content_digest": [
        r"file: 4 MiB \(0\.00 GiB\), median of 1 runs each",
        *(rf"\s*{name}: +{NUMBER} ms .*ratio to read: {NUMBER}" for name in ("read", "sha256", "routine check",
                                                                          "verify")),
        rf"sha256/read={NUMBER} routine/sha256={NUMBER} verify/sha256={NUMBER}",
    ],
    "invariance": [
        r"model demo-llama-1: 36 sequences \(3 prompts x 12 words\), batch 32, 1 thread\(s\), float32",
        rf"partition \(scoring, everything but the audit\): +{NUMBER} s \({NUMBER} s in the engine\)",
        rf"audit, within the partition: +{NUMBER} s = +{NUMBER}% of the partition; 36 sequences .*",
        r"  failures: none",
        rf"model load \(what a fully reused partition adds for the audit\): {NUMBER} s",
        rf"audit, +4 words per prompt: +12 sequences +{NUMBER} s = +{NUMBER}% of the partition; max \|diff\| .*",
        rf"audit, +8 words per prompt: +24 sequences +{NUMBER} s = +{NUMBER}% of the partition; max \|diff\| .*",
    ],
    "scoring": [
        r"engine support: True \(generic sequence-classification head\)",
        r"workload: 2 prompts x 12 words = 24 sequences; .*",
        rf"straightforward \(score_words, batch 4\): {NUMBER}s, .*",
        rf"engine \(prefix_cache\): {NUMBER}s, .*",
        rf"flop_ratio_bound={NUMBER} \(unpadded full tokens / engine tokens: {NUMBER}\)",
        rf"achieved straightforward: {NUMBER} TFLOP/s .*% of peak 1",
        rf"achieved engine: {NUMBER} TFLOP/s .*% of peak 1",
        rf"speedup_of_bound={NUMBER} \(speedup / flop_ratio_bound\)",
        rf"speedup={NUMBER} max_abs_diff={NUMBER} sequences=24",
    ],
    "storage_outage": [
        rf"objectstore_first_call_ms={NUMBER}",
        rf"objectstore_median_later_call_ms={NUMBER}",
        rf"s3fs_one_attempt_call_s={NUMBER}",
        rf"ratio_one_attempt_over_objectstore={NUMBER}",
    ],
    "value_cards": [
        r"entries=54 prompts=6 rankings=2",
        *(rf"models={n} per_card={NUMBER}s all_{n}_cards~{NUMBER}s baseline_reference_only={NUMBER}s "
          rf"ratio_card_with_sums/baseline={NUMBER}" for n in (4, 8)),
    ],
    "new_model_latency": [
        r"registry: small \(tests\); initial `valuebias run`: \d+ s",
        r"daemon: model_partitions_sensor every 5 s \(a full plan on a change, an ended run, or every 30 s\)",
        rf"try 1: new-1: scoring run {NUMBER} s \| config edit -> rm_report and value cards {NUMBER} s \| "
        rf"beyond scoring {NUMBER} s \(budget 60 s\)",
        rf"median of 1: scoring run {NUMBER} s \| end-to-end {NUMBER} s \| beyond scoring {NUMBER} s \| "
        rf"end-to-end / scoring {NUMBER}",
    ],
}

#: Smoke runs that take longer than the others' 600 s limit on a busy machine (a real daemon and its runs).
TIMEOUTS = {"new_model_latency": 1200}


#: Benchmarks whose smoke mode a test of their own runs (it checks more than printed lines).
SMOKE_TESTED_ELSEWHERE = {"dequantised_cache": "test_bench_dequantised_cache.py"}


def test_every_bench_module_is_smoke_tested():
    modules = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")
    assert all((ROOT / "tests" / test).exists() for test in SMOKE_TESTED_ELSEWHERE.values())
    assert modules == sorted([*PROMISED, *SMOKE_TESTED_ELSEWHERE]), \
        "list the promised lines of every bench/ module in PROMISED"


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_smoke_mode_runs_and_prints_its_figures(name):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               DAGSTER_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUTS.get(name, 600))
    stdout = proc.stdout
    report = f"python -m bench.{name} --smoke exited {proc.returncode}:\n{stdout}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    lines = stdout.splitlines()
    missing = [pattern for pattern in PROMISED[name] if not any(re.fullmatch(pattern, line) for line in lines)]
    assert not missing, f"lines not printed: {missing}\n{report}"
    if name == "scoring":  # the figures agree with each other, and the engine with the straightforward path
        figures = {k: float(v) for k, v in re.findall(rf"\b(flop_ratio_bound|speedup_of_bound|speedup|max_abs_diff)="
                                                       rf"({NUMBER})", stdout)}
        assert figures["max_abs_diff"] <= 1e-4, report
        assert figures["speedup_of_bound"] == pytest.approx(figures["speedup"] / figures["flop_ratio_bound"],
                                                            abs=0.01), report
