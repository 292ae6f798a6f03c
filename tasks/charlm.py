"""Character-level language modelling (as in Graves 2013; Mujika et al. 2018 and Tallec and
Ollivier 2018 measure online methods on it), on a local text file (`--data-file`, or the task
option `data_file`), scored in bits per character on a held-out part.

Default corpus: `tasks/data/python_docstrings.txt`, the docstrings of 82 modules of the CPython
3.11 standard library (PSF License, `tasks/data/PSF-LICENSE.txt`; rebuilt by
`tasks/data/make_corpus.py`), 562 kB of English technical prose with code examples.

Layout: the file is read as UTF-8; its vocabulary is the set of its distinct characters (V, over
the whole file, so every held-out character has an id). The first 1 - `test_fraction` of the
text is the training part, the last `test_fraction` (default 0.1) the held-out part (the `test`
stream), disjoint and contiguous. A sequence is a window of T + 1 consecutive characters at a
uniformly random start in the part: the inputs are its first T characters (one-hot over V), the
targets the next character at every step, where the loss (cross-entropy) and the score (bits per
character) count. Chance is log2 V, the bits of the uniform prediction (the unigram entropy of
the training part, a stronger baseline, is `unigram_bits`).
"""
from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.config import ConfigError, Param
from harness.task import Task, stream_seed

from ._dataset import held_out

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "python_docstrings.txt"


@lru_cache(maxsize=4)
def read_text(path: str, stamp: tuple) -> tuple[str, torch.Tensor]:
    """(vocabulary, ids of every character); ConfigError if unreadable or empty."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"charlm: '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"charlm: cannot read '{path}': {exc.strerror or exc}") from None
    vocab = "".join(sorted(set(text)))
    if len(vocab) < 2:
        raise ConfigError(f"charlm: '{path}' has {len(vocab)} distinct characters; a language model needs 2 or more")
    index = {c: i for i, c in enumerate(vocab)}
    return vocab, torch.tensor([index[c] for c in text], dtype=torch.long)


class CharLM(Task):
    name = "charlm"
    description = "predict the next character of a text, in bits per character on a held-out part"
    reference = "Graves 2013; Mujika et al. 2018; Tallec and Ollivier 2018"
    loss_kind = "cross_entropy"
    score_kind = "bits"
    default_seq_len = 50
    hyperparameters = {
        "data_file": Param(None, str, "UTF-8 text file (also --data-file); default: the bundled corpus",
                           optional=True),
        "test_fraction": Param(0.1, float, "held-out fraction at the end of the text",
                               check=lambda v: 0 < v < 1, allowed="a number between 0 and 1"),
    }

    def check(self):
        path = Path(self.data_file).expanduser() if self.data_file else DEFAULT_CORPUS
        if not path.is_file():
            raise ConfigError(f"charlm: data file '{path}' does not exist")
        stat = path.stat()
        self.vocab, ids = read_text(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))
        cut = round(len(ids) * (1 - self.test_fraction))
        self.train_ids, self.test_ids = ids[:cut], ids[cut:]
        shortest = min(len(self.train_ids), len(self.test_ids))
        if shortest < self.seq_len + 1:
            raise ConfigError(f"charlm: '{path}' is too short for T={self.seq_len}: its smaller part holds "
                              f"{shortest} characters, a window needs T + 1")

    @property
    def input_size(self):
        return len(self.vocab)

    @property
    def output_size(self):
        return len(self.vocab)

    @property
    def lag(self):
        # text has no longest dependency: a prediction may use any earlier character of the window
        return None

    @property
    def chance(self):
        return math.log2(len(self.vocab))

    @property
    def unigram_bits(self) -> float:
        counts = torch.tensor(list(Counter(self.train_ids.tolist()).values()), dtype=torch.float64)
        p = counts / counts.sum()
        return float(-(p * p.log2()).sum())

    @classmethod
    def example(cls, workdir):
        return cls(6)

    def stream(self, seed, split, batch_size):
        ids = self.test_ids if held_out(split) else self.train_ids
        gen = torch.Generator().manual_seed(stream_seed(seed, split))
        T, B = self.seq_len, batch_size
        offsets = torch.arange(T + 1).unsqueeze(1)
        while True:
            starts = torch.randint(0, len(ids) - T, (B,), generator=gen)
            window = ids[starts.unsqueeze(0) + offsets]          # [T + 1, B]
            x = F.one_hot(window[:-1], len(self.vocab)).float()
            yield self.batch(T, B, x, window[1:].contiguous())

