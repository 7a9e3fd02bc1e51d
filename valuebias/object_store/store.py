"""The store: :class:`ObjectStore` (see the package docstring, ``valuebias.object_store``)."""

from __future__ import annotations

import builtins
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import polars as pl

from valuebias.errors import InputError
from valuebias.object_store.connection import (_TMP_MARK, StorageError, T, _check_key, _protocol, _retrying,
                                               _storage_options)


# -------------------------------------------------------------------- the store
class ObjectStore:
    """Reads and writes bytes and parquet tables under one root URI (local directory or fsspec URI).

    ``uri``: the root, e.g. ``/srv/valuebias``, ``file:///srv/valuebias`` or ``s3://bucket/prefix``.
    ``endpoint_url``: S3-compatible endpoint (MinIO, moto, Ceph); None = ``AWS_ENDPOINT_URL`` at use time.
    ``retries``: how many times a call that failed transiently is tried again (0 = no retry).
    ``retry_backoff_seconds``: the wait before the first retry; it doubles at every retry.
    """

    def __init__(self, uri: str, endpoint_url: str | None = None, retries: int = 4,
                 retry_backoff_seconds: float = 0.5):
        if not isinstance(uri, str) or not uri.strip():
            raise InputError("a storage root must be a non-empty URI or path", source=repr(uri),
                             field="uri")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an integer >= 0, got {retries!r}", source=uri,
                             field="retries")
        if isinstance(retry_backoff_seconds, bool) or not isinstance(retry_backoff_seconds, (int, float)) \
                or not retry_backoff_seconds >= 0:
            raise InputError(f"retry_backoff_seconds must be a number >= 0, got {retry_backoff_seconds!r}",
                             source=uri, field="retry_backoff_seconds")
        self.uri = uri
        self.endpoint_url = endpoint_url or None
        self.retries = retries
        self.retry_backoff_seconds = float(retry_backoff_seconds)

    def __repr__(self) -> str:
        return (f"ObjectStore(uri={self.uri!r}, endpoint_url={self.endpoint_url!r}, "
                f"retries={self.retries!r}, retry_backoff_seconds={self.retry_backoff_seconds!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectStore) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_spec(), sort_keys=True))

    # ---------------------------------------------------------------- spec (for other processes)
    def to_spec(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_spec` turns back into an equal store. No credentials: the
        receiving process finds its own (environment, shared files, instance role)."""
        return {"uri": self.uri, "endpoint_url": self.endpoint_url, "retries": self.retries,
                "retry_backoff_seconds": self.retry_backoff_seconds}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ObjectStore":
        """The store described by ``spec`` (as written by :meth:`to_spec`)."""
        if not isinstance(spec, dict):
            raise InputError(f"a storage spec must be a mapping, got {type(spec).__name__}",
                             source="storage spec")
        unknown = sorted(set(spec) - {"uri", "endpoint_url", "retries", "retry_backoff_seconds"})
        if unknown:
            raise InputError(f"unknown storage spec field(s): {', '.join(unknown)}", source="storage spec",
                             field=unknown[0])
        if "uri" not in spec:
            raise InputError("a storage spec needs a 'uri'", source="storage spec", field="uri")
        return cls(**spec)

    # ---------------------------------------------------------------- locations
    def _protocol(self) -> str | None:
        return _protocol(self.uri)

    def _is_local(self) -> bool:
        return self._protocol() in (None, "file", "local")

    def _local_root(self) -> Path:
        root = self.uri
        if _protocol(root) is not None:
            from urllib.parse import unquote

            root = unquote(root.split("://", 1)[1])
        path = Path(root).expanduser().absolute()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _remote(self) -> tuple[str, dict[str, Any], str]:
        """(protocol, file-system options, root path without protocol) of a non-local root; the
        endpoint is read from the environment now."""
        import fsspec

        protocol = self._protocol()
        assert protocol is not None
        root = fsspec.get_filesystem_class(protocol)._strip_protocol(self.uri)
        return protocol, _storage_options(protocol, self.endpoint_url), root.rstrip("/")

    def _call(self, operation: str, key: str, call: Callable[[Any, str], T],
              missing: Callable[[FileNotFoundError], T] | None = None, detail: str = "") -> T:
        """``call(fs, path of key)`` with retries; errors name the full URI of ``key``."""
        protocol, options, root = self._remote()
        path = f"{root}/{key}" if root else key
        return _retrying(operation, self.full_uri(key), lambda fs: call(fs, path), protocol=protocol,
                         options=options, retries=self.retries, backoff=self.retry_backoff_seconds,
                         missing=missing, detail=detail)

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` on this machine for a local root; None on an object store."""
        _check_key(key)
        return self._local_root() / key if self._is_local() else None

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
        data = buffer.getvalue()
        self._call("write", key, lambda fs, path: fs.pipe_file(path, data))
        return uri

    def write_bytes(self, key: str, data: bytes) -> str:
        """Writes ``data`` to ``key`` atomically; returns the full URI."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_bytes needs bytes, got {type(data).__name__}")
        return self._write(key, lambda handle: handle.write(bytes(data)))

    def write_parquet(self, key: str, df: pl.DataFrame) -> str:
        """Writes ``df`` as parquet to ``key`` atomically; returns the full URI."""
        return self._write(key, lambda handle: df.write_parquet(handle))

    def move(self, src_key: str, dst_key: str) -> str:
        """Promotes the complete object at ``src_key`` to ``dst_key`` (replacing it) and removes
        ``src_key``; returns the full URI of ``dst_key``. Readers of ``dst_key`` see the old or the new
        object, never a partial one: ``os.replace`` locally, a server-side copy of the whole object then
        a delete of the source on an object store. FileNotFoundError naming the full URI of ``src_key``
        when it is absent."""
        src_uri, dst_uri = self.full_uri(src_key), self.full_uri(dst_key)

        def absent(_exc: BaseException | None = None):
            raise FileNotFoundError(f"no such stored object: {src_uri}") from None

        if self._is_local():
            root = self._local_root()
            source, target = root / src_key, root / dst_key
            if not source.is_file():
                absent()
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                absent()
            return dst_uri
        if src_key == dst_key:
            if not self.exists(src_key):
                absent()
            return dst_uri
        protocol, options, root = self._remote()
        dst_path = f"{root}/{dst_key}" if root else dst_key
        self._call("move", src_key, lambda fs, path: fs.cp_file(path, dst_path), missing=absent,
                   detail=f" to {dst_uri}")
        self._call("delete", src_key, lambda fs, path: fs.rm_file(path), missing=lambda _exc: None)
        return dst_uri

    # ---------------------------------------------------------------- reading
    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``; FileNotFoundError naming the full URI when it is absent."""
        uri = self.full_uri(key)

        def absent(_exc: BaseException | None = None):
            raise FileNotFoundError(f"no such stored object: {uri}") from None

        if self._is_local():
            try:
                return (self._local_root() / key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                absent()

        def get(fs, path):
            try:
                return fs.cat_file(path)
            except IsADirectoryError:
                raise FileNotFoundError(path) from None

        return self._call("read", key, get, missing=absent)

    def read_parquet(self, key: str) -> pl.DataFrame:
        """The parquet table at ``key``; FileNotFoundError naming the full URI when it is absent."""
        return pl.read_parquet(io.BytesIO(self.read_bytes(key)))

    def parquet_rows(self, key: str) -> int | None:
        """The row count in the footer of the parquet file at ``key`` (reads the footer only), or None when
        the object is not a readable parquet file (truncated, overwritten with something else)."""
        import pyarrow.parquet as pq

        _check_key(key)
        try:
            if self._is_local():
                return pq.read_metadata(self._local_root() / key).num_rows

            def footer(fs, path):
                with fs.open(path, "rb") as handle:
                    return pq.read_metadata(handle).num_rows

            return self._call("read", key, footer)
        except (OSError, ValueError) as exc:
            if isinstance(exc, StorageError):
                raise
            return None

    def exists(self, key: str) -> bool:
        """Whether an object (a file, not a directory) is stored at ``key``. An unreachable store is a
        StorageError, not False."""
        _check_key(key)
        if self._is_local():
            return (self._local_root() / key).is_file()
        # fs.info, not fs.isfile: isfile answers False for any error, a stopped server included
        return self._call("check", key, lambda fs, path: fs.info(path).get("type") == "file",
                          missing=lambda _exc: False)

    def delete(self, key: str) -> None:
        """Removes ``key``; a key that is already absent is not an error."""
        _check_key(key)
        if self._is_local():
            try:
                (self._local_root() / key).unlink()
            except FileNotFoundError:
                pass
            return
        self._call("delete", key, lambda fs, path: fs.rm_file(path), missing=lambda _exc: None)

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
            protocol, options, root = self._remote()
            base = f"{root}/{folder}" if folder else root
            listed_uri = f"{self.uri.rstrip('/')}/{folder}" if folder else self.uri
            found = _retrying("list", listed_uri, lambda fs: fs.find(base), protocol=protocol,
                              options=options, retries=self.retries, backoff=self.retry_backoff_seconds,
                              missing=lambda _exc: [])
            strip = root.strip("/") + "/" if root.strip("/") else ""
            for path in found:
                path = path.strip("/")
                if strip and path.startswith(strip):
                    keys.append(path[len(strip):])
                elif not strip:
                    keys.append(path)
        return sorted(k for k in keys if k.startswith(prefix))


