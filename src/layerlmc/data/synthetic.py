"""A seeded synthetic classification problem: the data of the paper's subspace notebooks.

The notebooks (PAPER.md §4.2) call ``sklearn.datasets.make_classification(n_samples,
n_features, n_informative=3, n_redundant=0, n_clusters_per_class=2, n_classes=3)`` and
``train_test_split(test_size=0.33, random_state=42)``. scikit-learn is not a dependency, so
:func:`make_classification` follows its algorithm and its sequence of draws from a
``numpy.random.RandomState``: clusters of Gaussian points with a random covariance, centred
at distinct vertices of a hypercube of side ``2·class_sep`` in the informative dimensions,
``flip_y`` of the labels replaced at random, the remaining features pure noise, samples and
features shuffled. With the same seed it is meant to give sklearn's arrays (this has not been
checked against sklearn here).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import LayerLMCError
from ..registry import datasets

SplitTensors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def make_classification(
    n_samples: int = 600,
    n_features: int = 16,
    n_informative: int = 3,
    n_redundant: int = 0,
    n_classes: int = 3,
    n_clusters_per_class: int = 2,
    flip_y: float = 0.01,
    class_sep: float = 1.0,
    seed: int | None = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[n_samples, n_features]`` (float64) and labels ``[n_samples]`` (int64).

    Redundant features are random linear combinations of the informative ones; the rest are
    N(0, 1) noise.
    """
    n_clusters = n_classes * n_clusters_per_class
    if n_samples < 1 or n_features < 1 or n_classes < 2 or n_clusters_per_class < 1:
        raise LayerLMCError(
            "make_classification needs n_samples ≥ 1, n_features ≥ 1, n_classes ≥ 2 and "
            f"n_clusters_per_class ≥ 1 (got {n_samples}, {n_features}, {n_classes}, "
            f"{n_clusters_per_class})"
        )
    if n_informative < 1 or n_redundant < 0 or n_informative + n_redundant > n_features:
        raise LayerLMCError(
            f"n_informative ({n_informative}) + n_redundant ({n_redundant}) must be between 1 and "
            f"n_features ({n_features})"
        )
    if 2**n_informative < n_clusters:
        raise LayerLMCError(
            f"{n_classes} classes × {n_clusters_per_class} clusters need {n_clusters} hypercube "
            f"vertices, but {n_informative} informative features give only {2**n_informative}"
        )
    if not 0.0 <= flip_y <= 1.0:
        raise LayerLMCError(f"flip_y must be a fraction in [0, 1], got {flip_y}")
    rng = np.random.RandomState(seed)
    n_useless = n_features - n_informative - n_redundant
    weights = [1.0 / n_classes] * n_classes
    weights[-1] = 1.0 - sum(weights[:-1])
    per_cluster = [int(n_samples * weights[k % n_classes] / n_clusters_per_class)
                   for k in range(n_clusters)]
    for i in range(n_samples - sum(per_cluster)):
        per_cluster[i % n_clusters] += 1

    x = np.zeros((n_samples, n_features))
    y = np.zeros(n_samples, dtype=np.int64)
    centroids = _hypercube_vertices(n_clusters, n_informative, rng) * (2 * class_sep) - class_sep
    x[:, :n_informative] = rng.standard_normal(size=(n_samples, n_informative))
    stop = 0
    for k, centroid in enumerate(centroids):
        start, stop = stop, stop + per_cluster[k]
        y[start:stop] = k % n_classes
        mixing = 2 * rng.uniform(size=(n_informative, n_informative)) - 1
        x[start:stop, :n_informative] = x[start:stop, :n_informative] @ mixing + centroid
    if n_redundant:
        combination = 2 * rng.uniform(size=(n_informative, n_redundant)) - 1
        x[:, n_informative:n_informative + n_redundant] = x[:, :n_informative] @ combination
    if n_useless:
        x[:, -n_useless:] = rng.standard_normal(size=(n_samples, n_useless))
    flip = rng.uniform(size=n_samples) < flip_y
    y[flip] = rng.randint(n_classes, size=int(flip.sum()))
    # sklearn.utils.shuffle, then a permutation of the features, from the same generator
    order = np.arange(n_samples)
    rng.shuffle(order)
    x, y = x[order], y[order]
    features = np.arange(n_features)
    rng.shuffle(features)
    return x[:, features], y


def _hypercube_vertices(count: int, dimensions: int, rng: np.random.RandomState) -> np.ndarray:
    """``count`` distinct vertices of {0, 1}^dimensions, as sklearn's ``_generate_hypercube``."""
    if dimensions > 30:
        return np.hstack([rng.randint(2, size=(count, dimensions - 30)),
                          _hypercube_vertices(count, 30, rng)]).astype(float)
    population = 2**dimensions
    ratio = count / population
    if 0.01 < ratio < 0.99:
        chosen = rng.permutation(population)[:count]
    else:
        # sklearn samples without replacement differently here; any distinct vertices serve
        chosen = rng.choice(population, size=count, replace=False)
    bits = (chosen[:, None] >> np.arange(dimensions - 1, -1, -1)) & 1
    return bits.astype(float)


def train_test_indices(
    n_samples: int, test_size: float = 0.33, seed: int = 42,
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ``train_test_split(test_size=..., random_state=seed)`` indices: one permutation,
    the first ⌈test_size·n⌉ for test and the rest for train."""
    if not 0.0 < test_size < 1.0:
        raise LayerLMCError(f"test_size must be a fraction in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n_samples)
    if n_test >= n_samples:
        raise LayerLMCError(
            f"test_size {test_size} of {n_samples} samples leaves no training examples"
        )
    permutation = np.random.RandomState(seed).permutation(n_samples)
    return permutation[n_test:], permutation[:n_test]


@datasets.register(
    "classification",
    "sklearn-style make_classification: 600×16, 3 classes; train/test 67/33, train halves "
    "half_a, half_b",
)
def classification(
    n_samples: int = 600,
    n_features: int = 16,
    n_informative: int = 3,
    n_redundant: int = 0,
    n_classes: int = 3,
    n_clusters_per_class: int = 2,
    flip_y: float = 0.01,
    class_sep: float = 1.0,
    test_size: float = 0.33,
    seed: int = 10,
    split_seed: int = 42,
) -> SplitTensors:
    """Splits ``train``, ``test`` and the two contiguous halves of train, ``half_a`` (the first
    ⌊n/2⌋ train examples) and ``half_b`` (the rest), each float32 inputs and int64 labels."""
    x, y = make_classification(n_samples, n_features, n_informative, n_redundant, n_classes,
                               n_clusters_per_class, flip_y, class_sep, seed)
    train, test = train_test_indices(n_samples, test_size, split_seed)
    inputs = torch.from_numpy(x.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    x_train, y_train = inputs[train], labels[train]
    half = len(train) // 2
    return {
        "train": (x_train, y_train),
        "test": (inputs[test], labels[test]),
        "half_a": (x_train[:half], y_train[:half]),
        "half_b": (x_train[half:], y_train[half:]),
    }
