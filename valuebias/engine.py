"""Prefix-cached scoring engine (docs/METHOD.md#31-scoring and #6-vocabulary-sweep; project issue 4).

All the sequences of one prompt share a long token prefix (chat template, system header, the prompt,
the assistant header); only the last few tokens, the word, differ. The straightforward path
(``rm_scoring.score_words``) runs every full sequence. This engine

1. renders and tokenizes every full sequence exactly as ``score_words`` does (same chat template, same
   ``tokenizer(texts, add_special_tokens=False)``), so the token ids are identical;
2. per prompt, takes the longest common token prefix of that prompt's sequences (shortened so that each
   sequence keeps at least one suffix token and so that the token the head pools lies in the suffix);
3. runs the base transformer once on the prefixes of a group of prompts (one row per prompt,
   right-padded; up to ``max_group_rows`` sequences a group) and keeps the key/value cache;
4. runs only the differing suffixes of the whole group, sorted by length and cut into batches (length
   buckets, right-padded with the model's pad id), against that cache: each row's attention mask is
   ones over its own prefix, zeros over that prefix row's padding, then the suffix mask;
   ``position_ids`` are the row's prefix length + arange (so cache padding shifts no position). The
   cache rows are put in a fresh cache object per batch (an ``expand`` view when a batch comes from
   one prompt, else ``index_select``); a forward call only rebinds the cache's tensors (``torch.cat``),
   so the prefix cache is never mutated. Grouping prompts gives batches larger than one prompt's word
   list (fewer forward calls: better GPU use, less per-call overhead on busy CPUs). For sliding-window
   attention (Gemma 2), whose window is counted in cache indices, prompts are grouped only when the
   padded row fits in the window; otherwise each prompt runs alone, unpadded;
5. applies the model's own linear head (``model.score``) to the hidden state of each sequence's last
   real token (the token ``rm_scoring.score_words`` makes the library's pooling read, whatever the pad
   id), and reads the scalar with ``rm_scoring.read_scalar``.

Scores equal the straightforward path's up to float rounding: the tests require max |difference|
<= 1e-4 in float32 on CPU (observed: below 1e-6, e.g. 8.9e-7 over the paper's 54 x 263 workload with
a hidden-512, 8-layer model). In bfloat16 the two paths round differently (different matmul shapes;
the prefix keys/values come from one pass instead of many): measured on CPU, the engine and the
straightforward path differed by at most 1 bf16 ulp on the tiny test models and by 1.2e-2 for
|score| <= 0.52 (about 3 ulps, 2 % of the score scale) on the hidden-512, 8-layer benchmark model,
while each path is itself about that far from float32. No GPU was available when this was written;
bf16 on a GPU also accumulates in float32, so the same order is expected there: accept max |difference|
<= 3e-2 x max |score| in bf16, and check it with ``python -m bench.scoring --device cuda --dtype
bfloat16`` (which prints both). Rank-based analyses see bf16 noise on either path alike; run float32
where exact agreement matters.

Batch size adapts: on an out-of-memory error (``torch.OutOfMemoryError`` — the same class as
``torch.cuda.OutOfMemoryError`` —, ``MemoryError``, or a ``RuntimeError`` whose message says "out of
memory") the batch is halved and the same rows are retried; after ``grow_after`` successful full
batches in a row it doubles, up to ``max_batch_size`` and never back to a size that ran out of memory.
Memory is bounded: sequences are tokenized one prompt at a time and kept as int32 arrays (4 bytes a
token), at most ``max_group_rows`` sequences (or one prompt's, if more) and one group's prefix cache
are held at a time, and a batch is capped in sequences (``max_batch_size``), so a sweep over a whole
256k-token vocabulary needs about 60 MB of host memory for its token ids beyond the model, and device
memory for one batch. A test can force the OOM
path on CPU with ``oom_simulator``.

Models where this cannot be applied (remote code, a head other than the library's generic
sequence-classification head, a cache layer type the engine does not know) fall back to
``rm_scoring.score_words``; ``info["engine"]`` then reads ``"straightforward (<reason>)"``, for the
asset metadata.

``sequence_logprobs`` is the same engine for causal LMs: the total log-probability of (possibly
multi-token) continuations after a shared context (docs/METHOD.md#42-word-rule, the named `full_sequence` option).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from valuebias import rm_scoring

ENGINE_PREFIX_CACHE = "prefix_cache"
TOKENIZE_CHUNK = 4096  # texts rendered and tokenized at a time (bounds host memory on huge sweeps)
#: Suffix tokens per pack (``pack_tokens``) by device. Every token of a pack attends to the whole pack (the mask
#: hides the other suffixes), so short packs waste less attention arithmetic and long ones fewer calls: on a
#: CPU 32 tokens scored the demo Gemma-2 RM (eager attention with soft-capping) 2.4x faster than 256 and the
#: Llama one as fast (/tmp/pack.py, 6 prompts x 3,631 words, 1 thread); on a GPU the calls cost more than the
#: arithmetic.
PACK_TOKENS = {"cpu": 32, "cuda": 256}


# --------------------------------------------------------------------------------------------------
# Support checks



def _pack_tokens(pack_tokens: int | None, device) -> int:
    """``pack_tokens`` as given, else ``PACK_TOKENS`` of ``device``."""
    if pack_tokens is not None:
        return pack_tokens
    return PACK_TOKENS["cuda" if str(device).startswith("cuda") else "cpu"]

class _Unsupported(Exception):
    """The prefix cache cannot be applied to this model; the message is the reason."""


def _is_library_class(cls) -> bool:
    return cls.__module__.startswith("transformers.models.")


def _forward_params(module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _cache_kwarg(module) -> str | None:
    """The name under which ``module.forward`` takes a cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older)."""
    params = _forward_params(module)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _check_common(model) -> None:
    cls = type(model)
    if getattr(model.config, "auto_map", None) or not _is_library_class(cls):
        raise _Unsupported(f"{cls.__name__} is remote/custom code ({cls.__module__})")
    if getattr(model.config, "is_encoder_decoder", False):
        raise _Unsupported(f"{cls.__name__} is an encoder-decoder model")
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, torch.nn.Module):
        raise _Unsupported(f"{cls.__name__} has no base transformer attribute")
    if not _is_library_class(type(base)):
        raise _Unsupported(f"its base {type(base).__name__} is custom code")
    for module in (model, base):
        params = _forward_params(module)
        if _cache_kwarg(module) is None or "position_ids" not in params or "attention_mask" not in params:
            raise _Unsupported(f"{type(module).__name__}.forward takes no key/value cache or position_ids")
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    except ImportError as err:  # pragma: no cover - very old transformers
        raise _Unsupported(f"transformers has no DynamicCache ({err})") from err
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception as err:  # noqa: BLE001 - any failure means "not a standard decoder cache"
        raise _Unsupported(f"no DynamicCache for its config ({err})") from err
    for layer in layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise _Unsupported(f"cache layer type {type(layer).__name__} is not supported")


def supports_prefix_cache(model, *, score: str | None = None) -> tuple[bool, str]:
    """Whether ``score_prefix_cached`` can run ``model`` with a shared prefix cache.

    True for transformers' own sequence-classification models built on the generic head (a base
    transformer at ``model.<base_model_prefix>``, e.g. ``model.model``, and a linear ``model.score``),
    such as ``LlamaForSequenceClassification`` and ``Gemma2ForSequenceClassification``. False, with a
    reason, otherwise (remote code, custom heads or pooling, the ``"score"`` attribute reader that only
    remote-code models provide). ``score``: the registry's reader, when known.
    """
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:  # pragma: no cover
        GenericForSequenceClassification = None
    try:
        _check_common(model)
        cls = type(model)
        if GenericForSequenceClassification is None or not isinstance(model, GenericForSequenceClassification):
            raise _Unsupported(f"{cls.__name__} is not a generic sequence-classification model")
        if cls.forward is not GenericForSequenceClassification.forward:
            raise _Unsupported(f"{cls.__name__} overrides the sequence-classification forward")
        if not isinstance(getattr(model, "score", None), torch.nn.Linear):
            raise _Unsupported(f"{cls.__name__} has no linear `score` head")
        if score == "score":
            raise _Unsupported("the 'score' reader reads a remote-code output attribute")
    except _Unsupported as err:
        return False, str(err)
    return True, "generic sequence-classification head"


def supports_prefix_cache_lm(model) -> tuple[bool, str]:
    """Whether ``sequence_logprobs`` can run the causal LM ``model`` with a shared prefix cache."""
    try:
        _check_common(model)
        cls = type(model)
        if not cls.__name__.endswith("ForCausalLM") or not isinstance(getattr(model, "lm_head", None),
                                                                        torch.nn.Module):
            raise _Unsupported(f"{cls.__name__} is not a causal LM with an lm_head")
    except _Unsupported as err:
        return False, str(err)
    return True, "causal LM"


# --------------------------------------------------------------------------------------------------
# Adaptive batch size


def is_out_of_memory(err: BaseException) -> bool:
    """An out-of-memory error of any device: CUDA/accelerator OOM, host ``MemoryError``, or a
    ``RuntimeError`` saying "out of memory" (e.g. from a CPU allocator or an older torch)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class AdaptiveBatchSize:
    """The batch size of a run: halves on OOM, doubles after ``grow_after`` good full batches.

    It never grows past ``max_size`` nor back to a size that ran out of memory; it gives up (re-raises)
    when a single row does not fit.
    """

    def __init__(self, start: int, *, max_size: int | None = None, grow_after: int = 1):
        if start < 1:
            raise ValueError(f"batch_size must be >= 1, got {start}")
        self.size = start
        self.max_size = max(start, max_size if max_size is not None else 64 * start)
        self.grow_after = grow_after
        self.ceiling = self.max_size
        self.initial = start
        self.streak = 0
        self.halvings = 0
        self.batches = 0

    def scale_start(self, factor: int) -> None:
        """Before the first batch: start ``factor`` times larger (still within ``max_size``)."""
        if self.batches == 0 and self.halvings == 0 and factor > 1:
            self.size = self.initial = min(self.max_size, self.size * factor)

    def failed(self, rows: int) -> None:
        """``rows`` ran out of memory (more than one: a single row that does not fit is re-raised)."""
        self.size = max(1, rows // 2)
        self.ceiling = min(self.ceiling, self.size)
        self.halvings += 1
        self.streak = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def succeeded(self, rows: int) -> None:
        self.batches += 1
        if rows < self.size:
            return
        self.streak += 1
        if self.streak >= self.grow_after and 2 * self.size <= self.ceiling:
            self.size *= 2
            self.streak = 0


def _run_adaptive(items: list, batcher: AdaptiveBatchSize, step: Callable[[list], None]) -> None:
    """Run ``step`` on consecutive chunks of ``items``, each as large as ``batcher`` allows."""
    start = 0
    while start < len(items):
        chunk = items[start:start + batcher.size]
        out_of_memory = False
        try:
            step(chunk)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is an OOM on more than one row
            if not is_out_of_memory(err) or len(chunk) <= 1:
                raise
            out_of_memory = True
        if out_of_memory:  # outside the except block: the failed batch's tensors are released first
            batcher.failed(len(chunk))
            continue
        batcher.succeeded(len(chunk))
        start += len(chunk)


# --------------------------------------------------------------------------------------------------
# Cache handling and the grouped runner


def _base(model):
    return getattr(model, model.base_model_prefix)


_KNOWN_LAYERS: tuple = ()


def _known_layers() -> tuple:
    global _KNOWN_LAYERS
    if not _KNOWN_LAYERS:
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        _KNOWN_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
    return _KNOWN_LAYERS


def _sliding_window(model) -> int | None:
    """The smallest attention window of the model, if any layer has one (None: all layers are global)."""
    from transformers import DynamicCache

    windows = [layer.sliding_window for layer in DynamicCache(config=model.config).layers
               if getattr(layer, "is_sliding", False)]
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "sliding_window", None):
        windows.append(int(config.sliding_window))  # conservative: also when the config merely names one
    return min(windows) if windows else None


def _prefix_cache(model, prefixes: list[np.ndarray], pad: int, device: str):
    """Run the base transformer once on the prefixes (one row each, right-padded) and return the cache."""
    from transformers import DynamicCache

    base = _base(model)
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for r, p in enumerate(prefixes):
        ids[r, :len(p)] = torch.from_numpy(p.astype(np.int64))
        mask[r, :len(p)] = 1
    cache = DynamicCache(config=model.config)
    base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **{_cache_kwarg(base): cache})
    for layer in cache.layers:
        if type(layer) not in _known_layers():
            raise _Unsupported(f"cache layer type {type(layer).__name__} is not supported")
    return cache


def _batch_cache(cache, rows: torch.Tensor):
    """A new cache object whose row r holds prefix row ``rows[r]`` of ``cache``.

    When every row comes from one prefix, the tensors are ``expand`` views (no copy); otherwise they are
    gathered with ``index_select``. A forward pass rebinds a layer's tensors (``torch.cat``) and never
    writes into them, so ``cache`` itself is left unchanged for the next batch.
    """
    first = int(rows[0])
    same = bool((rows == first).all())
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            if same:
                new.keys = layer.keys[first:first + 1].expand(len(rows), *layer.keys.shape[1:])
                new.values = layer.values[first:first + 1].expand(len(rows), *layer.values.shape[1:])
            else:
                index = rows.to(layer.keys.device)
                new.keys = layer.keys.index_select(0, index)
                new.values = layer.values.index_select(0, index)
        out.layers.append(new)
    return out


class _Unit:
    """The sequences of one prompt (or context): a shared prefix, the differing suffixes, and the
    output slot of each suffix."""

    __slots__ = ("prefix", "suffixes", "slots")

    def __init__(self, prefix: np.ndarray, suffixes: list[np.ndarray], slots: list[int]):
        self.prefix, self.suffixes, self.slots = prefix, suffixes, slots


class _Runner:
    """Runs units in groups against one prefix cache per group.

    The prefixes of a group of units are run together once (one right-padded row each, width
    ``Lmax``). Each suffix batch then runs in one of two layouts:

    - ``packed`` (the default where possible): the batch's suffixes (sorted by prompt) are laid end
      to end in packs of about ``pack_tokens`` tokens. A pack's keys are the cached prefix rows of the
      (one or few) prompts it holds, end to end, then its own tokens; a 4-D additive mask lets each
      suffix token see its own prompt's real prefix tokens and the earlier tokens of its own suffix
      only, and its ``position_ids`` are its prompt's prefix length + its offset in the suffix. The
      prefix keys/values are materialised once per pack, not once per sequence, which is what makes
      the engine fast (with one row per sequence, copying the prefix cache into every row costs more
      than the suffix's matmuls on a CPU), and packs waste almost no padding. Needs the ``sdpa`` or
      ``eager`` attention (which take an arbitrary 4-D mask) and a sliding window, if any, that no
      row reaches (then the window changes nothing, and the mask needs no window).
    - ``rows``: one right-padded row per sequence (attention mask: ones over its own prefix, zeros
      over that prefix row's padding, then the suffix mask), the cache rows broadcast (``expand``) or
      gathered (``index_select``). Used otherwise (e.g. Gemma 2 with a prefix longer than its window:
      then each prompt runs alone, unpadded, and the library's own sliding-window cache applies).

    In both, the cache handed to a forward call is a fresh object (``_pack_cache``, ``_batch_cache``):
    a forward call
    only rebinds its tensors, so the group's prefix cache stays unchanged for the next batch. Cache
    padding shifts no position (each row's ``position_ids`` start at its own prefix length), so the
    scores equal the unpadded ones up to float rounding.

    ``on_batch(output, slots, suffixes, spans)``: ``spans[r] = (i, start)``: suffix r of the batch
    occupies ``output[i, start:start + len(suffix)]``.
    """

    def __init__(self, model, module, *, device: str, pad: int, batcher: AdaptiveBatchSize, use_cache: bool,
                 oom_simulator: Callable[[int], None] | None, on_batch: Callable[..., None],
                 max_group_rows: int = 32768, max_group_units: int = 64, pack_tokens: int = 256,
                 progress: Callable[[int], None] | None = None):
        self.model, self.module, self.device, self.pad, self.batcher = model, module, device, pad, batcher
        self.use_cache, self.oom_simulator, self.on_batch = use_cache, oom_simulator, on_batch
        self.max_group_rows, self.max_group_units, self.progress = max_group_rows, max_group_units, progress
        self.pack_tokens = pack_tokens
        self.window = _sliding_window(model) if use_cache else None
        attn = getattr(model.config, "_attn_implementation", None)
        self.can_pack = use_cache and pack_tokens > 0 and attn in ("sdpa", "eager")
        self.layouts: set[str] = set()
        self.dtype = next(model.parameters()).dtype
        self.group: list[_Unit] = []
        self.rows = 0
        self.groups = 0
        self.tokens_processed = 0

    def add(self, unit: _Unit) -> None:
        if self.group and (self.rows + len(unit.suffixes) > self.max_group_rows
                           or len(self.group) >= self.max_group_units or not self._fits(self.group + [unit])):
            self.flush()
        self.group.append(unit)
        self.rows += len(unit.suffixes)

    def _fits(self, units: list[_Unit]) -> bool:
        """Whether every (padded) row of these units stays within the sliding window, if any."""
        if self.window is None:
            return True
        longest_suffix = max(len(s) for u in units for s in u.suffixes)
        return max(len(u.prefix) for u in units) + longest_suffix <= self.window

    def flush(self) -> None:
        group, self.group, self.rows = self.group, [], 0
        if not group:
            return
        self.groups += 1
        prefix_lens = [len(u.prefix) for u in group]
        width_prefix = max(prefix_lens)
        cache = None
        if width_prefix and self.use_cache:
            cache = _prefix_cache(self.model, [u.prefix for u in group], self.pad, self.device)
            self.tokens_processed += len(group) * width_prefix
        packed = self.can_pack and self._fits(group)
        self.layouts.add("packed" if packed else "rows")
        if packed:
            # A batch of `batch_size` full sequences holds batch_size x (mean full length) tokens; give
            # the packed batches the same token budget (their memory is that of their tokens, the
            # prefix keys being shared), i.e. start with that many more (short) sequences a batch.
            suffix_tokens = sum(len(s) for u in group for s in u.suffixes)
            full_tokens = suffix_tokens + sum(len(u.prefix) * len(u.suffixes) for u in group)
            self.batcher.scale_start(full_tokens // max(suffix_tokens, 1))
        if packed:  # packs hold one prompt's suffixes
            rows = sorted((g, len(s), j) for g, u in enumerate(group) for j, s in enumerate(u.suffixes))
            rows = [(g, j) for g, _, j in rows]
        else:  # length buckets across the group's prompts
            rows = sorted((len(s), g, j) for g, u in enumerate(group) for j, s in enumerate(u.suffixes))
            rows = [(g, j) for _, g, j in rows]

        def step(chunk: list) -> None:
            suffixes = [group[g].suffixes[j] for g, j in chunk]
            owners = [g for g, _ in chunk]
            forward = self._forward_packed if packed else self._forward_rows
            output, spans, tokens = forward(cache, width_prefix, prefix_lens, owners, suffixes)
            self.on_batch(output, [group[g].slots[j] for g, j in chunk], suffixes, spans)
            self.tokens_processed += tokens
            if self.progress is not None:
                self.progress(len(chunk))

        _run_adaptive(rows, self.batcher, step)

    def _call(self, cache, ids, mask, positions, owners: list[int]):
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs[_cache_kwarg(self.module)] = _batch_cache(cache, torch.tensor(owners, dtype=torch.long))
        return self.module(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=positions.to(self.device), use_cache=cache is not None, **kwargs)

    def _forward_rows(self, cache, width_prefix, prefix_lens, owners, suffixes):
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        if not self.use_cache:
            width_prefix = 0
        if self.oom_simulator is not None:
            self.oom_simulator(rows * (width_prefix + width))
        ids = torch.full((rows, width), self.pad, dtype=torch.long)
        mask = torch.zeros((rows, width_prefix + width), dtype=torch.long)
        starts = []
        for r, (s, g) in enumerate(zip(suffixes, owners)):
            ids[r, :len(s)] = torch.from_numpy(s.astype(np.int64))
            mask[r, :prefix_lens[g] if self.use_cache else 0] = 1
            mask[r, width_prefix:width_prefix + len(s)] = 1
            starts.append(prefix_lens[g] if self.use_cache else 0)
        spans = [(r, 0) for r in range(rows)]
        if not self.use_cache:  # fallback: whole sequences, only what every model accepts
            output = self.module(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            return output, spans, rows * width
        positions = torch.tensor(starts, dtype=torch.long).unsqueeze(1) + torch.arange(width).unsqueeze(0)
        return self._call(cache, ids, mask, positions, owners), spans, rows * width

    def _forward_packed(self, cache, width_prefix, prefix_lens, owners, suffixes):
        # Lay the chunk's suffixes (sorted by prompt) end to end in n packs of about equal length
        # (n = tokens / pack_tokens, rounded up). A pack's keys are the prefix rows of the prompts it
        # holds (m at most, each width_prefix wide, padding masked) followed by its own tokens.
        lengths = [len(s) for s in suffixes]
        total = sum(lengths)
        n = math.ceil(total / self.pack_tokens)
        target = math.ceil(total / n)
        packs: list[list[int]] = [[] for _ in range(n)]
        at = 0
        for r, size in enumerate(lengths):
            packs[min(n - 1, at // target)].append(r)
            at += size
        packs = [pack for pack in packs if pack]
        n = len(packs)
        prompts = [sorted({owners[r] for r in pack}) for pack in packs]
        m = max(len(p) for p in prompts) if cache is not None else 0
        width = max(sum(lengths[r] for r in pack) for pack in packs)
        if self.oom_simulator is not None:
            self.oom_simulator(n * (m * width_prefix + width))
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        row_of = torch.full((n, width), -1, dtype=torch.long)  # which suffix a token belongs to (-1: padding)
        offset = torch.zeros((n, width), dtype=torch.long)  # its offset inside that suffix
        segment = torch.zeros((n, width), dtype=torch.long)  # which of the pack's prefix rows it sees
        plen = torch.zeros((n, width), dtype=torch.long)  # how many tokens of that row are real
        spans: list[tuple[int, int]] = [(0, 0)] * len(suffixes)
        for i, pack in enumerate(packs):
            at = 0
            for r in pack:
                stop = at + lengths[r]
                ids[i, at:stop] = torch.from_numpy(suffixes[r].astype(np.int64))
                row_of[i, at:stop] = r
                offset[i, at:stop] = torch.arange(lengths[r])
                if cache is not None:
                    segment[i, at:stop] = prompts[i].index(owners[r])
                    plen[i, at:stop] = prefix_lens[owners[r]]
                spans[r] = (i, at)
                at = stop
        real_q = (row_of >= 0).unsqueeze(2)
        same_row = (row_of.unsqueeze(2) == row_of.unsqueeze(1)) & real_q & (offset.unsqueeze(1) <= offset.unsqueeze(2))
        same_row |= torch.eye(width, dtype=torch.bool).unsqueeze(0) & ~real_q  # padding sees itself only
        key = torch.arange(m * width_prefix).view(1, 1, -1)
        prefix_ok = real_q & (key // max(width_prefix, 1) == segment.unsqueeze(2)) & \
            (key % max(width_prefix, 1) < plen.unsqueeze(2))
        allowed = torch.cat([prefix_ok, same_row], dim=2).unsqueeze(1)  # (n, 1, width, m * prefix + width)
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, torch.finfo(self.dtype).min)
        positions = plen + offset
        kwargs: dict[str, Any] = {}
        if cache is not None:
            index = torch.tensor([p + [p[0]] * (m - len(p)) for p in prompts], dtype=torch.long)
            kwargs[_cache_kwarg(self.module)] = _pack_cache(cache, index)
        output = self.module(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), use_cache=cache is not None, **kwargs)
        return output, spans, n * width


def _pack_cache(cache, index: torch.Tensor):
    """A new cache object whose row i holds the prefix rows ``index[i]`` of ``cache`` end to end
    (keys of shape (rows, heads, m * width, dim)); ``cache`` itself is left unchanged."""
    rows, m = index.shape
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            flat = index.reshape(-1).to(layer.keys.device)
            for name in ("keys", "values"):
                t = getattr(layer, name).index_select(0, flat)  # (rows * m, heads, width, dim)
                t = t.view(rows, m, *t.shape[1:]).transpose(1, 2)
                setattr(new, name, t.reshape(rows, t.shape[1], m * t.shape[3], t.shape[4]))
        out.layers.append(new)
    return out


def _common_prefix_len(seqs: list[np.ndarray]) -> int:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        m = min(n, len(s))
        diff = np.flatnonzero(first[:m] != s[:m])
        n = int(diff[0]) if diff.size else m
        if n == 0:
            break
    return n


# --------------------------------------------------------------------------------------------------
# Reward-model scores


def _resolve_pad(model, tokenizer) -> tuple[int, bool]:
    """The id that fills padding positions (always masked, and never pooled: the engine pools the last
    real token itself); True when the model config has no pad id."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "pad_token_id", None) is not None:
        return int(config.pad_token_id), False
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return (0 if pad is None else int(pad)), True


def _encode_prompt(loaded, prompt_text: str, words: list[str]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for start in range(0, len(words), TOKENIZE_CHUNK):
        texts = rm_scoring.render_conversations(loaded.tokenizer, prompt_text, words[start:start + TOKENIZE_CHUNK],
                                             source=loaded.source)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in rm_scoring.token_ids(loaded.tokenizer, texts))
    return out


def score_prefix_cached(loaded, *, score: str, prompts: list[tuple[str, str]], words: list[str],
                        batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                        max_batch_size: int | None = 4096, grow_after: int = 1,
                        oom_simulator: Callable[[int], None] | None = None,
                        max_group_rows: int = 32768, pack_tokens: int | None = None) -> tuple[pl.DataFrame, dict]:
    """Score every word as the response to every prompt, reusing each prompt's prefix cache.

    Same arguments and table as ``rm_scoring.score_words`` (columns ``prompt``, ``word``, ``score``
    Float64, prompt-major), plus an info dict:

    - ``engine``: ``"prefix_cache"``, or ``"straightforward (<reason>)"`` when the model falls back;
    - ``prefix_tokens``: ``{prompt_id: cached prefix length}``;
    - ``layout`` (``packed`` or ``rows``, see ``_Runner``), ``groups`` (prefix passes), ``batches``,
      ``oom_halvings``, ``initial_batch_size``, ``final_batch_size`` (sequences a batch);
    - ``sequences``, ``tokens_full`` (sum of full sequence lengths), ``tokens_processed`` (prefix
      tokens once per prompt plus every padded suffix token run), for the FLOP ratio.

    ``batch_size`` is the batch (in full sequences) the straightforward path would use; packed batches
    start with the same number of tokens (so with about full length / suffix length times more
    sequences), ``max_batch_size`` (sequences) caps their growth, and every ``grow_after`` good full
    batches in a row double them. Large batches pay: a forward call has a fixed
    cost (hundreds of kernels; on a busy CPU each waits for its threads), and the engine's batches are
    cheap (a few tokens a sequence). The suffix tokens are run in packs of about ``pack_tokens`` tokens
    (default: ``PACK_TOKENS`` of the model's device; ``pack_tokens=0``: one padded row per sequence). ``oom_simulator(batch_tokens)``, for tests, is
    called before each suffix batch with its attention width in tokens (rows x (prefix + padded
    suffix); packed: packs x (prefix rows + pack length)) and may raise an out-of-memory error to
    exercise the halving.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = loaded.model
    total = len(prompts) * len(words)
    ok, reason = supports_prefix_cache(model, score=score)
    if ok and total:
        try:
            return _score_cached(loaded, score=score, prompts=prompts, words=words, batch_size=batch_size,
                                 progress=progress, max_batch_size=max_batch_size, grow_after=grow_after,
                                 oom_simulator=oom_simulator, max_group_rows=max_group_rows,
                                 pack_tokens=pack_tokens)
        except _Unsupported as err:
            reason = str(err)
    if not total:
        reason = "nothing to score"
    table = rm_scoring.score_words(loaded, score=score, prompts=prompts, words=words, batch_size=batch_size,
                                progress=progress)
    return table, {"engine": f"straightforward ({reason})", "prefix_tokens": {},
                   "batches": math.ceil(total / batch_size), "oom_halvings": 0, "initial_batch_size": batch_size,
                   "final_batch_size": batch_size,
                   "groups": 0, "sequences": total, "tokens_full": None, "tokens_processed": None}


def _score_cached(loaded, *, score, prompts, words, batch_size, progress, max_batch_size, grow_after,
                  oom_simulator, max_group_rows, pack_tokens) -> tuple[pl.DataFrame, dict]:
    from transformers.modeling_outputs import SequenceClassifierOutput

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    pad, fallback_pad = _resolve_pad(model, tokenizer)
    batcher = AdaptiveBatchSize(batch_size, max_size=max_batch_size, grow_after=grow_after)
    total = len(prompts) * len(words)
    scores = np.zeros(total, dtype=np.float64)
    prefix_tokens: dict[str, int] = {}
    done = [0]
    tokens_full = 0

    pool_of: dict[int, int] = {}  # slot -> index of the pooled token inside its suffix

    def on_batch(output, slots: list[int], suffixes, spans) -> None:
        hidden = output.last_hidden_state
        index = [(i, start + pool_of.pop(slot)) for slot, (i, start) in zip(slots, spans)]
        pooled = hidden[torch.tensor([i for i, _ in index]), torch.tensor([t for _, t in index])]
        logits = model.score(pooled)  # the generic head: score(hidden) at the pooled token
        values = rm_scoring.read_scalar(SequenceClassifierOutput(logits=logits), score)
        scores[slots] = values.float().cpu().numpy()

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    runner = _Runner(model, _base(model), device=device, pad=pad, batcher=batcher, use_cache=True,
                     oom_simulator=oom_simulator, on_batch=on_batch, max_group_rows=max_group_rows,
                     pack_tokens=_pack_tokens(pack_tokens, device), progress=advance)
    with torch.inference_mode():
        for p, (prompt_id, prompt_text) in enumerate(prompts):
            seqs = _encode_prompt(loaded, prompt_text, words)
            if fallback_pad:
                config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
                    else model.config
                config.pad_token_id = pad  # a model without one gets a pad id, as in rm_scoring._pad_id
            # The pooled token is the last real one (what rm_scoring.score_words makes the head read, even
            # when the model's pad id is EOS and ends every sequence); it stays in the suffix.
            pools = [len(s) - 1 for s in seqs]
            prefix_len = min(_common_prefix_len(seqs), min(pools))
            prefix_tokens[prompt_id] = prefix_len
            tokens_full += sum(len(s) for s in seqs)
            offset = p * len(words)
            pool_of.update((offset + i, pool - prefix_len) for i, pool in enumerate(pools))
            runner.add(_Unit(seqs[0][:prefix_len].copy(), [s[prefix_len:] for s in seqs],
                             list(range(offset, offset + len(words)))))
            del seqs
        runner.flush()
    table = pl.DataFrame(
        {"prompt": [pid for pid, _ in prompts for _ in words], "word": [w for _ in prompts for w in words],
         "score": scores},
        schema={"prompt": pl.String, "word": pl.String, "score": pl.Float64},
    )
    info = {"engine": ENGINE_PREFIX_CACHE, "prefix_tokens": prefix_tokens, "batches": batcher.batches,
            "oom_halvings": batcher.halvings, "initial_batch_size": batcher.initial,
            "final_batch_size": batcher.size, "groups": runner.groups,
            "layout": "+".join(sorted(runner.layouts)),
            "sequences": total, "tokens_full": tokens_full, "tokens_processed": runner.tokens_processed}
    return table, info


# --------------------------------------------------------------------------------------------------
# Causal-LM sequence log-probabilities


def sequence_logprobs(loaded, *, contexts: list[str], continuations: list[str], add_special_tokens: bool = False,
                      batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                      max_batch_size: int | None = None, grow_after: int = 1,
                      oom_simulator: Callable[[int], None] | None = None,
                      max_group_rows: int = 32768, pack_tokens: int | None = None) -> tuple[pl.DataFrame, dict]:
    """Total log-probability of every continuation after every context, under a causal LM.

    Token convention (the usual one for scoring continuations): the context is tokenized on its own
    (``add_special_tokens``: False for a rendered chat template, which carries BOS itself; True for a
    raw pretrained-model prompt, to get BOS), the continuation on its own without special tokens, and
    the two id lists are concatenated. ``logprob`` = sum over the continuation's tokens of
    log p(token | context, earlier continuation tokens), with the model's full-vocabulary softmax and
    its own output processing (e.g. Gemma 2's final logit soft-capping). An empty continuation gets 0.

    Per context, the cache of all context tokens but the last is computed once; batches run the last
    context token followed by the continuations (sorted by length, right-padded). Models the cache
    cannot serve (see ``supports_prefix_cache_lm``) run whole sequences. Returns a table with columns
    ``context`` (index into ``contexts``, Int64), ``continuation``, ``n_tokens`` (Int64), ``logprob``
    (Float64), context-major, and an info dict like ``score_prefix_cached``'s.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    ok, reason = supports_prefix_cache_lm(model)
    cont_ids = [np.asarray(tokenizer(c, add_special_tokens=False)["input_ids"], dtype=np.int32) if c
                else np.zeros(0, dtype=np.int32) for c in continuations]
    keep = [i for i, k in enumerate(cont_ids) if len(k)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    total = len(contexts) * len(continuations)
    logprobs = np.zeros(total, dtype=np.float64)
    done = [total - len(contexts) * len(keep)]  # empty continuations: nothing to run
    # Each batch holds (tokens x vocabulary) logits: by default, grow to about 2**25 of them a batch.
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 0) or 32768)
    cap = max_batch_size if max_batch_size is not None else max(batch_size, min(4096, 2**25 // vocab))

    def on_batch(output, slots: list[int], rows: list[np.ndarray], spans) -> None:
        # A row is [context tokens not in the cache, continuation tokens], at output[i, start:]: the
        # logits at the position before each continuation token predict it.
        logits = output.logits
        width = max(len(cont_ids[slot % len(continuations)]) for slot in slots)
        which = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros_like(positions)
        valid = torch.zeros(positions.shape, dtype=torch.bool)
        for r, (slot, row, (i, at)) in enumerate(zip(slots, rows, spans)):
            n = len(cont_ids[slot % len(continuations)])
            first = len(row) - n
            which[r] = i
            positions[r, :n] = torch.arange(at + first - 1, at + len(row) - 1)
            targets[r, :n] = torch.from_numpy(row[first:].astype(np.int64))
            valid[r, :n] = True
        which, positions, targets, valid = (t.to(logits.device) for t in (which, positions, targets, valid))
        logp = torch.log_softmax(logits[which, positions].float(), dim=-1)  # (rows, width, vocab)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs[slots] = (picked.double() * valid).sum(-1).cpu().numpy()

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    def run(use_cache: bool) -> tuple[_Runner, AdaptiveBatchSize, dict, int]:
        batcher = AdaptiveBatchSize(batch_size, max_size=cap, grow_after=grow_after)
        runner = _Runner(model, model, device=device, pad=pad, batcher=batcher, use_cache=use_cache,
                         oom_simulator=oom_simulator, on_batch=on_batch, max_group_rows=max_group_rows,
                         pack_tokens=_pack_tokens(pack_tokens, loaded.device), progress=advance)
        prefix_tokens, tokens_full = {}, 0
        with torch.inference_mode():
            for c, context in enumerate(contexts):
                ctx = np.asarray(tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"],
                                 dtype=np.int32)
                if not len(ctx):
                    raise ValueError(f"context {c} has no tokens: nothing predicts the first continuation token "
                                     "(use add_special_tokens=True to start with BOS)")
                prefix_len = len(ctx) - 1 if use_cache else 0
                prefix_tokens[c] = prefix_len
                tokens_full += sum(len(ctx) + len(cont_ids[i]) for i in keep)
                runner.add(_Unit(ctx[:prefix_len], [np.concatenate([ctx[prefix_len:], cont_ids[i]]) for i in keep],
                                 [c * len(continuations) + i for i in keep]))
            runner.flush()
        return runner, batcher, prefix_tokens, tokens_full

    if ok:
        try:
            runner, batcher, prefix_tokens, tokens_full = run(True)
        except _Unsupported as err:
            ok, reason = False, str(err)
            done[0] = total - len(contexts) * len(keep)
    if not ok:
        runner, batcher, prefix_tokens, tokens_full = run(False)
        prefix_tokens = {}
    table = pl.DataFrame(
        {"context": [c for c in range(len(contexts)) for _ in continuations],
         "continuation": [k for _ in contexts for k in continuations],
         "n_tokens": [len(k) for _ in contexts for k in cont_ids],
         "logprob": logprobs},
        schema={"context": pl.Int64, "continuation": pl.String, "n_tokens": pl.Int64, "logprob": pl.Float64},
    )
    info = {"engine": ENGINE_PREFIX_CACHE if ok else f"straightforward ({reason})", "prefix_tokens": prefix_tokens,
            "layout": "+".join(sorted(runner.layouts)), "batches": batcher.batches,
            "initial_batch_size": batcher.initial, "oom_halvings": batcher.halvings, "final_batch_size": batcher.size,
            "groups": runner.groups, "sequences": total, "tokens_full": tokens_full,
            "tokens_processed": runner.tokens_processed}
    return table, info
