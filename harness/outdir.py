"""The output folder: every folder a command will write is probed before anything trains, so a
read-only or misplaced --out is a one-line error (exit code 2), not a traceback after hours of
training."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .config import ConfigError

# written by every command that runs: records, locks, tables (OUT itself), figures
ALWAYS = ("runs", "locks", "figures")
# written when used: training checkpoints, submitit's job files, reference trajectories (fidelity)
WHEN_USED = ("checkpoints", "slurm", "trajectories")


def check_writable(out: Path, folders: tuple[str, ...] = ALWAYS) -> None:
    """Create OUT and `folders` in it, and write and delete a file in each; a folder of WHEN_USED
    that already exists is probed too. Raises ConfigError naming the first folder that is not
    writable."""
    out = Path(out)
    names = list(folders) + [name for name in WHEN_USED if name not in folders and (out / name).exists()]
    folders = [out] + [out / name for name in names]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"output folder '{folder}' is not writable: {exc.strerror or exc}") from None
