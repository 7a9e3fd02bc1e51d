"""ObjectStore under faults, against real servers on loopback: a moto S3 server that is stopped and
restarted (moto keeps its buckets in process-wide state, so a new server on the same port sees the same
objects), a TCP listener that drops every connection, and an HTTP server that answers S3 errors.
Plus: move(), the Dagster-free import, the spec round trip and credential hygiene."""

from __future__ import annotations

import http.server
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from pathlib import Path

import pytest

from valuebias import object_store
from valuebias.object_store import ObjectStore, StorageError, _is_transient
from valuebias.resources.storage import Storage
from tests.conftest import RestartableS3

ROOT = Path(__file__).resolve().parent.parent
LOGGER = "valuebias.storage"


@pytest.fixture(scope="module")
def restartable_s3():
    """One restartable moto server for this module (stopping one takes ~0.5 s)."""
    server = RestartableS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(restartable_s3, aws_credentials):
    """The restartable moto server, running, with one fresh bucket; yields (server, bucket). The server
    is running again after the test."""
    import boto3

    server = restartable_s3
    server.start()
    bucket = f"vb-faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        yield server, bucket
    finally:
        server.start()


def retry_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------ restarts
def test_a_restarted_moto_server_keeps_its_objects(s3):
    """The premise of the restart tests: stop() then a new server on the same port serves the same data."""
    server, bucket = s3
    store = ObjectStore(f"s3://{bucket}/p", server.endpoint)
    store.write_bytes("kept.bin", b"kept")
    server.stop()
    server.start()
    assert store.list() == ["kept.bin"]
    assert store.read_bytes("kept.bin") == b"kept"


def test_write_to_a_stopped_server_fails_naming_the_uri_and_leaves_nothing(s3, caplog):
    server, bucket = s3
    store = ObjectStore(f"s3://{bucket}/prefix", server.endpoint, retries=2, retry_backoff_seconds=0.05)
    store.write_bytes("rm_word_scores/earlier.parquet", b"earlier")
    server.stop()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    uri = f"s3://{bucket}/prefix/rm_word_scores/m.parquet"
    with pytest.raises(StorageError) as err:
        store.write_bytes("rm_word_scores/m.parquet", b"x" * 100_000)
    message = str(err.value)
    assert message.startswith(f"cannot write {uri}: storage unreachable after 3 attempts (")
    assert "EndpointConnectionError" in message and server.endpoint in message
    assert isinstance(err.value, OSError) and not isinstance(err.value, FileNotFoundError)
    assert (err.value.operation, err.value.uri, err.value.attempts) == ("write", uri, 3)
    assert len(retry_records(caplog)) == 2  # two retries, each logged, naming the URI
    assert all(uri in r.getMessage() for r in retry_records(caplog))
    # Reads, checks, lists and deletes fail the same way (no False / [] while the server is down).
    store = ObjectStore(f"s3://{bucket}/prefix", server.endpoint, retries=0)
    for call, operation in [(lambda: store.read_bytes("rm_word_scores/earlier.parquet"), "read"),
                            (lambda: store.exists("rm_word_scores/earlier.parquet"), "check"),
                            (lambda: store.list("rm_word_scores/"), "list"),
                            (lambda: store.delete("rm_word_scores/earlier.parquet"), "delete")]:
        with pytest.raises(StorageError, match=f"cannot {operation} s3://{bucket}/prefix"):
            call()

    # A client that merely could not connect is kept (a new one costs 0.2-0.8 s per attempt).
    assert [key for key in object_store._FS_CACHE if server.endpoint in key[2]] != []
    server.start()
    assert store.list() == ["rm_word_scores/earlier.parquet"]  # nothing partial, nothing staged
    assert store.read_bytes("rm_word_scores/earlier.parquet") == b"earlier"
    assert not store.exists("rm_word_scores/m.parquet")


def test_a_server_back_within_the_backoff_window_makes_the_write_succeed(s3, caplog):
    server, bucket = s3
    store = ObjectStore(f"s3://{bucket}/prefix", server.endpoint, retries=6, retry_backoff_seconds=0.1)
    store.write_bytes("a.bin", b"before")
    server.stop()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    restart = server.start_after(0.3)
    try:
        assert store.write_bytes("b.bin", b"written while the server restarted") == f"s3://{bucket}/prefix/b.bin"
    finally:
        restart.join()
    records = retry_records(caplog)
    assert records, "the failed first attempt should have been logged"
    assert f"cannot write s3://{bucket}/prefix/b.bin (attempt 1 of 7)" in records[0].getMessage()
    assert store.read_bytes("b.bin") == b"written while the server restarted"
    assert store.list() == ["a.bin", "b.bin"]


# ------------------------------------------------------------------------------------------ permanent errors
def test_a_missing_bucket_is_not_retried_and_names_the_uri(s3, caplog):
    server, _bucket = s3
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = ObjectStore("s3://vb-no-such-bucket/x", server.endpoint, retries=4, retry_backoff_seconds=5)
    for call, operation, uri in [
        (lambda: store.write_bytes("t.bin", b"1"), "write", "s3://vb-no-such-bucket/x/t.bin"),
        (lambda: store.read_bytes("t.bin"), "read", "s3://vb-no-such-bucket/x/t.bin"),
        (lambda: store.exists("t.bin"), "check", "s3://vb-no-such-bucket/x/t.bin"),
        (lambda: store.list(), "list", "s3://vb-no-such-bucket/x"),
    ]:
        with pytest.raises(StorageError) as err:
            call()
        assert str(err.value).startswith(f"cannot {operation} {uri}: NoSuchBucket: ")
        assert err.value.attempts == 1
    assert retry_records(caplog) == []  # one attempt each: a 5 s backoff would also show in the run time


def test_a_missing_key_stays_file_not_found_and_is_not_retried(s3, caplog):
    server, bucket = s3
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = ObjectStore(f"s3://{bucket}/p", server.endpoint, retries=4, retry_backoff_seconds=5)
    with pytest.raises(FileNotFoundError, match=f"no such stored object: s3://{bucket}/p/absent.parquet"):
        store.read_parquet("absent.parquet")
    assert not store.exists("absent.parquet")
    store.delete("absent.parquet")
    assert store.list("absent") == []
    assert retry_records(caplog) == []


class _S3ErrorHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with one S3 error; counts the requests."""

    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" before the body comes
    status, code, text = 503, "SlowDown", "Please reduce your request rate."
    requests = 0

    def _answer(self):
        type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.code}</Code>'
                f"<Message>{self.text}</Message><RequestId>r1</RequestId></Error>").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def s3_error_server(aws_credentials):
    """An HTTP server on loopback answering every S3 request with a configurable error."""
    handler = type("Handler", (_S3ErrorHandler,), {"requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, code, attempts, reason", [
    (503, "SlowDown", 3, "storage unavailable after 3 attempts (SlowDown: Please reduce"),
    (500, "InternalError", 3, "storage unavailable after 3 attempts (InternalError: "),
    (403, "AccessDenied", 1, "AccessDenied: "),
], ids=["throttled", "server-error", "access-denied"])
def test_server_errors_retry_only_when_transient(s3_error_server, caplog, status, code, attempts, reason):
    """Counted on the server: each of our attempts is exactly one request (no hidden botocore/s3fs retries)."""
    endpoint, handler = s3_error_server
    handler.status, handler.code = status, code
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = ObjectStore("s3://bucket/prefix", endpoint, retries=2, retry_backoff_seconds=0.01)
    with pytest.raises(StorageError) as err:
        store.write_bytes("t.parquet", b"data")
    assert str(err.value).startswith(f"cannot write s3://bucket/prefix/t.parquet: {reason}")
    assert handler.requests == attempts
    assert len(retry_records(caplog)) == attempts - 1


def test_connections_dropped_mid_request_are_retried_with_a_bounded_number_of_connections(aws_credentials):
    """A listener that accepts every connection, reads the request and closes: botocore's own retries are off, so the
    connections made are our attempts (aiohttp may resend an idempotent request once on a dropped
    connection, RFC 9112), not botocore's default 5 per attempt."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.settimeout(5)
            try:
                conn.recv(65536)  # the request arrived: the drop is mid-request, not at connect
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        store = ObjectStore("s3://bucket/p", f"http://127.0.0.1:{listener.getsockname()[1]}", retries=2,
                            retry_backoff_seconds=0.01)
        with pytest.raises(StorageError, match=r"cannot read s3://bucket/p/k\.bin: storage unreachable after "
                                               r"3 attempts \(ConnectionClosedError: "):
            store.read_bytes("k.bin")
        assert 3 <= len(accepted) <= 6
        # A client whose connection broke mid-request is not kept for the next call.
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        assert [key for key in object_store._FS_CACHE if endpoint in key[2]] == []
    finally:
        listener.close()


def test_transient_and_permanent_errors_are_told_apart():
    import aiohttp
    from botocore import exceptions as bx

    def client_error(code, status):
        return bx.ClientError({"Error": {"Code": code, "Message": code},
                               "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    transient = [bx.EndpointConnectionError(endpoint_url="http://x"), bx.ConnectionClosedError(endpoint_url="x"),
                 bx.ReadTimeoutError(endpoint_url="x"), bx.ConnectTimeoutError(endpoint_url="x"),
                 aiohttp.ServerDisconnectedError(), ConnectionRefusedError(111, "refused"),
                 ConnectionResetError(104, "reset"), TimeoutError("slow"), OSError(111, "refused"),
                 client_error("SlowDown", 503), client_error("InternalError", 500),
                 client_error("Throttling", 400), client_error("Whatever", 502)]
    permanent = [FileNotFoundError("gone"), PermissionError("no"), client_error("AccessDenied", 403),
                 client_error("NoSuchBucket", 404), client_error("InvalidBucketName", 400),
                 bx.NoCredentialsError(), ValueError("bad key"), OSError(28, "no space left")]
    wrapped = OSError(16, "busy")  # s3fs turns SlowDown into OSError(EBUSY) with the ClientError as cause
    wrapped.__cause__ = client_error("SlowDown", 503)
    assert [e for e in transient + [wrapped] if not _is_transient(e)] == []
    assert [e for e in permanent if _is_transient(e)] == []


# ------------------------------------------------------------------------------------------ move
def test_move_local(tmp_path):
    store = ObjectStore(str(tmp_path))
    store.write_bytes("staging/run-1/m.parquet", b"complete object")
    store.write_bytes("rm_word_scores/m.parquet", b"old")
    assert store.move("staging/run-1/m.parquet", "rm_word_scores/m.parquet") == str(tmp_path / "rm_word_scores" / "m.parquet")
    assert store.read_bytes("rm_word_scores/m.parquet") == b"complete object"
    assert not store.exists("staging/run-1/m.parquet")
    store.write_bytes("s.bin", b"s")
    store.move("s.bin", "new/folder/d.bin")  # the destination folder is created
    assert store.list() == ["new/folder/d.bin", "rm_word_scores/m.parquet"]
    with pytest.raises(FileNotFoundError, match=f"no such stored object: {tmp_path / 'absent.bin'}"):
        store.move("absent.bin", "d.bin")


def test_move_s3(s3):
    server, bucket = s3
    store = ObjectStore(f"s3://{bucket}/p", server.endpoint)
    data = os.urandom(300_000)
    store.write_bytes("staging/m.parquet", data)
    store.write_bytes("rm_word_scores/m.parquet", b"old")
    assert store.move("staging/m.parquet", "rm_word_scores/m.parquet") == f"s3://{bucket}/p/rm_word_scores/m.parquet"
    assert store.read_bytes("rm_word_scores/m.parquet") == data
    assert not store.exists("staging/m.parquet")
    assert store.list() == ["rm_word_scores/m.parquet"]
    with pytest.raises(FileNotFoundError, match=f"no such stored object: s3://{bucket}/p/staging/absent"):
        store.move("staging/absent", "x")
    # Through the resource too.
    resource = Storage(uri=f"s3://{bucket}/p", endpoint_url=server.endpoint)
    resource.write_bytes("a", b"A")
    resource.move("a", "b")
    assert resource.list() == ["b", "rm_word_scores/m.parquet"]


def test_move_to_a_stopped_server_names_both_uris(s3):
    server, bucket = s3
    store = ObjectStore(f"s3://{bucket}/p", server.endpoint, retries=1, retry_backoff_seconds=0.01)
    store.write_bytes("staged", b"s")
    server.stop()
    with pytest.raises(StorageError, match=f"cannot move s3://{bucket}/p/staged to s3://{bucket}/p/final: "
                                           "storage unreachable after 2 attempts"):
        store.move("staged", "final")
    server.start()
    assert store.list() == ["staged"]


# ------------------------------------------------------------------------------------------ spec, import, credentials
def test_object_store_imports_without_dagster():
    code = ("import sys; import valuebias.object_store as m; "
            "assert 'dagster' not in sys.modules, 'dagster imported'; "
            "assert 's3fs' not in sys.modules and 'torch' not in sys.modules; print(m.ObjectStore.__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ObjectStore"


def test_spec_round_trip_and_resource_delegation(tmp_path):
    store = ObjectStore("s3://bucket/prefix", "http://127.0.0.1:9000", retries=2, retry_backoff_seconds=0.25)
    spec = store.to_spec()
    assert spec == {"uri": "s3://bucket/prefix", "endpoint_url": "http://127.0.0.1:9000", "retries": 2,
                    "retry_backoff_seconds": 0.25}
    again = ObjectStore.from_spec(json.loads(json.dumps(spec)))
    assert again == store and again.to_spec() == spec
    assert ObjectStore.from_spec({"uri": str(tmp_path)}).to_spec() == {
        "uri": str(tmp_path), "endpoint_url": None, "retries": 4, "retry_backoff_seconds": 0.5}
    with pytest.raises(ValueError, match="unknown storage spec field"):
        ObjectStore.from_spec({**spec, "secret": "x"})
    with pytest.raises(ValueError, match="retries"):
        ObjectStore("s3://b", retries=-1)
    resource = Storage(uri="s3://bucket/prefix", endpoint_url="http://127.0.0.1:9000", retries=2,
                       retry_backoff_seconds=0.25)
    assert resource.store() == store
    assert Storage(uri=str(tmp_path)).store().to_spec()["retries"] == 4
    err = StorageError("cannot write s3://b/k: x", operation="write", uri="s3://b/k", reason="x", attempts=3)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.operation, back.uri, back.reason, back.attempts) == \
        (str(err), "write", "s3://b/k", "x", 3)


def test_no_credentials_in_specs_reprs_or_errors(s3, monkeypatch):
    server, bucket = s3
    secret, key_id = "vb-SECRET-0123456789abcdef", "AKIAVBDISTINCTIVE42"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    resource = Storage(uri=f"s3://{bucket}/p", endpoint_url=server.endpoint, retries=1,
                       retry_backoff_seconds=0.01)
    resource.write_bytes("k", b"v")  # the credentials were really used
    texts = [repr(resource), str(resource), json.dumps(resource.store().to_spec()), repr(resource.store()),
             json.dumps(resource.model_dump(), default=str)]
    for call in [lambda: Storage(uri="s3://vb-no-such-bucket/p", endpoint_url=server.endpoint).write_bytes("k", b"v"),
                 lambda: (server.stop(), resource.write_bytes("k", b"v"))]:
        with pytest.raises(StorageError) as err:
            call()
        texts += [str(err.value), repr(err.value), "".join(traceback.format_exception(err.value))]
    leaks = [text for text in texts if secret in text or key_id in text]
    assert leaks == []
