"""The code location as the UI sees it: light imports, and a real dagster-webserver on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.registry_fixtures import write_small_registry
from tests.conftest import free_port

PROJECT = Path(__file__).resolve().parents[1]


def test_code_location_imports_neither_torch_nor_great_expectations():
    code = ("import sys, valuebias.orchestration.definitions as d; d.build_definitions(); "
            "print(sorted(m for m in ('torch', 'transformers', 'great_expectations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_webserver_shows_assets_partitions_and_checks(tmp_path):
    config = write_small_registry(tmp_path)
    home = tmp_path / "dagster"
    home.mkdir()
    port = free_port()
    env = dict(os.environ, VALUEBIAS_CONFIG=str(config), DAGSTER_HOME=str(home), DAGSTER_DISABLE_TELEMETRY="1")
    webserver = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen([str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"webserver did not start: {proc.stderr.read() if proc.poll() else ''}")
                time.sleep(0.5)
        data = _graphql(port, """{ assetNodes { assetKey { path } groupName isPartitioned
                                    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }""")
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert {"prompts", "corpus_words", "model_registry", "rm_word_scores", "rm_rank_cells", "rm_mixed_model",
                "rm_family_tests", "rm_report"} <= set(nodes)
        assert nodes["rm_word_scores"]["isPartitioned"] and not nodes["rm_rank_cells"]["isPartitioned"]
        checks = nodes["corpus_words"]["assetChecksOrError"]["checks"]
        assert checks == [{"name": "corpus_words_contract", "blocking": True}]
        assert nodes["rm_rank_cells"]["groupName"] == "statistics"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
