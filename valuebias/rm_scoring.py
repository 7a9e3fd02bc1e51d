"""Explicit reward-model scores (METHOD §3): one scalar per (prompt, word).

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

Entry point: :func:`score_reward_model` scores one reward-model partition (every corpus word x every
prompt, through the engine, ``valuebias.engine``) for the scoring worker; :func:`score_words` is the
straightforward path (one forward call per batch of full sequences) the engine is checked against.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import polars as pl
import torch

from valuebias.config import ATTN_IMPLEMENTATIONS, SCORE_READERS, remote_code_pin_message
from valuebias.errors import InputError
from valuebias.model_content import (ContentIdentity, check_executed_code, demo_identity, resolve_for_loading,
                                     score_cache_key, text_sha256)

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
    gguf_file: str | None = None  # a .gguf file in `path`: weights and tokenizer from it (dequantized on load)
    attn_implementation: str | None = None  # None: eager for Gemma-2, transformers' default otherwise

    def __post_init__(self):
        if not self.path:
            raise InputError("a local path or hub id is required", source=self.source, field="huggingface.path")
        if self.gguf_file is not None and (not self.gguf_file.endswith(".gguf") or Path(self.gguf_file).is_absolute()
                                           or ".." in Path(self.gguf_file).parts):
            raise InputError(f"{self.gguf_file!r} is not the name of a .gguf file inside huggingface.path",
                             source=self.source, field="huggingface.gguf_file")
        if self.score not in SCORE_READERS:
            raise InputError(f"unknown score reader {self.score!r}; expected one of {list(SCORE_READERS)}",
                             source=self.source, field="huggingface.score")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; expected 'auto' or one of {list(DTYPES)}",
                             source=self.source, field="huggingface.dtype")
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {self.attn_implementation!r}; expected one of "
                             f"{list(ATTN_IMPLEMENTATIONS)}", source=self.source,
                             field="huggingface.attn_implementation")

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

    Local directories are checked here (existence, remote code, pickle-only weights; with ``gguf_file``
    only that the file exists: a GGUF folder has no config.json, and GGUF holds no code).
    ``package://`` paths are resolved to their folder. Hub ids are checked by transformers at load time
    with the same keyword arguments (``load_reward_model`` converts its remote-code error into an
    InputError); a hub id with ``trust_remote_code`` must pin ``revision`` to a full commit sha, before
    anything downloads (a local folder's pin is its content digest).
    """
    from valuebias.model_content import model_folder

    kwargs: dict = {"trust_remote_code": src.trust_remote_code}
    # Safetensors only, unless pickle weights are explicitly allowed (then transformers prefers
    # safetensors where both exist and falls back to pickle). GGUF weights are read from their own file.
    if not src.allow_pickle and src.gguf_file is None:
        kwargs["use_safetensors"] = True
    if src.gguf_file is not None:
        kwargs["gguf_file"] = src.gguf_file
    if not src.is_local:
        from valuebias.model_content import COMMIT

        # Hub code runs only at a pinned commit (a local folder's pin is its content digest).
        if src.trust_remote_code and not COMMIT.match(src.revision or ""):
            raise InputError(remote_code_pin_message(src.path, src.revision), source=src.source,
                             field="huggingface.revision")
        kwargs["pretrained_model_name_or_path"] = src.path
        if src.revision is not None:
            kwargs["revision"] = src.revision
        return kwargs

    path = model_folder(src.path, source=src.source)
    if not path.is_dir():
        raise InputError(f"local model directory {src.path} does not exist", source=src.source,
                         field="huggingface.path")
    if src.gguf_file is not None:
        if not (path / src.gguf_file).is_file():
            found = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.gguf"))
            raise InputError(f"{src.path} has no file {src.gguf_file!r} (.gguf files there: "
                             f"{', '.join(found) or 'none'})", source=src.source, field="huggingface.gguf_file")
        kwargs["pretrained_model_name_or_path"] = str(path)
        return kwargs
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


def load_pretrained(src: HuggingFaceSource, model_class, device: str | None = None,
                    identity: ContentIdentity | None = None):
    """``(model, tokenizer, device, dtype)``: ``src`` checked (:func:`check_source`), tokenizer and
    ``model_class`` loaded, the model in eval mode on ``device`` (default: CUDA if available). dtype
    ``"auto"`` means bfloat16 on CUDA and float32 on CPU; an explicit dtype is honoured. A hub model that
    needs remote code it was not allowed is an InputError naming the setting. With the folder's content
    ``identity``, the remote code that ran must be the code that was digested
    (:func:`valuebias.model_content.check_executed_code`)."""
    from transformers import AutoTokenizer

    kwargs = check_source(src)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if src.dtype != "auto":
        dtype = DTYPES[src.dtype]
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tok_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
    attention = attn_implementation(src, kwargs)
    model_kwargs = kwargs | ({"attn_implementation": attention} if attention else {})
    try:
        tokenizer = AutoTokenizer.from_pretrained(**tok_kwargs)
        model = model_class.from_pretrained(**model_kwargs, dtype=dtype)
    except Exception as err:
        if isinstance(err, ValueError) and "trust_remote_code" in str(err):
            raise _remote_code_error(src) from err
        if isinstance(err, ValueError) and src.attn_implementation is not None and "attn" in str(err).lower():
            raise InputError(f"{src.path} cannot run with attn_implementation {src.attn_implementation!r}: {err}",
                             source=src.source, field="huggingface.attn_implementation") from err
        if src.gguf_file is not None:  # a damaged or foreign .gguf fails deep in its parser: name the file
            detail = " ".join(str(err).split())[:200]
            raise InputError(f"{Path(src.path) / src.gguf_file} is not a readable GGUF file "
                             f"({type(err).__name__}: {detail})", source=src.source,
                             field="huggingface.gguf_file") from err
        raise
    if src.clean_up_tokenization_spaces is not None:  # every decode of this tokenizer follows it
        tokenizer.clean_up_tokenization_spaces = src.clean_up_tokenization_spaces
        # recent transformers skip the clean-up for BPE tokenizers unless told so: `true` means applied
        tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = \
            src.clean_up_tokenization_spaces
    if identity is not None:
        check_executed_code([model, model.config, tokenizer], identity, source=src.source)
    return model.to(device).eval(), tokenizer, device, dtype


def attn_implementation(src: HuggingFaceSource, kwargs: dict) -> str | None:
    """The attention implementation to load ``src`` with (``kwargs``: :func:`check_source`'s):
    ``huggingface.attn_implementation`` when set; else ``"eager"`` for Gemma-2 (``model_type`` ``gemma2``
    in its ``config.json``, read before loading, no code run): its attention-logit soft-capping is computed
    by the eager kernel only (transformers versions that let Gemma-2 run sdpa drop it and degrade the
    model); else None, transformers' own default."""
    if src.attn_implementation is not None:
        return src.attn_implementation
    return "eager" if _config_model_type(kwargs) == "gemma2" else None


def _config_model_type(kwargs: dict) -> str | None:
    """``model_type`` of the ``config.json`` that ``from_pretrained(**kwargs)`` would read (the local file,
    or the hub's at the revision, cached); None when there is none (a GGUF file) or it cannot be read
    (loading then reports the problem)."""
    from transformers.utils import cached_file

    if "gguf_file" in kwargs:
        return None
    try:
        path = cached_file(kwargs["pretrained_model_name_or_path"], "config.json", revision=kwargs.get("revision"),
                           _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()).get("model_type") if path else None
    except (OSError, ValueError):
        return None


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

SCORE_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}


def demo_words_by_category(corpus_words: pl.DataFrame, corpus: str) -> dict[str, list[str]]:
    """The training words of a demonstration model: the words of one corpus, by category."""
    rows = corpus_words.filter(pl.col("corpus") == corpus)
    return {cat: sorted(group["word"].to_list())
            for (cat,), group in rows.group_by("category", maintain_order=True)}


def resolve_model_path(model_id: str, source: str, settings: dict[str, Any], *, demo_dir: Path,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame,
                       digest_cache: str | Path | None = None) -> tuple[dict[str, Any], ContentIdentity]:
    """(the huggingface-style settings to load, the content identity of what they load): as configured
    (a hub id pinned to the commit it resolves to now), or a demo model built (cached) on disk."""
    if source != "demo":
        return resolve_for_loading(model_id, source, settings, digest_cache=digest_cache)
    from demo_models.reward_models import DemoRecipe, build_demo_reward_model

    recipe = DemoRecipe(architecture=settings["architecture"], preferred_category=settings.get("preferred_category"),
                        seed=settings["seed"], hidden_size=settings["hidden_size"],
                        num_layers=settings["num_layers"], train_steps=settings["train_steps"],
                        prefers=settings.get("prefers", "category"))
    path = build_demo_reward_model(
        demo_dir / model_id, recipe,
        words_by_category=demo_words_by_category(corpus_words, settings["train_corpus"]),
        prompts=list(zip(prompts["text"].to_list(), prompts["framing"].to_list())), source=f"models.{model_id}.demo",
    )
    return {"path": str(path), "score": "logits[0]"}, demo_identity(path)


class ScoreCache(Protocol):
    """Where finished chunks of scores are kept: rows (key, score), one chunk per prompt."""

    def read(self) -> pl.DataFrame: ...

    def write_chunk(self, prompt_id: str, chunk: pl.DataFrame) -> None: ...


def empty_cache() -> pl.DataFrame:
    return pl.DataFrame(schema={"key": pl.Utf8, "score": pl.Float64})


def provenance(identity: ContentIdentity, tokenizer, *, template_used: bool = True) -> dict[str, Any]:
    """What the worker knows about the scores it produced: the content identity of the model, the hash of
    the chat template actually used, and the torch and transformers versions."""
    import torch
    import transformers

    template = text_sha256(tokenizer.chat_template) if template_used else "none (raw prompt text)"
    return {"content": identity.to_metadata(), "chat_template_sha256": template,
            "torch": torch.__version__, "transformers": transformers.__version__}


def sequence_key(rendered: str) -> str:
    """Cache key of one scored sequence: a hash of the rendered conversation (template + prompt + word).
    The cache folder itself is specific to the model (its fingerprint)."""
    return hashlib.sha256(rendered.encode()).hexdigest()[:32]


def score_reward_model(model_id: str, source: str, settings: dict[str, Any], *, prompts: pl.DataFrame,
                       corpus_words: pl.DataFrame, demo_dir: Path, batch_size: int = 64,
                       device: str | None = None, cache: Callable[[str], ScoreCache] | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       digest_cache: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every unique corpus word under every prompt with the model's own chat template.

    ``cache(key)`` gives the score cache of the resolved model, keyed by its content identity
    (``valuebias.model_content.score_cache_key``: other weights never share a cache). With it,
    sequences already scored by this model (same rendered conversation) are reused,
    and each prompt's new scores are saved as one chunk as soon as they are computed, so an interrupted
    partition resumes where it stopped. Returns the long table (model, corpus, prompt, word, score) and
    run metadata (``sequences_scored``, ``sequences_reused``, engine, timings, and the ``invariance_*``
    figures of the invariance audit, ``valuebias.invariance``)."""
    from valuebias import engine

    started = time.perf_counter()
    hf, identity = resolve_model_path(model_id, source, settings, demo_dir=demo_dir, prompts=prompts,
                                      corpus_words=corpus_words, digest_cache=digest_cache)
    src = HuggingFaceSource(model_id=model_id, **hf)
    words = sorted(corpus_words["word"].unique().to_list())
    tokenizer = _load_tokenizer(check_source(src))
    cache = cache(score_cache_key(hf, identity)) if cache is not None else None
    cached = cache.read() if cache is not None else empty_cache()
    known = dict(zip(cached["key"].to_list(), cached["score"].to_list()))

    loaded, infos, rows, scored, score_seconds = None, [], [], 0, 0.0
    total = len(prompts) * len(words)
    for prompt_id, text in zip(prompts["prompt"].to_list(), prompts["text"].to_list()):
        keys = [sequence_key(rendered) for rendered in render_conversations(tokenizer, text, words, source=src.source)]
        missing = [w for w, k in zip(words, keys) if k not in known]
        if missing:
            if loaded is None:
                loaded = load_reward_model(src, device=device, identity=identity)
            t0 = time.perf_counter()
            table, info = engine.score_prefix_cached(loaded, score=src.score, prompts=[(prompt_id, text)],
                                                     words=missing, batch_size=batch_size)
            score_seconds += time.perf_counter() - t0
            infos.append(info)
            new = dict(zip(table["word"].to_list(), table["score"].to_list()))
            chunk = pl.DataFrame({"key": [k for w, k in zip(words, keys) if w in new],
                                  "score": [new[w] for w, k in zip(words, keys) if w in new]},
                                 schema={"key": pl.Utf8, "score": pl.Float64})
            if cache is not None:
                cache.write_chunk(prompt_id, chunk)
            known.update(zip(chunk["key"].to_list(), chunk["score"].to_list()))
            scored += len(missing)
        rows.append(pl.DataFrame({"prompt": prompt_id, "word": words, "score": [known[k] for k in keys]},
                                 schema={"prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}))
        if progress is not None:
            progress(sum(len(r) for r in rows), total)

    scores = pl.concat(rows)
    table = (corpus_words.select("corpus", "word").unique()
             .join(scores, on="word", how="inner")
             .select(pl.lit(model_id).alias("model"), "corpus", "prompt", "word", "score")
             .sort("corpus", "prompt", "word"))
    engines = sorted({i["engine"] for i in infos})
    metadata = {
        "sequences_scored": scored,
        "sequences_reused": total - scored,
        "unique_words": len(words),
        "prompts": len(prompts),
        "engine": ", ".join(engines) if engines else "none (everything reused)",
        "oom_halvings": sum(i.get("oom_halvings", 0) for i in infos),
        "device": str(loaded.device) if loaded else "not loaded",
        "dtype": str(loaded.dtype).replace("torch.", "") if loaded else "not loaded",
        "batch_size": batch_size,
        "score_seconds": round(score_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "sequences_per_second": round(scored / score_seconds, 1) if score_seconds else None,
        "model_path": hf["path"],
        **provenance(identity, tokenizer),
    }
    # Invariance audit (valuebias.invariance): also when every score was reused from the cache (the model is
    # then loaded for it: cheap next to scoring, and the reused scores are the ones the tables are built on).
    from valuebias.invariance import audit_partition

    if loaded is None:
        loaded = load_reward_model(src, device=device, identity=identity)
    metadata.update(audit_partition(loaded, score=src.score, prompts=prompts, scores=scores))
    metadata["total_seconds"] = round(time.perf_counter() - started, 3)
    return table.cast(SCORE_SCHEMA), metadata


SWEEP_SCHEMA = {"model": pl.Utf8, "prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "score": pl.Float64}


def sweep_reward_model(model_id: str, source: str, settings: dict[str, Any], sweep: dict[str, Any], *,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame, demo_dir: Path, batch_size: int = 64,
                       device: str | None = None, digest_cache: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every vocabulary token, decoded, as the response to each sweep prompt (METHOD.md section 6,
    the FAccT predecessor). Ids that decode to the same string share one score (same conversation).
    Returns (model, prompt, token_id, token, score) and metadata."""
    from valuebias import engine
    from valuebias.lm_scoring import decoded_vocabulary

    chosen = prompts.filter(pl.col("prompt").is_in(sweep["prompts"]))
    unknown = sorted(set(sweep["prompts"]) - set(chosen["prompt"].to_list()))
    if unknown:
        from valuebias.errors import InputError

        raise InputError(f"unknown prompt id(s) {unknown}", source=f"models.{model_id}",
                         field="vocabulary_sweep.prompts")
    started = time.perf_counter()
    hf, identity = resolve_model_path(model_id, source, settings, demo_dir=demo_dir, prompts=prompts,
                                      corpus_words=corpus_words, digest_cache=digest_cache)
    src = HuggingFaceSource(model_id=model_id, **hf)
    loaded = load_reward_model(src, device=device, identity=identity)
    vocabulary = decoded_vocabulary(loaded.tokenizer, len(loaded.tokenizer))
    strings = sorted(set(vocabulary.drop_nulls().to_list()))
    scores, info = engine.score_prefix_cached(loaded, score=src.score,
                                              prompts=list(zip(chosen["prompt"], chosen["text"])),
                                              words=strings, batch_size=batch_size)
    ids = pl.DataFrame({"token_id": pl.arange(0, len(vocabulary), eager=True).cast(pl.Int32),
                        "token": vocabulary})
    table = (ids.join(scores.rename({"word": "token"}), on="token", how="inner")
             .select(pl.lit(model_id).alias("model"), "prompt", "token_id", "token", "score")
             .sort("prompt", "token_id"))
    return table.cast(SWEEP_SCHEMA), {
        "vocabulary_size": len(vocabulary), "distinct_strings": len(strings), "prompts": chosen.height,
        "sequences_scored": len(strings) * chosen.height, "engine": info["engine"],
        "oom_halvings": info.get("oom_halvings", 0), "seconds": round(time.perf_counter() - started, 3),
        "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
        **provenance(identity, loaded.tokenizer)}


def sweep_extremes(sweep: pl.DataFrame, top_n: int) -> pl.DataFrame:
    """Per (model, prompt): the ``top_n`` best and worst distinct token strings, rank 1..n from the top
    (side ``top``) and -1..-n from the bottom (side ``bottom``)."""
    distinct = sweep.unique(subset=["model", "prompt", "token"], keep="first").sort("score", "token",
                                                                                      descending=[True, False])
    ranked = distinct.with_columns(pl.int_range(1, pl.len() + 1).over("model", "prompt").alias("from_top"),
                                   pl.len().over("model", "prompt").alias("n"))
    top = ranked.filter(pl.col("from_top") <= top_n).with_columns(pl.lit("top").alias("side"),
                                                                   pl.col("from_top").alias("rank"))
    bottom = ranked.filter(pl.col("from_top") > pl.col("n") - top_n).with_columns(
        pl.lit("bottom").alias("side"), (pl.col("from_top") - pl.col("n") - 1).alias("rank"))
    return (pl.concat([top, bottom]).select("model", "prompt", "side", pl.col("rank").cast(pl.Int64), "token",
                                            "score").sort("model", "prompt", "score", descending=[False, False, True]))


def _load_tokenizer(kwargs: dict):
    """The tokenizer alone (cheap), to render conversations and look them up in the cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(**{k: v for k, v in kwargs.items() if k != "use_safetensors"})
