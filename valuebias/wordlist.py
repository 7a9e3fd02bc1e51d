"""The fixed English word list that `*` wildcards of a word list expand against.

Rule: the list is ``wordfreq.top_n_list("en", size, wordlist="best")`` (wordfreq ships its data, so
this works offline), keeping only entries made of lowercase letters, optionally joined by single
apostrophes or hyphens (``don't``, ``well-being``), in wordfreq's frequency order, without duplicates.
Numbers, abbreviations with dots, symbols and emoji are dropped.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from typing import Sequence

WORDFREQ_LANG = "en"
WORDFREQ_LIST = "best"
WORD_PATTERN = re.compile(r"^[a-z]+(?:['-][a-z]+)*$")


@functools.lru_cache(maxsize=8)
def _cached_wordlist(size: int) -> tuple[str, ...]:
    import wordfreq  # imported lazily: loading it is only needed when wildcards are expanded

    kept: dict[str, None] = {}
    for word in wordfreq.top_n_list(WORDFREQ_LANG, size, wordlist=WORDFREQ_LIST):
        if WORD_PATTERN.match(word):
            kept.setdefault(word, None)
    return tuple(kept)


def english_wordlist(size: int = 50000) -> list[str]:
    """The ``size`` most frequent English words of wordfreq, filtered as described in the module doc.

    The result is cached; each call returns a fresh list, so callers may modify it.
    """
    if size <= 0:
        raise ValueError(f"word list size must be positive, got {size}")
    return list(_cached_wordlist(size))


def wordlist_description(size: int = 50000) -> dict:
    """Metadata that identifies the word list exactly (for asset metadata and provenance)."""
    return {
        "source": "wordfreq",
        "wordfreq_version": importlib.metadata.version("wordfreq"),
        "lang": WORDFREQ_LANG,
        "wordlist": WORDFREQ_LIST,
        "size": size,
        "kept": len(_cached_wordlist(size)),
        "pattern": WORD_PATTERN.pattern,
    }


def wildcard_stem(pattern: str) -> str:
    """The stem of a ``stem*`` pattern. Only one trailing ``*`` is supported: anything else is a ValueError."""
    if not pattern.endswith("*"):
        raise ValueError(f"{pattern!r} is not a wildcard: it does not end with '*'")
    stem = pattern[:-1]
    if "*" in stem:
        raise ValueError(f"unsupported wildcard {pattern!r}: only a single trailing '*' is supported")
    if not stem:
        raise ValueError("a lone '*' would match every word: give a stem before the '*'")
    return stem


def expand_wildcard(pattern: str, words: Sequence[str]) -> list[str]:
    """Every word of ``words`` that starts with the stem of ``pattern`` (``abc*`` also matches ``abc``).

    Words come back in the order of ``words``. A pattern without a trailing ``*``, with a ``*``
    elsewhere, or a lone ``*`` raises ValueError (callers add the file, row and field).
    """
    stem = wildcard_stem(pattern)
    return [word for word in words if word.startswith(stem)]
