"""How a call reaches a store: locations and options, the cached file systems, which faults are transient,
and the retry loop every call goes through (see the package docstring, ``valuebias.object_store``)."""

from __future__ import annotations

import builtins
import errno
import functools
import hashlib
import json
import logging
import os
import random
import threading
import time
from typing import Any, Callable, TypeVar

from valuebias.errors import InputError

logger = logging.getLogger("valuebias.storage")

_TMP_MARK = ".tmp-"  # temporary files are named ".<name>.tmp-<random>" in the target's directory
MAX_BACKOFF_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0  # per attempt; a refused connection fails at once
READ_TIMEOUT_SECONDS = 30.0  # per attempt, waiting for the server's response bytes

T = TypeVar("T")


class StorageError(OSError):
    """A storage call failed for good: ``operation`` (``write``, ``read``...) on ``uri`` (the full URI),
    after ``attempts`` attempts; ``reason`` is the underlying error, e.g.
    ``storage unreachable after 5 attempts (EndpointConnectionError: ...)`` or
    ``NoSuchBucket: The specified bucket does not exist``. ``str(err)`` is
    ``cannot <operation> <uri>: <reason>``."""

    def __init__(self, message: str, *, operation: str | None = None, uri: str | None = None,
                 reason: str | None = None, attempts: int | None = None):
        super().__init__(message)
        self.operation = operation
        self.uri = uri
        self.reason = reason
        self.attempts = attempts

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):  # keeps the attributes across pickling (a worker process may raise it)
        return (functools.partial(StorageError, operation=self.operation, uri=self.uri,
                                  reason=self.reason, attempts=self.attempts), self.args[:1])


# -------------------------------------------------------------------- locations and options
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
        options: dict[str, Any] = {
            "use_listings_cache": False,  # other processes write too
            # One attempt per call inside botocore; our layer retries (botocore's default stalls
            # 6-11 s per call against a stopped server). total_max_attempts counts the first request.
            "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"},
                              "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                              "read_timeout": READ_TIMEOUT_SECONDS},
        }
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


# -------------------------------------------------------------------- file systems
# Our own cache of fsspec file systems (built with skip_instance_cache=True): one per protocol, options,
# process and credential environment, dropped when a call through it broke mid-request or timed out, so
# that a client holding dead connections never outlives a server restart.
_FS_CACHE: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                         "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def _fs_cache_key(protocol: str, options: dict[str, Any]) -> tuple:
    # A digest of the credential environment (never the values themselves), so that rotated credentials
    # give a new client.
    digest = hashlib.sha256("\0".join(os.environ.get(v, "") for v in _CREDENTIAL_VARIABLES).encode())
    return os.getpid(), protocol, json.dumps(options, sort_keys=True, default=str), digest.hexdigest()


def _filesystem(protocol: str, options: dict[str, Any]) -> tuple[Any, tuple]:
    """(file system, cache key) for ``protocol`` with ``options``; built once, reused until evicted."""
    key = _fs_cache_key(protocol, options)
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
    if fs is not None:
        return fs, key
    import fsspec

    fs = fsspec.get_filesystem_class(protocol)(skip_instance_cache=True, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own retry loop (an attribute, not a constructor argument): one try
    with _FS_LOCK:
        fs = _FS_CACHE.setdefault(key, fs)
    return fs, key


def _evict(key: tuple) -> None:
    with _FS_LOCK:
        _FS_CACHE.pop(key, None)


# -------------------------------------------------------------------- fault classification
_THROTTLE_OR_SERVER_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "ServiceUnavailable",
    "InternalError", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "OperationAborted", "503", "500", "502", "504", "429",
})
_TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN",
    "EPIPE", "EBUSY", "EAGAIN", "EREMOTEIO") if hasattr(errno, name))


@functools.lru_cache(maxsize=1)
def _library_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(transient, permanent) exception types of botocore and aiohttp, where installed."""
    import ssl

    transient: list[type] = []
    permanent: list[type] = [ssl.SSLError]
    try:
        from botocore import exceptions as bx

        transient += [bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError]
        permanent += [bx.SSLError, bx.NoCredentialsError, bx.PartialCredentialsError]
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        import aiohttp

        transient += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
        permanent += [aiohttp.ClientSSLError]
    except ImportError:  # pragma: no cover - s3fs and http bring aiohttp
        pass
    return tuple(transient), tuple(permanent)


def _chain(exc: BaseException) -> builtins.list[BaseException]:
    """``exc`` and its causes / contexts, nearest first."""
    out: builtins.list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 16:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in out):
            continue
        out.append(current)
        todo += [current.__cause__, current.__context__]
    return out


def _client_error_code(exc: BaseException) -> tuple[str | None, int | None, str | None]:
    """(error code, HTTP status, message) of the first botocore ClientError-like error in the chain."""
    for item in _chain(exc):
        response = getattr(item, "response", None)
        if isinstance(response, dict) and "Error" in response:
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return error.get("Code"), status, error.get("Message")
    return None, None, None


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` may help (the server unreachable, slow, overloaded or failing)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError, InputError, TypeError, ValueError)) and \
            not isinstance(exc, _library_types()[0]):
        return False
    code, status, _ = _client_error_code(exc)
    if code is not None or status is not None:  # the server answered: its answer decides
        return code in _THROTTLE_OR_SERVER_CODES or (status is not None and (status >= 500 or status == 429))
    transient, permanent = _library_types()
    for item in _chain(exc):
        if isinstance(item, permanent):
            return False
        if isinstance(item, transient) or isinstance(item, (ConnectionError, TimeoutError)):
            return True
        status = getattr(item, "status", None)  # aiohttp.ClientResponseError (http:// inputs)
        if type(item).__name__ == "ClientResponseError" and isinstance(status, int):
            return status >= 500 or status == 429
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the most telling error in the chain (the server's code when it answered)."""
    code, _status, message = _client_error_code(exc)
    if code:
        return f"{code}: {message or code}"
    transient, _ = _library_types()
    for item in _chain(exc):  # prefer the library's own error (EndpointConnectionError...) over wrappers
        if isinstance(item, transient):
            return f"{type(item).__name__}: {item}"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _server_answered(exc: BaseException) -> bool:
    """Whether the server answered with an error (5xx, throttling) rather than not answering at all."""
    code, status, _message = _client_error_code(exc)
    return code is not None or status is not None or any(
        type(item).__name__ == "ClientResponseError" for item in _chain(exc))


def _needs_fresh_client(exc: BaseException) -> bool:
    """Whether to replace the client after the transient error ``exc``: yes when a connection broke
    mid-request or timed out (the pool may hold dead connections, e.g. across a server restart); no
    when the server answered (5xx, throttling) or no connection was made at all (refused, unresolvable,
    connect timeout): then nothing is stale, and building a new client costs 0.2-0.8 s."""
    if _server_answered(exc):
        return False
    names = {cls.__name__ for item in _chain(exc) for cls in type(item).__mro__}
    never_connected = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                       "ConnectionRefusedError"}
    return not (names & never_connected)


def _is_missing_bucket(exc: BaseException) -> bool:
    code, _status, _message = _client_error_code(exc)
    return code in ("NoSuchBucket", "NoSuchBucketPolicy") or (
        code is None and "bucket does not exist" in str(exc).lower())


def _retrying(operation: str, uri: str, call: Callable[[Any], T], *, protocol: str,
              options: dict[str, Any], retries: int, backoff: float,
              missing: Callable[[FileNotFoundError], T] | None = None, detail: str = "") -> T:
    """``call(fs)`` with retries on transient errors; permanent ones and exhaustion become StorageError
    ``cannot <operation> <uri><detail>: <reason>``.

    A FileNotFoundError that is not a missing bucket goes to ``missing`` (its result is returned), or is
    re-raised when ``missing`` is None."""
    attempts = retries + 1
    what = f"{operation} {uri}{detail}"
    for attempt in range(attempts):
        fs, cache_key = _filesystem(protocol, options)
        try:
            return call(fs)
        except FileNotFoundError as exc:
            if not _is_missing_bucket(exc):
                if missing is None:
                    raise
                return missing(exc)
            reason = _describe(exc)
            raise StorageError(f"cannot {what}: {reason}", operation=operation, uri=uri,
                               reason=reason, attempts=attempt + 1) from exc
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised as StorageError
            if not _is_transient(exc):
                reason = _describe(exc)
                raise StorageError(f"cannot {what}: {reason}", operation=operation,
                                   uri=uri, reason=reason, attempts=attempt + 1) from exc
            if _needs_fresh_client(exc):
                _evict(cache_key)  # a fresh client (fresh connections) for the next attempt
            if attempt + 1 >= attempts:
                state = "unavailable" if _server_answered(exc) else "unreachable"
                reason = f"storage {state} after {attempts} attempts ({_describe(exc)})"
                raise StorageError(f"cannot {what}: {reason}", operation=operation,
                                   uri=uri, reason=reason, attempts=attempts) from exc
            delay = min(backoff * 2 ** attempt, MAX_BACKOFF_SECONDS) * (1 + 0.1 * random.random())
            logger.warning("cannot %s (attempt %d of %d): %s; retrying in %.2f s", what,
                           attempt + 1, attempts, _describe(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


