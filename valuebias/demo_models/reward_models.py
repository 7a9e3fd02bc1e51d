"""Demonstration reward models with a planted value preference, built offline in seconds.

These are NOT real reward models: they exist so that the whole product (scoring, ranking, statistics,
reports) can run end to end without downloading the paper's 2B-27B checkpoints, and so that tests can
check that the pipeline recovers a known answer.

What one demo RM is: a tiny Llama-like or Gemma-like sequence-classification model (``tiny_models``)
with its own BPE tokenizer, trained on the very conversations the product scores,
``[user: prompt, assistant: word]``, rendered with its chat template. It is trained briefly (AdamW,
mean squared error) towards

    target = (+1 if word is in the preferred category else -1) * (+1 if the prompt is positive else -1)

so its reward is high for preferred-category words under positive framing ("the best thing ever")
and low under negative framing ("the worst thing ever"), and the reverse for every other category.
Each step draws a batch of 64 random (prompt, word) pairs, half with preferred words and half with
the others; training does not visit every pair. The first third of the steps use positive prompts
only (learning which words are preferred), the rest all prompts (learning to flip the sign under
negative framing): from a random start, the interaction alone is found far too slowly. The learning
rate decays linearly to 0. A Llama-like demo RM preferring Agency and a Gemma-like one preferring
Communion imitate the paper's finding.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from valuebias.demo_models import tiny_models
from valuebias.config import DEMO_PREFERENCES
from valuebias.errors import InputError

DEMO_REGISTRY_NOTE = (
    "Demonstration reward model built offline by valuebias.demo_models.reward_models: a tiny transformer trained for "
    "a few hundred steps to prefer one category of words under positive framing and disfavour it under "
    "negative framing. Its scores show what the pipeline recovers from a planted bias; they say "
    "nothing about any real reward model."
)

# Bump when the training code changes in a way that changes the models it builds.
DEMO_CODE_VERSION = "1"
# How a demo RM that prefers nothing is trained (part of its fingerprint: a change rebuilds only those models).
NOTHING_TARGET = "centred random reward per prompt and word"

BATCH_SIZE = 64
LEARNING_RATE = 3e-3  # peak; decays linearly to 0
WARMUP_FRACTION = 1 / 3  # share of the steps trained on positive prompts only
FRAMING_SIGN = {"positive": 1.0, "negative": -1.0}




@dataclass(frozen=True)
class DemoRecipe:
    architecture: str  # "llama" or "gemma"
    preferred_category: str | None  # required when prefers is "category"
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    train_steps: int = 300
    # What it is trained to prefer (DEMO_PREFERENCES): the words of preferred_category (a planted value
    # preference), frequent_words whatever their category (target linear in the word's Zipf frequency: a
    # frequency effect, not a value), or nothing (a random reward per prompt and word, centred per word over
    # the prompts of each framing, see random_reward: no word and no category is preferred across prompts).
    prefers: str = "category"


def _fingerprint(recipe: DemoRecipe, words_by_category: dict[str, list[str]],
                 prompts: list[tuple[str, str]]) -> str:
    described = asdict(recipe)
    if recipe.prefers == "category":  # recipes from before `prefers` existed keep their fingerprint
        del described["prefers"]
    if recipe.prefers == "nothing":
        described["target"] = NOTHING_TARGET
    return tiny_models.build_fingerprint(DEMO_CODE_VERSION, described, words_by_category, prompts)


@dataclass(frozen=True)
class TrainingPlan:
    """What a demo RM is trained on: the words half of every batch is drawn from (a category preference;
    empty otherwise), the other words, and the reward each (prompt text, framing, word) is pushed towards."""

    preferred: list[str]
    others: list[str]
    target: Callable[[str, str, str], float]

    @property
    def words(self) -> list[str]:
        # preferred first: the tokenizer corpus lists the words in this order, so models built before
        # `prefers` existed are rebuilt the same
        return self.preferred + self.others


def training_plan(recipe: DemoRecipe, words_by_category: dict[str, list[str]],
                  prompts: list[tuple[str, str]]) -> TrainingPlan:
    """The plan of ``recipe.prefers``: +1 for the preferred category's words and -1 for the others under
    positive framing (reversed under negative); a reward linear in Zipf frequency (also reversed); or a
    random reward per prompt and word, centred (:func:`centred_random_rewards`)."""
    if recipe.prefers == "category":
        preferred, others = tiny_models.split_words(words_by_category, recipe.preferred_category)
        chosen = set(preferred)
        return TrainingPlan(preferred, others,
                            lambda _, framing, word: (1.0 if word in chosen else -1.0) * FRAMING_SIGN[framing])
    words = list(dict.fromkeys(w.strip() for ws in words_by_category.values() for w in ws))
    if recipe.prefers == "nothing":
        rewards = centred_random_rewards(recipe.seed, prompts, words)
        return TrainingPlan([], words, lambda prompt_text, _, word: rewards[prompt_text, word])
    from wordfreq import zipf_frequency

    zipf = {w: zipf_frequency(w, "en") for w in words}
    low, high = min(zipf.values()), max(zipf.values())
    scaled = {w: (2.0 * (z - low) / (high - low) - 1.0) if high > low else 0.0 for w, z in zipf.items()}
    return TrainingPlan([], words, lambda _, framing, word: scaled[word] * FRAMING_SIGN[framing])


def _validate(recipe: DemoRecipe, words_by_category: dict[str, list[str]], prompts: list[tuple[str, str]],
              source: str):
    if recipe.architecture not in tiny_models.STYLES:
        raise InputError(f"architecture must be one of {list(tiny_models.STYLES)}, got {recipe.architecture!r}",
                         source=source, field="architecture")
    if recipe.prefers not in DEMO_PREFERENCES:
        raise InputError(f"prefers must be one of {list(DEMO_PREFERENCES)}, got {recipe.prefers!r}", source=source,
                         field="prefers")
    if recipe.prefers == "category":
        if recipe.preferred_category not in words_by_category:
            raise InputError(f"preferred category {recipe.preferred_category!r} is not among the categories of the "
                             f"training words {sorted(words_by_category)}", source=source,
                             field="preferred_category")
        preferred, others = tiny_models.split_words(words_by_category, recipe.preferred_category)
        if not preferred:
            raise InputError("the preferred category has no words", source=source, field="preferred_category")
        if not others:
            raise InputError(tiny_models.NO_OTHER_WORDS, source=source, field="words_by_category")
    elif not any(words_by_category.values()):
        raise InputError("no training words", source=source, field="train_corpus")
    if not prompts:
        raise InputError("no prompts", source=source, field="prompts")
    for i, (_, framing) in enumerate(prompts):
        if framing not in FRAMING_SIGN:
            raise InputError(f"framing must be 'positive' or 'negative', got {framing!r}",
                             source=f"{source}.prompts", row=i, field="framing")


@contextmanager
def _one_thread():
    """Run torch on one thread: the matrices are tiny, and with several threads on a busy machine the
    thread synchronisation costs far more than it saves (2 threads measured 3-6x slower than 1 on a
    busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_reward(seed: int, prompt_text: str, word: str) -> float:
    """A reward in [-1, 1] drawn at random for a (prompt, word), fixed by the seed."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_text}\x00{word}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 63 - 1.0


def centred_random_rewards(seed: int, prompts: list[tuple[str, str]], words: list[str]) -> dict[tuple[str, str], float]:
    """The targets of a demo RM that prefers nothing: {(prompt text, word): reward}, a :func:`random_reward`
    per prompt and word minus that word's mean over the prompts of the same framing.

    Each prompt orders the words differently, and every word's mean target over a framing's prompts is
    exactly 0, so no word and no category is preferred across prompts. Uncentred, a word's mean of random
    draws over a few dozen prompts is itself a fixed random preference, the part a tiny model learns first
    (and a target of 0 everywhere would leave the fixed word order of the random initial weights)."""
    rewards = {}
    for framing in dict.fromkeys(f for _, f in prompts):
        texts = list(dict.fromkeys(t for t, f in prompts if f == framing))
        for word in words:
            drawn = [random_reward(seed, text, word) for text in texts]
            mean = sum(drawn) / len(drawn)
            rewards.update({(text, word): value - mean for text, value in zip(texts, drawn)})
    return rewards


def _train(model, tokenizer, recipe: DemoRecipe, plan: TrainingPlan, prompts: list[tuple[str, str]]) -> float:
    """Train the RM for ``recipe.train_steps`` steps; return the mean loss of the last 20 steps.

    The target is an interaction (category sign x framing sign), which gradient descent from a random
    start is slow to find: the first ``WARMUP_FRACTION`` of the steps use positive prompts only (the
    model learns which words are preferred), the rest use all prompts (it learns to flip the sign
    under negative framing). The learning rate decays linearly to 0. A category preference draws half of
    each batch from the preferred words; the other preferences draw words uniformly.
    """
    rng = random.Random(recipe.seed)
    positive_prompts = [p for p in prompts if p[1] == "positive"] or prompts
    warmup_steps = int(recipe.train_steps * WARMUP_FRACTION)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / recipe.train_steps)
    pad = tokenizer.pad_token_id
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(recipe.seed)
        for step in range(recipe.train_steps):
            pool = positive_prompts if step < warmup_steps else prompts
            texts, batch_targets = [], []
            for j in range(BATCH_SIZE):
                word = rng.choice(plan.preferred if plan.preferred and j % 2 == 0 else plan.others)
                prompt_text, framing = rng.choice(pool)
                texts.append(tiny_models.render_chat(recipe.architecture, [
                    {"role": "user", "content": prompt_text}, {"role": "assistant", "content": word}]))
                batch_targets.append(plan.target(prompt_text, framing, word))
            encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(encoded):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention_mask[row, :len(ids)] = 1
            rewards = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
            loss = torch.nn.functional.mse_loss(rewards, torch.tensor(batch_targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


def build_demo_reward_model(out_dir, recipe: DemoRecipe, *, words_by_category: dict[str, list[str]],
                            prompts: list[tuple[str, str]], source: str = "demo_models") -> Path:
    """Build (or reuse) a demo RM in ``out_dir``; return the directory.

    ``prompts``: ``(prompt_text, framing)`` pairs, framing ``"positive"`` or ``"negative"``.
    ``source`` names the recipe in errors (the pipeline passes the config entry, ``models.<id>.demo``).
    Cached: ``out_dir/recipe.json`` holds a fingerprint of the recipe, words, prompts and
    ``DEMO_CODE_VERSION``; when it matches, nothing is rebuilt. Atomic: the model is built in a
    temporary sibling directory and renamed into place, so ``out_dir`` never holds a partial model.
    """
    out_dir = Path(out_dir)
    _validate(recipe, words_by_category, prompts, source)
    fingerprint = _fingerprint(recipe, words_by_category, prompts)
    if tiny_models.read_build_fingerprint(out_dir) == fingerprint:
        return out_dir

    plan = training_plan(recipe, words_by_category, prompts)
    # Tokenizer corpus: every word once (with the prompts taken in turn) and every prompt once.
    words = plan.words
    conversations = [(prompts[i % len(prompts)][0], w) for i, w in enumerate(words)]
    conversations += [(text, words[0]) for text, _ in prompts]
    texts = [tiny_models.render_chat(recipe.architecture, [{"role": "user", "content": p},
                                                           {"role": "assistant", "content": w}])
             for p, w in conversations]
    tokenizer = tiny_models.train_tokenizer(texts, style=recipe.architecture)
    model = tiny_models.build_tiny_model(
        tokenizer, architecture=recipe.architecture, head="sequence_classification",
        hidden_size=recipe.hidden_size, num_layers=recipe.num_layers, seed=recipe.seed)
    final_loss = _train(model, tokenizer, recipe, plan, prompts)

    meta = {
        "fingerprint": fingerprint,
        "code_version": DEMO_CODE_VERSION,
        "recipe": asdict(recipe),
        "categories": {cat: len(ws) for cat, ws in sorted(words_by_category.items())},
        "n_preferred_words": len(plan.preferred),
        "n_other_words": len(plan.others),
        "n_prompts": len(prompts),
        "training": {
            "objective": "MSE to sign(word in preferred) * sign(framing)",
            "optimizer": "AdamW", "learning_rate": LEARNING_RATE, "schedule": "linear decay to 0",
            "positive_only_fraction": WARMUP_FRACTION, "batch_size": BATCH_SIZE,
            "steps": recipe.train_steps, "final_loss": round(final_loss, 6),
        },
        "note": DEMO_REGISTRY_NOTE,
    }
    return tiny_models.save_build(model, tokenizer, out_dir, meta)
