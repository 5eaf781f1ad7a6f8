import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerlmc.errors import LayerLMCError
from layerlmc.evaluate import Evaluator, prepare_splits


class Dataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_loss_is_per_example_mean_with_a_ragged_last_batch():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    evaluator = Evaluator(model, prepare_splits({"test": (x, y)}), batch_size=4)  # 4 + 4 + 2
    metrics = evaluator.evaluate(dict(model.state_dict()), "test")
    logits = model(x)
    by_hand = sum(-torch.log_softmax(logits[i], -1)[y[i]].item() for i in range(10)) / 10
    assert metrics.loss == pytest.approx(by_hand, rel=1e-6)
    # the mean of batch means (the paper's code) weighs the last batch more: it differs
    batch_means = [F.cross_entropy(logits[s:s + 4], y[s:s + 4]).item() for s in (0, 4, 8)]
    assert abs(sum(batch_means) / 3 - by_hand) > 1e-4
    assert metrics.accuracy == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert metrics.n == 10 and metrics.error == pytest.approx(1 - metrics.accuracy)


def test_dataset_splits_and_seeded_subsets():
    x, y = torch.randn(30, 3), torch.randint(0, 4, (30,))
    splits = prepare_splits({"train": Dataset(x, y)}, max_examples=12, seed=3)
    again = prepare_splits({"train": (x, y)}, max_examples=12, seed=3)
    assert len(splits["train"]) == 12
    assert torch.equal(splits["train"].inputs, again["train"].inputs)
    other = prepare_splits({"train": (x, y)}, max_examples=12, seed=4)
    assert not torch.equal(other["train"].inputs, again["train"].inputs)


def test_bad_data_is_named():
    model = nn.Linear(3, 4)
    with pytest.raises(LayerLMCError, match="split 'test' is empty"):
        prepare_splits({"test": (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))})
    with pytest.raises(LayerLMCError, match="did you mean 'test'"):
        prepare_splits({"test": (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))}, ["tset"])
    with pytest.raises(LayerLMCError, match="integer class indices"):
        prepare_splits({"test": (torch.zeros(2, 3), torch.zeros(2))})
    splits = prepare_splits({"test": (torch.zeros(2, 3), torch.tensor([0, 7]))})
    with pytest.raises(LayerLMCError, match=r"labels range over \[0, 7\] but the model outputs 4 classes"):
        Evaluator(model, splits).evaluate(dict(model.state_dict()), "test")
