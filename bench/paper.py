"""The baseline: the paper's evaluation of the standard sweep, written from its description.

PAPER.md §1.3, §9: per point a fresh model and ``copy.deepcopy`` of both state dicts,
interpolation into a new state dict, ``load_state_dict``, a ``DataLoader`` (batch 256) over a
``Dataset`` that converts and normalises each uint8 image on its own, α ∈ {0, ½, 1} for both
bases per group (4 models per group) and the full path, mean of batch means.
"""

from __future__ import annotations

import copy

from bench.cases import Spec, logic_layers, model_constructor, point_key

PAPER_BATCH = 256  # the paper's evaluation batch size (PAPER.md §1.2)


def run_baseline(spec: Spec, a, b, raw: dict, device) -> dict[str, list[float]]:
    """The paper's method (PAPER.md §1.3, §9), written from its description."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset

    from layerlmc.data.fashion_mnist import MEAN, STD

    class ItemDataset(Dataset):
        """uint8 images converted and normalised one item at a time (ToTensor + Normalize)."""

        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int):
            x = torch.from_numpy(self.images[i]).float().div(255.0).unsqueeze(0)
            return x.sub_(MEAN).div_(STD), int(self.labels[i])

    # num_workers=0: worker processes would only fight for the same two cores
    loaders = {s: DataLoader(ItemDataset(*raw[s]), batch_size=PAPER_BATCH, shuffle=False)
               for s in raw}
    make, kwargs = model_constructor(spec)

    def point(keys, alpha: float, base: str):
        sd1, sd2 = copy.deepcopy(a), copy.deepcopy(b)
        new = dict(sd1 if base == "a" else sd2)
        for k in keys:
            new[k] = (1 - alpha) * sd1[k] + alpha * sd2[k]
        net = make(**kwargs).to(device)
        net.load_state_dict(new)
        return net.eval()

    @torch.no_grad()
    def evaluate(net, loader) -> list[float]:
        batch_means, total, correct, n, batches = 0.0, 0.0, 0, 0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = net(x)
            batch_means += F.cross_entropy(out, y).item()
            # per-example sum too, only to check the two means agree (N is a multiple of 256)
            total += F.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
            batches += 1
        return [batch_means / batches, correct / n, total / n]

    records: dict[str, list[float]] = {}
    everything = list(a)
    for alpha in (0.0, 0.5, 1.0):  # the full path: np.linspace(0, 1, 3)
        net = point(everything, alpha, "a")
        for split, loader in loaders.items():
            metrics = evaluate(net, loader)
            if alpha == 0.5:
                records[point_key("full", "full", None, 0.5, split)] = metrics
            else:
                base = "a" if alpha == 0 else "b"
                records[point_key("endpoint", "full", base, alpha, split)] = metrics
    for name, keys in logic_layers(a).items():
        # get_layer_barrier's 4 models: B with A's layer, ½ into A, ½ into B, A with B's layer
        for alpha, base in ((0.0, "b"), (0.5, "a"), (0.5, "b"), (1.0, "a")):
            net = point(keys, alpha, base)
            for split, loader in loaders.items():
                records[point_key("group", name, base, alpha, split)] = evaluate(net, loader)
    return records
