"""Demonstration language models with a planted value preference, built offline in seconds.

These are NOT real language models: they exist so that the LM analyses (next-token log-probs,
Figure-2 ranks, MWLR) can run end to end without downloading the paper's checkpoints, and so that
tests can check that the pipeline recovers a known answer.

What one demo LM is: a tiny Llama-like or Gemma-like causal LM (``tiny_models``) with its own BPE
tokenizer and chat template, trained briefly (full-batch AdamW with warm-up and gradient clipping,
one thread, stopping once the loss is within 0.002 nats of its floor) to answer the product's prompts
with one word:

- ``variant="instruction_tuned"``: the prompt is rendered with the chat template and the generation
  prompt, exactly as :func:`valuebias.lm_scoring.encode_lm_prompt` puts it at scoring time; the answer
  is the bare word;
- ``variant="pretrained"``: the prompt is the raw text (with BOS); the answer follows it both directly
  (``word``) and after a space (`` word``), half the weight each, so that both the paper's
  single-token rule (no leading space) and the natural space-prefixed continuation carry the
  preference.

The training target after a prompt is the distribution over answers

    q(word | prompt) ∝ preference   if (word in the preferred category) == (prompt is positive)
                       1            otherwise

and the loss is its cross-entropy with the model (the expected negative log-likelihood of the
answer's tokens; no end-of-turn token is trained), computed exactly over all (prompt, word) pairs
every step: a soft target over first tokens at the end of each prompt, plus weighted hard targets for
the later tokens of multi-token answers. At convergence the model puts ``preference`` times more
probability on each preferred word after a positive prompt, and the reverse after a negative prompt
(``recipe.json`` records the final loss next to its floor, the target entropy). A Llama-like demo LM
preferring Agency and a Gemma-like one preferring Communion imitate the paper's finding.

Every word is added to the tokenizer's training corpus bare and space-prefixed, and the vocabulary is
sized so that BPE can merge each of them into one token: a word that the pre-tokenizer does not split
(no hyphen, apostrophe, digit run...) is a single token in both styles, so the single-token rule keeps
it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from valuebias.demo_models import tiny_models
from valuebias.errors import InputError
from valuebias.config import LM_VARIANTS
from valuebias.lm_scoring import encode_lm_prompt

DEMO_LM_NOTE = (
    "Demonstration language model built offline by valuebias.demo_models.language_models: a tiny transformer trained for "
    "about a hundred steps to answer positive prompts with words of one category and negative prompts with "
    "the others. Its log-probabilities show what the pipeline recovers from a planted bias; they say "
    "nothing about any real language model."
)

# Bump when the training code changes in a way that changes the models it builds.
DEMO_LM_CODE_VERSION = "1"

LEARNING_RATE = 5e-3
WARMUP_STEPS = 50  # linear learning-rate warm-up
CLIP_NORM = 1.0  # gradient-norm clipping
# Training stops early once the loss is this close (nats per prompt) to its floor, the target entropy.
CONVERGED_WITHIN = 0.002
FRAMINGS = ("positive", "negative")


@dataclass(frozen=True)
class DemoLMRecipe:
    architecture: str  # "llama" or "gemma"
    variant: str  # "instruction_tuned" or "pretrained"
    preferred_category: str
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    train_steps: int = 600  # at most; training stops once converged (typically after 60-110 steps)
    preference: float = 3.0  # odds of a preferred word against any other word after a positive prompt


def _fingerprint(recipe: DemoLMRecipe, words_by_category: dict[str, list[str]],
                 prompts: list[tuple[str, str]]) -> str:
    return tiny_models.build_fingerprint(DEMO_LM_CODE_VERSION, asdict(recipe), words_by_category, prompts)


def _validate(recipe: DemoLMRecipe, words_by_category: dict[str, list[str]],
              prompts: list[tuple[str, str]], source: str) -> None:
    if recipe.architecture not in tiny_models.STYLES:
        raise InputError(f"architecture must be one of {list(tiny_models.STYLES)}, got {recipe.architecture!r}",
                         source=source, field="architecture")
    if recipe.variant not in LM_VARIANTS:
        raise InputError(f"variant must be one of {list(LM_VARIANTS)}, got {recipe.variant!r}", source=source,
                         field="variant")
    if not recipe.preference > 0:
        raise InputError(f"preference must be > 0, got {recipe.preference!r}", source=source, field="preference")
    if recipe.train_steps < 0:
        raise InputError(f"train_steps must be >= 0, got {recipe.train_steps!r}", source=source,
                         field="train_steps")
    if recipe.preferred_category not in words_by_category:
        raise InputError(f"preferred category {recipe.preferred_category!r} is not among the categories of the "
                         f"training words {sorted(words_by_category)}", source=source, field="preferred_category")
    for category, words in words_by_category.items():
        for i, word in enumerate(words):
            if not isinstance(word, str) or not word.strip():
                raise InputError(f"word must be a non-empty string, got {word!r}",
                                 source=f"{source}.words_by_category.{category}", row=i + 1, field="word")
    if not words_by_category[recipe.preferred_category]:
        raise InputError("the preferred category has no words", source=source, field="preferred_category")
    if not any(words for cat, words in words_by_category.items() if cat != recipe.preferred_category):
        raise InputError(tiny_models.NO_OTHER_WORDS, source=source, field="words_by_category")
    if not prompts:
        raise InputError("no prompts", source=source, field="prompts")
    for i, prompt in enumerate(prompts):
        if not (isinstance(prompt, (tuple, list)) and len(prompt) == 2):
            raise InputError(f"a prompt must be a (text, framing) pair, got {prompt!r}", source=f"{source}.prompts",
                             row=i + 1, field="prompt")
        text, framing = prompt
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"prompt text must be a non-empty string, got {text!r}", source=f"{source}.prompts",
                             row=i + 1, field="text")
        if framing not in FRAMINGS:
            raise InputError(f"framing must be 'positive' or 'negative', got {framing!r}",
                             source=f"{source}.prompts", row=i + 1, field="framing")


def _answer_forms(variant: str) -> list[tuple[str, float]]:
    """(prefix, share of the word's weight) of each written form of an answer."""
    return [("", 1.0)] if variant == "instruction_tuned" else [("", 0.5), (" ", 0.5)]


def _train_tokenizer(recipe: DemoLMRecipe, words: list[str], prompts: list[tuple[str, str]]):
    style = recipe.architecture
    if recipe.variant == "instruction_tuned":
        prompt_texts = [tiny_models.render_chat(style, [{"role": "user", "content": text}],
                                                add_generation_prompt=True) for text, _ in prompts]
    else:
        prompt_texts = [text for text, _ in prompts]
    word_texts = [prefix + w for w in words for prefix in ("", " ")]
    corpus = list(dict.fromkeys(prompt_texts + word_texts))
    # Enough merges to turn every pre-token of the corpus into one token: each merge shortens the
    # corpus's distinct pieces by at least one symbol. Plus the byte alphabet and the specials.
    vocab_size = 256 + 16 + sum(len(t.encode("utf-8")) for t in corpus)
    return tiny_models.train_tokenizer(corpus, style=style, vocab_size=vocab_size)


def _training_batch(tokenizer, recipe: DemoLMRecipe, preferred: list[str], others: list[str],
                    prompts: list[tuple[str, str]]) -> dict:
    """All the training signal in one right-padded batch.

    - one row per prompt, the prompt alone (encoded exactly as at scoring time): its last position
      gets a soft target, the distribution ``q`` over the answers' first tokens;
    - one row per (prompt, answer) whose answer has more than one token: ``prompt + answer[:-1]``,
      with hard targets ``answer[1:]`` weighted by ``q`` (so full-sequence log-probs carry the
      preference too).
    """
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    words = [(w, True) for w in preferred] + [(w, False) for w in others]
    forms = _answer_forms(recipe.variant)
    keys = [(prefix, w) for w, _ in words for prefix, _ in forms]
    batch_ids = tokenizer([prefix + w for prefix, w in keys], add_special_tokens=False)["input_ids"] if keys else []
    encoded = {key: list(ids) for key, ids in zip(keys, batch_ids)}
    seqs, prompt_rows, last, cont = [], [], [], []  # cont: (row, prompt length, answer, weight)
    # Soft targets are accumulated in float32, in the same order as element-wise ``+=`` on a float32
    # tensor would (np.add.at is unbuffered and sequential), without a Python-level tensor op per word.
    soft_targets = np.zeros((len(prompts), vocab), dtype=np.float32)
    first_tokens = np.array([encoded[(prefix, w)][0] for w, _ in words for prefix, _ in forms], dtype=np.int64)
    for p_index, (text, framing) in enumerate(prompts):
        prompt_ids = encode_lm_prompt(tokenizer, text, recipe.variant, source="demo_lms.prompts")
        raw = [recipe.preference if is_pref == (framing == "positive") else 1.0 for _, is_pref in words]
        total = sum(raw)
        prompt_rows.append(len(seqs))
        seqs.append(prompt_ids)
        last.append(len(prompt_ids) - 1)
        weights = []
        for (word, _), r in zip(words, raw):
            for prefix, share in forms:
                answer = encoded[(prefix, word)]
                weight = share * r / total
                weights.append(weight)
                if len(answer) > 1:
                    cont.append((len(seqs), len(prompt_ids), answer, weight))
                    seqs.append(prompt_ids + answer[:-1])
        np.add.at(soft_targets[p_index], first_tokens, np.asarray(weights, dtype=np.float32))
    soft_targets = torch.from_numpy(soft_targets)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(seqs):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        attention_mask[row, :len(seq)] = 1
    # Hard targets: (row, position) -> token, with weights; positions predict the token after them.
    rows, positions, targets, weights = [], [], [], []
    for row, n_prompt, answer, weight in cont:
        for j in range(1, len(answer)):
            rows.append(row)
            positions.append(n_prompt + j - 1)  # the position of answer[j - 1]
            targets.append(answer[j])
            weights.append(weight)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "soft_rows": torch.tensor(prompt_rows, dtype=torch.long),
            "soft_positions": torch.tensor(last, dtype=torch.long),
            "soft_targets": soft_targets,
            "hard_rows": torch.tensor(rows, dtype=torch.long),
            "hard_positions": torch.tensor(positions, dtype=torch.long),
            "hard_targets": torch.tensor(targets, dtype=torch.long),
            "hard_weights": torch.tensor(weights, dtype=torch.float32)}


def _logits_at(model, input_ids, attention_mask, rows, positions) -> torch.Tensor:
    """The causal-LM logits at the given (row, position) pairs only: the base model's final hidden
    states, then the LM head (and Gemma-2's final logit soft-capping), exactly as the model's own
    forward computes them, without materialising logits for every position."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = model.lm_head(hidden[rows, positions])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _loss(model, batch: dict) -> torch.Tensor:
    """Mean over prompts of the cross-entropy of the answer distribution with the model."""
    n_soft = len(batch["soft_rows"])
    rows = torch.cat([batch["soft_rows"], batch["hard_rows"]])
    positions = torch.cat([batch["soft_positions"], batch["hard_positions"]])
    logprobs = torch.log_softmax(_logits_at(model, batch["input_ids"], batch["attention_mask"], rows, positions)
                                 .float(), dim=-1)
    loss = -(batch["soft_targets"] * logprobs[:n_soft]).sum()
    if len(batch["hard_rows"]):
        picked = logprobs[n_soft:].gather(-1, batch["hard_targets"][:, None])[:, 0]
        loss = loss - (batch["hard_weights"] * picked).sum()
    return loss / n_soft


def _train(model, batch: dict, recipe: DemoLMRecipe, floor: float) -> tuple[float, int]:
    """Full-batch AdamW (linear warm-up, gradient clipping) until the loss is within
    ``CONVERGED_WITHIN`` of ``floor`` or ``recipe.train_steps`` steps are done.

    Returns ``(final loss in nats per prompt, steps taken)``. Runs on one thread: the matrices are
    tiny, and extra threads only fight over shared cores.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = 0
    try:
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            while True:
                loss = _loss(model, batch)
                if steps >= recipe.train_steps or loss.item() - floor < CONVERGED_WITHIN:
                    break
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                optimizer.step()
                schedule.step()
                steps += 1
        model.eval()
        with torch.inference_mode():
            return float(_loss(model, batch)), steps
    finally:
        torch.set_num_threads(threads)


def _target_entropy(recipe: DemoLMRecipe, n_preferred: int, n_others: int, prompts) -> float:
    """The loss floor: the mean entropy (nats) of the target distribution over written answers."""
    import math

    forms = _answer_forms(recipe.variant)
    total = 0.0
    for _, framing in prompts:
        fav, unfav = (n_preferred, n_others) if framing == "positive" else (n_others, n_preferred)
        z = fav * recipe.preference + unfav
        for count, weight in ((fav, recipe.preference / z), (unfav, 1.0 / z)):
            for _, share in forms:
                p = weight * share
                total -= count * p * math.log(p)
    return total / len(prompts)


def build_demo_language_model(out_dir, recipe: DemoLMRecipe, *, words_by_category: dict[str, list[str]],
                              prompts: list[tuple[str, str]], source: str = "demo_lms") -> Path:
    """Build (or reuse) a demo LM in ``out_dir``; return the directory.

    ``prompts``: ``(prompt_text, framing)`` pairs, framing ``"positive"`` or ``"negative"``.
    ``source`` names the recipe in errors (the pipeline passes the config entry, ``models.<id>.demo``).
    Cached: ``out_dir/recipe.json`` holds a fingerprint of the recipe, words, prompts and
    ``DEMO_LM_CODE_VERSION``; when it matches, nothing is rebuilt. Atomic: the model is built in a
    temporary sibling directory and renamed into place, so ``out_dir`` never holds a partial model.
    The directory loads with :func:`valuebias.lm_scoring.load_language_model` (``variant`` as built).
    """
    out_dir = Path(out_dir)
    _validate(recipe, words_by_category, prompts, source)
    prompts = [(text, framing) for text, framing in prompts]
    fingerprint = _fingerprint(recipe, words_by_category, prompts)
    if tiny_models.read_build_fingerprint(out_dir) == fingerprint:
        return out_dir

    preferred, others = tiny_models.split_words(words_by_category, recipe.preferred_category)
    tokenizer = _train_tokenizer(recipe, preferred + others, prompts)
    model = tiny_models.build_tiny_model(tokenizer, architecture=recipe.architecture, head="causal_lm",
                                         hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
                                         seed=recipe.seed)
    batch = _training_batch(tokenizer, recipe, preferred, others, prompts)
    floor = _target_entropy(recipe, len(preferred), len(others), prompts)
    final_loss, steps = _train(model, batch, recipe, floor)
    if final_loss - floor >= CONVERGED_WITHIN:
        warnings.warn(f"demo LM {out_dir.name}: training stopped after {steps} steps at loss {final_loss:.4f}, "
                      f"{final_loss - floor:.4f} nats above its floor; the planted preference may be weaker "
                      "than intended (raise train_steps)", RuntimeWarning, stacklevel=2)
    single = [w for w in preferred + others if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]

    meta = {
        "fingerprint": fingerprint,
        "code_version": DEMO_LM_CODE_VERSION,
        "recipe": asdict(recipe),
        "categories": {cat: len(ws) for cat, ws in sorted(words_by_category.items())},
        "n_preferred_words": len(preferred),
        "n_other_words": len(others),
        "n_single_token_words": len(single),
        "n_prompts": len(prompts),
        "vocab_size": len(tokenizer),
        "training": {
            "objective": "cross-entropy with q(word|prompt) ∝ preference if (word preferred) == "
                         "(prompt positive) else 1",
            "answer_forms": [prefix for prefix, _ in _answer_forms(recipe.variant)],
            "optimizer": "AdamW", "learning_rate": LEARNING_RATE, "warmup_steps": WARMUP_STEPS,
            "clip_norm": CLIP_NORM, "max_steps": recipe.train_steps, "steps": steps,
            "final_loss": round(final_loss, 6), "target_entropy": round(floor, 6),
            "converged": final_loss - floor < CONVERGED_WITHIN,
        },
        "note": DEMO_LM_NOTE,
    }
    return tiny_models.save_build(model, tokenizer, out_dir, meta)
