"""One writer per run: a lock file per run under OUT/locks, held while the run trains.

Two commands on one output folder (two terminals, a second SLURM array) then never train the same
run twice: the second waits for the runs the first holds, or skips them if it has other work, and
finds their records when the lock is released. The lock is filelock's FileLock: an flock(2) on
the lock file, which the operating system releases when its process dies however it dies (kill
-9, out of memory), so a lock left by a killed process is taken over at once; where a file system
has no flock, filelock falls back to a marker file holding the owner's pid and host, and takes
over a marker whose process is gone. Lock files stay in place (waiters must share the file);
they are empty and may be deleted when no command is running.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

FOLDER = "locks"


def path(out: Path, key: str) -> Path:
    return Path(out) / FOLDER / f"{key}.lock"


@contextmanager
def run_lock(out: Path, key: str, wait: bool = True) -> Iterator[bool | None]:
    """Hold run `key`'s lock within. Yields False when it was free, True when this process had to
    wait for another one to release it (the run may be finished now), and None, holding nothing,
    when it is held elsewhere and `wait` is False."""
    lock = FileLock(path(out, key))
    path(out, key).parent.mkdir(parents=True, exist_ok=True)
    waited = False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield None
            return
        waited = True
        lock.acquire()
    try:
        yield waited
    finally:
        lock.release()
