"""File locks on the state folder: one process at a time for a piece of work, and the others told whom
they wait for. They hold between processes on one machine (``filelock``); on a cluster, Dagster's run
queue and the ``gpu`` pool keep work apart."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


@contextmanager
def exclusive(lock_path: Path, what: str, say: Callable[[str], None]):
    """Holds the file lock ``lock_path``; if another process holds it, says so (naming it) and waits."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock, info = FileLock(str(lock_path)), lock_path.with_suffix(".holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(info)
        for _ in range(40):  # the holder writes who it is just after it takes the lock
            if holder != "holder unknown":
                break
            time.sleep(0.05)
            holder = _holder(info)
        say(f"waiting for {what} ({holder})")
        lock.acquire()
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def partition_lock(state_dir: str | Path, asset: str, partition: str, say: Callable[[str], None]):
    """One process computing ``asset[partition]`` at a time (the CLI's runs and the daemon's alike)."""
    return exclusive(Path(state_dir) / "locks" / f"{asset}.{partition}.lock",
                     f"another run computing {asset}[{partition}]", say)
