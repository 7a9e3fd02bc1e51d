"""``valuebias paper-data fetch`` (``valuebias.paper_release``): the authors' released files, each checked against
the SHA-256 of the manifest in this repository, offline from a folder or downloaded from a (loopback) server;
and no config reading anything outside the repository."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest
import yaml

from valuebias.orchestration.cli import main
from valuebias.errors import InputError
from valuebias.paper_release import DEFAULT_DEST, Manifest, ReleasedFile, fetch, load_manifest

PROJECT = Path(__file__).resolve().parents[1]
PAPER = PROJECT.parent / "shared" / "paper_release"
SYNTHETIC_COMMIT = "c0ffee" * 6 + "c0ff"
needs_paper = pytest.mark.skipif(not PAPER.is_dir(), reason=f"paper release data not found at {PAPER}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def synthetic_release(root: Path, layout: str = "source") -> Manifest:
    """Three small files under ``root`` (laid out by ``source`` paths, as in the authors' repository) and a
    manifest recording their hashes, computed here with hashlib."""
    contents = {("config/prompts.yaml", "config/prompts.yaml"): b"best_ever_one: What is the best thing ever?\n",
                ("corpora/words.csv", "data/corpora/words.csv"): b"Category,token_decoded\nAgency,freedom\n",
                ("rm_scores/scores.csv", "data/reward_model_scores/s.csv"): b"response,best_ever_one\nfreedom,1.5\n"}
    files = []
    for (path, source), data in contents.items():
        target = root / (source if layout == "source" else path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append(ReleasedFile(path=path, source=source, sha256=sha256(data), size=len(data)))
    return Manifest(repository="authors/release", commit=SYNTHETIC_COMMIT, url_base="unused", files=tuple(files))


@pytest.fixture
def http_server(tmp_path):
    """A plain ``http.server`` on loopback serving ``tmp_path / 'www'``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---------------------------------------------------------------------------------------- the manifest


@needs_paper
def test_the_manifest_records_exactly_the_shared_release(tmp_path, capsys):
    """Offline: `--from ../shared/paper_release` puts every file in place, byte for byte, each SHA-256
    checked; a second call checks them and copies nothing."""
    manifest = load_manifest()
    assert manifest.commit == "5d8d2e9d879bf0060c791b11300f0efda42c9bcf"
    shared = {p.relative_to(PAPER).as_posix(): p.read_bytes() for p in PAPER.rglob("*") if p.is_file()}
    assert {f.path for f in manifest.files} == set(shared) and len(shared) == 15
    for released in manifest.files:
        assert (released.sha256, released.size) == (sha256(shared[released.path]), len(shared[released.path]))

    dest = tmp_path / "paper_release"
    assert main(["paper-data", "fetch", "--from", str(PAPER), "--dest", str(dest)]) == 0
    assert "15 files fetched" in capsys.readouterr().out
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == shared
    assert main(["paper-data", "fetch", "--from", str(PAPER), "--dest", str(dest)]) == 0
    assert "0 files fetched" in (out := capsys.readouterr().out) and "15 already there" in out


@needs_paper
def test_a_planted_hash_mismatch_is_one_line_naming_the_file(tmp_path, capsys):
    source = tmp_path / "copy"
    shutil.copytree(PAPER, source)
    planted = source / "rm_scores" / "big2_rewards_Ray2333_GRM-gemma2-2B-rewardmodel-ft.csv"
    data = bytearray(planted.read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("8")  # one digit of one score
    planted.write_bytes(bytes(data))
    dest = tmp_path / "paper_release"
    assert main(["paper-data", "fetch", "--from", str(source), "--dest", str(dest)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("valuebias: error: rm_scores/big2_rewards_Ray2333_GRM-gemma2-2B-rewardmodel-ft.csv: "
                           "field 'sha256': SHA-256 mismatch")
    assert sha256(bytes(data)) in line
    assert "1ad021d4a7a5f5da2a9a2cd87f452b87e6f597cf013ab57bddf39030704d05c9" in line  # the recorded hash
    assert not (dest / "rm_scores" / planted.name).exists()
    assert not list(dest.rglob("*.part"))  # no temporary file left behind

    planted.unlink()  # a missing file: one line naming it
    assert main(["paper-data", "fetch", "--from", str(source), "--dest", str(dest)]) == 2
    assert f"error: rm_scores/{planted.name}: field '--from': not found in {source}" in one_error_line(capsys)


def test_offline_from_a_checkout_of_the_authors_repository_and_a_mismatch(tmp_path):
    """`--from` also takes the authors' own layout; a file whose bytes differ from the manifest is refused
    and leaves the earlier files in place, not itself."""
    checkout = tmp_path / "checkout"
    manifest = synthetic_release(checkout, layout="source")
    dest = tmp_path / "dest"
    report = fetch(dest=dest, from_dir=checkout, manifest=manifest, say=lambda _: None)
    assert report.fetched == [f.path for f in manifest.files]
    for released in manifest.files:
        assert (dest / released.path).read_bytes() == (checkout / released.source).read_bytes()

    (checkout / "data/corpora/words.csv").write_bytes(b"Category,token_decoded\nAgency,freedoM\n")
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError) as err:
        fetch(dest=fresh, from_dir=checkout, manifest=manifest, say=lambda _: None)
    assert (err.value.source, err.value.field) == ("corpora/words.csv", "sha256")
    assert (fresh / "config/prompts.yaml").is_file() and not (fresh / "corpora/words.csv").exists()


# ------------------------------------------------------------------------------------------- download


def test_download_from_a_loopback_http_server(tmp_path, http_server):
    www, url = http_server
    manifest = synthetic_release(www / SYNTHETIC_COMMIT, layout="source")
    dest = tmp_path / "dest"
    report = fetch(dest=dest, url_base=url + "/{commit}/", manifest=manifest, say=lambda _: None)
    assert report.fetched == [f.path for f in manifest.files]
    for released in manifest.files:
        assert sha256((dest / released.path).read_bytes()) == released.sha256

    # a file the server does not have: one error naming it, with the HTTP status
    (www / manifest.commit / "data/reward_model_scores/s.csv").unlink()
    with pytest.raises(InputError) as err:
        fetch(dest=tmp_path / "d2", url_base=url + "/{commit}/", manifest=manifest, say=lambda _: None)
    assert (err.value.source, err.value.field) == ("rm_scores/scores.csv", "url") and "HTTP 404" in str(err.value)

    # served bytes that differ from the manifest (same size): refused, nothing written
    (www / manifest.commit / "config/prompts.yaml").write_bytes(b"best_ever_one: What is the bust thing ever?\n")
    with pytest.raises(InputError) as err:
        fetch(dest=tmp_path / "d3", url_base=url + "/{commit}/", manifest=manifest, say=lambda _: None)
    assert (err.value.source, err.value.field) == ("config/prompts.yaml", "sha256")
    assert not (tmp_path / "d3" / "config" / "prompts.yaml").exists()


@needs_paper
def test_the_command_downloads_the_real_manifest_and_says_no_network_in_one_line(tmp_path, http_server, capsys):
    """The real manifest through the CLI against a loopback mirror laid out like the authors' repository at the
    pinned commit; then a closed port (as with no network): one line naming the first file."""
    www, url = http_server
    manifest = load_manifest()
    for released in manifest.files:
        target = www / manifest.commit / released.source
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PAPER / released.path, target)
    dest = tmp_path / "paper_release"
    assert main(["paper-data", "fetch", "--dest", str(dest), "--url-base", url + "/{commit}"]) == 0
    assert f"15 files fetched from {url}/{{commit}}" in capsys.readouterr().out
    for released in manifest.files:
        assert (dest / released.path).read_bytes() == (PAPER / released.path).read_bytes()

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert main(["paper-data", "fetch", "--dest", str(tmp_path / "none"),
                 "--url-base", f"http://127.0.0.1:{closed}/{{commit}}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("valuebias: error: config/prompts.yaml: field 'url': cannot download "
                           f"http://127.0.0.1:{closed}/{manifest.commit}/config/prompts.yaml")
    assert "no network?" in line


def test_the_default_url_is_the_authors_repository_at_the_pinned_commit():
    manifest = load_manifest()
    prompts = next(f for f in manifest.files if f.path == "config/prompts.yaml")
    assert manifest.url(prompts) == ("https://raw.githubusercontent.com/brchristian/"
                                     "reward_models_inherit_value_biases_from_pretraining/"
                                     "5d8d2e9d879bf0060c791b11300f0efda42c9bcf/config/prompts.yaml")
    assert DEFAULT_DEST == PROJECT / ".valuebias" / "paper_release"


# ---------------------------------------------------------------------------------------- the configs


def local_paths(node, key=""):
    """(key, value) of every string in a config that names a local file or folder."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from local_paths(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from local_paths(v, key)
    elif isinstance(node, str) and "://" not in node and (
            key in ("uri", "state_dir", "storage", "path") or node.startswith(("./", "../", "/"))):
        yield key, node


def test_no_config_reads_outside_the_repository():
    """Every local path of every shipped config resolves inside the project; the paper's files are read from
    the fetched folder, each of them a file of the manifest."""
    manifest_paths = {f.path for f in load_manifest().files}
    configs = [PROJECT / "valuebias.yaml", *sorted((PROJECT / "configs").glob("*.yaml"))]
    read_from_release = set()
    for config in configs:
        for key, value in local_paths(yaml.safe_load(config.read_text())):
            if key == "path" and not value.startswith((".", "/")):
                continue  # a hub id such as org/name
            resolved = (config.parent / value).resolve()
            assert resolved.is_relative_to(PROJECT), f"{config.name}: {key}: {value} is outside the repository"
            if resolved.is_relative_to(DEFAULT_DEST):
                read_from_release.add(resolved.relative_to(DEFAULT_DEST).as_posix())
    assert read_from_release and read_from_release <= manifest_paths
    assert len(read_from_release) == 13  # prompts, two word lists, ten score files


def test_a_config_read_before_the_fetch_names_the_command(tmp_path):
    """What `valuebias run --config configs/paper_published.yaml` reads first, before any fetch: the error names
    the missing file and `valuebias paper-data fetch`; any other missing file does not mention it."""
    from valuebias.object_store import read_input_uri

    with pytest.raises(InputError) as err:
        read_input_uri("../.valuebias/paper_release/config/prompts.yaml", base_dir=tmp_path / "configs")
    assert str(err.value) == (f"../.valuebias/paper_release/config/prompts.yaml: cannot read file: no such file "
                              f"{tmp_path}/configs/../.valuebias/paper_release/config/prompts.yaml (the paper's "
                              "released files: `valuebias paper-data fetch`)")
    with pytest.raises(InputError) as err:
        read_input_uri("words.csv", base_dir=tmp_path)
    assert "paper-data" not in str(err.value)
