"""Language models: char-level text data, the GPT-style model, barriers and training on text."""

from __future__ import annotations

import gzip
import math

import pytest
import torch
import yaml

import layerlmc
import layerlmc.data.text  # registers the text datasets
import layerlmc.models.gpt  # registers char-gpt
from layerlmc.config import TrainConfig, load_config
from layerlmc.core.groups import layer_groups, tied_keys
from layerlmc.data.text import (
    CharVocab,
    load_text,
    split_text,
    text_splits,
    text_vocab,
    token_windows,
)
from layerlmc.errors import LayerLMCError
from layerlmc.registry import datasets
from layerlmc.specs import build_data, build_model
from layerlmc.train import train_runs

SENTENCE = "the quick brown fox jumps over the lazy dog; PACK MY BOX WITH FIVE DOZEN JUGS!\n"
TINY_GPT = {"vocab_size": 60, "block_size": 16, "dim": 8, "depth": 2, "heads": 2}


@pytest.fixture
def corpus(tmp_path):
    """A small text file (about 4,000 characters) with its vocabulary."""
    path = tmp_path / "corpus.txt"
    path.write_text(SENTENCE * 50, encoding="utf-8")
    return path


def gpt(seed: int, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("char-gpt", {**TINY_GPT, **extra})


def test_vocab_round_trip_and_json(tmp_path):
    text = "héllo, wörld — ∀x ∃y\n\t"
    vocab = CharVocab.from_text(text)
    assert vocab.chars == sorted(set(text)) and len(vocab) == len(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.encode("") .numel() == 0
    path = vocab.save(tmp_path / "run" / "vocab.json")
    assert CharVocab.load(path) == vocab
    with pytest.raises(LayerLMCError, match="not in the vocabulary: 'z'"):
        vocab.encode("zzz")
    with pytest.raises(LayerLMCError, match="vocabulary file not found"):
        CharVocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(LayerLMCError, match="not a layerlmc vocabulary"):
        CharVocab.load(tmp_path / "bad.json")


def test_load_text_reads_gzip(tmp_path, corpus):
    packed = tmp_path / "corpus.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write(corpus.read_text())
    assert load_text(packed) == load_text(corpus) == SENTENCE * 50


def test_windows_are_next_token_shifted_seeded_and_deterministic():
    ids = torch.arange(1000)
    inputs, labels = token_windows(ids, seq_len=12, windows=30, seed=5)
    assert inputs.shape == labels.shape == (30, 12) and inputs.dtype == torch.long
    assert torch.equal(labels, inputs + 1)  # ids are positions: the label is the next token
    assert int(labels.max()) <= 999  # never past the end
    again = token_windows(ids, 12, 30, 5)
    assert torch.equal(inputs, again[0]) and torch.equal(labels, again[1])
    assert not torch.equal(inputs, token_windows(ids, 12, 30, 6)[0])
    assert len(set(inputs[:, 0].tolist())) == 30  # distinct starts while there are enough
    # more windows than starts: drawn with replacement, still in range
    many, _ = token_windows(torch.arange(20), 10, 50, 0)
    assert many.shape == (50, 10) and int(many.max()) <= 18
    with pytest.raises(LayerLMCError, match="too few for one window"):
        token_windows(torch.arange(10), 10, 1, 0)


def test_text_dataset_splits_by_position_without_overlap(corpus):
    text = corpus.read_text()
    vocab = CharVocab.from_text(text)
    data = build_data("text", {"path": str(corpus), "seq_len": 16, "train_windows": 40,
                               "test_windows": 10, "seed": 3, "test_fraction": 0.25})
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape == y.shape == (40, 16) and xt.shape == yt.shape == (10, 16)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(xt[:, 1:], yt[:, :-1])
    ids = vocab.encode(text)
    train_ids, test_ids = split_text(ids, 0.25)
    cut = train_ids.numel()
    assert cut + test_ids.numel() == len(text)
    # the text repeats, so locate windows by position: every window lies in its own part
    positions = torch.arange(len(text))
    px = build_data("text", {"path": str(corpus), "seq_len": 16, "train_windows": 40,
                             "test_windows": 10, "seed": 3, "test_fraction": 0.25})
    assert torch.equal(px["train"][0], x)  # deterministic
    train_pos, _ = token_windows(positions[:cut], 16, 40, 3)
    test_pos, test_labels = token_windows(positions[cut:], 16, 10, 4)
    assert int(train_pos.max()) + 1 < cut  # the last train label is still train text
    assert int(test_pos.min()) >= cut
    assert torch.equal(ids[train_pos], x) and torch.equal(ids[test_labels], yt)
    assert "jargon" in datasets and "text" in datasets


def test_text_mistakes_are_one_line(tmp_path, corpus):
    missing = tmp_path / "nothing.txt"
    with pytest.raises(LayerLMCError, match=f"text file not found: {missing}"):
        text_splits(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LayerLMCError, match=f"text file {empty} is empty"):
        text_splits(empty)
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    with pytest.raises(LayerLMCError, match=rf"{short} is too short: its test part has 10 of 100 "
                                            r"characters .* seq_len \+ 1 = 33"):
        text_splits(short, seq_len=32)
    with pytest.raises(LayerLMCError, match="has 53 distinct characters but the model's "
                                            "vocab_size is 10"):
        text_splits(corpus, seq_len=8, vocab_size=10)
    with pytest.raises(LayerLMCError, match="test_fraction"):
        text_splits(corpus, test_fraction=1.5)
    for error in (LayerLMCError("x"),):
        assert "\n" not in str(error)


def test_char_gpt_is_causal_and_shaped():
    model = gpt(0).eval()
    ids = torch.randint(0, 60, (3, 16), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (3, 16, 60)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 60
    after = model(changed)
    assert torch.allclose(logits[:, :10], after[:, :10], atol=1e-6)  # earlier positions unchanged
    assert not torch.allclose(logits[:, 10:], after[:, 10:])
    assert model(ids[:, :5]).shape == (3, 5, 60)
    names = [g.name for g in layer_groups(model.state_dict())]
    assert names[:3] == ["embed", "pos", "blocks.0.ln1"]
    assert names[3:8] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.ln2",
                          "blocks.0.mlp.fc", "blocks.0.mlp.proj"]
    assert names[-2:] == ["ln_f", "head"] and len(names) == 2 + 6 * 2 + 2
    with pytest.raises(LayerLMCError, match="longer than block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(LayerLMCError, match="not divisible by heads"):
        build_model("char-gpt", {"dim": 10, "heads": 4})


def text_data(corpus, seq_len: int = 16) -> dict:
    return build_data("text", {"path": str(corpus), "seq_len": seq_len, "train_windows": 24,
                               "test_windows": 12, "vocab_size": 60})


def test_barriers_of_two_gpts_on_text(corpus):
    model, other = gpt(0), gpt(1)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in other.state_dict().items()}
    data = text_data(corpus)
    options = {"alphas": "0,0.5,1", "device": "cpu", "progress": False}
    same = layerlmc.barriers(model, a, a, data, **options)
    assert len(same) and (same["value"].abs() < 1e-6).all()
    table = layerlmc.barriers(model, a, b, data, cumulative=("shallow",), **options)
    assert table["value"].map(math.isfinite).all()
    assert {"full", "embed", "blocks.1.mlp.fc", "head"} <= set(table["group"])


def test_tied_head_interpolates_with_the_embedding(corpus):
    model = gpt(0, tie=True)
    assert model.head.weight is model.embed.weight
    assert tied_keys(model) == [["embed.weight", "head.weight"]]
    groups = layer_groups(model.state_dict(), tied=tied_keys(model))
    assert groups[0].name == "embed" and set(groups[0].keys) == {"embed.weight", "head.weight"}
    assert "head" not in {g.name for g in groups}
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in gpt(1, tie=True).state_dict().items()}
    data = text_data(corpus)
    options = {"alphas": "0,0.5,1", "device": "cpu", "progress": False}
    same = layerlmc.barriers(model, a, a, data, **options)
    assert (same["value"].abs() < 1e-6).all()
    table = layerlmc.barriers(model, a, b, data, **options)
    assert table["value"].map(math.isfinite).all() and "embed" in set(table["group"])


def tiny_config(corpus) -> TrainConfig:
    return load_config(TrainConfig, None, [
        "name=lm", "epochs=1", "batch_size=8", "eval_max_examples=8",
        "model.name=char-gpt", f"model.args={TINY_GPT}",
        "data.name=text",
        f"data.args={{path: '{corpus}', seq_len: 16, train_windows: 24, test_windows: 8}}",
        "optimizer.name=adamw", "optimizer.lr=0.003", "optimizer.weight_decay=0.001",
        "schedule.name=warmup-cosine", "schedule.warmup_iters=2",
    ])


def test_a_pair_of_gpts_trains_on_text(corpus, tmp_path):
    folder = train_runs(tiny_config(corpus), tmp_path / "lm", progress=False)
    from layerlmc.train.runner import read_history

    history = read_history(folder)
    assert [(r["role"], r["epoch"]) for r in history] == [(r, e) for r in "ab" for e in (0, 1)]
    first = {r["role"]: r for r in history if r["epoch"] == 0}
    assert first["a"]["test_loss"] == first["b"]["test_loss"]  # same initialization
    assert all(math.isfinite(r["test_loss"]) and 0 <= r["test_accuracy"] <= 1 for r in history)
    # the vocabulary is saved with the run
    assert CharVocab.load(folder / "vocab.json") == CharVocab.from_text(corpus.read_text())
    end = [layerlmc.load_state_dict(folder / "checkpoints" / role / "epoch_0001.safetensors")
           for role in "ab"]
    assert not torch.equal(end[0]["blocks.0.attn.qkv.weight"], end[1]["blocks.0.attn.qkv.weight"])


def test_reproduce_lm_on_tiny_text(corpus, tmp_path, monkeypatch):
    from layerlmc.recipes import lm as recipes_lm

    text = recipes_lm.CONFIG.read_text()
    assert text.splitlines()[0] == "# layerlmc train configs/pair_jargon_gpt.yaml"
    config = yaml.safe_load(text)
    assert config["model"]["name"] == "char-gpt" and config["data"]["name"] == "jargon"
    config["model"]["args"] = TINY_GPT
    config["data"]["args"].update(path=str(corpus), seq_len=16, train_windows=24, test_windows=8,
                                  vocab_size=TINY_GPT["vocab_size"])
    tiny = tmp_path / "pair_jargon_gpt.yaml"
    tiny.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(recipes_lm, "CONFIG", tiny)
    barriers, distances, folder = recipes_lm.reproduce_lm(
        tmp_path / "runs", epochs=1, max_examples=8, device="cpu", progress=False,
        plots=False)
    assert folder == tmp_path / "runs" / "lm"
    assert (folder / "barriers.csv").is_file()
    saved = CharVocab.load(tmp_path / "runs" / "pair_jargon_gpt" / "vocab.json")
    assert saved == text_vocab(corpus)
    assert set(barriers["kind"]) == {"full", "group", "cumulative"}
    assert set(barriers["step"]) == {0, 1} and set(barriers["split"]) == {"test"}
    summary = recipes_lm.summarize_lm(barriers)
    assert list(summary["step"]) == [0, 1] and summary["max_layer"].map(math.isfinite).all()
    assert not distances.empty
