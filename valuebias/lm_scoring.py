"""Language-model log-probabilities (docs/METHOD.md#41-next-token-distribution): the next-token distribution after a
value-laden prompt.

For an LM and a prompt, one forward pass gives the log-softmax over the **whole vocabulary** at the
last position (:func:`next_token_logprobs`). How the prompt is put to the model depends on the
variant:

- ``"instruction_tuned"`` (IT): the user turn rendered with the model's own chat template and the
  generation prompt (``apply_chat_template(..., add_generation_prompt=True)``), encoded without extra
  special tokens (the template carries BOS), exactly as ``apply_chat_template(tokenize=True)`` does;
- ``"pretrained"`` (PT): the raw prompt text, encoded with the tokenizer's normal special tokens
  (e.g. BOS), no template.

Dictionary words are then given a log-prob by one of two named rules:

- ``"single_token"`` (the paper's rule, :func:`single_token_word_logprobs`): keep a word only if it
  equals, character for character, the decoded string of one vocabulary token (lowercase, no leading
  space); where several ids decode to that string the highest log-prob is kept. Other words are
  dropped and counted.
- ``"full_sequence"`` (our extension, :func:`sequence_word_logprobs`): the log-prob of the word's
  whole token sequence after the prompt, i.e. the sum of its token log-probs. Every word is scored.

Entry points for the scoring worker: :func:`score_language_model` (one LM partition's next-token table) and
:func:`language_model_word_logprobs` (its word log-probs).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from valuebias.config import LM_VARIANTS, WORD_RULES
from valuebias.errors import InputError
from valuebias.model_content import ContentIdentity
from valuebias.hf_loading import HuggingFaceSource, load_pretrained, provenance


LOGPROB_SCHEMA = {"prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "logprob": pl.Float32}
WORD_LOGPROB_SCHEMA = {"prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64, "rule": pl.Utf8}


@dataclass(frozen=True)
class LanguageModelSource:
    """Where a language model comes from (a registry entry's ``huggingface`` block plus the variant).

    ``path`` is a local directory, a ``package://`` folder or a hub id; local directories get the same
    checks as reward models (:func:`valuebias.hf_loading.check_source`: config present, no remote code unless
    ``trust_remote_code``, safetensors unless ``allow_pickle``; with ``gguf_file``, that file present).
    """

    model_id: str
    path: str
    variant: str
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    clean_up_tokenization_spaces: bool | None = None
    gguf_file: str | None = None  # a .gguf file in `path`: weights and tokenizer from it
    attn_implementation: str | None = None  # None: eager for Gemma-2, transformers' default otherwise

    def __post_init__(self):
        self.as_huggingface_source()  # the path and dtype checks of a reward model's source
        if self.variant not in LM_VARIANTS:
            raise InputError(f"unknown variant {self.variant!r}; expected one of {list(LM_VARIANTS)}",
                             source=self.source, field="variant")

    @property
    def source(self) -> str:
        return f"models.{self.model_id}"

    def as_huggingface_source(self) -> HuggingFaceSource:
        """The same location as a :class:`HuggingFaceSource`, to share its checks."""
        return HuggingFaceSource(model_id=self.model_id, path=self.path, revision=self.revision,
                                 dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                                 allow_pickle=self.allow_pickle,
                                 clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
                                 gguf_file=self.gguf_file, attn_implementation=self.attn_implementation)


@dataclass
class LoadedLanguageModel:
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    variant: str
    source: str | None = None  # "models.<id>", for error messages
    _vocab: pl.Series | None = field(default=None, repr=False)

    def decoded_vocabulary(self) -> pl.Series:
        """The string of every id of the model's output layer under :data:`TOKEN_STRING_RULE`
        (:func:`token_strings`), computed once."""
        if self._vocab is None:
            self._vocab = token_strings(self.tokenizer, _output_size(self.model))
        return self._vocab


def _output_size(model) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


def load_language_model(src: LanguageModelSource, device: str | None = None,
                        identity: ContentIdentity | None = None) -> LoadedLanguageModel:
    """Load the LM (``AutoModelForCausalLM``) and its tokenizer in eval mode on ``device``.

    Default device: CUDA if available. dtype ``"auto"``: bfloat16 on CUDA, float32 on CPU; an explicit
    dtype is honoured. An IT model whose tokenizer has no chat template is refused. ``identity``: as in
    :func:`valuebias.hf_loading.load_pretrained`.
    """
    from transformers import AutoModelForCausalLM

    model, tokenizer, device, dtype = load_pretrained(src.as_huggingface_source(), AutoModelForCausalLM, device,
                                                      identity)
    if src.variant == "instruction_tuned" and not getattr(tokenizer, "chat_template", None):
        raise InputError("variant 'instruction_tuned' needs a chat template, the tokenizer has none "
                         "(use variant 'pretrained' for a base model)", source=src.source, field="variant")
    return LoadedLanguageModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                               variant=src.variant, source=src.source)


# ---------------------------------------------------------------------------------------------------
# Prompts


def render_lm_prompt(tokenizer, text: str, variant: str, *, source: str | None = None) -> str:
    """The string put to the model: IT, the chat template with the generation prompt; PT, ``text``."""
    if variant == "pretrained":
        return text
    if variant != "instruction_tuned":
        raise InputError(f"unknown variant {variant!r}; expected one of {list(LM_VARIANTS)}", source=source,
                         field="variant")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template", source=source, field="huggingface.path")
    from valuebias.chat_templates import bounded_render

    return bounded_render(lambda: tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                                add_generation_prompt=True), tokenizer, source=source)


def encode_lm_prompt(tokenizer, text: str, variant: str, *, source: str | None = None) -> list[int]:
    """Token ids of the rendered prompt: IT without extra special tokens (the template has them), PT
    with the tokenizer's normal special tokens (e.g. BOS)."""
    rendered = render_lm_prompt(tokenizer, text, variant, source=source)
    ids = tokenizer(rendered, add_special_tokens=(variant == "pretrained"))["input_ids"]
    if not ids:
        raise InputError(f"prompt {text!r} encodes to no tokens", source=source, field="prompt")
    return list(ids)


# ---------------------------------------------------------------------------------------------------
# Next-token log-probabilities over the whole vocabulary


def decoded_vocabulary(tokenizer, size: int | None = None) -> pl.Series:
    """``tokenizer.decode([id])`` for ids ``0 .. size-1`` as a Utf8 Series (one batched decode).

    ``size`` defaults to ``len(tokenizer)``; ids at or beyond ``len(tokenizer)`` (padding rows of a
    model's output layer that no token maps to) are null.
    """
    n_tok = len(tokenizer)
    size = n_tok if size is None else int(size)
    decodable = min(size, n_tok)
    strings = tokenizer.batch_decode(np.arange(decodable).reshape(-1, 1).tolist())
    series = pl.Series("token", strings, dtype=pl.Utf8)
    if size > decodable:
        series = series.extend(pl.Series("token", [None] * (size - decodable), dtype=pl.Utf8))
    return series


#: How a language model's vocabulary id becomes the string that the single-token word rule and the MWLR join
#: match on (:func:`token_strings`): the id decoded alone, except special tokens and incomplete characters.
TOKEN_STRING_RULE = "decoded_alone_text_only"
#: U+FFFD, what a decoder gives for bytes that are not a complete UTF-8 character.
REPLACEMENT_CHARACTER = "\ufffd"


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens: its named special tokens (BOS, EOS, PAD, ...) and every added
    token marked special (chat-control tokens such as ``<|im_end|>`` or ``<start_of_turn>``)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return ids


def token_strings(tokenizer, size: int | None = None) -> pl.Series:
    """:func:`decoded_vocabulary` under the rule ``decoded_alone_text_only`` (:data:`TOKEN_STRING_RULE`):
    the string of id ``i`` is ``tokenizer.decode([i])``, except that it is null (the id keeps its row and
    log-prob, but matches no word and no token of another model) for

    - **special tokens** (:func:`special_token_ids`): markup of one tokenizer (``<|im_end|>``, ``<bos>``),
      not text two models could share, even where two tokenizers spell them alike;
    - **incomplete characters**: ids whose decoded string contains U+FFFD: a byte-level BPE piece that is
      part of a multi-byte UTF-8 character (SmolLM2, Qwen) or a SentencePiece byte-fallback token
      ``<0xNN>`` above 0x7F (Gemma). Decoded alone they all read as U+FFFD, which is no string at all.
      A byte-fallback token of an ASCII byte decodes to its character and keeps it.
    """
    strings = decoded_vocabulary(tokenizer, size)
    special = special_token_ids(tokenizer)
    ids = pl.int_range(0, len(strings), eager=True)
    drop = ids.is_in(pl.Series(sorted(special), dtype=pl.Int64).implode()) | strings.str.contains(
        REPLACEMENT_CHARACTER, literal=True)
    return pl.select(pl.when(drop).then(None).otherwise(strings).alias("token")).to_series()


def _forward_kwargs(model) -> dict:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def next_token_logprobs(loaded: LoadedLanguageModel, prompts: Sequence[tuple[str, str]], *,
                        progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Log-softmax over the whole vocabulary at the last position, one forward pass per prompt.

    ``prompts``: ``(prompt_id, prompt_text)`` pairs. Returns ``prompt`` (Utf8, the id), ``token_id``
    (Int32), ``token`` (Utf8, ``tokenizer.decode([token_id])``, null for output ids the tokenizer
    lacks), ``logprob`` (Float32, computed in float32), one row per prompt x vocabulary id,
    prompt-major, ids ascending. ``progress(done, total)`` is called after each prompt.
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    vocab = loaded.decoded_vocabulary()
    size = len(vocab)
    token_ids = pl.Series("token_id", np.arange(size, dtype=np.int32))
    extra = _forward_kwargs(model)
    frames = []
    with torch.inference_mode():
        for done, (prompt_id, text) in enumerate(prompts, start=1):
            ids = encode_lm_prompt(tokenizer, text, loaded.variant, source=loaded.source)
            input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
            logits = model(input_ids=input_ids, **extra).logits[0, -1].float()
            if logits.shape[0] != size:
                raise ValueError(f"the model returned {logits.shape[0]} logits, its output layer has {size}")
            logprobs = torch.log_softmax(logits, dim=-1).cpu().numpy()
            frames.append(pl.DataFrame([
                pl.Series("prompt", [prompt_id], dtype=pl.Utf8).new_from_index(0, size),
                token_ids, vocab, pl.Series("logprob", logprobs, dtype=pl.Float32)]))
            if progress is not None:
                progress(done, len(prompts))
    if not frames:
        return pl.DataFrame(schema=LOGPROB_SCHEMA)
    return pl.concat(frames, how="vertical")


# ---------------------------------------------------------------------------------------------------
# Word log-probabilities: the paper's single-token rule and the full-sequence extension


def _normalise_words(words: Iterable[str]) -> list[str]:
    out = []
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise InputError(f"word must be a string, got {word!r}", source="words", row=i + 1, field="word")
        word = word.strip().lower()
        if word:
            out.append(word)
    return list(dict.fromkeys(out))


def single_token_word_logprobs(logprobs: pl.DataFrame, words: Iterable[str]) -> tuple[pl.DataFrame, dict]:
    """The paper's rule: a word's log-prob is that of the vocabulary token that decodes to it exactly.

    ``logprobs`` is a :func:`next_token_logprobs` table (``prompt, token, logprob``). Words are
    stripped and lowercased; a word is kept if some decoded token equals it character for character
    (so a token spelled with a leading space, ``Ġword``/``▁word``, does not count); where several ids
    decode to the word the highest log-prob is kept.

    Returns ``(table, stats)``: ``table`` has ``prompt, word, logprob`` (Float64) and
    ``rule = "single_token"``, sorted by prompt and word; ``stats`` is
    ``{"rule", "n_words", "n_kept", "n_dropped", "kept", "dropped"}`` (sorted word lists).
    """
    for column in ("prompt", "token", "logprob"):
        if column not in logprobs.columns:
            raise InputError(f"missing column {column!r}; columns are {logprobs.columns}", source="logprobs",
                             field=column)
    wanted = _normalise_words(words)
    wanted_series = pl.Series("token", wanted, dtype=pl.Utf8)
    table = (
        logprobs.lazy()
        .filter(pl.col("token").is_in(wanted_series.implode()))
        .group_by("prompt", "token")
        .agg(pl.col("logprob").max().cast(pl.Float64))
        .rename({"token": "word"})
        .with_columns(pl.lit("single_token", dtype=pl.Utf8).alias("rule"))
        .select("prompt", "word", "logprob", "rule")
        .sort("prompt", "word")
        .collect()
    )
    present = set(table["word"].to_list())
    kept = sorted(w for w in wanted if w in present)
    dropped = sorted(w for w in wanted if w not in present)
    stats = {"rule": "single_token", "n_words": len(wanted), "n_kept": len(kept), "n_dropped": len(dropped),
             "kept": kept, "dropped": dropped}
    return table, stats


def sequence_word_logprobs(loaded: LoadedLanguageModel, prompts: Sequence[tuple[str, str]],
                           words: Iterable[str], batch_size: int = 64, *, prefix: str = "") -> pl.DataFrame:
    """The ``full_sequence`` rule: log-prob of each word's whole token sequence after the prompt.

    For prompt ids ``x`` (as :func:`encode_lm_prompt`) and word ids ``y = encode(prefix + word)``
    (no special tokens), ``logprob = sum_j log p(y_j | x, y_<j)``, each term a float32 log-softmax over
    the whole vocabulary. Words are stripped and lowercased. ``prefix`` (default ``""``, matching the
    single-token rule) can be set to ``" "`` to score the space-prefixed form a pretrained model would
    continue with. Computed by the engine (``valuebias.engine.sequence_logprobs``: each prompt's prefix
    cache once, the words batched after it), so batched values equal one-by-one values up to float rounding.

    Returns ``prompt, word, logprob`` (Float64), ``n_tokens`` (Int32) and ``rule = "full_sequence"``,
    prompt-major in the given orders.
    """
    from valuebias import engine

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    words = _normalise_words(words)
    for i, word in enumerate(words):
        if not loaded.tokenizer(prefix + word, add_special_tokens=False)["input_ids"]:
            raise InputError(f"word {word!r} encodes to no tokens", source="words", row=i + 1, field="word")
    contexts = [render_lm_prompt(loaded.tokenizer, text, loaded.variant, source=loaded.source) for _, text in prompts]
    table, _ = engine.sequence_logprobs(loaded, contexts=contexts, continuations=[prefix + w for w in words],
                                        add_special_tokens=loaded.variant == "pretrained", batch_size=batch_size)
    prompt_ids = [prompt_id for prompt_id, _ in prompts]
    word_of = {prefix + w: w for w in words}
    return pl.DataFrame(
        {"prompt": [prompt_ids[c] for c in table["context"].to_list()],
         "word": [word_of[c] for c in table["continuation"].to_list()],
         "logprob": table["logprob"], "n_tokens": table["n_tokens"], "rule": ["full_sequence"] * table.height},
        schema={"prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64, "n_tokens": pl.Int32, "rule": pl.Utf8},
    )


# ---------------------------------------------------------------------------------------------------
# One partition: the scoring worker's entry points (score_language_model, language_model_word_logprobs)

NEXT_TOKEN_SCHEMA = {"model": pl.Utf8, "prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8,
                     "logprob": pl.Float32}
WORD_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64,
               "rule": pl.Utf8}
# The probabilities of one prompt's next-token distribution sum to 1 within this (float32 over the
# whole vocabulary); anything further off means the table is broken.
PROBABILITY_SUM_TOLERANCE = 1e-2


def _demo_summary(path: str) -> dict[str, Any]:
    recipe = Path(path) / "recipe.json"
    if not recipe.is_file():
        return {}
    meta = json.loads(recipe.read_text())
    training = meta.get("training", {})
    return {"demo_training_steps": training.get("steps"), "demo_final_loss": training.get("final_loss"),
            "demo_target_entropy": training.get("target_entropy"), "demo_converged": training.get("converged"),
            "demo_training_words": meta.get("n_preferred_words", 0) + meta.get("n_other_words", 0),
            "demo_note": meta.get("note")}


def score_language_model(model_id: str, resolve: Callable[[], tuple[LanguageModelSource, ContentIdentity]], *,
                         prompts: pl.DataFrame, device: str | None = None,
                         progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, dict]:
    """Next-token log-probs over the whole vocabulary for every prompt (one forward pass each).

    ``resolve()`` gives the model to load and its content identity (its model source's ``language_model``,
    ``valuebias.model_sources``: a hub id pinned to a commit, a demo LM built, a GGUF file de-quantised).

    Returns ``model, prompt, token_id, token, logprob`` (prompt-major, ids ascending) and metadata:
    vocabulary size, device, dtype, timings, the largest deviation of a prompt's probabilities from
    summing to 1, and for a demo LM its training summary. Raises ``ValueError`` when a prompt's
    probabilities do not sum to 1 (within ``PROBABILITY_SUM_TOLERANCE``)."""
    started = time.perf_counter()
    src, identity = resolve()
    built = time.perf_counter()
    loaded = load_language_model(src, device=device, identity=identity)
    t0 = time.perf_counter()
    table = next_token_logprobs(loaded, list(zip(prompts["prompt"].to_list(), prompts["text"].to_list())),
                                progress=progress)
    score_seconds = time.perf_counter() - t0
    table = table.select(pl.lit(model_id, dtype=pl.Utf8).alias("model"), "prompt", "token_id", "token",
                         "logprob")
    sums = table.group_by("prompt").agg(pl.col("logprob").cast(pl.Float64).exp().sum().alias("p"))
    deviation = float((sums["p"] - 1.0).abs().max()) if len(sums) else 0.0
    if deviation > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{model_id}: next-token probabilities of a prompt sum to {1 + deviation:.4f}, not 1")
    metadata = {
        "prompts": len(prompts),
        "vocabulary_size": len(loaded.decoded_vocabulary()),
        "token_string_rule": TOKEN_STRING_RULE,
        "tokens_without_string": loaded.decoded_vocabulary().null_count(),
        "variant": src.variant,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "max_probability_sum_error": round(deviation, 8),
        "build_seconds": round(built - started, 3),
        "score_seconds": round(score_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "model_path": src.path,
        **_demo_summary(src.path),
        **provenance(identity, loaded.tokenizer, template_used=src.variant == "instruction_tuned"),
    }
    return table.cast(NEXT_TOKEN_SCHEMA), metadata


def language_model_word_logprobs(model_id: str, next_token: pl.DataFrame, corpus_words: pl.DataFrame,
                                 prompts: pl.DataFrame, *, rule: str = "single_token",
                                 load: Callable[[], Any] | None = None,
                                 batch_size: int = 64) -> tuple[pl.DataFrame, dict]:
    """Every corpus word's log-prob after every prompt, per corpus.

    ``rule="single_token"`` (the paper's): a word is kept when a vocabulary token decodes to it exactly
    (lowercase, no leading space), with that token's log-prob (the highest among such tokens).
    ``rule="full_sequence"``: in addition, every other word gets the log-prob of its whole token
    sequence (``load()`` gives the loaded model for that). The ``rule`` column says which rule gave each
    row. Returns ``model, corpus, prompt, word, logprob, rule`` and metadata with, per corpus, how many
    words each rule kept and how many were dropped.
    """

    if rule not in WORD_RULES:
        raise ValueError(f"unknown word rule {rule!r}; expected one of {list(WORD_RULES)}")
    words = sorted(corpus_words["word"].unique().to_list())
    single, stats = single_token_word_logprobs(next_token.select("prompt", "token", "logprob"), words)
    parts = [single]
    if rule == "full_sequence" and stats["dropped"]:
        if load is None:
            raise ValueError("the full_sequence rule needs the model: pass load")
        texts = dict(zip(prompts["prompt"].to_list(), prompts["text"].to_list()))
        ordered = [(pid, texts[pid]) for pid in next_token["prompt"].unique(maintain_order=True).to_list()]
        multi = sequence_word_logprobs(load(), ordered, stats["dropped"], batch_size=batch_size)
        parts.append(multi.select("prompt", "word", "logprob", "rule"))
    scored = pl.concat(parts)
    table = (corpus_words.select("corpus", "word").unique()
             .join(scored, on="word", how="inner")
             .select(pl.lit(model_id, dtype=pl.Utf8).alias("model"), "corpus", "prompt", "word", "logprob", "rule")
             .sort("corpus", "prompt", "word")
             .cast(WORD_SCHEMA))
    kept = table.select("corpus", "word", "rule").unique()
    per_corpus = {}
    for (corpus_id,), group in corpus_words.select("corpus", "word").unique().group_by("corpus", maintain_order=True):
        rules = kept.filter(pl.col("corpus") == corpus_id)
        n_single = int((rules["rule"] == "single_token").sum())
        n_full = int((rules["rule"] == "full_sequence").sum())
        per_corpus[corpus_id] = {"words": len(group), "single_token": n_single, "full_sequence": n_full,
                                 "dropped": len(group) - n_single - n_full}
    metadata = {"word_rule": rule, "words_kept": per_corpus,
                "words_single_token": stats["n_kept"],
                "words_full_sequence": len(stats["dropped"]) if rule == "full_sequence" else 0,
                "words_dropped": 0 if rule == "full_sequence" else stats["n_dropped"]}
    return table, metadata
