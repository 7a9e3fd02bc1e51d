"""De-quantised GGUF weights, cached by content identity.

transformers loads a GGUF file by de-quantising every tensor to float32 (about 20 s for SmolLM2-135M, 45 s
for Gemma-3-270M on 2 cores). :func:`ensure_dequantised` does that once per GGUF file and saves the result
as a plain transformers folder (``config.json``, ``model.safetensors``, the tokenizer files and the chat
template) under ``<cache_dir>/<SHA-256 of the GGUF file>/``; a later load of the same file (another variant
of the model, a rerun after a config change) reads that folder instead, in well under a second.

The folder is keyed by the GGUF file's digest (the same digest that is the model's content identity), and
records the transformers and gguf versions that de-quantised it: another version de-quantises again. It is
written to a temporary folder and renamed into place when complete, so a reader never sees half of it.
Nothing in it is code (safetensors and JSON only), and it is loaded without remote code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

RECORD = "dequantised.json"


def _versions() -> dict[str, str]:
    import gguf
    import transformers

    return {"transformers": transformers.__version__, "gguf": getattr(gguf, "__version__", "unknown")}


def cached_folder(cache_dir: str | Path, gguf_sha256: str) -> Path:
    return Path(cache_dir) / gguf_sha256


def is_cached(cache_dir: str | Path, gguf_sha256: str) -> bool:
    """Whether a complete de-quantised copy of that GGUF file, made by these library versions, is there."""
    record = cached_folder(cache_dir, gguf_sha256) / RECORD
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("gguf_sha256") == gguf_sha256 and recorded.get("versions") == _versions()


def ensure_dequantised(folder: str | Path, gguf_file: str, gguf_sha256: str, cache_dir: str | Path) -> Path:
    """The cached de-quantised copy of ``folder/gguf_file`` (whose SHA-256 is ``gguf_sha256``, the caller's
    content identity): made now if it is missing or was made by other library versions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cached_folder(cache_dir, gguf_sha256)
    if is_cached(cache_dir, gguf_sha256):
        return target
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    # The weights are float32 now; transformers refuses to save a model still marked as GGUF-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{gguf_sha256[:16]}.", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({"gguf_sha256": gguf_sha256, "gguf_file": gguf_file,
                                              "versions": _versions()}, indent=1))
        if target.exists():  # made by other versions, or by a process that lost a race: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process renamed its complete copy into place first
            if not is_cached(cache_dir, gguf_sha256):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
