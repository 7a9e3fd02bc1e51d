"""Tiny transformers models built offline, for tests and demonstrations.

Nothing here downloads anything: a BPE tokenizer is trained with the ``tokenizers`` library on texts
the caller supplies, and a model with random (seeded) weights is built from a config. Two styles mimic
the two base-model families of the paper:

- ``"llama"``: byte-level BPE (a leading space is spelled ``Ġ``), Llama-3 special tokens and chat
  template, ``LlamaConfig``;
- ``"gemma"``: SentencePiece-like BPE (a space is spelled ``▁``), Gemma special tokens and chat
  template (the assistant role is rendered ``model``), ``Gemma2Config``.

The saved directories reload offline with ``AutoTokenizer``, ``AutoModelForSequenceClassification``
and ``AutoModelForCausalLM``, exactly like a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import jinja2
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

STYLES = ("llama", "gemma")
HEADS = ("sequence_classification", "causal_lm")

LLAMA_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                        "<|pad|>"]
GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Printable ASCII plus newline: every such character is in the Gemma-style vocabulary even when the
# training texts lack it (the Llama style is byte-level and covers every byte anyway).
_GEMMA_ALPHABET = [chr(i) for i in range(32, 127)] + ["\n", "▁"]


def render_chat(style: str, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """Render ``messages`` with the style's chat template, without needing a tokenizer (the same
    template text that ``train_tokenizer`` installs, so the two always agree)."""
    _check_choice(style, STYLES, "style")
    bos = "<|begin_of_text|>" if style == "llama" else "<bos>"
    return _compiled_template(style).render(messages=messages, bos_token=bos,
                                            add_generation_prompt=add_generation_prompt)


@lru_cache(maxsize=None)
def _compiled_template(style: str) -> jinja2.Template:
    template = LLAMA_CHAT_TEMPLATE if style == "llama" else GEMMA_CHAT_TEMPLATE
    return jinja2.Template(template, keep_trailing_newline=True)


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


def train_tokenizer(texts, *, style: str, vocab_size: int = 2000) -> transformers.PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` and wrap it, with its chat template, for transformers.

    The special tokens are added tokens, so a rendered chat template re-tokenizes with each of them as
    one id. Encoding with ``add_special_tokens=True`` prepends the BOS token (like the real models);
    the chat templates emit BOS themselves, so rendered conversations are encoded without it.
    """
    _check_choice(style, STYLES, "style")
    if style == "llama":
        specials = LLAMA_SPECIAL_TOKENS
        bos, eos, pad, unk = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>", None
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        template = LLAMA_CHAT_TEMPLATE
    else:
        specials = GEMMA_SPECIAL_TOKENS
        bos, eos, pad, unk = "<bos>", "<eos>", "<pad>", "<unk>"
        backend = Tokenizer(models.BPE(unk_token=unk))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        alphabet = _GEMMA_ALPHABET
        template = GEMMA_CHAT_TEMPLATE
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    # The trainer does not split on special tokens: cut them out, so that no merges are wasted on
    # pieces such as "<|" (encoding splits on them anyway, as added tokens).
    special_re = re.compile("|".join(re.escape(t) for t in specials))
    pieces = [piece for text in texts for piece in special_re.split(text) if piece]
    backend.train_from_iterator(pieces, trainer)
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)
    tokenizer.chat_template = template
    return tokenizer


def build_tiny_model(tokenizer, *, architecture: str, head: str, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, seed: int = 0) -> transformers.PreTrainedModel:
    """A small float32 model with seeded random weights, sized to ``tokenizer``'s vocabulary.

    ``architecture``: ``"llama"`` (``LlamaConfig``) or ``"gemma"`` (``Gemma2Config``, with its logit
    soft-capping and alternating sliding-window layers). ``head``: ``"sequence_classification"`` (one
    label: a reward model) or ``"causal_lm"``. The global torch RNG is left untouched.
    """
    _check_choice(architecture, STYLES, "architecture")
    _check_choice(head, HEADS, "head")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        head_dim=head_dim, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1,
        tie_word_embeddings=True,
    )
    if architecture == "llama":
        config = transformers.LlamaConfig(**common)
    else:
        config = transformers.Gemma2Config(**common, query_pre_attn_scalar=head_dim, sliding_window=128)
    auto = (transformers.AutoModelForSequenceClassification if head == "sequence_classification"
            else transformers.AutoModelForCausalLM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    return model.eval()


def save_pretrained(model, tokenizer, out_dir) -> Path:
    """Write safetensors weights, config and tokenizer files (chat template included) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_build(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    """Saves a built demonstration model with its ``recipe.json`` (``meta``) atomically: written to a
    temporary sibling folder, then renamed over ``out_dir`` (a previous ``out_dir`` is moved aside first
    and deleted after), so ``out_dir`` never holds a partial model. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        save_pretrained(model, tokenizer, tmp)
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if old is not None and not out_dir.exists():
                os.rename(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


#: A demonstration model learns to prefer one category over the others: it needs words outside it.
NO_OTHER_WORDS = ("no training words outside the preferred category (the demo's train_corpus needs words in a "
                  "second category)")


def split_words(words_by_category: dict[str, list[str]], preferred_category: str) -> tuple[list[str], list[str]]:
    """Unique preferred words and unique other words (stripped; a word listed under the preferred
    category counts as preferred even if another category lists it too)."""
    preferred = list(dict.fromkeys(w.strip() for w in words_by_category[preferred_category]))
    preferred_set = set(preferred)
    others = [w.strip() for cat, words in sorted(words_by_category.items()) if cat != preferred_category
              for w in words if w.strip() not in preferred_set]
    return preferred, list(dict.fromkeys(others))


def build_fingerprint(code_version: str, recipe: dict, words_by_category: dict[str, list[str]],
                      prompts: list[tuple[str, str]]) -> str:
    """The cache key of a built demonstration model: builder code version, recipe, words and prompts."""
    payload = {
        "code_version": code_version,
        "recipe": recipe,
        "words_by_category": {cat: list(words) for cat, words in sorted(words_by_category.items())},
        "prompts": [list(p) for p in prompts],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_build_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint recorded in ``out_dir/recipe.json`` by a finished build, or None."""
    try:
        return json.loads((Path(out_dir) / "recipe.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None
