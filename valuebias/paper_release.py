"""The files the paper's authors released, fetched at a pinned commit and checked by SHA-256.

``configs/paper_published.yaml`` and ``configs/paper_huggingface.yaml`` read the authors' prompts, word lists
and published reward-model scores (docs/METHOD.md#data-sources). They are not part of this repository: the
manifest ``valuebias/data/paper_release_manifest.json`` names each file, where it lives in the authors' public
repository (``brchristian/reward_models_inherit_value_biases_from_pretraining``) at one pinned commit, its
size and its SHA-256. :func:`fetch` (``valuebias paper-data fetch``) puts every file under
``.valuebias/paper_release/`` (git-ignored), where those configs look:

- from the authors' repository over HTTPS (``url_base``, with ``{commit}`` filled in), or
- offline from a local folder (``--from PATH``): either a copy laid out like the destination
  (``config/``, ``corpora/``, ``rm_scores/``) or a checkout of the authors' repository.

Every file is hashed before it is put in place (a temporary file renamed only when its SHA-256 is the
recorded one); a file already in place is hashed too and left alone when it matches. Any failure (no
network, a missing file, a hash mismatch) is one :class:`InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from valuebias.errors import InputError
from valuebias.model_content import file_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "data" / "paper_release_manifest.json"
#: Where ``valuebias paper-data fetch`` puts the files, and where the paper's configs read them.
DEFAULT_DEST = PROJECT_ROOT / ".valuebias" / "paper_release"
TIMEOUT_S = 30
CHUNK = 1 << 16


@dataclass(frozen=True)
class ReleasedFile:
    path: str      # under the destination folder
    source: str    # in the authors' repository
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    repository: str
    commit: str
    url_base: str  # with "{commit}" to fill in
    files: tuple[ReleasedFile, ...]

    def url(self, released: ReleasedFile, url_base: str | None = None) -> str:
        base = (url_base or self.url_base).replace("{commit}", self.commit)
        return base.rstrip("/") + "/" + released.source


def load_manifest(path: Path = MANIFEST) -> Manifest:
    data = json.loads(Path(path).read_text())
    return Manifest(repository=data["repository"], commit=data["commit"], url_base=data["url_base"],
                    files=tuple(ReleasedFile(f["path"], f["source"], f["sha256"], int(f["size"]))
                                for f in data["files"]))


def _put_checked(released: ReleasedFile, chunks, target: Path, origin: str) -> None:
    """Write ``chunks`` to a temporary file beside ``target``; rename it into place only when its size and
    SHA-256 are the recorded ones (an InputError naming the file and both hashes otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in chunks:
                written += len(block)
                if written > released.size:
                    raise InputError(f"{origin} holds more than the {released.size} bytes recorded for it; "
                                     "nothing was written", source=released.path, field="size")
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != released.sha256:
            raise InputError(f"SHA-256 mismatch: {origin} hashes to {digest.hexdigest()}, the manifest records "
                             f"{released.sha256}; nothing was written", source=released.path, field="sha256")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_file(path: Path):
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            yield block


def _download(url: str, released: ReleasedFile):
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 (https or a test's loopback)
    except urllib.error.HTTPError as exc:
        raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason} (missing at this commit?)",
                         source=released.path, field="url") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise InputError(f"cannot download {url}: {why} (no network? offline, use "
                         "`valuebias paper-data fetch --from PATH`)", source=released.path, field="url") from None
    with response:
        try:
            while block := response.read(CHUNK):
                yield block
        except OSError as exc:
            raise InputError(f"download of {url} broke off: {exc}", source=released.path, field="url") from None


def local_source(folder: Path, released: ReleasedFile) -> Path:
    """The file in a local folder: laid out like the destination, or a checkout of the authors' repository."""
    for candidate in (folder / released.path, folder / released.source):
        if candidate.is_file():
            return candidate
    raise InputError(f"not found in {folder} (looked for {released.path} and {released.source})",
                     source=released.path, field="--from")


@dataclass
class FetchReport:
    fetched: list[str]
    already: list[str]


def fetch(*, dest: Path = DEFAULT_DEST, from_dir: Path | None = None, url_base: str | None = None,
          manifest: Manifest | None = None, say: Callable[[str], None] = print) -> FetchReport:
    """Put every file of ``manifest`` under ``dest``, each checked against its SHA-256 (see the module's
    docstring). Stops at the first failure, an :class:`InputError` naming the file."""
    manifest = manifest or load_manifest()
    dest = Path(dest)
    report = FetchReport(fetched=[], already=[])
    where = (f"{from_dir}" if from_dir is not None
             else f"{manifest.repository} at {manifest.commit[:12]}" if url_base is None else url_base)
    for released in manifest.files:
        target = dest / released.path
        if target.is_file():
            if file_sha256(target) == released.sha256:
                report.already.append(released.path)
                continue
            say(f"valuebias: {target}: SHA-256 differs from the manifest: fetching it again")
        try:
            if from_dir is not None:
                origin = local_source(Path(from_dir), released)
                _put_checked(released, _read_file(origin), target, str(origin))
            else:
                url = manifest.url(released, url_base)
                _put_checked(released, _download(url, released), target, url)
        except OSError as exc:  # a folder we cannot write, a full disk
            raise InputError(f"cannot write {target}: {exc.strerror or exc}", source=released.path,
                             field="dest") from None
        report.fetched.append(released.path)
    say(f"valuebias: paper release in {dest}: {len(report.fetched)} files fetched from {where}, "
        f"{len(report.already)} already there; all {len(manifest.files)} SHA-256 checked")
    return report
