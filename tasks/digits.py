"""Sequential and permuted digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, no
download; UCI optical digits, Alpaydin and Kaynak 1998) read pixel by pixel, the small sibling of
sequential and permuted MNIST (Le, Jaitly and Hinton 2015).

Layout: L = T = 64 r steps (r = stretch, each pixel repeated r times), one input channel, grey
levels / 16; the class is the target at the last step, scored by accuracy; chance 1/10.
`perm_digits` reads the pixels in a fixed random order set by `perm_seed` (default 0; the same for
every run seed). Split: a fixed shuffle (seed 0) holds out 360 images as the test part (the `test`
stream); the other 1437 are the training part; the two are disjoint.
"""
from functools import lru_cache

import numpy as np
import torch

from ._pixels import COMMON, PERMUTED, PixelSequence

N_TEST = 360


@lru_cache(maxsize=1)
def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = torch.tensor(data.data[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.long)
    return x[N_TEST:], y[N_TEST:], x[:N_TEST], y[:N_TEST]


class SeqDigits(PixelSequence):
    name = "seq_digits"
    description = "classify an 8x8 digit read pixel by pixel (L = 64 x stretch)"
    reference = "Le, Jaitly and Hinton 2015 (sequential MNIST), on scikit-learn's 8x8 digits"
    default_seq_len = 64
    hyperparameters = COMMON

    def load(self):
        return digits()

    @classmethod
    def example(cls, workdir):
        return cls(64)


class PermDigits(SeqDigits):
    name = "perm_digits"
    description = "classify an 8x8 digit read pixel by pixel in a fixed random order"
    reference = "Le, Jaitly and Hinton 2015 (permuted MNIST), on scikit-learn's 8x8 digits"
    permuted = True
    hyperparameters = PERMUTED
