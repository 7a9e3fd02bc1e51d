"""What a model's content identity costs on a 1 GB weights file, side by side in one run:

- ``read``: reading the file in 8 MiB chunks and doing nothing with it (the baseline: what loading the
  weights costs in I/O anyway);
- ``sha256``: the full digest ``valuebias.model_content`` computes (``file_sha256``, same chunks);
- ``routine check``: the identity of a folder whose digest is cached and whose (size, mtime_ns, inode)
  is unchanged (what ``valuebias status`` and ``run`` pay every time);
- ``verify``: the same folder with ``mode="verify"`` (``--verify``: every digest recomputed).

    .venv/bin/python -m bench.content_digest [--size-mb 1024] [--repeats 3] [--dir /tmp]
    .venv/bin/python -m bench.content_digest --smoke    # seconds: a 4 MB file, one run each

The file is read once before timing, so every figure is from the page cache (a cold disk adds the same
read time to ``read``, ``sha256`` and ``verify``). Prints the median of each and the ratios to ``read``.
Exits 1 when the routine check or ``verify`` does not give the file's SHA-256 (a benchmark of a wrong answer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from valuebias.model_content import CHUNK, DigestCache, file_sha256, folder_identity


def read_only(path: Path) -> int:
    total = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            total += len(chunk)
    return total


def timed(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--smoke", action="store_true", help="seconds: --size-mb 4 --repeats 1")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size_mb, args.repeats = 4, 1

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="valuebias-digest-bench-") as folder:
        folder = Path(folder)
        weights = folder / "model.safetensors"
        block = os.urandom(1 << 20)
        with open(weights, "wb") as handle:
            for _ in range(args.size_mb):
                handle.write(block)
        (folder / "config.json").write_text('{"model_type": "llama"}')
        cache = DigestCache(folder / "digests.json")
        read_only(weights)  # into the page cache
        folder_identity(folder, cache=cache)  # the digest cached, as after a first run
        expected = file_sha256(weights)
        answers = {"routine check": folder_identity(folder, cache=DigestCache(folder / "digests.json")),
                   "verify": folder_identity(folder, cache=DigestCache(folder / "digests.json"), mode="verify")}
        wrong = [name for name, identity in answers.items() if identity.parts.get(weights.name) != expected]
        if wrong:
            print(f"FAILED: {', '.join(wrong)} did not give the SHA-256 of {weights.name}")
            return 1

        results = {
            "read": timed(lambda: read_only(weights), args.repeats),
            "sha256": timed(lambda: file_sha256(weights), args.repeats),
            "routine check": timed(lambda: folder_identity(folder, cache=DigestCache(folder / "digests.json")),
                                   args.repeats),
            "verify": timed(lambda: folder_identity(folder, cache=DigestCache(folder / "digests.json"),
                                                    mode="verify"), args.repeats),
        }
    size = args.size_mb / 1024
    print(f"file: {args.size_mb} MiB ({size:.2f} GiB), median of {args.repeats} runs each")
    for name, seconds in results.items():
        rate = f"{size / seconds:8.2f} GiB/s" if name != "routine check" else " " * 13
        print(f"{name:>14}: {seconds * 1000:10.2f} ms {rate}  ratio to read: {seconds / results['read']:.4f}")
    print(f"sha256/read={results['sha256'] / results['read']:.2f} "
          f"routine/sha256={results['routine check'] / results['sha256']:.6f} "
          f"verify/sha256={results['verify'] / results['sha256']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
