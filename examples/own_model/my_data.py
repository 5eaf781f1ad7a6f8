"""An example data file for `layerlmc barriers --data my_data.py:make_splits`.

Returns a dict of splits, each an (inputs, labels) pair of tensors; a torch Dataset works too.
Here: 4 Gaussian blobs in 8 dimensions, fixed by a seed.
"""

import torch


def make_splits(n_train: int = 2000, n_test: int = 1000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=g) * 1.5

    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = centers[y] + torch.randn(n, 8, generator=g)
        return x, y

    return {"train": split(n_train), "test": split(n_test)}
