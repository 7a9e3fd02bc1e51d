"""The registry config: defaults, path resolution and every config error naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from valuebias.config import load_config
from valuebias.errors import InputError

BASE = """\
prompts: {uri: prompts.csv}
corpora:
  big2: {uri: words.csv, format: csv, word_column: word, category_column: category}
models:
"""


def write(tmp_path: Path, models: str, extra: str = "") -> Path:
    path = tmp_path / "valuebias.yaml"
    path.write_text(BASE + models + extra)
    return path


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: org/rm}}\n"))
    assert config.state_dir == tmp_path / ".valuebias"
    assert config.storage_uri == str(tmp_path / ".valuebias" / "data")
    assert config.prompts_uri == str(tmp_path / "prompts.csv")
    assert config.corpora["big2"].uri == str(tmp_path / "words.csv")
    model = config.models["m1"]
    assert model.settings == {"path": "org/rm", "revision": None, "dtype": "auto", "score": "logits[0]",
                              "trust_remote_code": False, "allow_pickle": False}
    assert config.analysis.permutations == 10000 and config.analysis.families is None


def test_fingerprint_changes_with_the_entry_only(tmp_path):
    a = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: org/rm}}\n"))
    b = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, "
                                    "huggingface: {path: org/rm, revision: abc}}\n"))
    c = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: org/rm}}\n",
                          "analysis: {seed: 3}\n"))
    assert a.models["m1"].fingerprint != b.models["m1"].fingerprint
    assert a.models["m1"].fingerprint == c.models["m1"].fingerprint


def test_s3_storage_uri_is_kept(tmp_path):
    config = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: org/rm}}\n",
                               "storage: s3://bucket/prefix\n"))
    assert config.storage_uri == "s3://bucket/prefix"


def assert_config_error(tmp_path, models, extra, row, field, text):
    """Loading the config written from ``models`` and ``extra`` fails naming the file, row and field."""
    path = write(tmp_path, models, extra)
    with pytest.raises(InputError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert f"row {row}" in message, message
    assert f"field '{field}'" in message, message
    assert text in message, message


@pytest.mark.parametrize("models, extra, row, field, text", [
    ("  m1:\n    kind: reward_model\n    family: llama\n    huggingface:\n      path: org/rm\n      revison: main\n",
     "", 10, "models.m1.huggingface.revison", "unknown key 'revison'"),
    ("  m1: {kind: reward_model, family: llama}\n", "", 5, "models.m1", "exactly one source"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}, published: {big2: x.csv}}\n", "", 5,
     "models.m1", "found: huggingface, published"),
    ("  m1: {kind: reward_model, family: llama, published: {mfd2: x.csv}}\n", "", 5,
     "models.m1.published.mfd2", "unknown corpus 'mfd2'"),
    ("  m1: {kind: policy, family: llama, huggingface: {path: a/b}}\n", "", 5, "models.m1.kind",
     "'policy' is not one of"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b, score: logit}}\n", "", 5,
     "models.m1.huggingface.score", "'logit' is not one of"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b, trust_remote_code: yes please}}\n",
     "", 5, "models.m1.huggingface.trust_remote_code", "expected true or false"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n", "colour: blue\n", 6, "colour",
     "unknown key 'colour'"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n",
     "analysis: {families: [llama]}\n", 6, "analysis.families", "two or more different families"),
])
def test_config_errors_name_file_row_and_field(tmp_path, models, extra, row, field, text):
    assert_config_error(tmp_path, models, extra, row, field, text)


def test_duplicate_model_id_is_an_error(tmp_path):
    path = write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n"
                           "  m1: {kind: reward_model, family: gemma, huggingface: {path: c/d}}\n")
    with pytest.raises(InputError, match=r"row 6, field 'models.m1': duplicate key"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_the_embedded_default_config_loads():
    config = load_config(Path(__file__).resolve().parents[1] / "valuebias.yaml")
    assert {m.family for m in config.reward_models()} == {"llama", "gemma"}
    assert all(m.source == "demo" for m in config.reward_models())


LMS = """\
  it: {kind: language_model, variant: instruction_tuned, family: llama, huggingface: {path: org/lm-it}}
  pt: {kind: language_model, variant: pretrained, family: gemma, demo: {architecture: gemma, preferred_category: Communion}}
  rm: {kind: reward_model, family: llama, huggingface: {path: org/rm}}
"""


def test_language_models_pairs_and_implicit_rewards(tmp_path):
    config = load_config(write(tmp_path, LMS, "pairs:\n  - [it, pt]\n"
                                              "implicit_rewards: {top_n: 5, words: [Freedom, love], "
                                              "word_rule: full_sequence}\n"))
    assert [m.model_id for m in config.language_models()] == ["it", "pt"]
    assert [m.model_id for m in config.reward_models()] == ["rm"]
    assert config.models["it"].variant == "instruction_tuned" and config.models["rm"].variant is None
    assert "score" not in config.models["it"].settings
    assert config.models["pt"].settings["train_steps"] == 600  # a demo LM trains until converged
    assert config.pairs == (("it", "pt"),)
    assert config.pair_models() == {"it__vs__pt": ("it", "pt")}
    assert config.implicit_rewards.top_n == 5
    assert config.implicit_rewards.words == ("freedom", "love")
    assert config.implicit_rewards.word_rule == "full_sequence"
    default = load_config(write(tmp_path, LMS))
    assert default.pairs == () and default.implicit_rewards.words == ("freedom", "love")
    assert default.implicit_rewards.top_n == 15 and default.implicit_rewards.word_rule == "single_token"


def test_the_variant_is_part_of_the_fingerprint(tmp_path):
    it = load_config(write(tmp_path, LMS)).models["it"]
    pt = load_config(write(tmp_path, LMS.replace("variant: instruction_tuned", "variant: pretrained"))).models["it"]
    assert it.fingerprint != pt.fingerprint


@pytest.mark.parametrize("models, extra, row, field, text", [
    ("  m1: {kind: language_model, family: llama, huggingface: {path: a/b}}\n", "", 5, "models.m1.variant",
     "required key is missing"),
    ("  m1: {kind: language_model, variant: chat, family: llama, huggingface: {path: a/b}}\n", "", 5,
     "models.m1.variant", "'chat' is not one of: instruction_tuned, pretrained"),
    ("  m1: {kind: reward_model, variant: pretrained, family: llama, huggingface: {path: a/b}}\n", "", 5,
     "models.m1.variant", "only language models have a variant"),
    ("  m1: {kind: language_model, variant: pretrained, family: llama, published: {big2: x.csv}}\n", "", 5,
     "models.m1.published", "language models have no published scores"),
    ("  m1: {kind: language_model, variant: pretrained, family: llama, huggingface: {path: a/b, score: score}}\n",
     "", 5, "models.m1.huggingface.score", "'score' is for reward models"),
    (LMS, "pairs:\n  - [it, pt]\n  - [it, nope]\n", 10, "pairs[1][1]", "unknown model 'nope'"),
    (LMS, "pairs:\n  - [it, rm]\n", 9, "pairs[0][1]", "'rm' is a reward_model; pairs compare language models"),
    (LMS, "pairs:\n  - [it, it]\n", 9, "pairs[0]", "two different models"),
    (LMS, "pairs:\n  - [it, pt]\n  - [pt, it]\n", 10, "pairs[1]", "already listed (pairs[0])"),
    (LMS, "pairs:\n  - [it, pt, rm]\n", 9, "pairs[0]", "a pair is a list of two language-model ids"),
    (LMS, "pairs: {it: pt}\n", 8, "pairs", "expected a list"),
    (LMS, "implicit_rewards: {word_rule: multi}\n", 8, "implicit_rewards.word_rule", "'multi' is not one of"),
    (LMS, "implicit_rewards: {top_n: 0}\n", 8, "implicit_rewards.top_n", "expected an integer >= 1"),
    (LMS, "implicit_rewards: {words: [free love]}\n", 8, "implicit_rewards.words", "single words"),
])
def test_language_model_errors_name_file_row_and_field(tmp_path, models, extra, row, field, text):
    assert_config_error(tmp_path, models, extra, row, field, text)


def test_vocabulary_sweep_defaults_and_errors(tmp_path):
    config = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: a/b},"
                                         " vocabulary_sweep: {}}\n"))
    assert config.models["m1"].vocabulary_sweep == {
        "prompts": ["greatest_ever_one", "best_ever_one", "worst_ever_one"], "top_n": 20}
    plain = load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n"))
    assert plain.models["m1"].vocabulary_sweep is None
    assert plain.models["m1"].fingerprint == config.models["m1"].fingerprint  # the scores do not depend on it
    with pytest.raises(InputError, match=r"row 5, field 'models.m1.vocabulary_sweep.top_n'"):
        load_config(write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: a/b},"
                                    " vocabulary_sweep: {top_n: 0}}\n"))


@pytest.mark.parametrize("models, extra, row, field, text", [
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n", "scoring: {batch_size: '64'}\n", 6,
     "scoring.batch_size", "expected an integer, got '64'"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b, dtype: fp8}}\n", "", 5,
     "models.m1.huggingface.dtype", "'fp8' is not one of: auto, float32, bfloat16, float16"),
    ("  m1: {kind: reward_model, family: [llama], huggingface: {path: a/b}}\n", "", 5, "models.m1.family",
     "expected text, got a list"),
    ("  m1:\n    kind: reward_model\n    family: llama\n    huggingface:\n", "", 8, "models.m1.huggingface",
     "expected a mapping (key: value), got nothing"),
    ("  'm1/../x': {kind: reward_model, family: llama, huggingface: {path: a/b}}\n", "", 5, "models.m1/../x",
     "does not match"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n",
     "corpora:\n", 6, "corpora", "duplicate key"),
    ("  m1: {kind: reward_model, family: llama, huggingface: {path: a/b}}\n", "schedule: {cron: daily}\n", 6,
     "schedule.cron", "not a 5-field cron expression"),
    ("  m1: {kind: reward_model, family: llama, demo: {architecture: llama, preferred_category: A, "
     "train_corpus: mfd2}}\n", "", 5, "models.m1.demo.train_corpus", "unknown corpus 'mfd2' (corpora: big2)"),
])
def test_typed_config_errors_say_what_was_expected(tmp_path, models, extra, row, field, text):
    assert_config_error(tmp_path, models, extra, row, field, text)


def test_corpus_ids_follow_the_id_pattern(tmp_path):
    path = tmp_path / "valuebias.yaml"
    path.write_text(BASE.replace("big2:", "'../big2':") + "  m1: {kind: reward_model, family: llama, "
                                                           "huggingface: {path: a/b}}\n")
    with pytest.raises(InputError, match=r"row 3, field 'corpora.../big2': id '../big2' does not match"):
        load_config(path)


def test_several_problems_show_the_first_by_line_and_count_the_rest(tmp_path):
    path = write(tmp_path, "  m1: {kind: reward_model, family: llama, huggingface: {path: a/b, dtype: fp8}}\n",
                 "scoring: {threads: -1}\nconcurrency: {gpu: 0}\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert "row 5, field 'models.m1.huggingface.dtype'" in str(err.value)
    assert str(err.value).endswith("(and 2 more problems in this file)")


@pytest.mark.parametrize("text, message", [
    ("", "the config file is empty"),
    ("# only a comment\n", "the config file is empty"),
    ("- prompts\n- models\n", "expected a mapping of keys (prompts, corpora, models, ...), got a list"),
])
def test_an_empty_or_non_mapping_config(tmp_path, text, message):
    path = tmp_path / "valuebias.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_every_config_key_is_documented_in_the_readme():
    """The typed models declare the keys; the README's Configuration table documents each one."""
    import typing

    from pydantic import BaseModel

    from valuebias.config import ConfigFile

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    key_cells = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]

    def block(annotation):
        for arg in (annotation, *typing.get_args(annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
            if typing.get_origin(arg) is dict:
                return block(typing.get_args(arg)[1])
        return None

    def leaves(model, prefix):
        for name, info in model.model_fields.items():
            inner = block(info.annotation)
            path = f"{prefix}{name}"
            if typing.get_origin(info.annotation) is dict and inner is not None:
                path += ".<id>"
            if inner is None or name in ("published", "tolerations"):  # each documented as one key
                yield path
            else:
                yield from leaves(inner, path + ".")

    def documented(path):
        parent, _, leaf = path.rpartition(".")
        return any(cell == path or cell.startswith(f"{path}.") or
                   (cell.startswith(f"{parent}.{{") and leaf in cell.split("{", 1)[1]) for cell in key_cells)

    undocumented = [path for path in leaves(ConfigFile, "") if not documented(path)]
    assert not undocumented, f"config keys missing from README.md 'Configuration': {undocumented}"


def test_an_empty_value_takes_the_default(tmp_path):
    config = load_config(write(tmp_path, LMS, "pairs:\nanalysis:\nimplicit_rewards: {words: }\nscoring:\n"))
    assert config.pairs == () and config.analysis.permutations == 10000
    assert config.implicit_rewards.words == ("freedom", "love") and config.scoring_batch_size == 64
