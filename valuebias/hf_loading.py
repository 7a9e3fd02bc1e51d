"""Loading a Hugging Face model where the worker runs: the checks before loading (:func:`check_source`: config
present, no pickled weights or remote code unless allowed, a GGUF file inside its folder), ``from_pretrained``
with the registry's dtype and attention settings (:func:`load_pretrained`), the tokenizer alone
(:func:`load_tokenizer`), and the provenance of what was loaded. Reward models (``valuebias.rm_scoring``) and
language models (``valuebias.lm_scoring``) both load through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from valuebias.config import ATTN_IMPLEMENTATIONS, SCORE_READERS, remote_code_pin_message
from valuebias.errors import InputError
from valuebias.model_content import ContentIdentity, check_executed_code, text_sha256


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


def load_tokenizer(kwargs: dict):
    """The tokenizer alone (cheap), to render conversations and look them up in the cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(**{k: v for k, v in kwargs.items() if k != "use_safetensors"})


def provenance(identity: ContentIdentity, tokenizer, *, template_used: bool = True) -> dict[str, Any]:
    """What the worker knows about the scores it produced: the content identity of the model, the hash of
    the chat template actually used, and the torch and transformers versions."""
    import torch
    import transformers

    template = text_sha256(tokenizer.chat_template) if template_used else "none (raw prompt text)"
    return {"content": identity.to_metadata(), "chat_template_sha256": template,
            "torch": torch.__version__, "transformers": transformers.__version__}
