"""The benchmark cases: each model's sizes, its Fashion-MNIST subsets and the sweep's points."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Spec:
    """One benchmarked model and its data; sizes are multiples of 256, so that the paper's mean
    of batch means and our per-example mean are the same number and can be compared exactly."""

    model: str
    kwargs: dict
    train: int
    test: int
    pad: int  # zero pixels on each side (ResNet-18 takes 32×32)
    batch: int  # layerlmc's and the floor's batch size
    rounds: int
    #: the CLI case: ``layerlmc barriers`` run end to end as a subprocess, α ∈ {0, ½, 1} for
    #: both bases on groups and the full path (the API cases: α=½)
    cli: bool = False


def specs(quick: bool, resnet_width: int, gpu: bool = False, batch: int | None = None) -> dict[str, Spec]:
    if gpu:
        # the GPU check (issues 7 and 14): the real ResNet-18 (width 64) without normalisation,
        # batch 512, sized so bench/gpu.sh stays under 5 minutes on one GPU: the baseline's
        # item-by-item loader runs on the CPU and dominates (ResNet-18: 87 models × 10,240 items)
        chosen = {
            "mlp": Spec("mlp", {}, 10240, 10240, 0, 512, 2),
            "cnn": Spec("cnn", {}, 10240, 10240, 0, 512, 1),
            "resnet18": Spec("resnet18", {"in_channels": 1, "width": resnet_width, "norm": "none"},
                             5120, 5120, 2, 512, 1),
        }
    elif quick:
        chosen = {
            "mlp": Spec("mlp", {}, 1024, 1024, 0, 1024, 1),
            "cnn": Spec("cnn", {}, 256, 256, 0, 256, 1),
            "resnet18": Spec("resnet18", {"in_channels": 1, "width": 4, "norm": "none"},
                             256, 256, 2, 256, 1),
        }
    else:
        chosen = _cpu_specs(resnet_width)
    if batch:
        chosen = {name: replace(spec, batch=batch) for name, spec in chosen.items()}
    return chosen


def _cpu_specs(resnet_width: int) -> dict[str, Spec]:
    # sized so the whole run takes ~10 minutes on 2 busy cores with one thread
    return {
        "mlp": Spec("mlp", {}, 8192, 8192, 0, 1024, 5),  # ~1 s each: noisy, so more rounds
        "cnn": Spec("cnn", {}, 2048, 2048, 0, 1024, 2),
        "resnet18": Spec("resnet18", {"in_channels": 1, "width": resnet_width, "norm": "none"},
                         512, 512, 2, 512, 1),
    }


def cli_spec(quick: bool) -> Spec:
    """Issue 14's CLI case: a deep MLP (6 hidden layers of 512) on all 70k Fashion-MNIST images
    (quick: 2 of 128, 2,048 train images and the whole test split), through the command."""
    if quick:
        return Spec("mlp", {"hidden": [128] * 2}, 2048, 10000, 0, 1024, 1, cli=True)
    return Spec("mlp", {"hidden": [512] * 6}, 60000, 10000, 0, 1024, 1, cli=True)


def memory_spec(quick: bool) -> Spec:
    """A ~100M-parameter MLP (fc1..fc7 of width 4096 and head: 104M parameters, 417 MB) on
    a few examples: memory, not speed, is what this measures."""
    hidden = [1024] * 4 if quick else [4096] * 7
    return Spec("mlp", {"hidden": hidden}, 64, 64, 0, 64, 1)


def model_constructor(spec: Spec):
    """The model constructor (a fresh, randomly initialised network per call)."""
    from layerlmc.models import cnn, mlp
    from layerlmc.models.resnet import resnet18

    return {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}[spec.model], spec.kwargs


def fashion_mnist_subset(split: str, count: int, pad: int):
    """A fixed seeded subset of one Fashion-MNIST split as uint8 [N, H, W] and int64 labels."""
    import numpy as np
    import torch

    from layerlmc.data import fashion_mnist as fm

    folder = fm.find_dir()
    names = fm.FILES[split]
    paths = [folder / n if (folder / n).is_file() else folder / f"{n}.gz" for n in names]
    images, labels = fm.read_idx(paths[0]), fm.read_idx(paths[1]).astype(np.int64)
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:count]
    chosen = chosen.sort().values.numpy()
    images, labels = images[chosen], labels[chosen]
    if pad:  # like torchvision's Pad(pad) before ToTensor: black pixels
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return np.ascontiguousarray(images), labels


def preloaded_tensors(images, labels):
    """Preloaded float tensors, with exactly the per-item pipeline's arithmetic."""
    import torch

    from layerlmc.data.fashion_mnist import MEAN, STD

    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    return x.sub(MEAN).div(STD), torch.from_numpy(labels)


def logic_layers(state) -> dict[str, list[str]]:
    """The paper's logic layers (PAPER.md §1.4), named with dots like layerlmc's module groups."""
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return groups


def sweep_states(groups: int, cli: bool) -> set[tuple[str, ...]]:
    """The distinct network states of the sweep, each as the weights of every group in order:
    ``a``, ``b`` or ``m`` (their midpoint). The API sweep: a, b, the full midpoint and each
    group at α=½ from either base; the CLI case (α ∈ {0, ½, 1}) adds each group swapped in."""
    states = {("a",) * groups, ("b",) * groups, ("m",) * groups}
    for k in range(groups):
        for base, others in (("a", "mb" if cli else "m"), ("b", "am" if cli else "m")):
            for weights in others:
                state = [base] * groups
                state[k] = weights
                states.add(tuple(state))
    return states


def shared_fraction(states: set[tuple[str, ...]], work: list[tuple[float, frozenset[int]]]) -> float:
    """The cost of evaluating ``states`` with every value computed once per distinct weights it
    depends on, as a fraction of one whole forward pass per state. ``work`` lists each step of a
    forward pass as (its cost, the groups whose weights it depends on, by position in a state):
    two states that agree on those groups compute that step alike."""
    shared = sum(cost * len({tuple(state[g] for g in sorted(depends)) for state in states})
                 for cost, depends in work)
    return shared / (len(states) * sum(cost for cost, _ in work))


def point_key(kind: str, group: str, base: str | None, alpha: float, split: str) -> str:
    """One (point, split) of the sweep, named the same by every method so they can be compared."""
    return f"{kind}|{group}|{base}|{alpha:g}|{split}"
