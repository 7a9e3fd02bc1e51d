"""Faults of the machine during ``valuebias run``, each ending in one line on the terminal:

- Ctrl-C and SIGTERM: every child process stops, and one line says what was interrupted and that a rerun
  resumes (finished partitions, and finished score chunks of an interrupted one, stay in storage);
- a full disk: one line naming the folder whose file system filled (``No space left on device`` from any
  write, SQLite's ``database or disk is full`` from the Dagster instance). Every write is atomic (a
  temporary name, then a rename), so nothing stored is left half written; a rerun after space is freed
  resumes.
"""

from __future__ import annotations

import errno
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: What a full file system says, in an error's text (an error from a child process arrives as text only).
DISK_FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread (as Ctrl-C does) while the block runs."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_children(timeout: float = 15.0) -> int:
    """Terminates every descendant of this process (run processes, their fork server, scoring workers), waits
    up to ``timeout`` seconds, then kills what is left. Returns how many there were. Ctrl-C is ignored
    meanwhile, so a second one cannot leave them half stopped."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return len(children)


def is_disk_full(error: BaseException | str) -> bool:
    """Whether an exception (any in its chain) or an error's text says a file system is full."""
    if isinstance(error, str):
        return any(text in error for text in DISK_FULL_TEXTS)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def fullest_folder(folders: list[str | Path]) -> Path:
    """Of ``folders`` (the existing ones, or their nearest existing parents), the one whose file system has the
    least free space: the one that filled."""
    def existing(folder: Path) -> Path:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return folder

    candidates = [existing(Path(f).expanduser().absolute()) for f in folders]
    return min(candidates, key=lambda f: shutil.disk_usage(f).free)


def disk_full(error: BaseException | str, folders: list[str | Path]) -> str | None:
    """The one line for an error that says a file system is full (None for any other error), naming the
    folder of ``folders`` (the state folder, storage, the Dagster instance, the temporary folder) that filled."""
    if not is_disk_full(error):
        return None
    folder = fullest_folder([*folders, tempfile.gettempdir()])
    free = shutil.disk_usage(folder).free
    return (f"no space left on the file system of {folder} ({free / 2**20:.1f} MiB free): free space there and "
            "run `valuebias run` again; finished work is kept and nothing stored was left half written")
