"""Storage resource and read_input_uri: local disk (tmp_path) and a real moto S3 server on loopback."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from valuebias.resources.storage import Storage, read_input_uri
from valuebias.errors import InputError

BIG_TWO = "package://taters/data/library/dictionaries/Big Two - Agency and Communion.dicx"


def sample_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "model": ["llama-a", "llama-a", "gemma-b"],
        "word": ["love", None, "freedom"],
        "score": [1.5, -0.25, None],
        "n": [1, 2, 3],
    })


class ExplodingFrame(pl.DataFrame):
    """A frame whose serialisation writes part of a parquet file, then crashes."""

    def write_parquet(self, file, *args, **kwargs):
        file.write(b"PAR1 half a parquet file")
        raise RuntimeError("serialiser crashed halfway")


def object_column_frame() -> pl.DataFrame:
    """A frame polars itself cannot write as parquet (an Object column)."""
    return pl.DataFrame({"a": [1, 2]}).with_columns(pl.Series("o", [object(), object()], dtype=pl.Object))


def stray_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name.startswith("."))


# ------------------------------------------------------------------------------------------ local disk
def test_local_round_trips_and_creates_root(tmp_path):
    root = tmp_path / "does" / "not" / "exist"
    storage = Storage(uri=str(root))
    uri = storage.write_bytes("reports/hello.txt", b"hello\x00world")
    assert uri == str(root / "reports" / "hello.txt") == storage.full_uri("reports/hello.txt")
    assert (root / "reports" / "hello.txt").read_bytes() == b"hello\x00world"
    assert storage.read_bytes("reports/hello.txt") == b"hello\x00world"

    df = sample_frame()
    uri = storage.write_parquet("rm_word_scores/llama-a.parquet", df)
    assert Path(uri).is_file()
    assert_frame_equal(storage.read_parquet("rm_word_scores/llama-a.parquet"), df)
    assert_frame_equal(pl.read_parquet(uri), df)  # a plain parquet file, readable without the resource


def test_local_root_as_file_uri(tmp_path):
    storage = Storage(uri=f"file://{tmp_path}/store")
    assert storage.write_bytes("a/b.bin", b"x") == f"file://{tmp_path}/store/a/b.bin"
    assert (tmp_path / "store" / "a" / "b.bin").read_bytes() == b"x"
    assert storage.list("") == ["a/b.bin"]


def test_local_exists_list_delete(tmp_path):
    storage = Storage(uri=str(tmp_path))
    for key in ["a/x.parquet", "a/y.bin", "ab/z.bin", "b/c/d.bin", "top.txt"]:
        storage.write_bytes(key, key.encode())
    assert storage.exists("a/x.parquet")
    assert not storage.exists("a/missing.bin")
    assert not storage.exists("a")  # a folder is not a stored object
    assert storage.list() == ["a/x.parquet", "a/y.bin", "ab/z.bin", "b/c/d.bin", "top.txt"]
    assert storage.list("a/") == ["a/x.parquet", "a/y.bin"]
    assert storage.list("a") == ["a/x.parquet", "a/y.bin", "ab/z.bin"]  # a string prefix, as on S3
    assert storage.list("b/c/") == ["b/c/d.bin"]
    assert storage.list("a/x") == ["a/x.parquet"]
    assert storage.list("nothing/") == []
    storage.delete("a/x.parquet")
    assert not storage.exists("a/x.parquet")
    assert storage.list("a/") == ["a/y.bin"]
    storage.delete("a/x.parquet")  # already gone: not an error


def test_local_missing_key_names_full_uri(tmp_path):
    storage = Storage(uri=str(tmp_path / "store"))
    expected = str(tmp_path / "store" / "tables" / "prompts.parquet")
    with pytest.raises(FileNotFoundError, match="no such stored object") as err:
        storage.read_parquet("tables/prompts.parquet")
    assert expected in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        storage.read_bytes("tables/prompts.parquet")
    assert expected in str(err.value)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.bin", "a//b", "a/./b", "a\\b"])
def test_bad_keys_are_refused(tmp_path, key):
    storage = Storage(uri=str(tmp_path / "store"))
    with pytest.raises(InputError):
        storage.write_bytes(key, b"x")
    assert not (tmp_path / "outside.bin").exists()


def test_local_write_leaves_no_temporary_files(tmp_path):
    storage = Storage(uri=str(tmp_path))
    for i in range(3):
        storage.write_bytes("t/data.bin", bytes([i]) * 10)
        storage.write_parquet("t/table.parquet", sample_frame())
    assert stray_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path / "t")) == ["data.bin", "table.parquet"]
    assert storage.read_bytes("t/data.bin") == b"\x02" * 10
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "t" / "data.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file's mode


@pytest.mark.parametrize("bad_frame", [ExplodingFrame, object_column_frame], ids=["crash-halfway", "object-column"])
def test_local_failed_write_keeps_previous_content(tmp_path, bad_frame):
    storage = Storage(uri=str(tmp_path))
    storage.write_parquet("tables/t.parquet", sample_frame())
    before = (tmp_path / "tables" / "t.parquet").read_bytes()
    frame = ExplodingFrame({"a": [1]}) if bad_frame is ExplodingFrame else bad_frame()
    with pytest.raises(Exception) as err:
        storage.write_parquet("tables/t.parquet", frame)
    assert "serialiser crashed" in str(err.value) or "Object" in str(err.value)
    assert (tmp_path / "tables" / "t.parquet").read_bytes() == before
    assert_frame_equal(storage.read_parquet("tables/t.parquet"), sample_frame())
    assert stray_files(tmp_path) == []
    assert storage.list("tables/") == ["tables/t.parquet"]
    # A failed first write leaves nothing at all.
    with pytest.raises(Exception):
        storage.write_parquet("tables/new.parquet", frame)
    assert not storage.exists("tables/new.parquet")
    assert stray_files(tmp_path) == []


def test_local_readers_never_see_a_partial_write(tmp_path):
    """A reader polling while the file is rewritten sees the old or the new content, never a mix."""
    storage = Storage(uri=str(tmp_path))
    size = 4 * 1024 * 1024
    versions = [b"a" * size, b"b" * size]
    storage.write_bytes("big.bin", versions[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def read_loop():
        while not stop.is_set():
            data = storage.read_bytes("big.bin")
            if data not in versions:
                seen.append(data[:16] + b"... len=%d" % len(data))

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(20):
            storage.write_bytes("big.bin", versions[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen == []


# ------------------------------------------------------------------------------------------ S3 (moto)
def test_s3_round_trips(s3_server, s3_bucket):
    import boto3

    storage = Storage(uri=f"s3://{s3_bucket}/valuebias", endpoint_url=s3_server)
    uri = storage.write_bytes("reports/r.md", b"# report\n")
    assert uri == f"s3://{s3_bucket}/valuebias/reports/r.md"
    df = sample_frame()
    assert storage.write_parquet("rm_word_scores/llama-a.parquet", df) == \
        f"s3://{s3_bucket}/valuebias/rm_word_scores/llama-a.parquet"

    # Checked independently of the resource, straight from the server.
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    body = client.get_object(Bucket=s3_bucket, Key="valuebias/reports/r.md")["Body"].read()
    assert body == b"# report\n"

    assert storage.read_bytes("reports/r.md") == b"# report\n"
    assert_frame_equal(storage.read_parquet("rm_word_scores/llama-a.parquet"), df)
    assert storage.exists("reports/r.md")
    assert not storage.exists("reports/other.md")
    assert storage.list() == ["reports/r.md", "rm_word_scores/llama-a.parquet"]
    assert storage.list("rm_word_scores/") == ["rm_word_scores/llama-a.parquet"]
    assert storage.list("r") == ["reports/r.md", "rm_word_scores/llama-a.parquet"]
    assert storage.list("rm_") == ["rm_word_scores/llama-a.parquet"]
    assert storage.list("nothing/") == []
    storage.delete("reports/r.md")
    assert not storage.exists("reports/r.md")
    assert storage.list() == ["rm_word_scores/llama-a.parquet"]
    storage.delete("reports/r.md")  # already gone: not an error


def test_s3_bucket_root_and_missing_key_message(s3_server, s3_bucket):
    storage = Storage(uri=f"s3://{s3_bucket}", endpoint_url=s3_server)
    storage.write_bytes("k/v.bin", b"v")
    assert storage.list() == ["k/v.bin"]
    with pytest.raises(FileNotFoundError) as err:
        storage.read_parquet("tables/absent.parquet")
    assert f"s3://{s3_bucket}/tables/absent.parquet" in str(err.value)


def test_s3_endpoint_from_environment_read_at_use_time(s3_server, s3_bucket, monkeypatch):
    storage = Storage(uri=f"s3://{s3_bucket}/p")  # made before the variable is set
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    storage.write_bytes("x.bin", b"from env")
    assert storage.read_bytes("x.bin") == b"from env"
    assert Storage(uri=f"s3://{s3_bucket}/p").list() == ["x.bin"]


def test_s3_failed_write_keeps_previous_content(s3_server, s3_bucket):
    storage = Storage(uri=f"s3://{s3_bucket}/p", endpoint_url=s3_server)
    storage.write_parquet("t.parquet", sample_frame())
    before = storage.read_bytes("t.parquet")
    with pytest.raises(RuntimeError, match="serialiser crashed"):
        storage.write_parquet("t.parquet", ExplodingFrame({"a": [1]}))
    assert storage.read_bytes("t.parquet") == before
    with pytest.raises(RuntimeError):
        storage.write_parquet("new.parquet", ExplodingFrame({"a": [1]}))
    assert storage.list() == ["t.parquet"]


def test_storage_is_a_configurable_resource(tmp_path):
    @dg.asset
    def stored(storage: Storage) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"uri": storage.write_bytes("a/b.txt", b"asset")})

    result = dg.materialize([stored], resources={"storage": Storage(uri=str(tmp_path))})
    assert result.success
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"asset"


# ------------------------------------------------------------------------------------------ input URIs
def test_read_input_uri_local_paths(tmp_path, monkeypatch):
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "big two.csv").write_bytes(b"Category,token_decoded\n")
    assert read_input_uri("corpora/big two.csv", base_dir=tmp_path) == b"Category,token_decoded\n"
    assert read_input_uri(str(tmp_path / "corpora" / "big two.csv")) == b"Category,token_decoded\n"
    assert read_input_uri(f"file://{tmp_path}/corpora/big two.csv") == b"Category,token_decoded\n"
    monkeypatch.chdir(tmp_path / "corpora")
    assert read_input_uri("big two.csv") == b"Category,token_decoded\n"  # no base_dir: working directory


def test_read_input_uri_missing_local_file(tmp_path):
    with pytest.raises(InputError) as err:
        read_input_uri("corpora/absent.csv", base_dir=tmp_path)
    assert err.value.source == "corpora/absent.csv"
    assert str(err.value).startswith("corpora/absent.csv: cannot read file:")
    assert str(tmp_path / "corpora" / "absent.csv") in str(err.value)
    with pytest.raises(InputError, match="is a directory"):
        read_input_uri(str(tmp_path))


def test_read_input_uri_package_data_without_importing_the_package():
    sys.modules.pop("taters", None)
    data = read_input_uri(BIG_TWO)
    assert data.startswith(b"DicTerm,Agency,Communion")
    assert b"\naccurac*,X," in data
    assert "taters" not in sys.modules  # taters is installed --no-deps: importing it would fail


@pytest.mark.parametrize("uri, message", [
    ("package://taters/data/library/dictionaries/No Such Dictionary.dicx", "has no file"),
    ("package://no_such_package_vb/data/x.csv", "no installed package named 'no_such_package_vb'"),
    ("package://taters", "package://<package>/<path"),
])
def test_read_input_uri_package_errors(uri, message):
    with pytest.raises(InputError, match="cannot read file") as err:
        read_input_uri(uri)
    assert message in str(err.value)
    assert err.value.source == uri


def test_read_input_uri_s3(s3_server, s3_bucket, monkeypatch):
    Storage(uri=f"s3://{s3_bucket}", endpoint_url=s3_server).write_bytes("corpora/mfd2.csv", b"DicTerm\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assert read_input_uri(f"s3://{s3_bucket}/corpora/mfd2.csv") == b"DicTerm\n"
    with pytest.raises(InputError, match="cannot read file") as err:
        read_input_uri(f"s3://{s3_bucket}/corpora/absent.csv")
    assert err.value.source == f"s3://{s3_bucket}/corpora/absent.csv"
    assert f"s3://{s3_bucket}/corpora/absent.csv" in str(err.value)


@pytest.fixture
def http_dir(tmp_path):
    """A plain HTTP server on loopback serving tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_read_input_uri_http(http_dir, tmp_path):
    (tmp_path / "prompts.yaml").write_bytes(b"prompts: []\n")
    assert read_input_uri(f"{http_dir}/prompts.yaml") == b"prompts: []\n"
    with pytest.raises(InputError, match="cannot read file") as err:
        read_input_uri(f"{http_dir}/absent.yaml")
    assert err.value.source == f"{http_dir}/absent.yaml"
