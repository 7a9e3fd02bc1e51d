"""Every input error ends in one line on the terminal of `valuebias run`, naming the file, line and field, with no
Python traceback (issue 22); the traceback is in the run's log and shown with --verbose. Real processes: the CLI
as a user starts it, the scoring worker in its Pipes subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry

PROJECT = Path(__file__).resolve().parents[1]
IDS = list(PROMPTS)


def published_file(columns: list[str] = IDS) -> bytes:
    rows = ["response," + ",".join(columns)] + [f"{w}," + ",".join("1.5" for _ in columns) for w in AGENCY + COMMUNION]
    return ("\n".join(rows) + "\n").encode()


def published_models(files: dict[str, bytes], root: Path) -> str:
    for name, data in files.items():
        (root / f"{name}.csv").write_bytes(data)
    return "".join(f"  {name}:\n    kind: reward_model\n    family: {'llama' if i % 2 else 'gemma'}\n"
                   f"    published: {{small: {name}.csv}}\n" for i, name in enumerate(files))


def valuebias_run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config), *extra],
                          cwd=PROJECT, capture_output=True, text=True, timeout=600)


def lines_naming(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_scoring_worker_input_errors_show_one_line_each_without_a_traceback(tmp_path):
    files = {
        # line 4 of the file (the header is line 1) holds a score that is not a number
        "not-a-number": published_file().replace(b"power,1.5", b"power,high", 1),
        "no-prompt-column": published_file(IDS[:-1]),
        "not-utf8": published_file().replace(b"success", b"succ\xe9ss", 1),
    }
    config = write_small_registry(tmp_path, models=published_models(files, tmp_path), launcher=None,
                                  extra="concurrency: {gpu: 3}\n")
    proc = valuebias_run(config)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    power_line = 1 + 1 + AGENCY.index("power")
    success_line = 1 + 1 + AGENCY.index("success")
    success_byte = published_file().index(b"success") + len("succ")
    expected = {
        "not-a-number.csv": f"{tmp_path}/not-a-number.csv: row {power_line}, field '{IDS[0]}': not a finite number: "
                            "'high'",
        "no-prompt-column.csv": f"{tmp_path}/no-prompt-column.csv: field '{IDS[-1]}': missing score columns for 1 "
                                f"prompt id(s): ['{IDS[-1]}']",
        "not-utf8.csv": f"{tmp_path}/not-utf8.csv: row {success_line}, field 'file': not UTF-8 text "
                        f"(byte {success_byte})",
    }
    for name, message in expected.items():
        found = lines_naming(output, name)
        assert len(found) == 1, (name, output)
        assert found[0].strip().startswith("error: rm_word_scores: scoring") and found[0].endswith(message), found[0]


def test_an_input_error_while_ingesting_shows_one_line(tmp_path):
    config = write_small_registry(tmp_path, models=published_models({"pub": published_file()}, tmp_path),
                                  launcher=None)
    words = tmp_path / "words.csv"
    data = words.read_bytes().replace(b"kindness", b"kindn\xffss")
    words.write_bytes(data)
    proc = valuebias_run(config)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    line = 1 + 1 + len(AGENCY) + COMMUNION.index("kindness")
    assert lines_naming(output, "words.csv") == [
        f"  error: corpus_words: InputError: {words}: row {line}, field 'file': not UTF-8 text "
        f"(byte {data.index(b'kindn') + 5})"]


def test_verbose_shows_the_worker_traceback(tmp_path):
    config = write_small_registry(tmp_path, launcher=None, models=published_models(
        {"no-prompt-column": published_file(IDS[:-1])}, tmp_path))
    proc = valuebias_run(config, "--verbose")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Traceback" in output and "the scoring worker failed" in output
    assert len([line for line in lines_naming(output, "no-prompt-column.csv") if "error: rm_word_scores" in line]) == 1
