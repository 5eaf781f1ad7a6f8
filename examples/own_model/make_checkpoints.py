"""Train two copies of `make_net` from one initialization with different data order and save
them as A.pt (a nested training checkpoint, as many scripts write) and B.safetensors.

    python make_checkpoints.py && layerlmc barriers A.pt B.safetensors \
        --model my_models.py:make_net --data my_data.py:make_splits --out runs/ab --cumulative shallow
"""

import copy
import sys
from pathlib import Path

import torch

from layerlmc import save_state_dict
from layerlmc.train import train_epochs

sys.path.insert(0, str(Path(__file__).parent))
from my_data import make_splits  # noqa: E402
from my_models import make_net  # noqa: E402


def main(folder: Path = Path("."), epochs: int = 5) -> None:
    data = make_splits()
    torch.manual_seed(0)
    init = make_net()
    for name, seed in (("A", 1), ("B", 2)):
        model = train_epochs(copy.deepcopy(init), *data["train"], epochs=epochs, lr=0.1, seed=seed)
        if name == "A":
            torch.save({"epoch": epochs, "state_dict": model.state_dict()}, folder / "A.pt")
        else:
            save_state_dict(model.state_dict(), folder / "B.safetensors")
    print(f"wrote {folder / 'A.pt'} and {folder / 'B.safetensors'}")


if __name__ == "__main__":
    main()
