"""Hostile and broken input ends in one clear error naming the file, the line and the field (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from valuebias.config import ID_PATTERN, load_config
from valuebias.corpora import read_corpus
from valuebias.errors import InputError
from valuebias.prompts import read_prompts

PROJECT = Path(__file__).resolve().parents[1]
CONFIG = """\
prompts: {uri: prompts.csv}
corpora:
  big2: {uri: words.csv, format: csv, word_column: word, category_column: category}
models:
"""


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" YAML: each level nine references to the previous one (9**9 strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_config_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "valuebias.yaml"
    path.write_text(CONFIG + "  m1: {kind: reward_model, family: llama, huggingface: {path: org/rm}}\n"
                    + alias_bomb())
    # in a child process capped at 1 GiB of address space: expanding the bomb would need far more
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from valuebias.orchestration.cli import main; sys.exit(main(['status', '--config', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"valuebias: error: {path}: row 7: YAML aliases (*l0) are not allowed here; "
                                   "write the value out in full")


def test_a_prompt_table_with_aliases_is_refused():
    with pytest.raises(InputError, match=r"prompts.yaml: row 2: YAML aliases \(\*t\) are not allowed"):
        read_prompts(b"best_ever_one: &t What is the best thing ever?\nworst_ever_one: *t\n", source="prompts.yaml")


@pytest.mark.parametrize("model_id", ["modèle", "m\u0661", "rm/one", "-rm", "a" * 101])
def test_model_ids_follow_one_pattern(tmp_path, model_id):
    path = tmp_path / "valuebias.yaml"
    path.write_text(CONFIG + f"  '{model_id}': {{kind: reward_model, family: llama, huggingface: {{path: org/rm}}}}\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.row == 5 and err.value.field == f"models.{model_id}"
    assert ID_PATTERN in str(err.value)


def test_the_contracts_check_the_same_id_patterns_as_the_parsers():
    from valuebias.prompts import PROMPT_ID_PATTERN

    contract = yaml.safe_load((PROJECT / "data_contracts" / "model_registry.yaml").read_text())
    assert contract["columns"]["model"]["regex"] == ID_PATTERN
    contract = yaml.safe_load((PROJECT / "data_contracts" / "prompts.yaml").read_text())
    assert contract["columns"]["prompt"]["regex"] == PROMPT_ID_PATTERN


def test_a_bad_prompt_id_names_the_file_line():
    """Line 4 of the file: the quoted text before it spans two lines."""
    data = b'prompt,text\nbest_ever_one,"What is\nthe best?"\nbest_ever_1,x\n'
    with pytest.raises(InputError) as err:
        read_prompts(data, source="prompts.csv")
    assert (err.value.row, err.value.field) == (4, "prompt") and "'best_ever_1' does not match" in str(err.value)


def test_an_oversized_or_non_utf8_config_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(CONFIG + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(InputError, match=r"big.yaml: the config file is \d+ bytes; a registry config is at most"):
        load_config(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes((CONFIG + "  caf\xe9: {kind: reward_model}\n").encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.yaml: row 5: not UTF-8 text \(byte \d+\)"):
        load_config(latin)


def corpus(data: bytes, source: str = "words.csv"):
    return read_corpus(data, source=source, format="csv", word_column="word", category_column="category",
                       category_columns=None, category_rule="identity", categories=None, wildcards="expand",
                       wildcard_words=None)


def test_a_huge_single_line_corpus_names_file_line_and_field():
    data = b"word,category\nlove,Communion\n" + b"a" * 5_000_000 + b",Agency\n"
    with pytest.raises(InputError) as err:
        corpus(data)
    assert str(err.value) == ("words.csv: row 3, field 'word': not a readable CSV: a field longer than 131072 "
                              "characters (is this really a CSV word list?)")


def test_a_non_utf8_corpus_names_file_and_line():
    with pytest.raises(InputError) as err:
        corpus("word,category\nlove,Communion\ncaf\xe9,Agency\n".encode("latin-1"))
    assert (err.value.source, err.value.row) == ("words.csv", 3)
    assert "not UTF-8 text" in str(err.value)
