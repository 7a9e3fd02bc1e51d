"""Prompt tables: reading YAML/CSV, the paper's factorial design, and every error naming source/row/field."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from valuebias.errors import InputError
from valuebias.prompts import (COLUMNS, FRAMING_BY_ADJECTIVE, load_paper_prompts, paper_prompt_table,
                               prompts_to_csv, read_prompts)

PAPER_RELEASE = Path(__file__).resolve().parents[2] / "shared" / "paper_release"
PAPER_PROMPTS_YAML = PAPER_RELEASE / "config" / "prompts.yaml"
PACKAGED_CSV = Path(__file__).resolve().parents[1] / "valuebias" / "data" / "prompts_paper54.csv"


def assert_names(err: InputError, *, source: str, row: int | None, field: str) -> None:
    """The error names the file, the row and the field, both as attributes and in its message."""
    assert err.source == source
    assert err.row == row
    assert err.field == field
    message = str(err)
    assert source in message
    assert f"field '{field}'" in message
    if row is not None:
        assert f"row {row}," in message


# ---------------------------------------------------------------------------------------------------
# Reading


YAML_TWO = b"""# comment
greatest_ever_one: "What, in one word, is the greatest thing ever?"
bad_world_please: "What is the most bad thing in the world? Please answer in one word only."
"""


def test_read_yaml_two_prompts_in_file_order():
    table = read_prompts(YAML_TWO, source="p.yaml")
    expected = pl.DataFrame({
        "prompt": ["greatest_ever_one", "bad_world_please"],
        "text": ["What, in one word, is the greatest thing ever?",
                 "What is the most bad thing in the world? Please answer in one word only."],
        "adjective": ["greatest", "bad"],
        "superlative": ["ever", "world"],
        "style": ["one", "please"],
        "framing": ["positive", "negative"],
    })
    assert table.columns == COLUMNS
    assert all(dtype == pl.Utf8 for dtype in table.dtypes)
    assert table.equals(expected)


def test_read_csv_equals_yaml_and_ignores_extra_columns():
    data = (b'prompt,text,note\n'
            b'greatest_ever_one,"What, in one word, is the greatest thing ever?",x\n'
            b'bad_world_please,What is the most bad thing in the world? Please answer in one word only.,y\n')
    assert read_prompts(data, source="p.csv").equals(read_prompts(YAML_TWO, source="p.yml"))


def test_format_argument_overrides_extension():
    table = read_prompts(YAML_TWO, source="s3://bucket/prompts", format="yaml")
    assert table["prompt"].to_list() == ["greatest_ever_one", "bad_world_please"]


def test_framing_override():
    data = b'splendid_ever_one: "What is the most splendid thing ever?"\nbest_ever_one: "x"\n'
    table = read_prompts(data, source="p.yaml",
                         framing_by_adjective={"splendid": "positive", "best": "neutral"})
    assert table["framing"].to_list() == ["positive", "neutral"]


def test_framing_map_matches_method():
    assert {a for a, f in FRAMING_BY_ADJECTIVE.items() if f == "positive"} == {"best", "greatest", "good"}
    assert {a for a, f in FRAMING_BY_ADJECTIVE.items() if f == "negative"} == {"worst", "bad", "terrible"}


def test_csv_round_trip():
    table = paper_prompt_table()
    assert read_prompts(prompts_to_csv(table), source="x.csv").equals(table)


# ---------------------------------------------------------------------------------------------------
# The paper's 54 prompts


def test_paper_design():
    table = paper_prompt_table()
    assert table.height == 54
    assert table["prompt"].n_unique() == 54
    assert table["framing"].value_counts().sort("framing").rows() == [("negative", 27), ("positive", 27)]
    texts = dict(table.select("prompt", "text").iter_rows())
    assert texts["greatest_ever_one"] == "What, in one word, is the greatest thing ever?"
    assert texts["good_world_single"] == "What, in a single word, is the most good thing in the world?"
    assert texts["terrible_time_please"] == "What is the most terrible thing of all time? Please answer in one word only."
    assert table["prompt"].to_list()[:4] == ["best_ever_one", "best_ever_single", "best_ever_please",
                                             "best_world_one"]


def test_packaged_csv_is_the_design():
    assert PACKAGED_CSV.read_bytes() == prompts_to_csv(paper_prompt_table())
    assert load_paper_prompts().equals(paper_prompt_table())


def test_packaged_csv_equals_paper_release_yaml():
    if not PAPER_PROMPTS_YAML.exists():
        pytest.skip(f"paper release not available at {PAPER_PROMPTS_YAML}")
    released = read_prompts(PAPER_PROMPTS_YAML.read_bytes(), source=str(PAPER_PROMPTS_YAML))
    assert released.select("prompt", "text").rows() == load_paper_prompts().select("prompt", "text").rows()
    assert released.equals(load_paper_prompts())


# ---------------------------------------------------------------------------------------------------
# Errors


def test_duplicate_yaml_key_names_its_line():
    data = b'best_ever_one: "a"\nbest_ever_two: "b"\n\nbest_ever_one: "c"\n'
    with pytest.raises(InputError) as info:
        read_prompts(data, source="dup.yaml")
    assert_names(info.value, source="dup.yaml", row=4, field="prompt")
    assert "best_ever_one" in str(info.value)


def test_duplicate_csv_id():
    data = b"prompt,text\nbest_ever_one,a\nworst_ever_one,b\nbest_ever_one,c\n"
    with pytest.raises(InputError) as info:
        read_prompts(data, source="dup.csv")
    assert_names(info.value, source="dup.csv", row=4, field="prompt")


@pytest.mark.parametrize("data,source,row", [
    (b'best_ever_one: "a"\nbest_ever_two: ""\n', "t.yaml", 2),
    (b'best_ever_one: "a"\nbest_ever_two:\n', "t.yaml", 2),
    (b"prompt,text\nbest_ever_one,a\nbest_ever_two,   \n", "t.csv", 3),  # file lines: the header is line 1
])
def test_empty_text(data, source, row):
    with pytest.raises(InputError) as info:
        read_prompts(data, source=source)
    assert_names(info.value, source=source, row=row, field="text")
    assert "empty" in str(info.value)


def test_non_string_text():
    with pytest.raises(InputError) as info:
        read_prompts(b'best_ever_one: [a, b]\n', source="t.yaml")
    assert_names(info.value, source="t.yaml", row=1, field="text")


@pytest.mark.parametrize("prompt_id", ["best_ever", "best_ever_one_more", "best__one", "bestever"])
def test_id_needs_three_parts(prompt_id):
    data = f"prompt,text\nworst_ever_one,a\n{prompt_id},b\n".encode()
    with pytest.raises(InputError) as info:
        read_prompts(data, source="ids.csv")
    assert_names(info.value, source="ids.csv", row=3, field="prompt")
    assert "three" in str(info.value)


def test_unknown_adjective_lists_known_ones():
    data = b'best_ever_one: "a"\nsplendid_ever_one: "b"\n'
    with pytest.raises(InputError) as info:
        read_prompts(data, source="adj.yaml")
    assert_names(info.value, source="adj.yaml", row=2, field="prompt")
    for adjective in FRAMING_BY_ADJECTIVE:
        assert adjective in str(info.value)


def test_missing_csv_column_lists_existing_ones():
    with pytest.raises(InputError) as info:
        read_prompts(b"id,text\nbest_ever_one,a\n", source="cols.csv")
    assert_names(info.value, source="cols.csv", row=1, field="prompt")
    assert "'id'" in str(info.value)


def test_ragged_csv_row():
    with pytest.raises(InputError) as info:
        read_prompts(b"prompt,text\nbest_ever_one,a\nbest_ever_two,b,c\n", source="r.csv")
    assert_names(info.value, source="r.csv", row=3, field="prompt")


@pytest.mark.parametrize("data,source", [
    (b"", "e.yaml"),
    (b"# only a comment\n", "e.yaml"),
    (b"{}\n", "e.yaml"),
    (b"", "e.csv"),
    (b"prompt,text\n", "e.csv"),
])
def test_empty_table(data, source):
    with pytest.raises(InputError) as info:
        read_prompts(data, source=source)
    assert_names(info.value, source=source, row=None, field="prompt")
    assert "empty" in str(info.value)


def test_yaml_not_a_mapping():
    with pytest.raises(InputError) as info:
        read_prompts(b"- best_ever_one\n- worst_ever_one\n", source="list.yaml")
    assert_names(info.value, source="list.yaml", row=1, field="prompt")
    assert "mapping" in str(info.value)


def test_invalid_yaml_names_line():
    with pytest.raises(InputError) as info:
        read_prompts(b'best_ever_one: "a"\nworst_ever_one: "unclosed\n', source="bad.yaml")
    assert info.value.source == "bad.yaml" and info.value.row is not None and info.value.row >= 2


def test_unknown_extension():
    with pytest.raises(InputError) as info:
        read_prompts(YAML_TWO, source="prompts.txt")
    assert_names(info.value, source="prompts.txt", row=None, field="format")


def test_not_utf8():
    with pytest.raises(InputError) as info:
        read_prompts(b'best_ever_one: "a"\nworst_ever_one: "\xff"\n', source="bin.yaml")
    assert_names(info.value, source="bin.yaml", row=2, field="text")
