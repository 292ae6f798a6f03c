"""Sequential and permuted MNIST (Le, Jaitly and Hinton 2015), read from the IDX files of LeCun et
al. 1998 in a local folder (`--data-dir`, or the task option `data_dir`); nothing is downloaded.

The folder holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte, each possibly gzipped (`.gz`) and with `.idx` for `-idx` as some mirrors
name them. A missing or malformed file is a one-line error before anything trains.

Layout: L = T = P r steps for images of P pixels (784 for MNIST; r = stretch), one input channel,
grey levels / 255; the class is the target at the last step, scored by accuracy; chance 1/10.
`perm_mnist` reads the pixels in a fixed random order set by `perm_seed` (default 0; the same for
every run seed). Split: the official one, t10k is the test part (the `test` stream).
"""
from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from harness.config import ConfigError, Param

from ._pixels import COMMON, PERMUTED, PixelSequence

FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
DATA_DIR = {"data_dir": Param(None, str, "folder of the MNIST IDX files (also --data-dir)", optional=True)}


def find(folder: Path, stem: str) -> Path:
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"MNIST file {stem}[.gz] not found in '{folder}' (needs {', '.join(FILES.values())})")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions; ConfigError on any defect."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"cannot read MNIST file '{path}': {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise ConfigError(f"'{path}' is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                          f"(header {raw[:4].hex() or 'empty'}, expected 000008{ndim:02x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"'{path}' is truncated in its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)) or 0 in shape:
        raise ConfigError(f"'{path}' holds {len(raw) - header} bytes of data, its header announces shape "
                          f"{shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def load_folder(folder: str, stamp: tuple) -> tuple[torch.Tensor, ...]:
    paths = {key: find(Path(folder), stem) for key, stem in FILES.items()}
    arrays = {key: read_idx(path, 3 if key.endswith("x") else 1) for key, path in paths.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if len(images) != len(labels):
            raise ConfigError(f"'{paths[part + '_x']}' holds {len(images)} images but "
                              f"'{paths[part + '_y']}' {len(labels)} labels")
        if labels.max() > 9:
            raise ConfigError(f"'{paths[part + '_y']}' holds label {labels.max()}, expected 0..9")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise ConfigError(f"train images are {arrays['train_x'].shape[1:]}, test images {arrays['test_x'].shape[1:]}")
    out = []
    for part in ("train", "test"):
        images = arrays[f"{part}_x"]
        out += [torch.tensor(images.reshape(len(images), -1) / 255.0, dtype=torch.float32),
                torch.tensor(arrays[f"{part}_y"], dtype=torch.long)]
    return tuple(out)


def folder_stamp(folder: Path) -> tuple:
    """Changes when a file in the folder changes, so the cache never serves stale data."""
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write unsigned bytes as an IDX file (gzipped if the name ends in .gz); for tests and examples."""
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


class SeqMnist(PixelSequence):
    name = "seq_mnist"
    description = "classify an MNIST digit read pixel by pixel (L = 784 x stretch), from local IDX files"
    reference = "Le, Jaitly and Hinton 2015; data LeCun et al. 1998"
    default_seq_len = 784
    hyperparameters = {**COMMON, **DATA_DIR}

    def load(self):
        if self.data_dir is None:
            raise ConfigError(f"{self.name} reads the MNIST IDX files from a local folder: give --data-dir "
                              f"(or {self.name}[data_dir=...])")
        folder = Path(self.data_dir).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{self.name}: data folder '{folder}' does not exist")
        return load_folder(str(folder.resolve()), folder_stamp(folder))

    @classmethod
    def example(cls, workdir):
        """4x4 "images" whose brightest pixel is at the index of their class (a learnable toy), 16 steps."""
        rng = np.random.default_rng(0)
        folder = Path(workdir) / "mnist"
        folder.mkdir(parents=True, exist_ok=True)
        for part, n in (("train", 40), ("t10k", 20)):
            labels = rng.integers(0, 10, n)
            images = rng.integers(0, 100, (n, 4, 4))
            images[np.arange(n), labels // 4, labels % 4] = 255
            write_idx(folder / f"{part}-images-idx3-ubyte.gz", images)
            write_idx(folder / f"{part}-labels-idx1-ubyte", labels)
        return cls(16, data_dir=str(folder))


class PermMnist(SeqMnist):
    name = "perm_mnist"
    description = "classify an MNIST digit read pixel by pixel in a fixed random order, from local IDX files"
    reference = "Le, Jaitly and Hinton 2015; data LeCun et al. 1998"
    permuted = True
    hyperparameters = {**PERMUTED, **DATA_DIR}
