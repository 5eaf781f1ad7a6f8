"""Names a user types: datasets and models under any spelling, aliases, suggestions that hold
what was typed."""

from __future__ import annotations

import pytest

from layerlmc import specs  # noqa: F401  (registers the built-ins)
from layerlmc.errors import LayerLMCError, did_you_mean, spelling
from layerlmc.registry import Registry, datasets, models


@pytest.mark.parametrize("typed, name", [
    ("fmnist", "fashion-mnist"), ("fashion_mnist", "fashion-mnist"),
    ("FashionMNIST", "fashion-mnist"), ("Fashion-MNIST", "fashion-mnist"),
    ("cifar-10", "cifar10"), ("CIFAR10", "cifar10"), ("CIFAR-100", "cifar100"), ("MNIST", "mnist"),
])
def test_common_spellings_and_aliases_of_datasets(typed, name):
    assert datasets.resolve(typed) == name
    assert typed in datasets


def test_models_are_found_under_any_spelling():
    assert models.resolve("ResNet18") == "resnet18" and models.resolve("Char_GPT") == "char-gpt"


@pytest.mark.parametrize("typed, suggested", [
    ("fashion", "fashion-mnist"), ("fashon-mnist", "fashion-mnist"), ("cifar", "cifar10"),
    ("mnsit", "mnist"), ("jargn", "jargon"),
])
def test_an_unknown_dataset_suggests_the_name_that_holds_what_was_typed(typed, suggested):
    with pytest.raises(LayerLMCError, match=f"unknown dataset '{typed}' \\(did you mean '{suggested}'\\?\\)"):
        datasets.get(typed)


def test_a_suggestion_prefers_an_abbreviated_name_over_a_similar_one():
    # 'fmnist' is closer to 'mnist' by edit distance, but it abbreviates 'fashion-mnist'
    assert did_you_mean("fmnist", ["mnist", "fashion-mnist"]) == " (did you mean 'fashion-mnist'?)"
    assert did_you_mean("zzz", ["mnist", "cifar10"]) == " (choices: cifar10, mnist)"


def test_the_data_option_takes_an_alias(tiny_fmnist):
    assert specs.build_data("fmnist").keys() == specs.build_data("fashion-mnist").keys()


def test_two_names_with_one_spelling_are_refused():
    registry = Registry("thing")
    registry.register("a-b")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("A_B")(lambda: 2)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("c", aliases=("ab",))(lambda: 3)
    assert spelling("Fashion_MNIST-v2") == "fashionmnistv2"
