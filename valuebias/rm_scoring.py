"""Explicit reward-model scores (docs/METHOD.md#31-scoring): one scalar per (prompt, word).

For each prompt and word, the conversation ``[user: prompt, assistant: word]`` is rendered with the
RM's own chat template, tokenized without extra special tokens (the template carries BOS), run through
the RM, and one scalar is read from the output. How the scalar is read depends on the model family
(the registry field ``score``):

- ``"logits[0]"``: a 1-label sequence-classification head (Skywork, GRM): ``logits[:, 0]``;
- ``"score"``: an attribute ``score`` on the output (ArmoRM, QRM; remote code);
- ``"logits[:,0]"``: the first column of a multi-output head (URM).

Batches are formed from sequences sorted by length and right-padded with an id that no sequence
contains, made the model's pad id (``_pad_id``); the heads find padding by that id, so each reads the
last real token (the template's closing token), and batched scores equal one-by-one scores up to float
rounding.

:func:`score_words` is the straightforward path (one forward call per batch of full sequences) that the engine
(``valuebias.engine``) is checked against; ``valuebias.rm_partition`` scores one reward-model partition.
"""

from __future__ import annotations

import itertools
from typing import Callable

import polars as pl
import torch

from valuebias.config import SCORE_READERS
from valuebias.errors import InputError
from valuebias.hf_loading import HuggingFaceSource, LoadedModel, load_pretrained
from valuebias.model_content import ContentIdentity


def load_reward_model(src: HuggingFaceSource, device: str | None = None,
                      identity: ContentIdentity | None = None) -> LoadedModel:
    """Load the RM (``AutoModelForSequenceClassification``) and its tokenizer with :func:`load_pretrained`."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, device, dtype = load_pretrained(src, AutoModelForSequenceClassification, device, identity)
    if src.score == "logits[0]" and model.config.num_labels != 1:
        raise InputError(f"score 'logits[0]' needs a 1-label head, the model has num_labels="
                         f"{model.config.num_labels} (use 'logits[:,0]' for a multi-output head)",
                         source=src.source, field="huggingface.score")
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, source=src.source)


def render_conversation(tokenizer, prompt_text: str, word: str, *, source: str | None = None) -> str:
    """The RM's own chat template applied to ``[user: prompt_text, assistant: word]``."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template", source=source, field="huggingface.path")
    from valuebias.chat_templates import bounded_render

    messages = [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": word}]
    return bounded_render(lambda: tokenizer.apply_chat_template(messages, tokenize=False), tokenizer, source=source)


#: Stands for the answer when a prompt's conversation is rendered once (private-use code points: no word has them).
ANSWER_SLOT = "\ue000\ue001"
#: Words spread over the list that are also rendered in full to check the one-render shortcut.
TEMPLATE_CHECKS = 8


def render_conversations(tokenizer, prompt_text: str, words: list[str], *, source: str | None = None) -> list[str]:
    """:func:`render_conversation` of every word under one prompt, with the template applied once.

    The conversation is rendered once with ``ANSWER_SLOT`` as the answer, and each word is put in its place
    (about 100 times faster than one template call per word). That equals the template's own output when the
    template copies the answer verbatim or trims it (words have no outer whitespace), which is checked, not
    assumed: every word that is not plain letters, and ``TEMPLATE_CHECKS`` words spread over the list, are
    also rendered in full; on any difference every word is rendered in full."""
    if not words:
        return []
    slotted = render_conversation(tokenizer, prompt_text, ANSWER_SLOT, source=source)
    if slotted.count(ANSWER_SLOT) == 1:
        head, tail = slotted.split(ANSWER_SLOT)
        fast = [head + word + tail for word in words]
        checked = set(range(0, len(words), max(1, len(words) // TEMPLATE_CHECKS))) | {len(words) - 1}
        checked |= {i for i, word in enumerate(words) if not word.isalpha()}
        if all(render_conversation(tokenizer, prompt_text, words[i], source=source) == fast[i] for i in checked):
            return fast
    return [render_conversation(tokenizer, prompt_text, word, source=source) for word in words]


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]`` (the rendered template carries the special
    tokens). A fast tokenizer whose backend pads and truncates nothing is called directly: the same ids
    without building a transformers encoding per text (a quarter of the tokenizing time)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def read_scalar(output, score: str) -> torch.Tensor:
    """One float per sequence of the batch, read from a model output with the named reader."""
    if score in ("logits[0]", "logits[:,0]"):
        logits = output.logits
        if logits.ndim != 2:
            raise ValueError(f"expected logits of shape (batch, labels), got {tuple(logits.shape)}")
        if score == "logits[0]" and logits.shape[1] != 1:
            raise ValueError(f"'logits[0]' expects a 1-label head, got logits of shape {tuple(logits.shape)}")
        return logits[:, 0]
    if score == "score":
        values = getattr(output, "score", None)
        if values is None:
            raise ValueError("the model output has no attribute 'score'")
        values = torch.as_tensor(values)
        if values.ndim == 0:
            values = values.reshape(1)
        values = values.reshape(values.shape[0], -1)
        if values.shape[1] != 1:
            raise ValueError(f"'score' holds {values.shape[1]} values per sequence, expected 1")
        return values[:, 0]
    raise ValueError(f"unknown score reader {score!r}; expected one of {list(SCORE_READERS)}")


def _pad_id(model, tokenizer, encoded: list[list[int]]) -> int:
    """The id to right-pad with, made the model's ``pad_token_id``, so that every head reads the last
    real token of each sequence: the score the sequence gets when it runs alone, unpadded.

    Heads find padding by its id: transformers' generic head pools the rightmost token that is not the
    pad id, remote-code heads such as ArmoRM's the token before the first pad id. The model's own pad
    id does not always qualify: it may be missing, or be a token of the conversation itself (pad ==
    EOS, and the Llama-3 templates end every turn with EOS: the generic head would then read the token
    before the final EOS, padded or not). So the first of (the model's pad id, the tokenizer's pad id,
    its EOS id, 0, 1, ...) that occurs in no sequence is used; when every id occurs somewhere (a sweep
    over the whole vocabulary), the first that ends no sequence (which the generic head needs).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = int(getattr(embeddings, "num_embeddings", 0) or config.vocab_size)
    present = set(itertools.chain.from_iterable(encoded))
    ends = {ids[-1] for ids in encoded if ids}
    preferred = (getattr(config, "pad_token_id", None), tokenizer.pad_token_id, tokenizer.eos_token_id)
    for excluded in (present, ends):
        for pad in itertools.chain(preferred, range(rows)):
            if pad is not None and 0 <= int(pad) < rows and int(pad) not in excluded:
                config.pad_token_id = int(pad)
                return int(pad)
    raise ValueError("every token id ends some rendered sequence: no id is left to mark padding")


def score_words(loaded: LoadedModel, *, score: str, prompts: list[tuple[str, str]], words: list[str],
                batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Score every word as the response to every prompt.

    ``prompts``: ``(prompt_id, prompt_text)`` pairs. Returns columns ``prompt`` (the id), ``word``,
    ``score`` (Float64), one row per prompt x word, prompt-major in the given orders.
    ``progress(done, total)`` is called after each batch with counts of sequences.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer, model = loaded.tokenizer, loaded.model
    pairs = [(pid, text, word) for pid, text in prompts for word in words]
    texts = [rendered for _, text in prompts
             for rendered in render_conversations(tokenizer, text, words, source=loaded.source)]
    encoded = token_ids(tokenizer, texts) if texts else []
    pad = _pad_id(model, tokenizer, encoded)

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(encoded)
    total = len(encoded)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, :len(ids)] = 1
            output = model(input_ids=input_ids.to(loaded.device), attention_mask=attention_mask.to(loaded.device))
            values = read_scalar(output, score).float().cpu().tolist()
            for i, value in zip(idx, values):
                scores[i] = value
            if progress is not None:
                progress(min(start + batch_size, total), total)
    return pl.DataFrame(
        {"prompt": [p for p, _, _ in pairs], "word": [w for _, _, w in pairs], "score": scores},
        schema={"prompt": pl.String, "word": pl.String, "score": pl.Float64},
    )


# ---------------------------------------------------------------------------------------------------
# One partition: the scoring worker's entry points (score_reward_model, sweep_reward_model)

