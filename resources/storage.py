"""Storage of every table and artefact the product writes: a local directory or any fsspec URI (S3 first).

:class:`Storage` is a Dagster resource rooted at ``uri`` (``/data/valuebias``, ``file:///data/valuebias``,
``s3://bucket/prefix``, ``memory://x``...). Keys are ``/``-separated paths relative to that root, e.g.
``rm_word_scores/llama-a.parquet``.

- Writes are atomic as seen by readers: a local file is written to a temporary name in the same
  directory, flushed and renamed over the target (``os.replace``); an object store receives one put of
  the complete bytes (serialisation happens first, in memory). A failed write leaves the previous
  content in place and no temporary file behind.
- S3 endpoint: the ``endpoint_url`` field, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` read from the
  environment at use time. Credentials come only from botocore's usual sources (environment
  variables, shared files, instance roles); they are never fields of the resource.

:func:`read_input_uri` reads one input file named in the user's config (local path, ``file://``,
``s3://``, ``http(s)://``, ``package://<package>/<path>``) and turns every failure into an
:class:`~valuebias.errors.InputError` naming the URI.

``fsspec`` loads ``s3fs`` only when an ``s3://`` URI is used.
"""

from __future__ import annotations

import builtins
import io
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import unquote

import dagster as dg
import polars as pl

from valuebias.errors import InputError

_TMP_MARK = ".tmp-"  # temporary files are named ".<name>.tmp-<random>" in the target's directory


def s3_endpoint_url(explicit: str | None = None) -> str | None:
    """The S3 endpoint to use: ``explicit``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    (read now, not at import), else None (botocore's default AWS endpoint)."""
    if explicit:
        return explicit
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _protocol(uri: str) -> str | None:
    """The URI scheme (``s3``, ``file``, ...) or None for a plain local path."""
    if "://" not in uri:
        return None
    return uri.split("://", 1)[0].lower()


def _storage_options(protocol: str | None, endpoint_url: str | None) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        options: dict[str, Any] = {"use_listings_cache": False}  # other processes write too
        endpoint = s3_endpoint_url(endpoint_url)
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    return {}


def _check_key(key: str) -> str:
    """A key is a non-empty relative ``/``-separated path without ``.``/``..`` or empty segments."""
    if not isinstance(key, str) or not key:
        raise InputError("a storage key must be a non-empty string", source=repr(key), field="key")
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise InputError("a storage key must be a relative '/'-separated path without empty, '.' or "
                         "'..' segments", source=key, field="key")
    return key


class Storage(dg.ConfigurableResource):
    """Reads and writes bytes and parquet tables under one root URI (local directory or fsspec URI).

    ``uri``: the root, e.g. ``/srv/valuebias``, ``file:///srv/valuebias`` or ``s3://bucket/prefix``.
    ``endpoint_url``: S3-compatible endpoint (MinIO, moto, Ceph); None = ``AWS_ENDPOINT_URL`` at use time.
    """

    uri: str
    endpoint_url: str | None = None

    # ---------------------------------------------------------------- locations
    def _is_local(self) -> bool:
        return _protocol(self.uri) in (None, "file", "local")

    def _local_root(self) -> Path:
        root = self.uri
        if _protocol(root) is not None:
            root = unquote(root.split("://", 1)[1])
        path = Path(root).expanduser().absolute()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _fs(self):
        """(filesystem, root path without protocol) for a non-local root."""
        import fsspec

        protocol = _protocol(self.uri)
        fs, root = fsspec.core.url_to_fs(self.uri, **_storage_options(protocol, self.endpoint_url))
        return fs, root.rstrip("/")

    def full_uri(self, key: str) -> str:
        """The full URI (or absolute local path) of ``key``."""
        _check_key(key)
        if self._is_local() and _protocol(self.uri) is None:
            return str(self._local_root() / key)
        return f"{self.uri.rstrip('/')}/{key}"

    # ---------------------------------------------------------------- writing
    def _write(self, key: str, writer: Callable[[BinaryIO], None]) -> str:
        uri = self.full_uri(key)
        if self._is_local():
            target = self._local_root() / key
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL on a random name in the target's folder (same file system, so the rename is atomic);
            # mode 0o666 & ~umask, the permissions an ordinary file would get (mkstemp would give 0o600)
            tmp = target.parent / f".{target.name}{_TMP_MARK}{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    writer(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            return uri
        buffer = io.BytesIO()
        writer(buffer)  # serialise completely before anything reaches the store
        fs, root = self._fs()
        fs.pipe_file(f"{root}/{key}", buffer.getvalue())
        return uri

    def write_bytes(self, key: str, data: bytes) -> str:
        """Writes ``data`` to ``key`` atomically; returns the full URI."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_bytes needs bytes, got {type(data).__name__}")
        return self._write(key, lambda handle: handle.write(bytes(data)))

    def write_parquet(self, key: str, df: pl.DataFrame) -> str:
        """Writes ``df`` as parquet to ``key`` atomically; returns the full URI."""
        return self._write(key, lambda handle: df.write_parquet(handle))

    # ---------------------------------------------------------------- reading
    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``; FileNotFoundError naming the full URI when it is absent."""
        uri = self.full_uri(key)
        if self._is_local():
            path = self._local_root() / key
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise FileNotFoundError(f"no such stored object: {uri}") from None
        fs, root = self._fs()
        try:
            return fs.cat_file(f"{root}/{key}")
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"no such stored object: {uri}") from None

    def read_parquet(self, key: str) -> pl.DataFrame:
        """The parquet table at ``key``; FileNotFoundError naming the full URI when it is absent."""
        return pl.read_parquet(io.BytesIO(self.read_bytes(key)))

    def exists(self, key: str) -> bool:
        """Whether an object (a file, not a directory) is stored at ``key``."""
        _check_key(key)
        if self._is_local():
            return (self._local_root() / key).is_file()
        fs, root = self._fs()
        return bool(fs.isfile(f"{root}/{key}"))

    def delete(self, key: str) -> None:
        """Removes ``key``; a key that is already absent is not an error."""
        _check_key(key)
        if self._is_local():
            try:
                (self._local_root() / key).unlink()
            except FileNotFoundError:
                pass
            return
        fs, root = self._fs()
        try:
            fs.rm_file(f"{root}/{key}")
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys (relative to the root, sorted) of all stored objects whose key starts with ``prefix``.

        The prefix is a plain string prefix as on object stores: ``rm_word_scores/`` lists that folder,
        ``rm_word_scores/llama`` the keys in it that start with ``llama``. Temporary files of
        in-progress local writes are not listed."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder:
            _check_key(folder)
        keys: builtins.list[str] = []
        if self._is_local():
            root = self._local_root()
            base = root / folder if folder else root
            if not base.is_dir():
                return []
            for dirpath, _dirnames, filenames in os.walk(base):
                for name in filenames:
                    if name.startswith(".") and _TMP_MARK in name:
                        continue
                    keys.append(Path(dirpath, name).relative_to(root).as_posix())
        else:
            fs, root = self._fs()
            base = f"{root}/{folder}" if folder else root
            try:
                found = fs.find(base)
            except FileNotFoundError:
                found = []
            strip = root.strip("/") + "/" if root.strip("/") else ""
            for path in found:
                path = path.strip("/")
                if strip and path.startswith(strip):
                    keys.append(path[len(strip):])
                elif not strip:
                    keys.append(path)
        return sorted(k for k in keys if k.startswith(prefix))


# -------------------------------------------------------------------- input files
def _read_package_file(uri: str) -> bytes:
    import importlib.util

    rest = uri.split("://", 1)[1]
    package, _, inner = rest.partition("/")
    if not package or not inner:
        raise InputError("cannot read file: a package URI looks like package://<package>/<path inside it>",
                         source=uri)
    top, *subpackages = package.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds without importing __init__
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot read file: cannot look up package '{top}': {exc}", source=uri) from None
    if spec is None:
        raise InputError(f"cannot read file: no installed package named '{top}'", source=uri)
    if not spec.submodule_search_locations:
        raise InputError(f"cannot read file: '{top}' is a module, not a package with data files",
                         source=uri)
    relative = Path(*subpackages, inner)
    tried = []
    for location in spec.submodule_search_locations:
        for candidate in dict.fromkeys([relative, Path(*subpackages, unquote(inner))]):
            path = Path(location) / candidate
            tried.append(str(path))
            if path.is_file():
                try:
                    return path.read_bytes()
                except OSError as exc:
                    raise InputError(f"cannot read file: {exc.strerror or exc} ({path})",
                                     source=uri) from None
    raise InputError(f"cannot read file: package '{top}' has no file '{inner}' (looked at "
                     f"{', '.join(tried)})", source=uri)


def read_input_uri(uri: str, *, base_dir: str | Path | None = None) -> bytes:
    """The bytes of one input file named in the user's config.

    Accepts a local path (relative paths resolve against ``base_dir``, else the working directory),
    ``file://``, ``s3://`` (endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set),
    ``http://`` / ``https://`` and ``package://<package>/<path inside the package>`` (found without
    importing the package; spaces allowed). Any failure is an ``InputError("cannot read file: ...",
    source=uri)``.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InputError("cannot read file: empty file name", source=repr(uri))
    protocol = _protocol(uri)
    if protocol == "package":
        return _read_package_file(uri)
    if protocol in (None, "file", "local"):
        raw = unquote(uri.split("://", 1)[1]) if protocol else uri
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(base_dir).expanduser() / path if base_dir is not None else Path.cwd() / path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"cannot read file: no such file {path}", source=uri) from None
        except IsADirectoryError:
            raise InputError(f"cannot read file: {path} is a directory", source=uri) from None
        except OSError as exc:
            raise InputError(f"cannot read file: {exc.strerror or exc} ({path})", source=uri) from None
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri, **_storage_options(protocol, None))
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError("cannot read file: no such file", source=uri) from None
    except Exception as exc:  # noqa: BLE001 - any failure to fetch an input is the input's fault
        reason = str(exc) or type(exc).__name__
        raise InputError(f"cannot read file: {type(exc).__name__}: {reason}", source=uri) from None
