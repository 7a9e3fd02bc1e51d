"""Shared fixtures: a real S3 server (moto) on loopback, dummy AWS credentials, fresh buckets.

- ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 at a free port and
  yields its endpoint URL, e.g. ``http://127.0.0.1:41234``.
- ``aws_credentials`` (function): dummy credentials and an isolated AWS config in the environment
  (monkeypatched: gone after the test); no real AWS configuration or instance metadata is consulted.
- ``s3_bucket`` (function): a new empty bucket on the server; yields its name. Also sets
  ``aws_credentials``. ``AWS_ENDPOINT_URL`` is *not* set: tests that want the environment rule set it.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RestartableS3:
    """A moto S3 server on a fixed loopback port that can be stopped and started again."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None
        self._lock = threading.Lock()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        with self._lock:
            if self._server is None:
                self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self._server.start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None

    def start_after(self, seconds: float) -> threading.Thread:
        def later():
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        return thread


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(monkeypatch, tmp_path):
    """Dummy AWS credentials for this test only; real config files, profiles and IMDS are kept out."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_bucket(s3_server, aws_credentials):
    """A fresh, empty bucket on the moto server (created with boto3); yields its name."""
    import boto3

    name = f"vb-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Runs the ``valuebias`` command in-process; returns its stdout and fails the test on a non-zero exit.
    DAGSTER_HOME is restored after the test (the CLI points it at the registry's own instance)."""
    from valuebias.orchestration.cli import main as valuebias_main

    monkeypatch.delenv("VALUEBIAS_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", "")

    def run(*args: str) -> str:
        capsys.readouterr()
        code = valuebias_main(list(args))
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; more only fight over shared cores. Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
