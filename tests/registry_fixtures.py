"""A small registry for pipeline tests: 6 prompts, a 2-category word list and tiny demonstration RMs."""

from __future__ import annotations

from pathlib import Path

PROMPTS = {
    "best_ever_one": "What, in one word, is the best thing ever?",
    "greatest_world_single": "What, in a single word, is the greatest thing in the world?",
    "good_time_please": "What is the most good thing of all time? Please answer in one word only.",
    "worst_ever_one": "What, in one word, is the worst thing ever?",
    "bad_world_single": "What, in a single word, is the most bad thing in the world?",
    "terrible_time_please": "What is the most terrible thing of all time? Please answer in one word only.",
}
AGENCY = ["ability", "achievement", "ambition", "power", "skill", "success", "strength", "talent", "mastery",
          "competence", "courage", "victory", "leadership", "control", "effort", "progress", "drive", "expertise",
          "goal", "triumph"]
COMMUNION = ["love", "kindness", "friendship", "care", "trust", "warmth", "family", "compassion", "sharing",
             "loyalty", "empathy", "community", "harmony", "support", "gratitude", "affection", "help",
             "generosity", "honesty", "peace"]


def write_small_registry(root: Path, *, models: str | None = None, extra: str = "",
                         prompts: dict[str, str] | None = None, launcher: str | None = "in_process") -> Path:
    """Writes prompts.csv, words.csv and valuebias.yaml under ``root``; returns the config path.

    Scoring runs ``in_process`` unless ``launcher`` says otherwise (None: the product's default, a Pipes
    subprocess): most tests are about something else than the process boundary, and a worker process
    costs a few seconds of imports per partition. tests/test_scoring_launcher.py, tests/test_cli.py and
    tests/test_storage_faults.py use the real subprocess."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["prompt,text"] + [f'{pid},"{text}"' for pid, text in (prompts or PROMPTS).items()]
    (root / "prompts.csv").write_text("\n".join(rows) + "\n")
    words = ["word,category"] + [f"{w},Agency" for w in AGENCY] + [f"{w},Communion" for w in COMMUNION]
    (root / "words.csv").write_text("\n".join(words) + "\n")
    if models is None:
        models = "".join(
            f"  demo-{arch}-{seed}:\n    kind: reward_model\n    family: {arch}\n"
            f"    demo: {{architecture: {arch}, preferred_category: {pref}, seed: {seed}, hidden_size: 32,"
            f" train_steps: 150}}\n"
            for arch, pref in (("llama", "Agency"), ("gemma", "Communion")) for seed in (1, 2))
    config = (
        "prompts: {uri: prompts.csv}\n"
        "corpora:\n  small: {uri: words.csv, format: csv, word_column: word, category_column: category,"
        " categories: [Agency, Communion]}\n"
        f"scoring: {{batch_size: 32{', launcher: ' + launcher if launcher else ''}}}\n"
        "analysis: {permutations: 2000}\n"
        f"models:\n{models}{extra}"
    )
    path = root / "valuebias.yaml"
    path.write_text(config)
    return path


def valuebias_cli(config: Path, *args: str) -> str:
    """Runs ``valuebias ARGS --config CONFIG`` as a user does (a real process); it must succeed. Returns stdout."""
    import subprocess
    import sys

    project = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", *args, "--config", str(config)], cwd=project,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"valuebias {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def build_random_reward_model(path: Path, *, architecture: str, seed: int, words: list[str] | None = None) -> Path:
    """A tiny untrained sequence-classification RM (random weights) saved offline at ``path``."""
    from valuebias.demo_models import tiny_models

    words = words or (AGENCY + COMMUNION)
    texts = [tiny_models.render_chat(architecture, [{"role": "user", "content": text},
                                                    {"role": "assistant", "content": w}])
             for text in PROMPTS.values() for w in words]
    tokenizer = tiny_models.train_tokenizer(texts, style=architecture, vocab_size=600)
    model = tiny_models.build_tiny_model(tokenizer, architecture=architecture, head="sequence_classification",
                                         hidden_size=32, num_layers=1, seed=seed)
    return tiny_models.save_pretrained(model, tokenizer, path)


def random_models_entry(models: dict[str, tuple[str, Path]], dtype: dict[str, str] | None = None) -> str:
    """The ``models:`` block for {model id: (family, local path)}."""
    dtype = dtype or {}
    return "".join(
        f"  {mid}:\n    kind: reward_model\n    family: {family}\n    huggingface:\n      path: {path}\n"
        + (f"      dtype: {dtype[mid]}\n" if mid in dtype else "")
        for mid, (family, path) in models.items())


def ingest_and_sync(config_path: Path, instance) -> None:
    """Runs ``ingest_job`` on ``instance`` (it must succeed) and adds the config's model and pair partitions."""
    from valuebias.orchestration.definitions import build_definitions
    from valuebias.orchestration.partitions import sync_model_partitions
    from valuebias.config import load_config

    assert build_definitions(config_path).resolve_job_def("ingest_job").execute_in_process(instance=instance).success
    sync_model_partitions(instance, load_config(config_path))


def build_random_language_model(path: Path, *, architecture: str, seed: int) -> Path:
    """A tiny untrained causal LM (random weights) with a chat template, saved offline at ``path``. Its tokenizer
    also learns the bare words, so every word is one token in both styles and a llama / gemma pair shares words
    (a gemma-style tokenizer otherwise only learns them glued to the template's last newline)."""
    from valuebias.demo_models import tiny_models

    texts = [tiny_models.render_chat(architecture, [{"role": "user", "content": text}], add_generation_prompt=True)
             + w for text in PROMPTS.values() for w in AGENCY + COMMUNION] + AGENCY + COMMUNION
    tokenizer = tiny_models.train_tokenizer(texts, style=architecture, vocab_size=600)
    model = tiny_models.build_tiny_model(tokenizer, architecture=architecture, head="causal_lm", hidden_size=32,
                                         num_layers=1, seed=seed)
    return tiny_models.save_pretrained(model, tokenizer, path)


def language_models_entry(models: dict[str, tuple[str, str, Path]], dtype: dict[str, str] | None = None) -> str:
    """The ``models:`` entries for {model id: (family, variant, local path)} of language models."""
    dtype = dtype or {}
    return "".join(
        f"  {mid}:\n    kind: language_model\n    variant: {variant}\n    family: {family}\n"
        f"    huggingface:\n      path: {path}\n" + (f"      dtype: {dtype[mid]}\n" if mid in dtype else "")
        for mid, (family, variant, path) in models.items())
