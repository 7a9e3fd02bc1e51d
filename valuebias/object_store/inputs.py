"""Input files named in the user's config: :func:`read_input_uri` (see the package docstring,
``valuebias.object_store``)."""

from __future__ import annotations

from pathlib import Path

from valuebias.errors import InputError
from valuebias.object_store.connection import StorageError, _protocol, _retrying, _storage_options


# -------------------------------------------------------------------- input files
def _read_package_file(uri: str) -> bytes:
    import importlib.util
    from urllib.parse import unquote

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


def read_input_uri(uri: str, *, base_dir: str | Path | None = None, retries: int = 4,
                   retry_backoff_seconds: float = 0.5) -> bytes:
    """The bytes of one input file named in the user's config.

    Accepts a local path (relative paths resolve against ``base_dir``, else the working directory),
    ``file://``, ``s3://`` (endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set),
    ``http://`` / ``https://`` and ``package://<package>/<path inside the package>`` (found without
    importing the package; spaces allowed). Remote reads are retried on transient errors like
    :class:`ObjectStore` calls. Any failure is an ``InputError("cannot read file: ...", source=uri)``.
    """
    from urllib.parse import unquote

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
            paper = "paper_release" in path.parts
            fetch = " (the paper's released files: `valuebias paper-data fetch`)" if paper else ""
            raise InputError(f"cannot read file: no such file {path}{fetch}", source=uri) from None
        except IsADirectoryError:
            raise InputError(f"cannot read file: {path} is a directory", source=uri) from None
        except OSError as exc:
            raise InputError(f"cannot read file: {exc.strerror or exc} ({path})", source=uri) from None
    try:
        import fsspec

        options = _storage_options(protocol, None)
        path = fsspec.get_filesystem_class(protocol)._strip_protocol(uri)
        return _retrying("read", uri, lambda fs: fs.cat_file(path), protocol=protocol, options=options,
                         retries=retries, backoff=retry_backoff_seconds)
    except FileNotFoundError:
        raise InputError("cannot read file: no such file", source=uri) from None
    except StorageError as exc:
        raise InputError(f"cannot read file: {exc.reason}", source=uri) from None
    except Exception as exc:  # noqa: BLE001 - any failure to fetch an input is the input's fault
        reason = str(exc) or type(exc).__name__
        raise InputError(f"cannot read file: {type(exc).__name__}: {reason}", source=uri) from None
