"""Explicit reward-model scores (METHOD §3): one scalar per (prompt, word).

For each prompt and word, the conversation ``[user: prompt, assistant: word]`` is rendered with the
RM's own chat template, tokenized without extra special tokens (the template carries BOS), run through
the RM, and one scalar is read from the output. How the scalar is read depends on the model family
(the registry field ``score``):

- ``"logits[0]"``: a 1-label sequence-classification head (Skywork, GRM): ``logits[:, 0]``;
- ``"score"``: an attribute ``score`` on the output (ArmoRM, QRM; remote code);
- ``"logits[:,0]"``: the first column of a multi-output head (URM).

Batches are formed from sequences sorted by length and right-padded with the model's pad id; the
sequence-classification heads pool the rightmost non-pad token, so batched scores equal one-by-one
scores up to float rounding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from valuebias.config import SCORE_READERS
from valuebias.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class HuggingFaceSource:
    """Where a reward model comes from and how to read its scalar (a registry entry's ``huggingface``)."""

    model_id: str
    path: str
    revision: str | None = None
    dtype: str = "auto"
    score: str = "logits[0]"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    clean_up_tokenization_spaces: bool | None = None  # None: the tokenizer's own setting (the paper's choice)

    def __post_init__(self):
        if not self.path:
            raise InputError("a local path or hub id is required", source=self.source, field="huggingface.path")
        if self.score not in SCORE_READERS:
            raise InputError(f"unknown score reader {self.score!r}; expected one of {list(SCORE_READERS)}",
                             source=self.source, field="huggingface.score")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; expected 'auto' or one of {list(DTYPES)}",
                             source=self.source, field="huggingface.dtype")

    @property
    def source(self) -> str:
        return f"models.{self.model_id}"

    @property
    def is_local(self) -> bool:
        from valuebias.model_content import is_local_path

        return is_local_path(self.path)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    source: str | None = None  # "models.<id>", for error messages


def _remote_code_error(src: HuggingFaceSource) -> InputError:
    return InputError(
        f"{src.path} needs remote code (auto_map); review that code, then set `trust_remote_code: true` "
        "(and pin `revision`)", source=src.source, field="huggingface.trust_remote_code")


def check_source(src: HuggingFaceSource) -> dict:
    """Check a source before loading; return the keyword arguments for ``from_pretrained``.

    Local directories are checked here (existence, remote code, pickle-only weights). Hub ids are
    checked by transformers at load time with the same keyword arguments (``load_reward_model``
    converts its remote-code error into an InputError).
    """
    kwargs: dict = {"trust_remote_code": src.trust_remote_code}
    # Safetensors only, unless pickle weights are explicitly allowed (then transformers prefers
    # safetensors where both exist and falls back to pickle).
    if not src.allow_pickle:
        kwargs["use_safetensors"] = True
    if not src.is_local:
        kwargs["pretrained_model_name_or_path"] = src.path
        if src.revision is not None:
            kwargs["revision"] = src.revision
        return kwargs

    path = Path(src.path).expanduser()
    if not path.is_dir():
        raise InputError(f"local model directory {src.path} does not exist", source=src.source,
                         field="huggingface.path")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{src.path} has no config.json", source=src.source, field="huggingface.path")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_file} is not valid JSON: {err}", source=src.source,
                         field="huggingface.path") from err
    if "auto_map" in config and not src.trust_remote_code:
        raise _remote_code_error(src)
    names = [p.name for p in path.iterdir() if p.is_file()]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if not has_safetensors and not pickles:
        raise InputError(f"{src.path} holds no weight files (*.safetensors)", source=src.source,
                         field="huggingface.path")
    if not has_safetensors and not src.allow_pickle:
        raise InputError(
            f"{src.path} has only pickle weights ({', '.join(pickles)}), which can run arbitrary code when "
            "loaded; convert them to safetensors, or set `allow_pickle: true` if you trust them",
            source=src.source, field="huggingface.allow_pickle")
    kwargs["pretrained_model_name_or_path"] = str(path)
    return kwargs


def load_pretrained(src: HuggingFaceSource, model_class, device: str | None = None):
    """``(model, tokenizer, device, dtype)``: ``src`` checked (:func:`check_source`), tokenizer and
    ``model_class`` loaded, the model in eval mode on ``device`` (default: CUDA if available). dtype
    ``"auto"`` means bfloat16 on CUDA and float32 on CPU; an explicit dtype is honoured. A hub model that
    needs remote code it was not allowed is an InputError naming the setting."""
    from transformers import AutoTokenizer

    kwargs = check_source(src)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if src.dtype != "auto":
        dtype = DTYPES[src.dtype]
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tok_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**tok_kwargs)
        model = model_class.from_pretrained(**kwargs, dtype=dtype)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise _remote_code_error(src) from err
        raise
    if src.clean_up_tokenization_spaces is not None:  # every decode of this tokenizer follows it
        tokenizer.clean_up_tokenization_spaces = src.clean_up_tokenization_spaces
        # recent transformers skip the clean-up for BPE tokenizers unless told so: `true` means applied
        tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = \
            src.clean_up_tokenization_spaces
    return model.to(device).eval(), tokenizer, device, dtype


def load_reward_model(src: HuggingFaceSource, device: str | None = None) -> LoadedModel:
    """Load the RM (``AutoModelForSequenceClassification``) and its tokenizer with :func:`load_pretrained`."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, device, dtype = load_pretrained(src, AutoModelForSequenceClassification, device)
    if src.score == "logits[0]" and model.config.num_labels != 1:
        raise InputError(f"score 'logits[0]' needs a 1-label head, the model has num_labels="
                         f"{model.config.num_labels} (use 'logits[:,0]' for a multi-output head)",
                         source=src.source, field="huggingface.score")
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, source=src.source)


def render_conversation(tokenizer, prompt_text: str, word: str, *, source: str | None = None) -> str:
    """The RM's own chat template applied to ``[user: prompt_text, assistant: word]``."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template", source=source, field="huggingface.path")
    messages = [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": word}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


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
    """The id to right-pad with: the one the model's pooling treats as padding, so that padding never
    changes a score.

    A model without ``pad_token_id`` pools the last position and refuses batches; it is given the
    tokenizer's pad (or EOS) id, which must then end no sequence, so that "rightmost non-pad token"
    is still the last token of every sequence.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "pad_token_id", None) is not None:
        return int(config.pad_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    if any(ids and ids[-1] == pad for ids in encoded):
        raise ValueError(f"the model has no pad_token_id and the fallback pad id {pad} ends a rendered "
                         "sequence; set pad_token_id in the model's config.json")
    config.pad_token_id = pad
    return pad


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
    texts = [render_conversation(tokenizer, text, word, source=loaded.source) for _, text, word in pairs]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
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
