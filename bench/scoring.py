"""Benchmark: prefix-cached scoring (``valuebias.engine``) against the straightforward batched path.

    python -m bench.scoring [--quick] [--prompts N] [--threads 2]
    python -m bench.scoring --device cuda --dtype bfloat16 --shape 8b --peak-tflops 989
    python -m bench.scoring --smoke    # seconds: tiny model, 2 prompts x 12 words, every code path

A Llama-shaped sequence-classification reward model with random weights is built offline (``--shape
small``: hidden 512, 8 layers, 8 heads, intermediate 1408; ``--shape tiny`` (``--smoke``): hidden 64,
2 layers, 4 heads, 2 KV heads, intermediate 128; ``--shape 8b``: Llama-3.1-8B's shape, hidden
4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary 128256, initialised directly on
the device). Its tokenizer is trained on the rendered prompts and words, with a Llama-3.1-style chat
template that renders the system header ("Cutting Knowledge Date: December 2023 / Today Date: 26 Jul
2024"), so every prompt's shared prefix is about 50 tokens and each word adds a few.

The workload is the paper's: the 54 prompts x the 263 Big Two nouns (from
``.valuebias/paper_release/corpora/dict_big2_nouns.csv``, fetched by ``valuebias paper-data fetch``, when
present, else the first 263 words of ``valuebias.wordlist.english_wordlist()``). Both paths score the same sequences with the same model in
the same process: ``scoring.score_words`` (batch 64) and ``engine.score_prefix_cached`` (starting at
batch 64). Printed: sequences/s of each, the FLOP-ratio bound (tokens the straightforward path runs,
padding included / tokens the engine runs, prefixes and padding included), on a GPU the achieved
TFLOP/s (2 x non-embedding parameters x tokens / time) against ``--peak-tflops``, the speedup as a
fraction of the FLOP-ratio bound (``speedup_of_bound``), and as the last line
``speedup=<ratio> max_abs_diff=<value> sequences=<n>``.

It exits 1 (after printing why) when the engine falls back to the straightforward path or when the two
paths disagree by more than the engine's tolerance (``valuebias.engine``'s docstring): max |difference|
<= 1e-4 x max(1, max |score|) in float32, <= 3e-2 x max |score| in bfloat16 / float16.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BIG2_NOUNS = ROOT / ".valuebias" / "paper_release" / "corpora" / "dict_big2_nouns.csv"  # valuebias paper-data fetch

LLAMA31_TEMPLATE = (
    "{{ bos_token }}"
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=None),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=1408, vocab_size=None),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
}


def load_words(n: int = 263) -> tuple[list[str], str]:
    if BIG2_NOUNS.is_file():
        with BIG2_NOUNS.open(newline="", encoding="utf-8") as fh:
            words = [row["token_decoded"] for row in csv.DictReader(fh)]
        return words[:n], f"Big Two nouns ({BIG2_NOUNS})"
    from valuebias.wordlist import english_wordlist

    return english_wordlist()[:n], "first words of valuebias.wordlist.english_wordlist()"


def build(shape: str, device: str, dtype: torch.dtype, prompts, words):
    import jinja2
    import transformers

    from valuebias.demo_models import tiny_models
    from valuebias import hf_loading

    env = jinja2.Template(LLAMA31_TEMPLATE, keep_trailing_newline=True)
    texts = [env.render(messages=[{"role": "user", "content": t}, {"role": "assistant", "content": w}],
                        bos_token="<|begin_of_text|>") for _, t in prompts for w in words]
    tokenizer = tiny_models.train_tokenizer(texts, style="llama", vocab_size=4000)
    tokenizer.chat_template = LLAMA31_TEMPLATE
    dims = dict(SHAPES[shape])
    vocab = dims.pop("vocab_size") or len(tokenizer)
    config = transformers.LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)), **dims, head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        max_position_embeddings=8192, rope_theta=500000.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=1,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.eval()
    return hf_loading.LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, source="bench")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: ``--smoke``: a tiny model and workload, several batches, the achieved-TFLOP/s lines (against a nominal peak).
SMOKE = dict(shape="tiny", prompts=2, words=12, batch_size=4, threads=1, peak_tflops=1.0)


def tolerance(dtype: str, scale: float) -> float:
    """The largest max |difference| the engine may show against the straightforward path (engine docstring)."""
    return 1e-4 * max(scale, 1.0) if dtype == "float32" else 3e-2 * max(scale, 1e-30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 prompts instead of 54 (ends within ~2 minutes on 2 busy cores)")
    parser.add_argument("--prompts", type=int, default=None, help="number of paper prompts (default 54, 3 if --quick)")
    parser.add_argument("--words", type=int, default=263)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense TFLOP/s for this dtype, to print the achieved fraction")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()) + "; every code path")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)

    from valuebias import engine, rm_scoring as scoring

    from valuebias.prompts import paper_prompt_table

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    n_prompts = args.prompts if args.prompts is not None else (3 if args.quick else 54)
    table = paper_prompt_table()
    prompts = list(zip(table["prompt"].to_list(), table["text"].to_list()))[:n_prompts]
    words, word_source = load_words(args.words)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"torch threads {torch.get_num_threads()}; torch {torch.__version__}")

    t0 = time.perf_counter()
    loaded = build(args.shape, args.device, dtype, prompts, words)
    model = loaded.model
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    flop_params = n_params - n_embed  # an embedding lookup is not a matmul
    print(f"model: Llama-shaped sequence-classification RM, shape {args.shape} "
          f"(hidden {model.config.hidden_size}, {model.config.num_hidden_layers} layers, "
          f"{model.config.num_attention_heads} heads / {model.config.num_key_value_heads} KV heads, "
          f"intermediate {model.config.intermediate_size}, vocab {model.config.vocab_size}), "
          f"{n_params / 1e6:.1f}M parameters ({flop_params / 1e6:.1f}M non-embedding), {args.dtype} on {args.device}, "
          f"random weights; built in {time.perf_counter() - t0:.1f}s")
    ok, reason = engine.supports_prefix_cache(model)
    print(f"engine support: {ok} ({reason})")
    if not ok:
        print("FAILED: the engine cannot serve this model, nothing to compare")
        return 1
    print(f"workload: {len(prompts)} prompts x {len(words)} words = {len(prompts) * len(words)} sequences; "
          f"words: {word_source}")

    # Warm-up (lazy initialisation, kernels), untimed.
    scoring.score_words(loaded, score="logits[0]", prompts=prompts[:1], words=words[:8], batch_size=8)
    engine.score_prefix_cached(loaded, score="logits[0]", prompts=prompts[:1], words=words[:8], batch_size=8)

    # Token counts of the straightforward path (sorted by length, batches of batch_size, right-padded).
    texts = [scoring.render_conversation(loaded.tokenizer, t, w) for _, t in prompts for w in words]
    lengths = sorted(len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"])
    base_tokens = sum(max(lengths[i:i + args.batch_size]) * len(lengths[i:i + args.batch_size])
                      for i in range(0, len(lengths), args.batch_size))

    _sync(args.device)
    t0 = time.perf_counter()
    ref = scoring.score_words(loaded, score="logits[0]", prompts=prompts, words=words, batch_size=args.batch_size)
    _sync(args.device)
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    got, info = engine.score_prefix_cached(loaded, score="logits[0]", prompts=prompts, words=words,
                                           batch_size=args.batch_size)
    _sync(args.device)
    t_engine = time.perf_counter() - t0

    n = ref.height
    if got["prompt"].to_list() != ref["prompt"].to_list() or got["word"].to_list() != ref["word"].to_list():
        print("FAILED: the engine's rows are not the straightforward path's (prompt, word) order")
        return 1
    diff = float((got["score"] - ref["score"]).abs().max())
    scale = float(ref["score"].abs().max())
    prefixes = list(info["prefix_tokens"].values())
    print(f"sequences: {n}; full length mean {sum(lengths) / n:.1f} tokens (min {lengths[0]}, max {lengths[-1]}); "
          f"cached prefix mean {sum(prefixes) / max(len(prefixes), 1):.1f} tokens")
    print(f"straightforward (score_words, batch {args.batch_size}): {t_base:.2f}s, {n / t_base:.1f} sequences/s, "
          f"{base_tokens} tokens run (padding included)")
    print(f"engine ({info['engine']}): {t_engine:.2f}s, {n / t_engine:.1f} sequences/s, "
          f"{info['tokens_processed']} tokens run (prefixes and padding included); layout {info.get('layout')}, "
          f"prefix passes {info.get('groups')}, batches {info['batches']}, oom_halvings {info['oom_halvings']}, "
          f"batch size {info.get('initial_batch_size')} -> {info['final_batch_size']} sequences")
    bound = base_tokens / info["tokens_processed"]
    print(f"flop_ratio_bound={bound:.2f} "
          f"(unpadded full tokens / engine tokens: {info['tokens_full'] / info['tokens_processed']:.2f})")
    print(f"score scale max|score| {scale:.4g}; max_abs_diff {diff:.3g} (relative {diff / max(scale, 1e-30):.3g})")
    if args.device.startswith("cuda") or args.peak_tflops:
        for name, tokens, seconds in (("straightforward", base_tokens, t_base),
                                      ("engine", info["tokens_processed"], t_engine)):
            tflops = 2 * flop_params * tokens / seconds / 1e12
            frac = f", {100 * tflops / args.peak_tflops:.1f}% of peak {args.peak_tflops:g}" if args.peak_tflops else ""
            print(f"achieved {name}: {tflops:.2f} TFLOP/s (2 x params x tokens / time){frac}")
        if args.device.startswith("cuda"):
            print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"speedup_of_bound={t_base / t_engine / bound:.2f} (speedup / flop_ratio_bound)")
    print(f"speedup={t_base / t_engine:.2f} max_abs_diff={diff:.3g} sequences={n}")
    limit = tolerance(args.dtype, scale)
    if not diff <= limit:  # also fails on NaN
        print(f"FAILED: max_abs_diff {diff:.3g} exceeds the engine's {args.dtype} tolerance {limit:.3g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
