"""Language-model log-probabilities (METHOD §4): the next-token distribution after a value-laden prompt.

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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from valuebias.config import LM_VARIANTS
from valuebias.config import WORD_RULES
from valuebias.errors import InputError
from valuebias.scoring import HuggingFaceSource, load_pretrained


LOGPROB_SCHEMA = {"prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "logprob": pl.Float32}
WORD_LOGPROB_SCHEMA = {"prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64, "rule": pl.Utf8}


@dataclass(frozen=True)
class LanguageModelSource:
    """Where a language model comes from (a registry entry's ``huggingface`` block plus the variant).

    ``path`` is a local directory or a hub id; local directories get the same checks as reward models
    (:func:`valuebias.scoring.check_source`: config present, no remote code unless
    ``trust_remote_code``, safetensors unless ``allow_pickle``).
    """

    model_id: str
    path: str
    variant: str
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    clean_up_tokenization_spaces: bool | None = None

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
                                 clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)


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
        """``tokenizer.decode([id])`` for every id of the model's output layer, computed once."""
        if self._vocab is None:
            self._vocab = decoded_vocabulary(self.tokenizer, _output_size(self.model))
        return self._vocab


def _output_size(model) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


def load_language_model(src: LanguageModelSource, device: str | None = None) -> LoadedLanguageModel:
    """Load the LM (``AutoModelForCausalLM``) and its tokenizer in eval mode on ``device``.

    Default device: CUDA if available. dtype ``"auto"``: bfloat16 on CUDA, float32 on CPU; an explicit
    dtype is honoured. An IT model whose tokenizer has no chat template is refused.
    """
    from transformers import AutoModelForCausalLM

    model, tokenizer, device, dtype = load_pretrained(src.as_huggingface_source(), AutoModelForCausalLM, device)
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
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


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
    continue with. Sequences of one prompt are batched ``batch_size`` at a time, right-padded (causal
    attention: padding never influences earlier positions), so batched values equal one-by-one values
    up to float rounding.

    Returns ``prompt, word, logprob`` (Float64), ``n_tokens`` (Int32) and ``rule = "full_sequence"``,
    prompt-major in the given orders.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer, model = loaded.tokenizer, loaded.model
    words = _normalise_words(words)
    word_ids = [list(tokenizer(prefix + w, add_special_tokens=False)["input_ids"]) for w in words]
    for i, ids in enumerate(word_ids):
        if not ids:
            raise InputError(f"word {words[i]!r} encodes to no tokens", source="words", row=i + 1, field="word")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    supports_keep = "logits_to_keep" in _forward_kwargs(model)
    rows_prompt, rows_word, rows_lp, rows_n = [], [], [], []
    order = sorted(range(len(words)), key=lambda i: len(word_ids[i]))
    with torch.inference_mode():
        for prompt_id, text in prompts:
            prompt_ids = encode_lm_prompt(tokenizer, text, loaded.variant, source=loaded.source)
            n_prompt = len(prompt_ids)
            values = [0.0] * len(words)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                longest = max(len(word_ids[i]) for i in idx)
                width = n_prompt + longest
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
                targets = torch.zeros((len(idx), longest), dtype=torch.long)
                target_mask = torch.zeros((len(idx), longest), dtype=torch.bool)
                for row, i in enumerate(idx):
                    seq = prompt_ids + word_ids[i]
                    input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                    attention_mask[row, :len(seq)] = 1
                    targets[row, :len(word_ids[i])] = torch.tensor(word_ids[i], dtype=torch.long)
                    target_mask[row, :len(word_ids[i])] = True
                # Positions n_prompt-1 .. n_prompt+longest-2 predict the word tokens.
                positions = torch.arange(n_prompt - 1, n_prompt - 1 + longest)
                kwargs = {"logits_to_keep": positions.to(loaded.device)} if supports_keep else {}
                logits = model(input_ids=input_ids.to(loaded.device),
                               attention_mask=attention_mask.to(loaded.device), **kwargs).logits
                if not supports_keep:
                    logits = logits[:, n_prompt - 1:n_prompt - 1 + longest]
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                sums = torch.where(target_mask, picked, torch.zeros_like(picked)).sum(-1, dtype=torch.float64)
                for row, i in enumerate(idx):
                    values[i] = float(sums[row])
            rows_prompt.extend([prompt_id] * len(words))
            rows_word.extend(words)
            rows_lp.extend(values)
            rows_n.extend(len(ids) for ids in word_ids)
    return pl.DataFrame(
        {"prompt": rows_prompt, "word": rows_word, "logprob": rows_lp, "n_tokens": rows_n,
         "rule": ["full_sequence"] * len(rows_prompt)},
        schema={"prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64, "n_tokens": pl.Int32, "rule": pl.Utf8},
    )
