"""Hugging Face model folders (``--model hf:PATH``, ``hf-text``) end to end on tiny random models
built here: GPT-NeoX (Pythia's architecture), GPT-2 (tied embeddings) and BERT (masked LM)."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from layerlmc.cli.main import main
from layerlmc.core.checkpoints import check_pair, load_state_dict
from layerlmc.core.groups import layer_groups, tied_keys
from layerlmc.errors import LayerLMCError
from layerlmc.specs import build_data, build_model

VOCAB = 100
WORDS = ["alpha", "beta", "gamma", "delta", "hack", "kludge", "foo", "bar", "daemon", "cruft"]


def _tokenizer():
    """A character-level tokenizer built offline (the tokenizers library, no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = sorted(set("".join(WORDS) + " .\n"))
    vocab = {"[UNK]": 0, "[MASK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]")


def _save(model_cls, config, seed, folder, tokenizer=None, **save_kwargs):
    config.architectures = [model_cls.__name__]
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(str(folder), **save_kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def _neox(**extra):
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, **extra)



@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    rng = random.Random(0)
    text = root / "text.txt"
    text.write_text(" ".join(rng.choice(WORDS) + (".\n" if rng.random() < 0.1 else "")
                             for _ in range(1500)))
    tok = _tokenizer()
    gpt2 = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=64, bos_token_id=0, eos_token_id=0)
    bert = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64)
    f = {"root": root, "text": text}
    f["neox_a"] = _save(transformers.GPTNeoXForCausalLM, _neox(), 0, root / "neox_a", tok)
    # b sharded: several model-0000x-of-0000y.safetensors and their index
    f["neox_b"] = _save(transformers.GPTNeoXForCausalLM, _neox(), 1, root / "neox_b",
                        max_shard_size="20KB")
    f["neox_eps"] = _save(transformers.GPTNeoXForCausalLM, _neox(layer_norm_eps=1e-3), 1,
                          root / "neox_eps")
    f["gpt2_a"] = _save(transformers.GPT2LMHeadModel, gpt2, 0, root / "gpt2_a")
    f["gpt2_b"] = _save(transformers.GPT2LMHeadModel, gpt2, 1, root / "gpt2_b")
    f["bert_a"] = _save(transformers.BertForMaskedLM, bert, 0, root / "bert_a", tok)
    f["bert_b"] = _save(transformers.BertForMaskedLM, bert, 1, root / "bert_b")
    # neox b once more as pytorch_model.bin (read with weights_only=True)
    binary = root / "neox_bin"
    binary.mkdir()
    (binary / "config.json").write_text((f["neox_b"] / "config.json").read_text())
    torch.save(load_state_dict(f["neox_b"]), binary / "pytorch_model.bin")
    f["neox_bin"] = binary
    return f


def _data_args(hf, tokenizer, *extra):
    return ["--data", "hf-text", "--data-arg", f"tokenizer={tokenizer}",
            "--data-arg", f"path={hf['text']}", "--data-arg", "seq_len=16",
            "--data-arg", "train_windows=6", "--data-arg", "test_windows=6", *extra]


def _barriers(hf, a, b, out, tokenizer=None, *extra):
    return main(["barriers", str(hf[a]), str(hf[b]), "--model", f"hf:{hf[a]}",
                 *_data_args(hf, tokenizer or hf[a]), "--out", str(out), "--no-plots",
                 "--alphas", "0,0.5,1", *extra])


def test_pythia_like_barriers_end_to_end(hf, tmp_path):
    out = tmp_path / "run"
    assert (hf["neox_b"] / "model.safetensors.index.json").is_file()
    assert _barriers(hf, "neox_a", "neox_b", out) == 0
    table = pd.read_csv(out / "barriers.csv")
    groups = set(table["group"])
    for name in ("gpt_neox.embed_in", "gpt_neox.layers.0.attention.query_key_value",
                 "gpt_neox.layers.1.mlp.dense_h_to_4h", "gpt_neox.final_layer_norm", "lm_head"):
        assert name in groups
    # the endpoints evaluate to what the Hugging Face model computes with its own weights
    splits = build_data("hf-text", {"tokenizer": str(hf["neox_a"]), "path": str(hf["text"]),
                                    "seq_len": 16, "train_windows": 6, "test_windows": 6})
    inputs, labels = splits["test"]
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    for base in ("a", "b"):
        model = transformers.GPTNeoXForCausalLM.from_pretrained(str(hf[f"neox_{base}"]))
        with torch.no_grad():
            logits = model(input_ids=inputs).logits
        expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)).item()
        record = next(p for p in points if p["kind"] == "endpoint" and p["base"] == base
                      and p["split"] == "test")
        assert record["loss"] == pytest.approx(expected, rel=1e-5)


def test_identical_endpoints_have_zero_barriers(hf, tmp_path):
    out = tmp_path / "same"
    assert _barriers(hf, "neox_a", "neox_a", out, None, "--cumulative", "shallow") == 0
    table = pd.read_csv(out / "barriers.csv")
    assert len(table) and table["value"].abs().max() < 1e-6


def test_gpt2_tied_embeddings(hf, tmp_path):
    state = load_state_dict(hf["gpt2_a"])
    # save_pretrained stores the tied lm_head once; the loaded state has it under both keys
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    model = build_model(f"hf:{hf['gpt2_a']}")
    assert list(state) == list(model.state_dict())
    assert ["transformer.wte.weight", "lm_head.weight"] in tied_keys(model)
    names = [g.name for g in layer_groups(state, tied=tied_keys(model))]
    assert "transformer.wte" in names and "lm_head" not in names
    out = tmp_path / "gpt2"
    # a char-level tokenizer from another folder, as long as the ids fit the vocabulary
    assert _barriers(hf, "gpt2_a", "gpt2_b", out, hf["neox_a"]) == 0
    groups = set(pd.read_csv(out / "barriers.csv")["group"])
    assert {"transformer.wte", "transformer.h.0.attn.c_attn", "transformer.ln_f"} <= groups
    assert "lm_head" not in groups


def test_bert_masked_lm(hf, tmp_path):
    splits = build_data("hf-text", {"tokenizer": str(hf["bert_a"]), "path": str(hf["text"]),
                                    "seq_len": 20, "train_windows": 4, "test_windows": 4})
    inputs, labels = splits["test"]
    assert labels.shape == (4, 3)  # round(0.15 * 20) masked positions per window
    assert ((inputs == 1).sum(dim=1) == 3).all() and (labels != 1).all()
    model = build_model(f"hf:{hf['bert_a']}")
    assert model.mask_token_id == 1
    assert model(inputs).shape == (4, 3, VOCAB)
    out = tmp_path / "bert"
    assert _barriers(hf, "bert_a", "bert_b", out) == 0
    groups = set(pd.read_csv(out / "barriers.csv")["group"])
    assert "bert.encoder.layer.0.attention.self.query" in groups


def test_weight_formats_give_the_same_state(hf):
    sharded, binary = load_state_dict(hf["neox_b"]), load_state_dict(hf["neox_bin"])
    model = build_model(f"hf:{hf['neox_a']}")
    assert list(sharded) == list(binary) == list(model.state_dict())
    assert all(torch.equal(sharded[k], binary[k]) for k in sharded)
    check_pair(sharded, binary, model.state_dict())


def test_model_takes_the_stored_dtype(hf, tmp_path):
    folder = tmp_path / "half"
    model = transformers.GPTNeoXForCausalLM(_neox()).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    assert next(iter(load_state_dict(folder).values())).dtype == torch.bfloat16
    assert next(build_model(f"hf:{folder}").parameters()).dtype == torch.bfloat16
    wide = build_model(f"hf:{folder}", {"dtype": "float32"})
    assert next(wide.parameters()).dtype == torch.float32


def test_different_architectures_are_named(hf, tmp_path, capsys):
    code = main(["barriers", str(hf["neox_a"]), str(hf["gpt2_a"]), "--model", f"hf:{hf['neox_a']}",
                 *_data_args(hf, hf["neox_a"]), "--out", str(tmp_path / "x"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert "GPTNeoXForCausalLM" in err and "GPT2LMHeadModel" in err and "first difference" in err
    assert len(err.strip().splitlines()) == 1


def test_different_configs_warn(hf, caplog):
    a, b = load_state_dict(hf["neox_b"]), load_state_dict(hf["neox_eps"])
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        check_pair(a, b)
    assert "layer_norm_eps" in caplog.text


def test_bad_folders(hf, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayerLMCError, match="without config.json"):
        load_state_dict(empty)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((hf["neox_a"] / "config.json").read_text())
    with pytest.raises(LayerLMCError, match="no weights"):
        load_state_dict(no_weights)
    code = main(["barriers", str(no_weights), str(hf["neox_b"]), "--model", f"hf:{hf['neox_a']}",
                 *_data_args(hf, hf["neox_a"]), "--out", str(tmp_path / "x"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and "no weights" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LayerLMCError, match="without config.json"):
        build_model(f"hf:{empty}")
    with pytest.raises(LayerLMCError, match="names no folder"):
        build_model("hf:")
    broken = tmp_path / "broken_shards"
    broken.mkdir()
    for f in hf["neox_b"].iterdir():
        if not f.name.startswith("model-00002"):
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(LayerLMCError, match="shard"):
        load_state_dict(broken)


def test_text_without_tokenizer_says_what_to_use(hf):
    with pytest.raises(LayerLMCError, match="char-level dataset"):
        build_data("hf-text", {"tokenizer": str(hf["gpt2_a"]), "path": str(hf["text"])})


def test_missing_transformers_says_how_to_install(hf, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(LayerLMCError, match=r"layerlmc\[hf\]"):
        build_model(f"hf:{hf['neox_a']}")
    with pytest.raises(LayerLMCError, match=r"layerlmc\[hf\]"):
        load_state_dict(hf["neox_a"])


def test_import_stays_light():
    code = ("import sys, layerlmc, layerlmc.specs, layerlmc.cli.main; "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_defaults_to_folder_a(hf, tmp_path, capsys):
    out = tmp_path / "implicit"
    assert main(["barriers", str(hf["neox_a"]), str(hf["neox_b"]), *_data_args(hf, hf["neox_a"]),
                 "--out", str(out), "--no-plots", "--alphas", "0,0.5,1"]) == 0
    assert "gpt_neox.layers.0.attention.query_key_value" in (out / "barriers.csv").read_text()
    capsys.readouterr()
    assert main(["barriers", str(hf["text"]), str(hf["neox_b"]), *_data_args(hf, hf["neox_a"]),
                 "--out", str(tmp_path / "x")]) == 2
    assert "Missing option '--model'" in capsys.readouterr().err


# -- model folders as the steps of trajectory and robustness ----------------------------------


@pytest.fixture(scope="module")
def hf_steps(hf):
    """Two runs of a tiny GPT-NeoX saved as model folders: ``a/step-100``, ``a/step-200``,
    ``a/step-300`` (a only) and ``b/step-100``, ``b/step-200``; and as the Hugging Face Trainer
    writes them, ``trainer_a/checkpoint-{500,1000}`` with the Trainer's other files."""
    root = hf["root"] / "steps"
    for run, steps, offset in (("a", (100, 200, 300), 0), ("b", (100, 200), 10)):
        for i, step in enumerate(steps):
            _save(transformers.GPTNeoXForCausalLM, _neox(), offset + i, root / run / f"step-{step}")
    for i, step in enumerate((500, 1000)):
        folder = _save(transformers.GPTNeoXForCausalLM, _neox(), 20 + i,
                       root / "trainer_a" / f"checkpoint-{step}")
        (folder / "trainer_state.json").write_text("{}")
        torch.save({"state": {}}, folder / "optimizer.pt")
    (root / "trainer_a" / "runs").mkdir()  # the Trainer's TensorBoard logs: no model folder
    return root


def _step_args(hf, *extra):
    return [*_data_args(hf, hf["neox_a"]), "--no-plots", *extra]


def test_model_folders_are_steps(hf_steps):
    from layerlmc.analyses import find_checkpoints

    a = find_checkpoints(str(hf_steps / "a" / "step-*"))
    assert a == {s: hf_steps / "a" / f"step-{s}" for s in (100, 200, 300)}
    # numerically, not by name (checkpoint-1000 sorts before checkpoint-500); runs/ is skipped
    trainer = find_checkpoints(hf_steps / "trainer_a")
    assert list(trainer) == [500, 1000]
    assert find_checkpoints(str(hf_steps / "trainer_a" / "checkpoint-*")) == trainer


def test_trajectory_over_model_folders(hf, hf_steps, tmp_path, capsys):
    out = tmp_path / "traj"
    a, b = str(hf_steps / "a" / "step-*"), str(hf_steps / "b" / "step-*")
    args = ["trajectory", a, "--b", b, "--out", str(out), "--layers", "lm_head",
            *_step_args(hf)]
    # a's step 300 has no partner in b
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "steps 300 have no checkpoint b" in err and "--allow-missing" in err
    assert len(err.strip().splitlines()) == 1
    # --model defaults to a's first folder, as for `layerlmc barriers`
    assert main([*args, "--allow-missing"]) == 0
    table = pd.read_csv(out / "barriers.csv")
    assert sorted(table["step"].unique()) == [100, 200]
    assert set(table["unit"]) == {"step"}  # from the folder names
    assert set(table["group"]) == {"full", "lm_head"}
    # the step-200 pair gives what `layerlmc barriers` gives for those two folders
    assert main(["barriers", str(hf_steps / "a" / "step-200"), str(hf_steps / "b" / "step-200"),
                 *_step_args(hf), "--out", str(tmp_path / "pair200"), "--alphas", "0,0.5,1",
                 "--layers", "lm_head"]) == 0
    single = pd.read_csv(tmp_path / "pair200" / "barriers.csv")
    key = ["kind", "group", "base", "split", "metric"]
    got = table[table["step"] == 200].set_index(key)["value"].sort_index()
    expected = single.set_index(key)["value"].sort_index()
    pd.testing.assert_series_equal(got, expected, rtol=1e-6)


def test_trajectory_api_takes_globs_of_trainer_folders(hf, hf_steps, tmp_path):
    import layerlmc

    model = build_model(f"hf:{hf_steps / 'trainer_a' / 'checkpoint-500'}")
    data = build_data("hf-text", {"tokenizer": str(hf["neox_a"]), "path": str(hf["text"]),
                                  "seq_len": 16, "train_windows": 4, "test_windows": 4})
    glob = str(hf_steps / "trainer_a" / "checkpoint-*")
    table, distances = layerlmc.trajectory(model, glob, glob, data, tmp_path / "same",
                                           layerwise=False, unit="step", plots=False,
                                           progress=False)
    assert sorted(table["step"].unique()) == [500, 1000]
    assert table["value"].abs().max() < 1e-6  # each step against itself
    assert set(distances["step"]) == {500, 1000}


def test_robustness_over_model_folders(hf, hf_steps, tmp_path):
    a, b = str(hf_steps / "a" / "step-*"), str(hf_steps / "b" / "step-*")
    common = ["--samples", "1", "--layers", "lm_head", "--bases", "a", *_step_args(hf)]
    out = tmp_path / "rob"
    assert main(["robustness", a, "--b", b, "--allow-missing", "--out", str(out), *common]) == 0
    table = pd.read_csv(out / "robustness.csv")
    assert set(table["step"]) == {200} and set(table["unit"]) == {"step"}  # the last common step
    out = tmp_path / "rob_every"
    assert main(["robustness", a, "--b", b, "--allow-missing", "--every", "1", "--out", str(out),
                 *common]) == 0
    assert set(pd.read_csv(out / "robustness.csv")["step"]) == {100, 200}
    # two model folders are one pair, as two files are
    out = tmp_path / "rob_pair"
    assert main(["robustness", str(hf_steps / "a" / "step-200"), "--b",
                 str(hf_steps / "b" / "step-200"), "--out", str(out), *common]) == 0
    single = pd.read_csv(out / "robustness.csv")
    assert single["step"].isna().all()
    # the averaging direction is the same pair's (random directions are seeded per step too)
    average = [t[t["direction"] == "average"].drop(columns=["step", "unit"]).reset_index(drop=True)
               for t in (single, table)]
    pd.testing.assert_frame_equal(*average)


def test_glob_matches_that_are_no_checkpoint(hf, hf_steps, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(hf_steps / "b", runs / "b")
    shutil.copytree(hf_steps / "b", runs / "a")
    (runs / "a" / "step-300").mkdir()  # a folder without config.json or weights
    args = ["trajectory", str(runs / "a" / "step-*"), "--b", str(runs / "b" / "step-*"),
            "--out", str(tmp_path / "x"), *_step_args(hf)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "step-300 matches" in err and "without config.json" in err
    assert len(err.strip().splitlines()) == 1
    (runs / "a" / "step-300").rmdir()
    (runs / "a" / "step-300.txt").write_text("notes")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "step-300.txt matches" in err and "not a checkpoint file" in err
    assert len(err.strip().splitlines()) == 1
