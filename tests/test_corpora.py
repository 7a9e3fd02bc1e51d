"""Word lists: every format, wildcards, the foundation rule, duplicates, errors, and the real files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import polars as pl
import pytest

from valuebias.corpora import ParsedCorpus, read_corpus
from valuebias.errors import InputError
from valuebias.wordlist import english_wordlist, expand_wildcard, wordlist_description

PAPER_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "paper_release" / "corpora"
WORDS = ["the", "accept", "acceptance", "accepted", "access", "lead", "leader", "leadership", "mislead"]


def table(*pairs: tuple[str, str]) -> pl.DataFrame:
    return pl.DataFrame(list(pairs), schema={"word": pl.Utf8, "category": pl.Utf8}, orient="row")


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


def raises(data: bytes, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        read_corpus(data, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------
# Formats

def test_long_csv():
    data = b'"Category","token_decoded"\n"Agency","Power"\n"Communion"," love "\n"Agency","power"\n'
    corpus = read_corpus(data, source="long.csv", format="csv", word_column="token_decoded",
                         category_column="Category")
    assert isinstance(corpus, ParsedCorpus)
    assert corpus.table.equals(table(("power", "Agency"), ("love", "Communion")))
    assert corpus.stats["rows_read"] == 3
    assert corpus.stats["entries"] == 3
    assert corpus.stats["duplicates_removed"] == 1
    assert corpus.stats["categories"] == {"Agency": 1, "Communion": 1}
    assert corpus.stats["words"] == 2


def test_wide_csv_x_and_na():
    data = (b'"DicTerm","Agency","Communion"\n"able","X",NA\n"kind",NA,"x"\n"able","X",NA\n'
            b'"both","X","X"\n"none",NA,NA\n')
    corpus = read_corpus(data, source="wide.csv", format="csv")
    assert corpus.table.equals(table(("able", "Agency"), ("both", "Agency"), ("both", "Communion"),
                                     ("kind", "Communion")))
    assert corpus.stats["rows_read"] == 5
    assert corpus.stats["rows_without_category"] == 1
    assert corpus.stats["entries"] == 4
    assert corpus.stats["duplicates_removed"] == 1
    assert corpus.stats["categories"] == {"Agency": 2, "Communion": 2}
    assert corpus.stats["words"] == 3


def test_wide_csv_selected_category_columns():
    data = b"DicTerm,Agency,Communion,Other\nable,X,,\nkind,,X,X\n"
    corpus = read_corpus(data, source="w.csv", format="csv", category_columns=["Communion"])
    assert corpus.table.equals(table(("kind", "Communion")))
    assert corpus.stats["rows_without_category"] == 1


def test_dicx_crlf_bom_and_quoting_mixture():
    data = ("\ufeffDicTerm,Care_Virtue,Care_Vice,Fairness_Virtue\r\n"
            'abhor,,X,\r\n"fair",,,"X"\r\nTend,X,,\r\n').encode()
    corpus = read_corpus(data, source="m.dicx", format="dicx")
    assert corpus.table.equals(table(("abhor", "Care_Vice"), ("tend", "Care_Virtue"),
                                     ("fair", "Fairness_Virtue")))


def test_dic_tabs_and_spaces():
    data = (b"%\n1\tAgency\n2\tCommunion\n%\n"
            b"able\t1\n"
            b"kind 2\n"
            b"\n"
            b"leader\t1\t2\n"
            b"alone\n"
            b"kind of\t2\n")
    corpus = read_corpus(data, source="b.dic", format="dic")
    assert corpus.table.equals(table(("able", "Agency"), ("leader", "Agency"), ("kind", "Communion"),
                                     ("kind of", "Communion"), ("leader", "Communion")))
    assert corpus.stats["rows_read"] == 5
    assert corpus.stats["rows_without_category"] == 1


# ---------------------------------------------------------------------------------------------------
# Rules

def test_foundation_rule_merges_virtue_and_vice():
    data = b"DicTerm,Care_Virtue,Care_Vice,Loyalty_Virtue\nharm,,X,\ncare,X,,\nodd,X,X,\nally,,,X\n"
    corpus = read_corpus(data, source="m.dicx", format="dicx", category_rule="foundation")
    assert corpus.table.equals(table(("care", "Care"), ("harm", "Care"), ("odd", "Care"), ("ally", "Loyalty")))
    assert corpus.stats["duplicates_removed"] == 1  # 'odd' in both Care_Virtue and Care_Vice
    identity = read_corpus(data, source="m.dicx", format="dicx")
    assert identity.table.height == 5


def test_allowed_categories():
    data = b"Category,word\nAgency,power\nCommunion,love\n"
    corpus = read_corpus(data, source="c.csv", format="csv", word_column="word", category_column="Category",
                         categories=["Agency", "Communion"])
    assert corpus.table.height == 2
    err = raises(b"Category,word\nAgency,power\nAgncy,will\n", source="c.csv", format="csv", word_column="word",
                 category_column="Category", categories=["Agency", "Communion"])
    assert_names(err, source="c.csv", row=3, field="Category")
    assert "Agncy" in str(err)


def test_allowed_categories_after_foundation_rule():
    data = b"DicTerm,Care_Virtue,Honor_Vice\ncare,X,\nshame,,X\n"
    err = raises(data, source="m.dicx", format="dicx", category_rule="foundation", categories=["Care"])
    assert_names(err, source="m.dicx", row=3, field="Honor_Vice")
    assert "'Honor'" in str(err)


WILDCARD_DIC = b"DicTerm,Agency,Communion\naccept*,,X\nlead*,X,\nleader,X,\nzzz*,X,\nstrong,X,\n"


def test_wildcards_expand_against_word_list():
    corpus = read_corpus(WILDCARD_DIC, source="w.dicx", format="dicx", wildcard_words=WORDS)
    assert corpus.table.equals(table(
        ("lead", "Agency"), ("leader", "Agency"), ("leadership", "Agency"), ("strong", "Agency"),
        ("accept", "Communion"), ("acceptance", "Communion"), ("accepted", "Communion")))
    stats = corpus.stats
    assert stats["wildcard_entries"] == 3
    assert stats["wildcards_without_match"] == 1
    assert stats["words_from_wildcards"] == 6
    assert stats["duplicates_removed"] == 1  # 'leader' both listed and expanded from lead*
    assert stats["wildcard_examples"] == ["accept* -> 3 words", "lead* -> 3 words", "zzz* -> 0 words"]
    assert "strong" not in WORDS  # plain entries stay even if absent from the word list


def test_wildcard_examples_are_capped_at_five():
    data = b"DicTerm,A\n" + b"".join(f"{stem}*,X\n".encode() for stem in "abcdefg")
    corpus = read_corpus(data, source="w.dicx", format="dicx", wildcard_words=WORDS)
    assert len(corpus.stats["wildcard_examples"]) == 5
    assert corpus.stats["wildcard_entries"] == 7


def test_wildcards_drop():
    corpus = read_corpus(WILDCARD_DIC, source="w.dicx", format="dicx", wildcards="drop")
    assert corpus.table.equals(table(("leader", "Agency"), ("strong", "Agency")))
    assert corpus.stats["wildcard_entries"] == 3
    assert corpus.stats["wildcards_dropped"] == 3
    assert corpus.stats["words_from_wildcards"] == 0


def test_wildcards_error():
    err = raises(WILDCARD_DIC, source="w.dicx", format="dicx", wildcards="error")
    assert_names(err, source="w.dicx", row=2, field="DicTerm")
    assert "accept*" in str(err)


def test_wildcards_expand_needs_word_list():
    err = raises(WILDCARD_DIC, source="w.dicx", format="dicx")
    assert_names(err, source="w.dicx", row=2, field="DicTerm")
    assert "wildcard_words" in str(err)
    # without wildcards no word list is needed
    assert read_corpus(b"DicTerm,A\nx,X\n", source="p.dicx", format="dicx").table.height == 1


@pytest.mark.parametrize("word", ["f*ck", "**", "*"])
def test_unsupported_wildcard(word):
    data = f"DicTerm,A\nfine,X\n{word},X\n".encode()
    err = raises(data, source="u.dicx", format="dicx", wildcard_words=WORDS)
    assert_names(err, source="u.dicx", row=3, field="DicTerm")


def test_dic_wildcard_row_is_line_number():
    data = b"%\n1\tAgency\n%\nlead*\t1\nfo*o\t1\nstrong\t1\n"
    dropped = read_corpus(data, source="d.dic", format="dic", wildcards="drop")
    assert dropped.table.equals(table(("strong", "Agency")))
    assert dropped.stats["wildcards_dropped"] == 2
    err = raises(data, source="d.dic", format="dic", wildcard_words=WORDS)
    assert_names(err, source="d.dic", row=5, field="word")


# ---------------------------------------------------------------------------------------------------
# Errors

def test_not_csv_binary():
    err = raises(b"\x89PNG\r\n\x1a\n\x00\x00\x00", source="img.csv", format="csv")
    assert_names(err, source="img.csv", row=3, field="file")  # the NUL byte is on the third line


def test_not_utf8():
    err = raises(b"DicTerm,A\nok,X\ncaf\xe9,X\n", source="l1.csv", format="csv")
    assert_names(err, source="l1.csv", row=3, field="file")


def test_ragged_csv_row():
    err = raises(b"DicTerm,A,B\nok,X,\nbad,X\n", source="r.csv", format="csv")
    assert_names(err, source="r.csv", row=3, field="DicTerm")


def test_dic_given_as_csv_reports_missing_column():
    err = raises(b"%\n1\tAgency\n%\nable\t1\n", source="b.dic", format="csv")
    assert_names(err, source="b.dic", row=1, field="DicTerm")  # the header line


def test_missing_columns_lists_existing_ones():
    err = raises(b"Category,token\nAgency,power\n", source="n.csv", format="csv", word_column="token_decoded",
                 category_column="Category")
    assert_names(err, source="n.csv", row=1, field="token_decoded")
    assert "'Category'" in str(err) and "'token'" in str(err)
    err = raises(b"DicTerm,Agency\nable,X\n", source="w.csv", format="csv", category_columns=["Communion"])
    assert_names(err, source="w.csv", row=1, field="Communion")


def test_empty_word_cell():
    err = raises(b"DicTerm,A\nok,X\n  ,X\n", source="e.csv", format="csv")
    assert_names(err, source="e.csv", row=3, field="DicTerm")
    err = raises(b"Category,word\nAgency,\n", source="e.csv", format="csv", word_column="word",
                 category_column="Category")
    assert_names(err, source="e.csv", row=2, field="word")


def test_empty_category_cell_in_long_csv():
    err = raises(b"Category,word\nAgency,power\n,love\n", source="e.csv", format="csv", word_column="word",
                 category_column="Category")
    assert_names(err, source="e.csv", row=3, field="Category")


def test_bad_wide_cell():
    err = raises(b"DicTerm,Agency,Communion\nable,X,\nkind,,0.5\n", source="w.dicx", format="dicx")
    assert_names(err, source="w.dicx", row=3, field="Communion")
    assert "0.5" in str(err)


@pytest.mark.parametrize("data,fmt,field", [
    (b"", "csv", "DicTerm"),
    (b"DicTerm,A\n", "dicx", "DicTerm"),
    (b"DicTerm,A\n\n\n", "csv", "DicTerm"),
    (b"%\n1\tA\n%\n", "dic", "word"),
])
def test_empty_corpus(data, fmt, field):
    err = raises(data, source="empty", format=fmt)
    assert_names(err, source="empty", row=None, field=field)
    assert "empty corpus" in str(err)


def test_no_words_left_after_processing():
    err = raises(b"DicTerm,A\nlead*,X\nnone,\n", source="w.dicx", format="dicx", wildcards="drop")
    assert_names(err, source="w.dicx", row=None, field="DicTerm")
    assert "empty corpus" in str(err)


def test_dic_without_header():
    err = raises(b"able\t1\nkind\t2\n", source="b.dic", format="dic")
    assert_names(err, source="b.dic", row=1, field="header")


def test_dic_unclosed_header():
    err = raises(b"\n%\n1\tAgency\n2\tCommunion\n", source="b.dic", format="dic")
    assert_names(err, source="b.dic", row=2, field="header")


def test_dic_bad_header_line():
    err = raises(b"%\n1\tAgency\nCommunion\n%\nable\t1\n", source="b.dic", format="dic")
    assert_names(err, source="b.dic", row=3, field="header")


def test_dic_unknown_category_names_line_and_word():
    err = raises(b"%\n1\tAgency\n2\tCommunion\n%\nable\t1\nkind\t2\t7\n", source="b.dic", format="dic")
    assert_names(err, source="b.dic", row=6, field="category")
    assert "'kind'" in str(err) and "'7'" in str(err)


# The row of every error is the line an editor shows: header, blank lines, `%` lines and the lines of a
# quoted multi-line field count; CRLF is one line end; a BOM is no line. Real files, read back as ingest does.

def read_file(path: Path, **kwargs) -> InputError:
    from valuebias.resources.storage import read_input_uri

    return raises(read_input_uri(str(path)), source=str(path), **kwargs)


def test_dic_error_names_the_file_line_after_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "liwc.dic"
    lines = ["%", "1\tAgency", "", "2\tCommunion", "%", "", "able\t1", "", "kind\t2\t7", "warm\t2"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    err = read_file(path, format="dic")
    assert_names(err, source=str(path), row=9, field="category")  # `kind 2 7` is line 9
    assert "'7'" in str(err) and "'kind'" in str(err)


def test_dic_lines_end_only_at_newlines(tmp_path):
    # a form feed or U+2028 inside a line is not a line end (str.splitlines would count one)
    path = tmp_path / "odd.dic"
    path.write_bytes("%\r1\tAgency\r%\rable\f\t1\rfree\u2028dom\t1\rkind\t9\r".encode())
    err = read_file(path, format="dic")
    assert_names(err, source=str(path), row=6, field="category")


def test_dicx_bad_cell_names_the_file_line(tmp_path):
    path = tmp_path / "big2.dicx"
    path.write_bytes(b"\xef\xbb\xbfDicTerm,Agency,Communion\r\n\r\nable,X,\r\n\r\n\r\nkind,,maybe\r\n")
    err = read_file(path, format="dicx")
    assert_names(err, source=str(path), row=6, field="Communion")
    assert "'maybe'" in str(err)


def test_csv_error_after_a_quoted_multiline_field_names_the_file_line(tmp_path):
    path = tmp_path / "words.csv"
    path.write_bytes(b'word,category\n"two\nline\nword",Agency\n\nlove,Communion\npower,Agncy\n')
    err = read_file(path, format="csv", word_column="word", category_column="category",
                    categories=["Agency", "Communion"])
    assert_names(err, source=str(path), row=7, field="category")  # line 1 header, 2-4 the quoted field
    assert "'Agncy'" in str(err)


def test_csv_missing_column_names_the_header_line(tmp_path):
    path = tmp_path / "words.csv"
    path.write_bytes(b"\xef\xbb\xbfterm,category\r\nlove,Communion\r\n")
    err = read_file(path, format="csv", word_column="word", category_column="category")
    assert_names(err, source=str(path), row=1, field="word")


def test_binary_and_non_utf8_lines_count_crlf_and_cr_once(tmp_path):
    path = tmp_path / "bad.dic"
    path.write_bytes(b"%\r\n1\tA\r%\r\n\r\ncaf\xe9\t1\r\n")
    assert_names(read_file(path, format="dic"), source=str(path), row=5, field="file")
    path.write_bytes(b"DicTerm,A\r\nok,X\r\r\n\x00\n")
    assert_names(read_file(path, format="dicx"), source=str(path), row=4, field="file")


@pytest.mark.parametrize("option,value", [("format", "xlsx"), ("category_rule", "stem"), ("wildcards", "keep")])
def test_unknown_options(option, value):
    kwargs = {"format": "csv", option: value}
    err = raises(b"DicTerm,A\nx,X\n", source="o.csv", **kwargs)
    assert_names(err, source="o.csv", row=None, field=option)


def test_category_column_only_for_csv():
    err = raises(b"DicTerm,A\nx,X\n", source="o.dicx", format="dicx", category_column="A")
    assert_names(err, source="o.dicx", row=None, field="category_column")


# ---------------------------------------------------------------------------------------------------
# Word list

def test_expand_wildcard():
    assert expand_wildcard("lead*", WORDS) == ["lead", "leader", "leadership"]
    assert expand_wildcard("accepte*", WORDS) == ["accepted"]
    assert expand_wildcard("zzz*", WORDS) == []
    for pattern in ["lead", "l*ad*", "*", "*lead"]:
        with pytest.raises(ValueError):
            expand_wildcard(pattern, WORDS)


def test_english_wordlist():
    words = english_wordlist(2000)
    assert words[:3] == ["the", "to", "and"]  # frequency order
    assert len(words) == len(set(words))
    assert 1900 < len(words) <= 2000
    assert all(re.fullmatch(r"[a-z]+(?:['-][a-z]+)*", w) for w in words)
    assert "don't" in words
    assert "1" not in words and "u.s" not in words
    words.append("mutated")
    assert "mutated" not in english_wordlist(2000)
    description = wordlist_description(2000)
    assert description["source"] == "wordfreq"
    assert description["size"] == 2000 and description["kept"] == len(english_wordlist(2000))
    assert description["wordfreq_version"]


# ---------------------------------------------------------------------------------------------------
# The paper's files (skipped when the release is absent)

def paper_file(name: str) -> Path:
    path = PAPER_CORPORA / name
    if not path.exists():
        pytest.skip(f"paper release corpus not available at {path}")
    return path


def test_paper_big2_nouns():
    path = paper_file("dict_big2_nouns.csv")
    corpus = read_corpus(path.read_bytes(), source=str(path), format="csv", word_column="token_decoded",
                         category_column="Category", categories=["Agency", "Communion"])
    assert corpus.stats["words"] == 263
    assert corpus.table.height == 263
    assert corpus.stats["categories"] == {"Agency": 104, "Communion": 159}


def test_paper_big2_expanded_has_real_duplicates():
    path = paper_file("dict_big2_expanded.csv")
    corpus = read_corpus(path.read_bytes(), source=str(path), format="csv")
    assert corpus.stats["rows_read"] == 936
    assert corpus.stats["duplicates_removed"] > 0
    assert corpus.table.filter(pl.col("word") == "accurate").height == 1
    assert set(corpus.stats["categories"]) == {"Agency", "Communion"}


def test_paper_mfd2():
    path = paper_file("moral-foundations-dictionary-20.dicx")
    corpus = read_corpus(path.read_bytes(), source=str(path), format="dicx", category_rule="foundation")
    assert corpus.stats["entries"] == 2040
    assert corpus.table.height == 2040
    assert set(corpus.stats["categories"]) == {"Care", "Fairness", "Loyalty", "Authority", "Sanctity"}
    identity = read_corpus(path.read_bytes(), source=str(path), format="dicx")
    assert len(identity.stats["categories"]) == 10


# ---------------------------------------------------------------------------------------------------
# taters' LIWC-22 dictionaries (package data, read without importing taters' modules)

def taters_dictionary(name: str) -> Path:
    spec = importlib.util.find_spec("taters")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("taters is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "library" / "dictionaries" / name
    if not path.exists():
        pytest.skip(f"taters dictionary not found at {path}")
    return path


def test_taters_big_two_with_expanded_wildcards():
    path = taters_dictionary("Big Two - Agency and Communion.dicx")
    corpus = read_corpus(path.read_bytes(), source=path.name, format="dicx", categories=["Agency", "Communion"],
                         wildcard_words=english_wordlist(50000))
    assert corpus.stats["rows_read"] == 333
    assert corpus.stats["categories"]["Agency"] > 0 and corpus.stats["categories"]["Communion"] > 0
    assert corpus.stats["wildcard_entries"] > 100
    assert corpus.stats["words_from_wildcards"] > corpus.stats["wildcard_entries"]
    assert len(corpus.stats["wildcard_examples"]) == 5
    assert corpus.table.filter(pl.col("word").str.contains(r"\*")).height == 0
    dropped = read_corpus(path.read_bytes(), source=path.name, format="dicx", wildcards="drop")
    assert dropped.stats["words"] == 333 - corpus.stats["wildcard_entries"]


def test_taters_mfd2_matches_paper_release():
    path = taters_dictionary("Moral Foundations 2.0.dicx")
    corpus = read_corpus(path.read_bytes(), source=path.name, format="dicx", category_rule="foundation")
    assert corpus.stats["entries"] == 2040
    paper = PAPER_CORPORA / "moral-foundations-dictionary-20.dicx"
    if paper.exists():
        released = read_corpus(paper.read_bytes(), source=str(paper), format="dicx", category_rule="foundation")
        assert corpus.table.equals(released.table)


def test_taters_personal_values():
    path = taters_dictionary("Personal Values.dicx")
    corpus = read_corpus(path.read_bytes(), source=path.name, format="dicx", wildcards="error")
    assert len(corpus.stats["categories"]) == 14
    assert {"Benevolence", "Universalism", "Power", "Achievement"} <= set(corpus.stats["categories"])
