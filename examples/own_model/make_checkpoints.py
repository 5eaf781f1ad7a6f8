"""Train two copies of `make_net` from one initialization with different data order and save
them as A.pt (a nested training checkpoint, as many scripts write) and B.safetensors.

    python make_checkpoints.py && layerlmc barriers A.pt B.safetensors \
        --model my_models.py:make_net --data my_data.py:make_splits --out runs/ab --cumulative shallow
"""

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from layerlmc import save_state_dict

sys.path.insert(0, str(Path(__file__).parent))
from my_data import make_splits  # noqa: E402
from my_models import make_net  # noqa: E402


def train(model, inputs, labels, epochs, seed, lr=0.1, batch_size=64):
    """A plain training loop, as your own script would have; only the data order depends on seed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=order).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[index]), labels[index]).backward()
            optimizer.step()
    return model


def main(folder: Path = Path("."), epochs: int = 5) -> None:
    data = make_splits()
    torch.manual_seed(0)
    init = make_net()
    for name, seed in (("A", 1), ("B", 2)):
        model = train(copy.deepcopy(init), *data["train"], epochs=epochs, seed=seed)
        if name == "A":
            torch.save({"epoch": epochs, "state_dict": model.state_dict()}, folder / "A.pt")
        else:
            save_state_dict(model.state_dict(), folder / "B.safetensors")
    print(f"wrote {folder / 'A.pt'} and {folder / 'B.safetensors'}")


if __name__ == "__main__":
    main()
