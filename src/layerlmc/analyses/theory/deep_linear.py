"""Layer cuts of deep linear networks: Theorem 4.1 of the paper (PAPER.md §3.1), checked.

A deep linear network maps inputs ``X`` (n, d0) to ``f(X) = X·W1·W2·…·WL`` with ``Wk`` of shape
(d_{k-1}, d_k). A **cut** interpolates some layers between two endpoints ``a`` and ``b``,
``Wk(α) = (1−α)·Wk_a + α·Wk_b``, and takes every other layer from a **base** (``a`` or ``b``):

- ``cut="layer"``: one layer. The output is affine in α, so any loss convex in the output
  (squared error, cross-entropy) is convex in α: the theorem.
- ``cut="pair"``: two layers. The output is quadratic in α and convexity can fail.
- ``cut="full"``: every layer (no base). The output has degree L in α.

For squared error the loss along any cut is a polynomial in α, computed exactly by
:func:`mse_polynomial`; for a single layer it is a parabola whose leading coefficient is the mean
squared change of the output, hence never negative.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...core.paths import parse_alphas
from ...errors import LayerLMCError, unknown

log = logging.getLogger("layerlmc")

LOSSES = ("mse", "ce")
CUTS = ("layer", "pair", "full")
BASES = ("a", "b")
#: Default α grid: 101 points, both ends included.
ALPHAS = "0:1:101"
#: Second differences down to −(RTOL·max|L| + ATOL) count as rounding, not as a failure of
#: convexity: float64 losses carry relative errors of ~1e-16 times their terms, and
#: cross-entropy near 0 an absolute one of ~1e-16 (log-sum-exp around 1).
RTOL = 1e-9
ATOL = 1e-12
CURVE_COLUMNS = ("cut", "layers", "base", "alpha", "loss")
CONVEXITY_COLUMNS = ("cut", "layers", "base", "convex", "min_second_difference", "barrier")


@dataclass
class DeepLinearPair:
    """Two endpoints of one deep linear architecture and the data their loss is measured on.

    ``inputs`` (n, d0) float64; ``targets`` (n, dL) float64 for ``mse`` or (n,) int64 class
    indices in [0, dL) for ``ce``; ``weights_a``/``weights_b``: lists of L float64 matrices,
    layer k of shape (d_{k-1}, d_k).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    weights_a: list[torch.Tensor]
    weights_b: list[torch.Tensor]
    loss: str = "mse"

    def __post_init__(self) -> None:
        check_loss(self.loss)
        if len(self.weights_a) != len(self.weights_b) or not self.weights_a:
            raise LayerLMCError(
                f"endpoints need the same, non-zero number of layers; got "
                f"{len(self.weights_a)} and {len(self.weights_b)}"
            )
        self.inputs = torch.as_tensor(self.inputs, dtype=torch.float64)
        self.weights_a = [torch.as_tensor(w, dtype=torch.float64) for w in self.weights_a]
        self.weights_b = [torch.as_tensor(w, dtype=torch.float64) for w in self.weights_b]
        width = self.inputs.shape[1]
        for k, (wa, wb) in enumerate(zip(self.weights_a, self.weights_b), start=1):
            if wa.shape != wb.shape or wa.ndim != 2 or wa.shape[0] != width:
                raise LayerLMCError(
                    f"layer {k}: weights of shape {tuple(wa.shape)} and {tuple(wb.shape)} do not "
                    f"chain onto a previous width of {width}"
                )
            width = wa.shape[1]
        n = self.inputs.shape[0]
        if self.loss == "ce":
            self.targets = torch.as_tensor(self.targets, dtype=torch.int64)
            if self.targets.shape != (n,) or not bool(
                    ((self.targets >= 0) & (self.targets < width)).all()):
                raise LayerLMCError(
                    f"cross-entropy targets must be {n} class indices in [0, {width}); got shape "
                    f"{tuple(self.targets.shape)}"
                )
        else:
            self.targets = torch.as_tensor(self.targets, dtype=torch.float64)
            if self.targets.shape != (n, width):
                raise LayerLMCError(
                    f"squared-error targets must have shape {(n, width)}; got "
                    f"{tuple(self.targets.shape)}"
                )

    @property
    def depth(self) -> int:
        return len(self.weights_a)


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise unknown("loss", loss, LOSSES)


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: these matrices are tiny, and the thread pool costs ~100× the
    arithmetic (worse when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise LayerLMCError(f"{name} must be a positive integer; got {value!r}")


# -- the network and its loss -----------------------------------------------------------------


def network_output(inputs: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``inputs · W1 · … · WL``; a leading batch dimension on any factor (one per α) broadcasts.

    inputs (n, d0), weights[k] (d_k, d_{k+1}) or (A, d_k, d_{k+1}) → (n, dL) or (A, n, dL).
    """
    out = inputs
    for weight in weights:
        out = out @ weight
    return out


def loss_of_output(output: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss over the last two dimensions of ``output`` (…, n, dL).

    ``mse``: mean over examples and outputs of (f(X) − Y)²; ``ce``: mean cross-entropy per
    example, ``targets`` being class indices.
    """
    check_loss(loss)
    if loss == "mse":
        return ((output - targets) ** 2).mean(dim=(-2, -1))
    logp = torch.log_softmax(output, dim=-1)
    index = targets.expand(*output.shape[:-1]).unsqueeze(-1)
    return -logp.gather(-1, index).squeeze(-1).mean(dim=-1)


# -- data and training ------------------------------------------------------------------------


def make_data(
    examples: int, in_features: int, out_features: int, loss: str = "mse", seed: int = 0,
    noise: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded synthetic data: ``X`` (n, d0) standard normal and a random linear teacher ``M``.

    ``mse``: targets ``X·M + noise·ε`` (n, dL) float64; ``ce``: labels ``argmax(X·M + noise·ε)``
    (n,) int64 over ``out_features`` classes.
    """
    check_loss(loss)
    _check_sizes(examples=examples, in_features=in_features, out_features=out_features)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(examples, in_features, generator=gen, dtype=torch.float64)
    teacher = torch.randn(in_features, out_features, generator=gen, dtype=torch.float64)
    teacher /= math.sqrt(in_features)
    signal = inputs @ teacher + noise * torch.randn(
        examples, out_features, generator=gen, dtype=torch.float64)
    return (inputs, signal) if loss == "mse" else (inputs, signal.argmax(dim=1))


def init_weights(widths: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Gaussian matrices with variance 1/fan-in, so the output keeps the input's scale."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(d_in, d_out, generator=gen, dtype=torch.float64) / math.sqrt(d_in)
            for d_in, d_out in itertools.pairwise(widths)]


def train(
    inputs: torch.Tensor, targets: torch.Tensor, weights: Sequence[torch.Tensor], loss: str,
    steps: int, lr: float, batch_size: int, seed: int,
) -> list[torch.Tensor]:
    """Plain mini-batch gradient descent from ``weights``, in a data order drawn from ``seed``."""
    weights = [w.clone().requires_grad_(True) for w in weights]
    gen = torch.Generator().manual_seed(seed)
    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    with _one_thread():
        for _ in range(steps):
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            batch = order[cursor:cursor + batch_size]
            cursor += batch_size
            value = loss_of_output(network_output(inputs[batch], weights), targets[batch], loss)
            grads = torch.autograd.grad(value, weights)
            with torch.no_grad():
                for weight, grad in zip(weights, grads):
                    weight -= lr * grad
    return [w.detach() for w in weights]


def deep_linear_pair(
    depth: int, width: int, loss: str = "mse", examples: int = 256, steps: int = 1000,
    seed: int = 0, *, in_features: int | None = None, out_features: int | None = None,
    same_init: bool = False, lr: float | None = None, batch_size: int = 32, noise: float = 0.1,
) -> DeepLinearPair:
    """Data and two trained endpoints: the realistic minima whose cuts the study draws.

    Both networks (depth L, hidden width ``width``; input and output width default to
    ``width``) learn the same seeded data with mini-batch gradient descent for ``steps``
    updates, each in its own data order; with ``same_init`` they start from one initialization
    (as in the paper's pairs), otherwise from two.
    """
    check_loss(loss)
    _check_sizes(depth=depth, width=width, examples=examples, steps=steps, batch_size=batch_size)
    d_in, d_out = in_features or width, out_features or width
    _check_sizes(in_features=d_in, out_features=d_out)
    if loss == "ce" and d_out < 2:
        raise LayerLMCError("cross-entropy needs at least 2 classes (output width ≥ 2)")
    lr = lr if lr is not None else (0.1 if loss == "mse" else 0.2)
    if not lr > 0:
        raise LayerLMCError(f"the learning rate must be positive; got {lr}")
    inputs, targets = make_data(examples, d_in, d_out, loss, seed, noise)
    widths = [d_in] + [width] * (depth - 1) + [d_out]
    start_a = init_weights(widths, seed + 1)
    start_b = start_a if same_init else init_weights(widths, seed + 2)
    weights_a = train(inputs, targets, start_a, loss, steps, lr, batch_size, seed + 3)
    weights_b = train(inputs, targets, start_b, loss, steps, lr, batch_size, seed + 4)
    pair = DeepLinearPair(inputs, targets, weights_a, weights_b, loss)
    for name, weights in (("a", weights_a), ("b", weights_b)):
        value = float(loss_of_output(network_output(inputs, weights), pair.targets, loss))
        if not math.isfinite(value):
            raise LayerLMCError(f"training of endpoint {name} diverged; lower the learning rate")
        log.info("endpoint %s: %s loss %.4g after %d steps", name, loss, value, steps)
    return pair


# -- cuts -------------------------------------------------------------------------------------


def cut_sets(depth: int, pairs: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """``(cut, layers)`` input → output: each layer, each pair (unless it is the whole network,
    at depth 2), then the full path. Layers count from 1 as in the paper's W^(1)."""
    sets = [("layer", (k,)) for k in range(1, depth + 1)]
    if pairs and depth > 2:
        sets += [("pair", p) for p in itertools.combinations(range(1, depth + 1), 2)]
    return sets + [("full", tuple(range(1, depth + 1)))]


def layers_label(layers: Sequence[int]) -> str:
    return "+".join(str(k) for k in layers)


def cut_weights(
    weights_a: Sequence[torch.Tensor], weights_b: Sequence[torch.Tensor], layers: Sequence[int],
    base: str | None, alphas: torch.Tensor | float,
) -> list[torch.Tensor]:
    """The network at α along a cut: layers (1-based) blended, the rest from ``base``.

    With a 1-D tensor of A alphas, blended layers get a leading α dimension (A, d, d').
    """
    alpha = torch.as_tensor(alphas, dtype=torch.float64)
    if alpha.ndim:
        alpha = alpha.reshape(-1, 1, 1)
    chosen = set(layers)
    if base not in BASES and len(chosen) < len(weights_a):
        raise LayerLMCError(f"a cut of layers {layers_label(layers)} needs a base 'a' or 'b'")
    weights = []
    for k, (wa, wb) in enumerate(zip(weights_a, weights_b), start=1):
        if k in chosen:
            weights.append((1 - alpha) * wa + alpha * wb)
        else:
            weights.append(wa if base == "a" else wb)
    return weights


def cut_losses(
    pair: DeepLinearPair, layers: Sequence[int], base: str | None, alphas: Sequence[float],
) -> np.ndarray:
    """Loss at every α of the grid along one cut, float64 (A,)."""
    grid = torch.as_tensor(list(alphas), dtype=torch.float64)
    with _one_thread():
        weights = cut_weights(pair.weights_a, pair.weights_b, layers, base, grid)
        output = network_output(pair.inputs, weights)
        if output.ndim == 2:  # no blended layer: the same network at every α
            output = output.expand(len(grid), *output.shape)
        return loss_of_output(output, pair.targets, pair.loss).numpy()


def layer_cuts(
    pair: DeepLinearPair, alphas: str | Sequence[float] = ALPHAS, pairs: bool = True,
) -> pd.DataFrame:
    """Tidy curves of every cut of ``pair``: columns ``cut, layers, base, alpha, loss``.

    ``cut`` is ``layer``, ``pair`` or ``full``; ``layers`` the blended layers joined by ``+``
    (``"2"``, ``"1+3"``); ``base`` ``a``/``b`` (None on the full path); one row per α.
    """
    grid = parse_alphas(alphas)
    frames = []
    for cut, layers in cut_sets(pair.depth, pairs):
        for base in ((None,) if cut == "full" else BASES):
            frames.append(pd.DataFrame({
                "cut": cut, "layers": layers_label(layers), "base": base, "alpha": grid,
                "loss": cut_losses(pair, layers, base, grid),
            }))
    return pd.concat(frames, ignore_index=True)[list(CURVE_COLUMNS)]


def deep_linear_cuts(
    depth: int, width: int, loss: str = "mse", examples: int = 256, steps: int = 1000,
    seed: int = 0, alphas: str | Sequence[float] = ALPHAS, **options,
) -> pd.DataFrame:
    """Train a pair of deep linear networks (:func:`deep_linear_pair`, ``options`` go there) and
    return the tidy loss curves of all its cuts (:func:`layer_cuts`)."""
    return layer_cuts(deep_linear_pair(depth, width, loss, examples, steps, seed, **options), alphas)


# -- exact polynomials (squared error) --------------------------------------------------------


def mse_polynomial(pair: DeepLinearPair, layers: Sequence[int], base: str | None) -> np.ndarray:
    """Coefficients c_0 … c_2m (ascending) of the squared-error loss along a cut of m layers.

    Each blended layer is the matrix polynomial ``Wk_a + α·(Wk_b − Wk_a)``, so the output is a
    polynomial of degree m and the mean squared residual one of degree 2m. A single layer gives
    a parabola with leading coefficient mean((f_b − f_a)²) ≥ 0, f_a/f_b the outputs with that
    layer from a/b.
    """
    if pair.loss != "mse":
        raise LayerLMCError("the exact polynomial exists for squared error (loss 'mse') only")
    with _one_thread():
        chosen = set(layers)
        coeffs = [pair.inputs]  # the output, as matrix coefficients of α^0, α^1, …
        for k, (wa, wb) in enumerate(zip(pair.weights_a, pair.weights_b), start=1):
            if k in chosen:
                factor = [wa, wb - wa]
            else:
                factor = [wa if base == "a" else wb]
            product = [None] * (len(coeffs) + len(factor) - 1)
            for i, left in enumerate(coeffs):
                for j, right in enumerate(factor):
                    term = left @ right
                    product[i + j] = term if product[i + j] is None else product[i + j] + term
            coeffs = product
        coeffs[0] = coeffs[0] - pair.targets
        count = coeffs[0].numel()
        poly = np.zeros(2 * len(coeffs) - 1)
        for i, left in enumerate(coeffs):
            for j, right in enumerate(coeffs):
                poly[i + j] += float((left * right).sum()) / count
    return poly


def min_curvature(poly: np.ndarray, low: float = 0.0, high: float = 1.0) -> float:
    """min over α in [low, high] of L''(α) for L with ascending coefficients ``poly``."""
    second = np.polynomial.polynomial.polyder(poly, 2)
    if second.size == 0:
        return 0.0
    candidates = [low, high]
    third = np.polynomial.polynomial.polyder(second)
    if third.size and np.any(third != 0):
        roots = np.polynomial.polynomial.polyroots(np.trim_zeros(third, "b"))
        candidates += [r.real for r in roots if abs(r.imag) < 1e-12 and low < r.real < high]
    return float(min(np.polynomial.polynomial.polyval(candidates, second)))


def exact_curvature(pair: DeepLinearPair, pairs: bool = True) -> pd.DataFrame:
    """Per cut (squared error): ``cut, layers, base, leading_coefficient, min_curvature``.

    ``leading_coefficient`` is that of α^(2m) (α² for one layer); ``min_curvature`` the exact
    minimum of L''(α) over [0, 1] (negative: the cut is not convex).
    """
    rows = []
    for cut, layers in cut_sets(pair.depth, pairs):
        for base in ((None,) if cut == "full" else BASES):
            poly = mse_polynomial(pair, layers, base)
            rows.append({"cut": cut, "layers": layers_label(layers), "base": base,
                         "leading_coefficient": float(poly[-1]), "min_curvature": min_curvature(poly)})
    return pd.DataFrame(rows)


# -- convexity --------------------------------------------------------------------------------


def curve_convexity(
    alphas: Sequence[float], losses: Sequence[float], rtol: float = RTOL, atol: float = ATOL,
) -> tuple[bool, float, float]:
    """``(convex, min_second_difference, barrier)`` of one curve sampled on a grid.

    The second difference at an inner point is the change of slope times the mean of the two
    step sizes (on a uniform grid: L(α−h) − 2L(α) + L(α+h)); a convex function never has a
    negative one, so the curve counts as convex when all are ≥ −(rtol·max|L| + atol).
    ``barrier`` is the largest excess of L over the chord between the curve's first and last
    point (≤ 0 for a convex curve, up to rounding). A curve with a non-finite loss is not convex and has barrier inf.
    """
    order = np.argsort(np.asarray(alphas, dtype=np.float64))
    alpha = np.asarray(alphas, dtype=np.float64)[order]
    loss = np.asarray(losses, dtype=np.float64)[order]
    if alpha.size < 3:
        raise LayerLMCError("the convexity check needs at least 3 alphas on the grid")
    if not np.all(np.isfinite(loss)):
        return False, math.nan, math.inf
    step = np.diff(alpha)
    slope = np.diff(loss) / step
    second = np.diff(slope) * (step[:-1] + step[1:]) / 2
    tol = rtol * float(np.max(np.abs(loss))) + atol
    chord = loss[0] + (alpha - alpha[0]) / (alpha[-1] - alpha[0]) * (loss[-1] - loss[0])
    barrier = float(np.max(loss - chord))
    return bool(np.all(second >= -tol)), float(np.min(second)), barrier


def convexity(table: pd.DataFrame, rtol: float = RTOL, atol: float = ATOL) -> pd.DataFrame:
    """Per cut of a :func:`layer_cuts` table: ``cut, layers, base, convex,
    min_second_difference, barrier`` (see :func:`curve_convexity`), in the table's order."""
    missing = [c for c in CURVE_COLUMNS if c not in table]
    if missing:
        raise LayerLMCError(f"the curve table lacks column(s) {', '.join(missing)}")
    rows = []
    for (cut, layers, base), curve in table.groupby(["cut", "layers", "base"], sort=False,
                                                     dropna=False):
        convex, second, barrier = curve_convexity(curve["alpha"], curve["loss"], rtol, atol)
        rows.append({"cut": cut, "layers": layers, "base": None if pd.isna(base) else base,
                     "convex": convex, "min_second_difference": second, "barrier": barrier})
    return pd.DataFrame(rows, columns=list(CONVEXITY_COLUMNS))


def non_convex(report: pd.DataFrame) -> pd.DataFrame:
    """The multi-layer cuts (pairs, the full path) of a :func:`convexity` table that are not
    convex: the cases the theorem does not cover."""
    return report[(report["cut"] != "layer") & ~report["convex"].astype(bool)]


def count_convex(report: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{cut: (convex, total)}`` over the cut kinds present in a :func:`convexity` table."""
    return {cut: (int(rows["convex"].astype(bool).sum()), len(rows))
            for cut, rows in report.groupby("cut", sort=False)}


# -- a study in a run folder ------------------------------------------------------------------


def deep_linear_study(
    out: str | Path, depth: int = 4, width: int = 5, loss: str = "mse", examples: int = 256,
    steps: int = 1000, seed: int = 0, alphas: str | Sequence[float] = ALPHAS, *,
    same_init: bool = False, lr: float | None = None, batch_size: int = 32, noise: float = 0.1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train a pair of deep linear networks, trace every cut and check its convexity.

    Writes into the run folder ``out``: ``cuts.csv`` (the curves, columns of
    :func:`layer_cuts`), ``convexity.csv`` (:func:`convexity`, plus ``leading_coefficient`` and
    ``min_curvature`` from the exact polynomials for ``mse``), ``config.yaml`` and ``run.json``
    (:func:`layerlmc.deep_linear_study` also draws ``figures/deep_linear_cuts.png`` and
    ``.pdf``). Returns (curves, convexity).
    """
    from ...core.records import RunDir

    check_loss(loss)
    _check_sizes(depth=depth, width=width, examples=examples, steps=steps, batch_size=batch_size)
    if loss == "ce" and width < 2:
        raise LayerLMCError("cross-entropy needs at least 2 classes (width ≥ 2)")
    if lr is not None and not lr > 0:
        raise LayerLMCError(f"the learning rate must be positive; got {lr}")
    grid = parse_alphas(alphas)
    if len(grid) < 3:
        raise LayerLMCError("the convexity check needs at least 3 alphas on the grid")
    settings = {"depth": depth, "width": width, "loss": loss, "examples": examples,
                "steps": steps, "seed": seed, "same_init": same_init, "lr": lr,
                "batch_size": batch_size, "noise": noise}
    run = RunDir(out)
    shown = alphas if isinstance(alphas, str) else list(grid)
    run.claim(settings, {"study": "deep-linear", **settings, "alphas": shown}, "cpu")
    with run.status_on_error():
        pair = deep_linear_pair(depth, width, loss, examples, steps, seed, same_init=same_init,
                                lr=lr, batch_size=batch_size, noise=noise)
        curves = layer_cuts(pair, grid)
        report = convexity(curves)
        if loss == "mse":
            exact = exact_curvature(pair)
            report = report.merge(exact, on=["cut", "layers", "base"], how="left", sort=False)
        run.write_file("cuts.csv", curves.to_csv(index=False))
        run.write_file("convexity.csv", report.to_csv(index=False))
        broken = report[(report["cut"] == "layer") & ~report["convex"]]
        if not broken.empty:  # the theorem says this cannot happen: a numerical problem
            log.warning("single-layer cut(s) %s not convex on the grid",
                        ", ".join(broken["layers"] + "/" + broken["base"]))
        run.finish("complete")
    return curves, report
