"""Tiny random-weight replicas of the paper's reward-model heads, built offline (tests and checks).

The paper's ten reward models (docs/METHOD.md#7-the-papers-models) sit on three bases and are read three ways. A
replica keeps what decides *how a score is read* and drops what decides *what it says*:

- the base: the real transformers config class at tiny sizes (``LlamaConfig`` with Llama-3.1's
  ``llama3`` RoPE scaling, ``LlamaConfig`` as Llama-3, ``Gemma2Config`` with its attention and final
  logit soft-capping and alternating sliding-window layers), seeded random weights;
- the published chat template of the base, byte for byte (``demo_models/chat_templates/``, sources
  in its README), with a BPE tokenizer trained offline by :func:`valuebias.demo_models.tiny_models.train_tokenizer`
  (Llama-3 or Gemma special tokens; encoding with ``add_special_tokens=True`` prepends BOS, as the
  real tokenizers do, while the templates write BOS themselves);
- the head (:data:`HEADS`, with the registry reader of each in :data:`READERS`):
  ``sequence_classification``: ``*ForSequenceClassification`` with one label, read ``logits[0]``
  (Skywork, GRM); ``multi_output``: the same with :data:`MULTI_OUTPUT_LABELS` labels, read
  ``logits[:,0]`` (URM); ``custom_code``: remote code in the folder (``modeling_custom.py``, named by
  ``auto_map`` in ``config.json``), like ArmoRM and QRM: objective rewards mixed by a gating layer,
  pooled, as ArmoRM's code does, at the token before the first pad id; its output has a ``score``
  attribute. It loads only with ``trust_remote_code``.

Options reproduce the known failure modes: ``pad="eos"`` makes the pad token the EOS token (the
Llama-3 templates end every turn with it), ``padding_side="left"`` ships a left-padding tokenizer.
The weights are random: a replica's scores mean nothing, they only show where and how a score is read.
"""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from valuebias.demo_models import tiny_models

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
HEADS = ("sequence_classification", "multi_output", "custom_code")
#: The registry's ``huggingface.score`` reader of each head.
READERS = {"sequence_classification": "logits[0]", "multi_output": "logits[:,0]", "custom_code": "score"}
MULTI_OUTPUT_LABELS = 5
#: Objectives of the custom (ArmoRM-like) head, mixed by its gating layer into one score.
CUSTOM_OBJECTIVES = 4
CUSTOM_CODE_FILE = "modeling_custom.py"
CUSTOM_CLASS = "TinyRewardModelWithGating"
#: When set, the custom head's code appends its module name to this file when it is imported: a test can
#: then see whether remote code ran.
REMOTE_CODE_MARKER_ENV = "VALUEBIAS_REMOTE_CODE_MARKER"
PADS = ("own", "eos")
PADDING_SIDES = ("right", "left")
#: Text the tokenizer is trained on besides the caller's (the Llama-3.1 template's system header).
SYSTEM_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


@dataclass(frozen=True)
class Base:
    """A base-model family of the paper: its published chat template and its transformers classes."""

    template_file: str
    style: str  # tiny_models style of the tokenizer: "llama" or "gemma"
    config_class: str  # a transformers config class
    model_class: str  # the base transformer class the custom head wraps
    pretrained_class: str  # its PreTrainedModel class


BASES = {
    "llama3.1": Base("llama-3.1-instruct.jinja", "llama", "LlamaConfig", "LlamaModel", "LlamaPreTrainedModel"),
    "llama3": Base("llama-3-instruct.jinja", "llama", "LlamaConfig", "LlamaModel", "LlamaPreTrainedModel"),
    "gemma2": Base("gemma-2-it.jinja", "gemma", "Gemma2Config", "Gemma2Model", "Gemma2PreTrainedModel"),
}


def chat_template(base: str) -> str:
    """The published chat template of ``base`` (a key of :data:`BASES`), as it is in ``tokenizer_config.json``."""
    return (TEMPLATE_DIR / BASES[base].template_file).read_text(encoding="utf-8")


def build_tokenizer(base: str, texts: list[str], *, pad: str = "own", padding_side: str = "right",
                    vocab_size: int = 600) -> transformers.PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``texts`` (and the Llama-3.1 system header) with the published template
    of ``base``. ``pad``: ``own`` (a pad token of its own) or ``eos`` (pad = EOS)."""
    _check(base, tuple(BASES), "base")
    _check(pad, PADS, "pad")
    _check(padding_side, PADDING_SIDES, "padding_side")
    tokenizer = tiny_models.train_tokenizer([SYSTEM_HEADER, *texts], style=BASES[base].style, vocab_size=vocab_size)
    tokenizer.chat_template = chat_template(base)
    if pad == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.init_kwargs["padding_side"] = padding_side  # saved in tokenizer_config.json, as checkpoints ship it
    return tokenizer


def base_config(base: str, tokenizer, *, num_labels: int = 1, hidden_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 2) -> transformers.PretrainedConfig:
    """The tiny config of ``base``: the real config class, the base's distinctive settings, and the
    tokenizer's special token ids (``pad_token_id`` is the tokenizer's pad, so ``pad="eos"`` gives
    pad == eos in the model too)."""
    head_dim = hidden_size // num_heads
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  head_dim=head_dim, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=num_labels)
    if base == "llama3.1":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        return transformers.LlamaConfig(**common, rope_parameters=rope, max_position_embeddings=131072,
                                        rms_norm_eps=1e-5, tie_word_embeddings=False)
    if base == "llama3":
        return transformers.LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                                        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False)
    _check(base, tuple(BASES), "base")
    return transformers.Gemma2Config(**common, query_pre_attn_scalar=head_dim, attn_logit_softcapping=50.0,
                                     final_logit_softcapping=30.0, sliding_window=4096, max_position_embeddings=8192,
                                     hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)


def build_replica(out_dir, *, base: str, head: str, texts: list[str], pad: str = "own",
                  padding_side: str = "right", seed: int = 0) -> Path:
    """Write a replica of ``head`` on ``base`` to ``out_dir`` (weights as safetensors, config, tokenizer
    with its chat template; for ``custom_code`` also ``modeling_custom.py``) and return it. ``texts``:
    what the tokenizer is trained on (the prompts and words to be scored)."""
    _check(head, HEADS, "head")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(base, texts, pad=pad, padding_side=padding_side)
    labels = MULTI_OUTPUT_LABELS if head == "multi_output" else 1
    config = base_config(base, tokenizer, num_labels=labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head == "custom_code":
            model = _custom_head(out, base, config)
        else:
            model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def custom_code(base: str) -> str:
    """The source of the custom head of ``base`` (``modeling_custom.py``)."""
    b = BASES[base]
    return _CUSTOM_CODE.format(config=b.config_class, model=b.model_class, pretrained=b.pretrained_class,
                               cls=CUSTOM_CLASS, marker=REMOTE_CODE_MARKER_ENV)


def _custom_head(out: Path, base: str, config) -> torch.nn.Module:
    """Write ``modeling_custom.py``, import it under a private name, and build the head with ``config``
    (``auto_map`` added, as in ArmoRM's ``config.json``)."""
    path = out / CUSTOM_CODE_FILE
    path.write_text(custom_code(base), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"_valuebias_replica_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config.num_objectives = CUSTOM_OBJECTIVES
    config.architectures = [CUSTOM_CLASS]
    config.auto_map = {"AutoModelForSequenceClassification": f"{path.stem}.{CUSTOM_CLASS}"}
    return getattr(module, CUSTOM_CLASS)(config).to(torch.float32)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


_CUSTOM_CODE = '''"""A tiny reward head in the style of ArmoRM / QRM (remote code written by valuebias.demo_models.paper_heads).

Rewards for several objectives from a regression layer, mixed by a gating layer into one ``score``,
read at the token before the first pad token (the last token when there is none), as ArmoRM's code does.
"""

import os
from dataclasses import dataclass

import torch
from transformers import {config}, {model}, {pretrained}
from transformers.utils import ModelOutput

if os.environ.get("{marker}"):  # lets a test see whether this file ever ran
    with open(os.environ["{marker}"], "a") as _marker:
        _marker.write(__name__ + "\\n")


@dataclass
class RewardOutput(ModelOutput):
    score: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None


class {cls}({pretrained}):
    config_class = {config}

    def __init__(self, config):
        super().__init__(config)
        self.model = {model}(config)
        self.regression_layer = torch.nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.gating = torch.nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.post_init()

    def score_hidden(self, hidden):
        """(score, rewards, gating weights) from the hidden states of the pooled tokens."""
        rewards = self.regression_layer(hidden)
        weights = torch.softmax(self.gating(hidden), dim=-1)
        return (rewards * weights).sum(-1), rewards, weights

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids).last_hidden_state
        last = torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1
        last = last % input_ids.shape[-1]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        score, rewards, weights = self.score_hidden(pooled)
        return RewardOutput(score=score, rewards=rewards, gating_output=weights)
'''
