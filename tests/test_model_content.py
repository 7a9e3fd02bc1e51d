"""A model's identity is its content (issue 10): plain tests of ``valuebias.model_content``."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from valuebias.errors import InputError
from valuebias.model_content import (DigestCache, cached_hub_commit, describe_change, folder_identity, hub_identity,
                                     published_identity, score_cache_key, score_files)


def write_model_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("not part of the identity")
    (folder / "trainer_state.json").write_text("{}")
    (folder / ".cache").mkdir(exist_ok=True)
    (folder / ".cache" / "x.json").write_text("{}")
    return folder


def test_the_identity_covers_the_files_that_determine_scores(tmp_path):
    folder = write_model_folder(tmp_path / "m", b"A" * 1000)
    assert [p.name for p in score_files(folder)] == ["chat_template.jinja", "config.json", "model.safetensors",
                                                     "tokenizer.json"]
    identity = folder_identity(folder, cache=DigestCache(None))
    assert identity.parts["model.safetensors"] == hashlib.sha256(b"A" * 1000).hexdigest()
    # documentation and training bookkeeping never change the identity
    (folder / "README.md").write_text("edited")
    (folder / "trainer_state.json").write_text('{"step": 2}')
    assert folder_identity(folder, cache=DigestCache(None)).digest == identity.digest
    # the chat template does
    (folder / "chat_template.jinja").write_text("{{ other }}")
    changed = folder_identity(folder, cache=DigestCache(None))
    assert changed.digest != identity.digest
    assert describe_change("files", identity.parts, changed) == "model content (chat_template.jinja)"


def test_touch_is_not_a_change_and_cp_p_is_caught_only_by_verify(tmp_path):
    cache = DigestCache(tmp_path / "digests.json")
    folder = write_model_folder(tmp_path / "m", b"A" * 4096)
    first = folder_identity(folder, cache=cache)
    assert (tmp_path / "digests.json").is_file()

    # touch: new mtime, same bytes -> rehashed, same identity
    weights = folder / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert folder_identity(folder, cache=DigestCache(tmp_path / "digests.json")).digest == first.digest

    # a sensor tick (mode "stat") never hashes: a file whose stat changed is unverified, hence "changed"
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    tick = folder_identity(folder, cache=DigestCache(tmp_path / "digests.json"), mode="stat")
    assert not tick.verified and tick.digest != first.digest
    assert folder_identity(folder, cache=DigestCache(tmp_path / "digests.json")).digest == first.digest  # rehashed
    assert folder_identity(folder, cache=DigestCache(tmp_path / "digests.json"), mode="stat").digest == first.digest

    # other weights of the same size copied over the old file with its old mtime (cp -p keeps the inode)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"B" * 4096)
    stamp = weights.stat().st_mtime_ns
    os.utime(other, ns=(stamp, stamp))
    inode = weights.stat().st_ino
    shutil.copy2(other, weights)  # what `cp -p` does: write into the existing file, then copy the times
    assert weights.stat().st_ino == inode and weights.stat().st_mtime_ns == stamp
    trusted = folder_identity(folder, cache=DigestCache(tmp_path / "digests.json"))
    assert trusted.digest == first.digest  # the documented blind spot of routine checks
    verified = folder_identity(folder, cache=DigestCache(tmp_path / "digests.json"), mode="verify")
    assert verified.digest != first.digest
    assert describe_change("files", first.parts, verified) == "model content (model.safetensors)"
    # --verify also corrects the cache, so the next routine check (and the worker) see the new weights
    assert folder_identity(folder, cache=DigestCache(tmp_path / "digests.json")).digest == verified.digest


def test_a_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"models.m1: field 'huggingface.path': model folder .*gone does not exist"):
        folder_identity(tmp_path / "gone", cache=DigestCache(None), source="models.m1")


def build_hub_cache(root: Path, repo: str, snapshots: dict[str, bytes], main: str) -> Path:
    """A Hugging Face hub cache layout as huggingface_hub writes it: blobs, snapshots linking to them, refs."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for commit, weights in snapshots.items():
        blob = repo_dir / "blobs" / hashlib.sha256(weights).hexdigest()
        blob.write_bytes(weights)
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs" / "main").write_text(main)
    return repo_dir


def test_a_hub_id_is_the_commit_its_revision_resolves_to_offline(tmp_path, monkeypatch):
    one, two = "1" * 40, "2" * 40
    repo_dir = build_hub_cache(tmp_path, "acme/tiny-rm", {one: b"x", two: b"y"}, main=one)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = []
    before = hub_identity("acme/tiny-rm", None, ask_hub=lambda *a: asked.append(a) or "0" * 40)
    assert before.parts == {"commit": one} and asked == []  # offline: never asks the hub
    (repo_dir / "refs" / "main").write_text(two)
    after = hub_identity("acme/tiny-rm", None)
    assert after.parts == {"commit": two}
    assert describe_change("hub", before.parts, after) == "model content (hub commit 1111111 -> 2222222)"
    assert hub_identity("acme/tiny-rm", one).parts == {"commit": one}  # pinned: main may move
    assert cached_hub_commit("acme/tiny-rm", "v2") is None
    with pytest.raises(InputError, match="cannot resolve acme/other@main: not found in the local Hugging Face cache"):
        hub_identity("acme/other", None, source="models.x")
    # online, the hub is asked first
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub_identity("acme/tiny-rm", None, ask_hub=lambda repo, rev: "3" * 40).parts == {"commit": "3" * 40}


def test_published_files_and_the_score_cache_key(tmp_path):
    files = {"big2": "a.csv", "mfd2": "b.csv"}
    data = {"a.csv": b"response,x\nlove,1.0\n", "b.csv": b"response,x\ncare,2.0\n"}
    first = published_identity(files, data.__getitem__)
    data["a.csv"] = b"response,x\nlove,1.5\n"
    second = published_identity(files, data.__getitem__)
    assert describe_change("published", first.parts, second) == "published file (big2: a.csv)"
    # the cache key follows the content and how the model is run, not where it lies
    settings = {"path": "/models/a", "dtype": "auto", "score": "logits[0]"}
    assert score_cache_key(settings, first) == score_cache_key({**settings, "path": "/elsewhere"}, first)
    assert score_cache_key(settings, first) != score_cache_key(settings, second)
    assert score_cache_key(settings, first) != score_cache_key({**settings, "dtype": "bfloat16"}, first)


def test_a_symbolic_link_out_of_the_model_folder_is_refused_in_one_line(tmp_path):
    """A link that points outside the model folder would be followed and hashed silently (issue 28): refused,
    naming the link and its target; links inside the folder, and a hub cache snapshot's links into its
    repository's blobs, are followed."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights").mkdir()
    (folder / "weights" / "real.safetensors").write_bytes(b"w")
    (folder / "model.safetensors").symlink_to(folder / "weights" / "real.safetensors")  # inside: fine
    inside = folder_identity(folder, cache=DigestCache(None))
    assert inside.parts["model.safetensors"] == hashlib.sha256(b"w").hexdigest()

    secret = tmp_path / "elsewhere" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("private")
    (folder / "tokenizer.json").symlink_to(secret)
    with pytest.raises(InputError) as error:
        folder_identity(folder, cache=DigestCache(None), source="models.rm")
    assert str(error.value) == (
        f"models.rm: field 'huggingface.path': {folder / 'tokenizer.json'} is a symbolic link to {secret}, outside "
        f"the model folder {folder}: a model's identity is the files in its folder, so copy the file into the folder "
        "(or point huggingface.path at the folder the link points into)")
    (folder / "tokenizer.json").unlink()
    (folder / ".hidden").symlink_to(secret.parent, target_is_directory=True)  # a hidden folder link too
    with pytest.raises(InputError, match="is a symbolic link to .*elsewhere, outside the model folder"):
        folder_identity(folder, cache=DigestCache(None), source="models.rm")

    snapshot = tmp_path / "hub" / "models--org--rm" / "snapshots" / "abc123"
    blobs = tmp_path / "hub" / "models--org--rm" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "f00d").write_text("{}")
    (snapshot / "config.json").symlink_to(blobs / "f00d")
    assert folder_identity(snapshot, cache=DigestCache(None)).parts == {"config.json": hashlib.sha256(b"{}").hexdigest()}
