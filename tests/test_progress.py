"""What `valuebias run` shows while scoring: progress lines in each run's log (the UI), read back by the command
as bars on a terminal or plain lines otherwise, with scoring partitions side by side in child processes."""

from __future__ import annotations

import dagster as dg

from valuebias.scoring_worker import parse_progress, progress_line


def test_a_progress_line_reads_back():
    line = progress_line("demo-llama-1", 50_000, 196_074, "sequences scored", 10.0)
    assert line == "demo-llama-1: 50,000/196,074 sequences scored (5,000/s, 29 s left)"
    assert parse_progress(line) == ("demo-llama-1", 50_000, 196_074, "sequences scored")
    assert parse_progress(progress_line("lm-a", 0, 54, "prompts", 0.0)) == ("lm-a", 0, 54, "prompts")
    assert parse_progress("scoring 'demo-llama-1' (rm_word_scores) with the subprocess launcher") is None


def test_scoring_partitions_run_side_by_side_with_their_progress_in_the_run_log(tmp_path, monkeypatch):
    from registry_fixtures import valuebias_cli, write_small_registry

    models = "".join(
        f"  demo-{arch}-1:\n    kind: reward_model\n    family: {arch}\n"
        f"    demo: {{architecture: {arch}, preferred_category: {pref}, seed: 1, hidden_size: 32, train_steps: 150}}\n"
        for arch, pref in (("llama", "Agency"), ("gemma", "Communion")))
    config = write_small_registry(tmp_path, models=models, extra="concurrency: {gpu: 2}\n")
    out = valuebias_cli(config, "run")
    # not a terminal: plain lines, at least the last one of each partition (40 words x 6 prompts)
    assert "  demo-llama-1: 240/240 sequences scored" in out and "  demo-gemma-1: 240/240 sequences scored" in out

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".valuebias" / "dagster"))
    with dg.DagsterInstance.get() as instance:
        runs = [r for r in instance.get_run_records() if r.dagster_run.job_name == "rm_scoring_job"]
        assert len(runs) == 2 and all(r.dagster_run.is_success for r in runs)
        assert max(r.start_time for r in runs) < min(r.end_time for r in runs), "the two partitions did not overlap"
        logged = [e.user_message for r in runs for e in instance.all_logs(r.dagster_run.run_id)
                  if e.dagster_event is None and parse_progress(e.user_message or "")]
        assert {parse_progress(m)[0] for m in logged} == {"demo-llama-1", "demo-gemma-1"}
