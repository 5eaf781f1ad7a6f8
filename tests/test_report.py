"""`layerlmc report`: one HTML page per run folder, from records alone, rendered in a real browser."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from layerlmc.cli.main import main
from layerlmc.config import TrainConfig, load_config
from layerlmc.plots.report import read_run_folder, write_report
from layerlmc.train import train_runs

from .conftest import write_tiny_fmnist
from .test_train import TINY

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A 3-epoch training run with its trajectory in analysis/, a pair's barriers (cumulative
    too) and a robustness run: real records of every main kind, built once for the module."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        write_tiny_fmnist(root / "data")
        patch.setenv("LAYERLMC_DATA", str(root / "data"))
        run = train_runs(load_config(TrainConfig, None, [*TINY, "epochs=3"]), root / "pair", progress=False)
        last = run / "checkpoints"
        a, b = last / "a" / "epoch_0003.safetensors", last / "b" / "epoch_0003.safetensors"
        common = ["--model", "cnn", "--model-arg", "width=4", "--model-arg", "hidden=8",
                  "--data", "fashion-mnist", "--max-examples", "40"]
        assert main(["trajectory", str(run), "--cumulative", "shallow", "--max-examples", "40"]) == 0
        assert main(["barriers", str(a), str(b), *common, "--cumulative", "shallow", "--cumulative", "deep",
                     "--out", str(root / "ab")]) == 0
        assert main(["robustness", str(a), "--b", str(b), *common, "--samples", "2", "--out", str(root / "rob")]) == 0
    return {"training": run, "pair": root / "ab", "robustness": root / "rob", "root": root}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.html"}


def test_training_run_page_holds_its_analysis(studies, capsys):
    before = _digests(studies["training"])
    assert main(["report", str(studies["training"])]) == 0
    page_path = studies["training"] / "report.html"
    assert f"report: {page_path}" in capsys.readouterr().out
    page = page_path.read_text()
    assert _digests(studies["training"]) == before  # reading never changes the folder
    # offline: plotly's script is in the page, nothing is fetched
    assert "<script src=" not in page and "cdn" not in page.lower().split("<script")[0]
    assert len(page) > 3_000_000
    for text in ("training: loss of each model", "layer-wise barriers", "interpolated into a",
                 "interpolated into b", "cumulative averaging starting from shallow layers",
                 "distances between the two runs", "inputs (what every number depends on)",
                 "BatchNorm policy", "precision"):
        assert text in page, text
    # links to the raw files, relative to the page
    assert 'href="analysis/points.jsonl"' in page and 'href="history.jsonl"' in page
    records = read_run_folder(studies["training"])
    assert records.kind == "training run" and [c.kind for c in records.children] == ["trajectory"]


def test_pair_and_robustness_pages(studies, tmp_path):
    page = write_report(studies["pair"], tmp_path / "ab.html").read_text()
    for text in ("the full path: every layer averaged at once", "single-group barriers",
                 "cumulative barriers", "shallow +conv1", "deep +head", "the two models"):
        assert text in page, text
    # links from a page written elsewhere still reach the records
    assert re.search(r'href="[^"]*ab/points.jsonl"', page)
    page = write_report(studies["robustness"]).read_text()
    assert "robustness: the averaging direction vs random directions" in page
    assert read_run_folder(studies["robustness"]).kind == "robustness"


def test_torn_and_missing_records_are_reported_not_fatal(studies, tmp_path):
    folder = tmp_path / "torn"
    shutil.copytree(studies["pair"], folder)
    points = folder / "points.jsonl"
    lines = points.read_bytes().splitlines(keepends=True)
    points.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-line
    barriers = folder / "barriers.csv"
    barriers.write_text(barriers.read_text() + ",,full,full,,,,test,loss,midpoint,models,0.1,extra,cells\n,,fu")
    before = _digests(folder)
    page = write_report(folder).read_text()
    assert _digests(folder) == before
    assert "points.jsonl: 1 line that is not a complete record skipped" in page
    assert f"the page shows the {len(lines) - 1} complete records" in page
    assert "barriers.csv: 2 damaged lines skipped" in page
    assert "single-group barriers" in page  # the complete records are still drawn

    # a run killed before barriers.csv was written: barriers from the records, and said so
    barriers.unlink()
    (folder / "run.json").write_text((folder / "run.json").read_text().replace('"complete"', '"running"'))
    page = write_report(folder).read_text()
    assert "barriers.csv is missing: the barriers shown are computed from the" in page
    assert "this run is running, not complete" in page
    assert "single-group barriers" in page

    # unreadable run.json and a CSV without the columns of its kind
    (folder / "run.json").write_bytes(b"\xff{not json")
    (folder / "distances.csv").write_text("nothing,here\n1,2\n")
    page = write_report(folder).read_text()
    assert "run.json could not be read" in page
    assert "distances.csv lacks the columns step, group, l2_ab, cos_ab" in page


def test_not_a_run_folder_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"layerlmc: error: {tmp_path / 'empty'} is not a layerlmc run folder: expected "
                   "run.json, points.jsonl or barriers.csv (an analysis), or history.jsonl (a training run)"]
    (tmp_path / "file.txt").write_text("x")
    assert main(["report", str(tmp_path / "file.txt")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report.html").exists()


def test_tables_of_other_studies_are_drawn(tmp_path):
    """subspace, multi-model and theory tables, written as their analyses write them."""
    sub = tmp_path / "sub"
    sub.mkdir()
    rows = [{"direction": d, "network": "a", "group": "full", "sigma": s, "sample": 0, "split": "test",
             "loss": 0.3 + s * (2 if d == "span" else 1), "accuracy": 0.9}
            for d in ("clean", "span", "nullspace") for s in ((0.0,) if d == "clean" else (0.5, 1.0))]
    pd.DataFrame(rows).to_csv(sub / "subspace.csv", index=False)
    page = write_report(sub).read_text()
    assert "subspace: loss after a step of size" in page
    assert read_run_folder(sub).kind == "subspace"

    fed = tmp_path / "fed"
    (fed / "multimodel").mkdir(parents=True)
    (fed / "history.jsonl").write_text("".join(
        f'{{"round": {r}, "model": "client_00", "split": "local_test", "loss": {1 / (r + 1)}, '
        f'"accuracy": 0.5, "n": 10}}\n' for r in range(3)) + '{"round": 3, "mod')
    pd.DataFrame({"client": [0, 1], "name": ["client_00", "client_01"]}).to_csv(fed / "clients.csv", index=False)
    mm = [{"step": r, "unit": "round", "kind": k, "group": g, "group_index": i, "base": None, "order": None,
           "split": "test", "metric": m, "definition": "average", "reference": "clients",
           "average": 0.5, "clients_mean": 0.4, "value": 0.1 * r}
          for r in (1, 2) for k, g, i in (("full", "full", None), ("group", "fc1", 0)) for m in ("loss", "error")]
    pd.DataFrame(mm).to_csv(fed / "multimodel" / "multimodel.csv", index=False)
    page = write_report(fed).read_text()
    assert "training: loss of each model" in page and "barrier of the clients" in page
    assert "history.jsonl: 1 damaged line skipped" in page
    assert "barrier of the clients&#39; average against their mean (round 2;" in page  # the last round
    assert "test loss: barrier of the clients" in page  # its heatmap: one panel, rows full + groups
    assert [c.kind for c in read_run_folder(fed).children] == ["multimodel"]


# -- in a real browser -------------------------------------------------------------------------


def _browser(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=15000", *args, url],
                          capture_output=True, timeout=180)


def _colours(png: bytes) -> int:
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `./scripts/install.sh --test` installs Debian's")
def test_page_renders_in_a_headless_browser(studies, tmp_path):
    page = write_report(studies["training"])
    dom = _browser(page.as_uri(), "--dump-dom").stdout.decode("utf-8", "replace")
    # plotly ran: every figure has its SVG, and the heatmaps are images with real colour in them
    titles = re.findall(r'class="gtitle"[^>]*data-unformatted="([^"]*)"', dom)
    assert any(t.startswith("train loss: layer-wise barriers") for t in titles), titles
    assert any("distances between the two runs" in t for t in titles)
    heatmaps = re.findall(r'<g class="hm"><image[^>]*href="data:image/png;base64,([^"]+)"', dom)
    assert len(heatmaps) >= 8  # (train, test) × (loss, error) × (a, b), layer-wise alone
    # the loss heatmaps at least have cells of several colours (tiny runs' errors may all be 0: white)
    assert sum(_colours(base64.b64decode(h)) > 3 for h in heatmaps) >= 4
    assert re.search(r'<table[^>]*class="dataframe records"', dom)
    assert "full-network barrier vs the largest single-group barrier" in dom

    shot = tmp_path / "page.png"
    _browser(page.as_uri(), "--window-size=1280,2200", f"--screenshot={shot}")
    assert shot.is_file() and _colours(shot.read_bytes()) > 50  # drawn, not a blank page

    # a torn folder still renders, and says what was skipped
    torn = tmp_path / "torn"
    shutil.copytree(studies["pair"], torn)
    with open(torn / "points.jsonl", "ab") as handle:
        handle.write(b'{"schema": 2, "kind": "gro')
    dom = _browser(write_report(torn).as_uri(), "--dump-dom").stdout.decode("utf-8", "replace")
    assert "What is missing or was skipped" in dom and "not a complete record skipped" in dom
    assert re.search(r'data-unformatted="single-group barriers', dom)
