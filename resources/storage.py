"""Storage of every table and artefact the product writes, as a Dagster resource.

:class:`Storage` is a Dagster resource rooted at ``uri`` (``/data/valuebias``, ``file:///data/valuebias``,
``s3://bucket/prefix``, ``memory://x``...). Keys are ``/``-separated paths relative to that root, e.g.
``rm_word_scores/llama-a.parquet``. Every method delegates to
:class:`~valuebias.object_store.ObjectStore` (plain Python, no Dagster, usable by an out-of-process
worker through ``storage.store().to_spec()``), which documents the guarantees: atomic writes and moves,
retries with exponential backoff on transient object-store faults, :class:`StorageError` naming the
operation and the full URI, FileNotFoundError naming the full URI for a missing key. Credentials come only
from botocore's usual sources (environment variables, shared files, instance roles); they are never fields
of the resource.

:func:`read_input_uri` and :func:`s3_endpoint_url` are re-exported from ``valuebias.object_store``.
"""

from __future__ import annotations

import builtins

import dagster as dg
import polars as pl

from valuebias.object_store import ObjectStore, StorageError, read_input_uri, s3_endpoint_url

__all__ = ["ObjectStore", "Storage", "StorageError", "read_input_uri", "s3_endpoint_url"]


class Storage(dg.ConfigurableResource):
    """Reads and writes bytes and parquet tables under one root URI (local directory or fsspec URI).

    ``uri``: the root, e.g. ``/srv/valuebias``, ``file:///srv/valuebias`` or ``s3://bucket/prefix``.
    ``endpoint_url``: S3-compatible endpoint (MinIO, moto, Ceph); None = ``AWS_ENDPOINT_URL`` at use time.
    ``retries``: how many times an object-store call that failed transiently is tried again.
    ``retry_backoff_seconds``: the wait before the first retry; it doubles at every retry.
    """

    uri: str
    endpoint_url: str | None = None
    retries: int = 4
    retry_backoff_seconds: float = 0.5

    def store(self) -> ObjectStore:
        """The plain (Dagster-free) store this resource delegates to."""
        return ObjectStore(self.uri, self.endpoint_url, self.retries, self.retry_backoff_seconds)

    def full_uri(self, key: str) -> str:
        """The full URI (or absolute local path) of ``key``."""
        return self.store().full_uri(key)

    def local_path(self, key: str):
        """The file of ``key`` on this machine for a local root (a ``pathlib.Path``); None on an object store."""
        return self.store().local_path(key)

    def write_bytes(self, key: str, data: bytes) -> str:
        """Writes ``data`` to ``key`` atomically; returns the full URI."""
        return self.store().write_bytes(key, data)

    def write_parquet(self, key: str, df: pl.DataFrame) -> str:
        """Writes ``df`` as parquet to ``key`` atomically; returns the full URI."""
        return self.store().write_parquet(key, df)

    def move(self, src_key: str, dst_key: str) -> str:
        """Promotes the complete object at ``src_key`` to ``dst_key`` and removes ``src_key``; returns
        the full URI of ``dst_key``."""
        return self.store().move(src_key, dst_key)

    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``; FileNotFoundError naming the full URI when it is absent."""
        return self.store().read_bytes(key)

    def read_parquet(self, key: str) -> pl.DataFrame:
        """The parquet table at ``key``; FileNotFoundError naming the full URI when it is absent."""
        return self.store().read_parquet(key)

    def exists(self, key: str) -> bool:
        """Whether an object (a file, not a directory) is stored at ``key``."""
        return self.store().exists(key)

    def parquet_rows(self, key: str) -> int | None:
        """The row count of the parquet file at ``key`` from its footer; None when it is not readable."""
        return self.store().parquet_rows(key)

    def delete(self, key: str) -> None:
        """Removes ``key``; a key that is already absent is not an error."""
        self.store().delete(key)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys (relative to the root, sorted) of all stored objects whose key starts with ``prefix``."""
        return self.store().list(prefix)
