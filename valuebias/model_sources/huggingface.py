"""Models loaded with transformers: a hub id (pinned to the commit it resolves to), a local folder, a
``package://`` folder of an installed package, or a GGUF file in one of those."""

from __future__ import annotations

from typing import Any, Callable

from valuebias.config import ModelConfig
from valuebias.model_content import (PACKAGE_SCHEME, ContentIdentity, DigestCache, folder_identity, hub_identity,
                                     is_local_path, model_folder)
from valuebias.model_sources.base import ModelSource, Workspace


class HuggingFace(ModelSource):
    name = "huggingface"

    def content_identity(self, model: ModelConfig, *, cache: DigestCache, read: Callable[[str], bytes],
                         mode: str = "cached") -> ContentIdentity:
        where, settings = f"models.{model.model_id}", model.settings
        if is_local_path(settings["path"]):
            return folder_identity(model_folder(settings["path"], source=where), cache=cache, mode=mode,
                                   source=where, gguf_file=settings.get("gguf_file"))
        return hub_identity(settings["path"], settings.get("revision"), source=where)

    def _resolved(self, model: ModelConfig, digest_cache) -> tuple[dict[str, Any], ContentIdentity]:
        """The settings to load and the identity of what they load, computed where the weights are: a hub id
        is pinned to the commit it resolves to now (so the weights loaded are the ones the identity names), a
        ``package://`` path becomes the folder it names here."""
        identity = self.content_identity(model, cache=DigestCache(digest_cache), read=_no_read)
        resolved = dict(model.settings)
        if identity.kind == "hub":
            resolved["revision"] = identity.parts["commit"]
        elif resolved["path"].startswith(PACKAGE_SCHEME):
            resolved["path"] = str(model_folder(resolved["path"], source=f"models.{model.model_id}"))
        return resolved, identity

    def reward_model(self, model: ModelConfig, where: Workspace) -> tuple[dict[str, Any], ContentIdentity]:
        return self._resolved(model, where.digest_cache)

    def language_model(self, model: ModelConfig, where: Workspace):
        """With ``where.dequantised_dir``, a local GGUF model is loaded from its de-quantised copy there
        (:func:`valuebias.dequantised.ensure_dequantised`, keyed by the GGUF file's digest; made on first use);
        its content identity stays the GGUF file's."""
        from valuebias.lm_scoring import LanguageModelSource

        resolved, identity = self._resolved(model, where.digest_cache)
        gguf_file = resolved.get("gguf_file")
        if gguf_file is not None and where.dequantised_dir is not None and identity.kind == "files":
            from valuebias.dequantised import ensure_dequantised

            resolved["path"] = str(ensure_dequantised(resolved["path"], gguf_file, identity.parts[gguf_file],
                                                      where.dequantised_dir))
            resolved["gguf_file"] = None
        return LanguageModelSource(model_id=model.model_id, path=resolved["path"], variant=model.variant,
                                   revision=resolved.get("revision"), dtype=resolved.get("dtype", "auto"),
                                   trust_remote_code=resolved.get("trust_remote_code", False),
                                   allow_pickle=resolved.get("allow_pickle", False),
                                   clean_up_tokenization_spaces=resolved.get("clean_up_tokenization_spaces"),
                                   gguf_file=resolved.get("gguf_file"),
                                   attn_implementation=resolved.get("attn_implementation")), identity

    def location(self, model: ModelConfig) -> str:
        return model.settings["path"]


def _no_read(uri: str) -> bytes:  # a Hugging Face model reads no score file
    raise AssertionError(f"a huggingface model reads no file by uri ({uri})")
