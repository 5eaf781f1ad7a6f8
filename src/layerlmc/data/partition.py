"""Seeded federated partitions of a train split among clients (paper §6, Table 1).

Every example of the train split goes to exactly one client, and each client's share is cut
again into a local train and a local test part for personalized evaluation, as in
PFL-Non-IID (75 % / 25 % by default). Schemes:

``iid``
    A seeded permutation cut into ``clients`` near-equal parts.
``halves`` (alias ``contiguous``)
    Contiguous blocks in the given order, no shuffling: with two clients the paper's
    "two halves" setting.
``shards``
    Pathological non-iid (FedAvg / FedBABU): examples sorted by label, every class cut into
    shards, ``clients * classes_per_client`` shards in all, and each client gets
    ``classes_per_client`` shards of as many *distinct* classes. Needs at least as many shards
    as classes, and every class at least as many examples as it has shards.
``dirichlet``
    Label skew: every class is split among clients with proportions drawn from
    ``Dirichlet(alpha * 1_K)``; redrawn until every client has ``min_size`` examples.

Everything is pure: randomness comes only from generators seeded with ``seed``, so the same
arguments give the same indices on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch

from ..errors import LayerLMCError, unknown

SCHEMES = ("iid", "halves", "shards", "dirichlet")
ALIASES = {"contiguous": "halves"}
#: how many Dirichlet draws to try before giving up on ``min_size``
DIRICHLET_TRIES = 100

Labels = torch.Tensor | np.ndarray | Sequence[int]


# eq=False: the generated __eq__ would compare tensors and raise "ambiguous truth value".
@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's share: indices into the dataset's train split.

    ``train`` and ``test`` are 1-D int64 tensors, sorted ascending and disjoint.
    """

    train: torch.Tensor
    test: torch.Tensor

    @property
    def indices(self) -> torch.Tensor:
        """All of the client's examples (train and test), sorted ascending, int64."""
        return torch.sort(torch.cat([self.train, self.test])).values

    def __len__(self) -> int:
        return int(self.train.numel() + self.test.numel())


def partition(
    labels: Labels,
    clients: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    classes_per_client: int = 2,
    alpha: float = 0.5,
    min_size: int = 10,
    test_fraction: float = 0.25,
) -> list[ClientSplit]:
    """Split the ``N`` examples whose labels are given among ``clients`` clients.

    ``labels`` is a 1-D integer tensor/array of length ``N`` (any integer values; the distinct
    values are the classes). Returns one :class:`ClientSplit` per client, in client order; the
    union of all train and test parts is ``0..N-1``, each index exactly once.

    ``classes_per_client`` applies to ``shards``; ``alpha`` and ``min_size`` (the least number
    of examples, train + test, of every client) to ``dirichlet``. Each client's examples are
    shuffled with the seed and the first ``ceil(test_fraction * n)`` become its local test
    part, kept within ``[1, n - 1]`` when ``n >= 2`` and ``test_fraction > 0`` so that both
    parts are usable.

    Raises :class:`LayerLMCError` for bad arguments or a partition that cannot be made.
    """
    y = _as_label_array(labels)
    _check_int("clients", clients, 1)
    _check_int("seed", seed, 0)
    if not isinstance(test_fraction, Real) or not 0 <= test_fraction < 1:
        raise LayerLMCError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if clients > len(y):
        raise LayerLMCError(
            f"cannot split {len(y)} examples among {clients} clients: more clients than examples"
        )
    name = ALIASES.get(scheme, scheme)
    if name not in _SPLITTERS:
        raise unknown("partition scheme", scheme, (*SCHEMES, *ALIASES))
    # Checked whatever the scheme, so a typo in a config fails before a scheme switch exposes it.
    _check_int("classes_per_client", classes_per_client, 1)
    _check_int("min_size", min_size, 0)
    if not isinstance(alpha, Real) or not alpha > 0 or not math.isfinite(alpha):
        raise LayerLMCError(f"dirichlet alpha must be a positive number, got {alpha}")

    # Separate streams, so the local test split does not shift when a scheme draws more or less.
    assign_seq, local_seq = np.random.SeedSequence(seed).spawn(2)
    options = {"classes_per_client": classes_per_client, "alpha": alpha, "min_size": min_size}
    groups = _SPLITTERS[name](y, clients, np.random.default_rng(assign_seq), **options)
    local_rng = np.random.default_rng(local_seq)
    return [_local_split(g, test_fraction, local_rng) for g in groups]


def summary_table(labels: Labels, parts: Sequence[ClientSplit]) -> pd.DataFrame:
    """Per-client sizes and class counts of a partition.

    One row per client with columns ``client``, ``n_train``, ``n_test``, ``classes`` (number
    of distinct classes the client has) and one column per class of ``labels``, named
    ``str(label)``, holding the client's number of examples of that class (train + test).
    Print it with :func:`format_summary`.
    """
    y = _as_label_array(labels)
    classes = np.unique(y)
    rows = []
    for i, part in enumerate(parts):
        idx = part.indices.numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise LayerLMCError(
                f"client {i} has indices outside 0..{len(y) - 1}: the partition is for other labels"
            )
        counts = np.searchsorted(classes, y[idx])
        per_class = np.bincount(counts, minlength=len(classes))
        row = {
            "client": i,
            "n_train": int(part.train.numel()),
            "n_test": int(part.test.numel()),
            "classes": int(np.count_nonzero(per_class)),
        }
        row.update(
            {str(c): int(n) for c, n in zip(classes.tolist(), per_class.tolist(), strict=True)}
        )
        rows.append(row)
    columns = ["client", "n_train", "n_test", "classes", *(str(c) for c in classes.tolist())]
    return pd.DataFrame(rows, columns=columns).astype("int64")


def format_summary(table: pd.DataFrame, max_class_columns: int = 20) -> str:
    """Text for a :func:`summary_table`: the table plus a totals line.

    With more than ``max_class_columns`` classes the per-class columns are folded into one
    ``label:count`` column listing the client's non-empty classes, so the lines stay readable.
    """
    fixed = ["client", "n_train", "n_test", "classes"]
    class_cols = [c for c in table.columns if c not in fixed]
    shown = table
    if len(class_cols) > max_class_columns:
        shown = table[fixed].copy()
        shown["label:count"] = [
            " ".join(f"{c}:{row[c]}" for c in class_cols if row[c]) for _, row in table.iterrows()
        ]
    n_train, n_test = int(table["n_train"].sum()), int(table["n_test"].sum())
    total = (
        f"{len(table)} clients, {n_train + n_test} examples "
        f"(local train {n_train}, local test {n_test}), {len(class_cols)} classes"
    )
    return shown.to_string(index=False) + "\n" + total


# --- schemes: each returns one index array per client (train + test together) ---------------


def _iid(y: np.ndarray, k: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    return np.array_split(rng.permutation(len(y)), k)


def _halves(y: np.ndarray, k: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    return np.array_split(np.arange(len(y)), k)


def _shards(
    y: np.ndarray, k: int, rng: np.random.Generator, *, classes_per_client: int, **_: object
) -> list[np.ndarray]:
    classes, counts = np.unique(y, return_counts=True)
    per = classes_per_client
    if per > len(classes):
        raise LayerLMCError(
            f"cannot give {k} clients {per} classes each: the labels have only "
            f"{len(classes)} classes"
        )
    total = k * per
    if total < len(classes):
        # Fewer shards than classes would leave whole classes unassigned.
        raise LayerLMCError(
            f"cannot give {k} clients {per} classes each: {len(classes)} classes need at least "
            f"{len(classes)} shards, got {k} x {per} = {total}; raise clients or classes_per_client"
        )
    # Shards per class differ by at most one; the extra ones go to the largest classes so that
    # a partition is refused only when even an even spread does not fit.
    shards = np.full(len(classes), total // len(classes))
    by_size = np.lexsort((classes, -counts))
    shards[by_size[: total % len(classes)]] += 1
    too_small = np.flatnonzero(counts < shards)
    if too_small.size:
        c = too_small[0]
        raise LayerLMCError(
            f"cannot give {k} clients {per} classes each: class {classes[c]} has {counts[c]} "
            f"examples for {shards[c]} shards"
        )

    # Stable sort keeps the dataset order inside a class, as in FedAvg's "sort by label".
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    pools = []
    for c in range(len(classes)):
        pieces = np.array_split(order[starts[c] : starts[c + 1]], shards[c])
        pools.append([pieces[j] for j in rng.permutation(len(pieces))])

    # Invariant with n clients left: every class has <= n shards left and k*n shards remain.
    # Taking every class that has exactly n shards, plus a random choice of other non-empty
    # classes, keeps it, so every client gets `per` distinct classes and no draw can dead-end.
    left = shards.copy()
    groups = []
    for n in range(k, 0, -1):
        forced = np.flatnonzero(left == n)
        others = np.flatnonzero((left > 0) & (left < n))
        chosen = np.concatenate([forced, rng.choice(others, per - len(forced), replace=False)])
        groups.append(np.concatenate([pools[c].pop() for c in chosen]))
        left[chosen] -= 1
    return [groups[i] for i in rng.permutation(k)]


def _dirichlet(
    y: np.ndarray, k: int, rng: np.random.Generator, *, alpha: float, min_size: int, **_: object
) -> list[np.ndarray]:
    n = len(y)
    if k * min_size > n:
        raise LayerLMCError(
            f"cannot give {k} clients at least {min_size} examples each: only {n} examples; "
            "use a smaller min_size or fewer clients"
        )
    classes = np.unique(y)
    members = [np.flatnonzero(y == c) for c in classes]
    best = -1
    for _ in range(DIRICHLET_TRIES):
        groups: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in members:
            idx = rng.permutation(idx)
            share = rng.dirichlet(np.full(k, float(alpha)))
            cuts = (np.cumsum(share) * len(idx)).astype(np.int64)[:-1]
            for g, piece in zip(groups, np.split(idx, cuts), strict=True):
                g.append(piece)
        sizes = [sum(len(p) for p in g) for g in groups]
        best = max(best, min(sizes))
        if best >= min_size:
            return [np.concatenate(g) for g in groups]
    raise LayerLMCError(
        f"dirichlet partition failed: in {DIRICHLET_TRIES} draws some of the {k} clients always "
        f"had fewer than min_size={min_size} examples (best draw: {best}; {n} examples, "
        f"alpha={alpha}); use a larger alpha or a smaller min_size"
    )


_SPLITTERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": _iid,
    "halves": _halves,
    "shards": _shards,
    "dirichlet": _dirichlet,
}


# --- helpers ----------------------------------------------------------------------------------


def _local_split(idx: np.ndarray, test_fraction: float, rng: np.random.Generator) -> ClientSplit:
    n = len(idx)
    n_test = 0
    if test_fraction > 0 and n >= 2:
        # A client with an empty local test (or train) part cannot be evaluated (or trained);
        # a lone example is better spent on training.
        n_test = min(max(math.ceil(test_fraction * n - 1e-9), 1), n - 1)
    shuffled = rng.permutation(np.asarray(idx, dtype=np.int64))
    test, train = np.sort(shuffled[:n_test]), np.sort(shuffled[n_test:])
    return ClientSplit(torch.from_numpy(train), torch.from_numpy(test))


def _as_label_array(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise LayerLMCError(f"labels must be 1-D (one class per example), got shape {y.shape}")
    if y.size and (y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer)):
        raise LayerLMCError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise LayerLMCError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise LayerLMCError(f"{name} must be at least {least}, got {value}")
