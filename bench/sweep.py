"""The standard layer-wise sweep, timed against the paper's own method and a forward floor.

    python bench/sweep.py [--models mlp,cnn,resnet18] [--quick]
        [--evaluators plain,incremental,vmap] [--threads 1] [--rounds N] [--out docs/benchmarks.md]

The standard sweep: both endpoints, the full midpoint and every layer group at α=½ with base
``a`` and with base ``b``, on a train and a test subset of Fashion-MNIST. Each measurement runs
in a fresh subprocess (so that its peak memory is its own and no allocator state or cache
carries over); the methods of one model are interleaved, round after round, in a rotating
order, and each reports its best time. Only ratios of times from one run mean anything: the
machine this was written on is shared and its timings are noisy.

Methods:
- ``baseline``: the paper's evaluation written from its description (PAPER.md §1.3, §9): per
  point a fresh model and ``copy.deepcopy`` of both state dicts, interpolation into a new state
  dict, ``load_state_dict``, a ``DataLoader`` (batch 256) over a ``Dataset`` that converts and
  normalises each uint8 image on its own, α ∈ {0, ½, 1} for both bases per group (4 models per
  group) and the full path, mean of batch means;
- ``layerlmc:<evaluator>``: one ``layerlmc.barriers`` call for the standard sweep;
- ``floor``: ``model(x)`` on preloaded tensors, once per distinct state of the sweep and split.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import inspect
import io
import json
import os
import platform
import pstats
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAPER_BATCH = 256  # the paper's evaluation batch size (PAPER.md §1.2)
EVALUATORS = ("plain", "incremental", "vmap")


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


def specs(quick: bool, resnet_width: int, gpu: bool = False, batch: int | None = None) -> dict[str, Spec]:
    if gpu:
        # issue 7's GPU check: the real ResNet-18 (width 64) without normalisation, batch 512,
        # 10,240 train and test images each: minutes, not hours, on one GPU
        chosen = {
            "mlp": Spec("mlp", {}, 10240, 10240, 0, 512, 3),
            "cnn": Spec("cnn", {}, 10240, 10240, 0, 512, 2),
            "resnet18": Spec("resnet18", {"in_channels": 1, "width": resnet_width, "norm": "none"},
                             10240, 10240, 2, 512, 2),
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


def memory_spec(quick: bool) -> Spec:
    """A ~100M-parameter MLP (fc1..fc7 of width 4096 and head: 104M parameters, 417 MB) on
    a few examples: memory, not speed, is what this measures."""
    hidden = [1024] * 4 if quick else [4096] * 7
    return Spec("mlp", {"hidden": hidden}, 64, 64, 0, 64, 1)


INTRO = """# Benchmarks: the standard layer-wise sweep

Written by `python bench/sweep.py` (`make bench`); rerun it to refresh. The sweep: both endpoints,
the full midpoint and every layer group at α=½ with base `a` and base `b`, on a train and a test
subset of Fashion-MNIST. Endpoints are two randomly initialised networks (seeds 0 and 1): the time
of an evaluation does not depend on training.

- **baseline**: the paper's method written from its description (PAPER.md §1.3, §9): per point a
  fresh model, `copy.deepcopy` of both state dicts, interpolation into a new state dict and
  `load_state_dict`; a `DataLoader` (batch 256, no worker processes) over a `Dataset` that converts
  and normalises each uint8 image on its own; α ∈ {0, ½, 1} for both bases per group (4 models
  per group) and on the full path; mean of batch means. Each model is built once per point and
  evaluated on both splits.
- **layerlmc:E**: one `layerlmc.barriers(model, a, b, data, alphas="0.5", plots=False,
  evaluator=E)` call, the data given as preloaded tensors.
- **floor**: `model(x)` on preloaded tensors, once per distinct state of the sweep (3 + 2 × groups)
  and split: the cost of whole forward passes alone.

Each measurement runs in a fresh subprocess; the methods of a model are interleaved round by round
(in a rotating order) and the tables show each one's best time. "Peak extra" is the process's peak
RSS during the sweep minus its RSS just before it (data, endpoints and model already loaded). Only
ratios from one run are comparable: the machine was shared with other jobs.
"""

# ---------------------------------------------------------------------------------------------
# worker side: one measurement in this (fresh) process


def _status(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS: now; VmHWM: peak since the last reset)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the peak is that of what follows only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _factory(spec: Spec):
    """The model constructor (a fresh, randomly initialised network per call)."""
    from layerlmc.models import cnn, mlp
    from layerlmc.models.resnet import resnet18

    return {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}[spec.model], spec.kwargs


def _uint8_split(split: str, count: int, pad: int):
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


def _to_tensors(images, labels):
    """Preloaded float tensors, with exactly the per-item pipeline's arithmetic."""
    import torch

    from layerlmc.data.fashion_mnist import MEAN, STD

    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    return x.sub(MEAN).div(STD), torch.from_numpy(labels)


def _groups(state) -> dict[str, list[str]]:
    """The paper's logic layers (PAPER.md §1.4), named with dots like layerlmc's module groups."""
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return groups


def _key(kind: str, group: str, base: str | None, alpha: float, split: str) -> str:
    return f"{kind}|{group}|{base}|{alpha:g}|{split}"


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
    make, kwargs = _factory(spec)

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
                records[_key("full", "full", None, 0.5, split)] = metrics
            else:
                base = "a" if alpha == 0 else "b"
                records[_key("endpoint", "full", base, alpha, split)] = metrics
    for name, keys in _groups(a).items():
        # get_layer_barrier's 4 models: B with A's layer, ½ into A, ½ into B, A with B's layer
        for alpha, base in ((0.0, "b"), (0.5, "a"), (0.5, "b"), (1.0, "a")):
            net = point(keys, alpha, base)
            for split, loader in loaders.items():
                records[_key("group", name, base, alpha, split)] = evaluate(net, loader)
    return records


def run_layerlmc(spec: Spec, model, a, b, data: dict, evaluator: str, device) -> dict[str, list[float]]:
    import layerlmc
    from layerlmc import lmc

    captured: list[dict] = []
    original = lmc.evaluate_paths

    def capture(*args, **kwargs):
        records = original(*args, **kwargs)
        captured.extend(records)
        return records

    lmc.evaluate_paths = capture  # barriers() returns barriers; the points are kept for checks
    options: dict[str, Any] = {}
    if "evaluator" in inspect.signature(layerlmc.barriers).parameters:
        options["evaluator"] = evaluator
    try:
        layerlmc.barriers(model, a, b, data, layerwise=True, bases=("a", "b"), alphas="0.5",
                          batch_size=spec.batch, device=str(device), plots=False, progress=False,
                          **options)
    finally:
        lmc.evaluate_paths = original
    return {_key(r["kind"], r["group"], r["base"], r["alpha"], r["split"]):
            [r["loss"], r["accuracy"], r["loss"]] for r in captured}


def run_floor(spec: Spec, model, a, data: dict) -> dict[str, list[float]]:
    import torch

    # the distinct states of the standard sweep: a, b, the full midpoint, 2 per group
    groups = [g for g, keys in _groups(a).items() if any(a[k].is_floating_point() for k in keys)]
    states = 3 + 2 * len(groups)
    with torch.inference_mode():
        for _ in range(states):
            for x, _y in data.values():
                for start in range(0, len(x), spec.batch):
                    model(x[start : start + spec.batch])
    return {}


def worker(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    device = torch.device(job.get("device", "cpu"))
    cuda = device.type == "cuda"
    spec = Spec(**job["spec"])
    method = job["method"]
    raw = {"train": _uint8_split("train", spec.train, spec.pad),
           "test": _uint8_split("test", spec.test, spec.pad)}
    data = {} if method == "baseline" else {
        s: tuple(t.to(device) for t in _to_tensors(*raw[s])) for s in raw}
    if method != "baseline":
        raw = {}
    # the runtime's own one-time allocations (thread pool, allocator) belong to no method: the
    # reference RSS ("after imports") is taken once torch has run something
    torch.nn.functional.linear(torch.ones(8, 8), torch.ones(8, 8))
    gc.collect()
    rss_import = _status("VmRSS")
    make, kwargs = _factory(spec)
    torch.manual_seed(0)
    model = make(**kwargs).to(device).eval()
    # a shares the model's tensors (no copy): the model, a and b hold 2× the parameter bytes
    a = model.state_dict()
    torch.manual_seed(1)
    b = make(**kwargs).to(device).state_dict()
    # one-time costs (oneDNN primitives, first allocations) are nobody's: warm up before timing
    with torch.inference_mode():
        sample = torch.zeros(min(spec.batch, 8), 1, 28 + 2 * spec.pad, 28 + 2 * spec.pad)
        model(sample.to(device))
    gc.collect()
    reset = _reset_peak()
    rss_setup = _status("VmRSS")
    if cuda:  # on a GPU the memory that counts is the device's
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rss_setup = torch.cuda.memory_allocated() // 1024
    profiler = cProfile.Profile() if job.get("profile") else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    if method == "baseline":
        records = run_baseline(spec, a, b, raw, device)
    elif method == "floor":
        records = run_floor(spec, model, a, data)
    else:
        records = run_layerlmc(spec, model, a, b, data, method.split(":", 1)[1], device)
    if profiler:
        profiler.disable()
    if cuda:
        torch.cuda.synchronize()  # the floor queues kernels without waiting for them
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        peak = torch.cuda.max_memory_allocated() // 1024
        rss_import = 0  # device memory: nothing of it is the runtime's own
    result = {"method": method, "seconds": seconds, "rss_import_kib": rss_import,
              "rss_setup_kib": rss_setup, "peak_kib": peak, "records": records,
              "param_bytes": sum(t.numel() * t.element_size() for t in a.values()),
              "groups": len(_groups(a))}
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        result["profile"] = _trim_profile(out.getvalue())
    return result


def _trim_profile(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    header = next((line for line in lines if "function calls" in line), "")
    return "\n".join([header.strip(), *lines[start:]])


# ---------------------------------------------------------------------------------------------
# driver side


def measure(spec: Spec, method: str, threads: int, profile: bool = False, device: str = "cpu") -> dict:
    job = {"spec": asdict(spec), "method": method, "threads": threads, "profile": profile,
           "device": device}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"method": method, "error": tail}


def compare(a: dict, b: dict) -> tuple[int, float, float]:
    """Shared points, the largest relative loss difference and accuracy difference."""
    shared = [k for k in a if k in b]
    rel = max((abs(a[k][0] - b[k][0]) / max(abs(b[k][0]), 1e-12) for k in shared), default=0.0)
    acc = max((abs(a[k][1] - b[k][1]) for k in shared), default=0.0)
    return len(shared), rel, acc


def machine(threads: int, device: str = "cpu") -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        sha += " (with uncommitted changes)"
    import layerlmc

    gpu = {}
    if device.startswith("cuda"):
        gpu = {"GPU": torch.cuda.get_device_name(torch.device(device)),
               "CUDA": str(torch.version.cuda)}
    return {**gpu, "CPU": cpu, "cores": str(os.cpu_count()), "threads": str(threads),
            "python": platform.python_version(), "torch": torch.__version__,
            "layerlmc": f"{getattr(layerlmc, '__version__', '?')} @ {sha}",
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def has_evaluator_option() -> bool:
    import layerlmc

    return "evaluator" in inspect.signature(layerlmc.barriers).parameters


def fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn,resnet18")
    parser.add_argument("--evaluators", default=",".join(EVALUATORS))
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: ~1-2 min")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int,
                        help="rounds per model (default: 5 mlp, 2 cnn, 1 resnet18)")
    parser.add_argument("--resnet-width", type=int, default=None,
                        help="ResNet-18 base width (64 is the real one and the GPU default; "
                             "8, the CPU default, fits the time budget)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda[:N]: the GPU check of issue 7 (bench/gpu.sh), with "
                             "larger sizes, batch 512 and GPU peak memory")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="layerlmc's and the floor's batch size [default: per model; 512 on a GPU]")
    parser.add_argument("--no-memory", action="store_true", help="skip the ~100M-parameter test")
    parser.add_argument("--no-profile", action="store_true", help="no profile of missed goals")
    parser.add_argument("--out",
                        help="markdown file (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return
    out = args.out or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    began = time.perf_counter()
    gpu = args.device.startswith("cuda")
    if gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA GPU here")
    width = args.resnet_width or (64 if gpu else 8)
    info = machine(args.threads, args.device)
    all_specs = specs(args.quick, width, gpu=gpu, batch=args.batch_size)
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in chosen:
        if name not in all_specs:
            parser.error(f"unknown model '{name}': choose from {', '.join(all_specs)}")
    evaluators = [e.strip() for e in args.evaluators.split(",") if e.strip()]
    notes: list[str] = []
    if gpu:
        notes.append("On the GPU, peak memory is `torch.cuda.max_memory_allocated()` during the "
                     "sweep, and \"peak extra\" subtracts what was allocated before it (data, "
                     "model, endpoints). Baseline images are converted on the CPU item by item "
                     "and moved to the GPU per batch, as the paper's loader does.")
    if not has_evaluator_option():
        notes.append("`layerlmc.barriers` has no `evaluator=` option in this checkout: only its "
                     "default (plain) evaluator was measured.")
        evaluators = ["plain"]
    methods = ["baseline", *[f"layerlmc:{e}" for e in evaluators], "floor"]
    print(" · ".join(f"{k}: {v}" for k, v in info.items()), flush=True)

    results: dict[str, dict[str, list[dict]]] = {}
    for name in chosen:
        spec = all_specs[name]
        rounds = args.rounds or spec.rounds
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for r in range(rounds):
            # rotate the order so that no method always runs first (or last) in a round
            order = methods[r % len(methods):] + methods[: r % len(methods)]
            for method in order:
                result = measure(spec, method, args.threads, device=args.device)
                runs[method].append(result)
                shown = f"{result['seconds']:.2f} s" if "seconds" in result else result["error"]
                print(f"  {name} round {r + 1}/{rounds} {method}: {shown}", flush=True)
        results[name] = runs

    memory: list[dict] = []
    if not args.no_memory:
        spec = memory_spec(args.quick)
        for method in [f"layerlmc:{e}" for e in evaluators]:
            result = measure(spec, method, args.threads, device=args.device)
            memory.append(result)
            shown = (f"{result['seconds']:.1f} s, peak {mib(result['peak_kib'])} MiB"
                     if "seconds" in result else result["error"])
            print(f"  memory {method}: {shown}", flush=True)

    text = report(info, all_specs, chosen, results, methods, memory, notes, args)
    profiles = []
    if not args.no_profile:
        profiles = profile_misses(all_specs, results, args.threads, args.device)
    text += "".join(profiles)
    elapsed = time.perf_counter() - began
    command = " ".join(["python bench/sweep.py", *sys.argv[1:]])
    text += (f"\nThe whole run (`{command}`) took "
             f"{elapsed / 60:.1f} minutes.\n")
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"written: {out}")


def best(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return None
    top = dict(min(ok, key=lambda r: r["seconds"]))
    top["peak_kib"] = max(r["peak_kib"] for r in ok)  # the worst peak of the method
    return top


def describe(name: str, spec: Spec) -> str:
    what = {"mlp": "MLP 784-256-128-10", "cnn": "small CNN (conv1-3, fc1, head; width 16)",
            "resnet18": f"ResNet-18, norm=none, in_channels=1, width={spec.kwargs.get('width')}"}
    size = f"{spec.train:,} train + {spec.test:,} test images"
    if spec.pad:
        size += f" padded to {28 + 2 * spec.pad}×{28 + 2 * spec.pad}"
    return f"{what[name]}; {size}; layerlmc/floor batch {spec.batch}, baseline batch {PAPER_BATCH}"


def report(info, all_specs, chosen, results, methods, memory, notes, args) -> str:
    lines = [INTRO, "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [""]
    if notes:
        lines += [f"**Note:** {n}" for n in notes] + [""]
    goals: list[str] = []
    for name in chosen:
        spec, runs = all_specs[name], results[name]
        tops = {m: best(runs[m]) for m in methods}
        groups = next((t["groups"] for t in tops.values() if t), 0)
        rounds = max(len(v) for v in runs.values())
        lines += [f"## {name}", "", describe(name, spec) + f"; {groups} layer groups "
                  f"({3 + 2 * groups} states per split for the sweep, {3 + 4 * groups} for the "
                  f"baseline); best of {rounds} round(s).", "",
                  ("| method | best time (s) | all rounds (s) | baseline / method "
                   "| method / floor | peak extra (MiB) |"),
                  "|---|---:|---:|---:|---:|---:|"]
        base, floor = tops.get("baseline"), tops.get("floor")
        for m in methods:
            t = tops[m]
            if t is None:
                error = next((r.get("error") for r in runs[m] if "error" in r), "failed")
                lines.append(f"| {m} | failed: {error} | | | | |")
                continue
            vs_base = f"{base['seconds'] / t['seconds']:.1f}×" if base else "—"
            vs_floor = f"{t['seconds'] / floor['seconds']:.2f}" if floor else "—"
            extra = mib(t["peak_kib"] - t["rss_setup_kib"])
            every = ", ".join(fmt_s(r["seconds"]) for r in runs[m] if "seconds" in r)
            lines.append(f"| {m} | {fmt_s(t['seconds'])} | {every} | {vs_base} | {vs_floor} | "
                         f"{extra} |")
        lines += [""]
        # agreement: every layerlmc evaluator against the baseline and against each other
        evaluated = [m for m in methods if m.startswith("layerlmc:") and tops[m]]
        if base:
            shared, rel, acc = compare(base["records"], base["records"])
            internal = max(abs(v[0] - v[2]) / abs(v[2]) for v in base["records"].values())
            lines.append(f"- baseline: mean of batch means vs per-example mean differ by at most "
                         f"{internal:.1e} relative (every batch is full).")
        for m in evaluated:
            if base:
                shared, rel, acc = compare(tops[m]["records"], base["records"])
                verdict = "agree" if rel <= 1e-6 and acc == 0 else "DIFFER"
                lines.append(f"- {m} vs baseline on {shared} (point, split) pairs: loss differs "
                             f"by at most {rel:.1e} relative, accuracy by {acc:.1e}: {verdict} "
                             f"(to 1e-6).")
        for m in evaluated[1:]:
            shared, rel, acc = compare(tops[m]["records"], tops[evaluated[0]]["records"])
            verdict = "identical" if rel <= 1e-6 and acc == 0 else "DIFFER"
            lines.append(f"- {m} vs {evaluated[0]}: {shared} pairs, loss {rel:.1e} relative, "
                         f"accuracy {acc:.1e}: {verdict}.")
        lines += [""]
        fastest = min((tops[m] for m in evaluated), key=lambda t: t["seconds"], default=None)
        if name in ("mlp", "cnn") and base and fastest:
            speedup = base["seconds"] / fastest["seconds"]
            limit = ""
            if floor and speedup < 10:
                # what bounds the ratio: the baseline's own cost measured in whole forward passes
                ceiling = base["seconds"] / floor["seconds"]
                limit = (f"the baseline is only {ceiling:.1f}× the forward floor, so 10× needs "
                         f"the sweep at {ceiling / 10:.2f}× the floor; the best is "
                         f"{fastest['seconds'] / floor['seconds']:.2f}×")
            goals.append(f"| layerlmc ≥ 10× faster than the baseline on {name} | "
                         f"{speedup:.1f}× ({fastest['method']}) | "
                         f"{'met' if speedup >= 10 else 'missed'} | {limit} |")
        if name in ("cnn", "resnet18") and floor:
            inc = tops.get("layerlmc:incremental")
            if inc:
                ratio = inc["seconds"] / floor["seconds"]
                goals.append(f"| incremental ≤ 0.6× the forward floor on {name} | "
                             f"{ratio:.2f}× | "
                             f"{'met' if ratio <= 0.6 else 'missed'} | |")
            else:
                goals.append(f"| incremental ≤ 0.6× the forward floor on {name} | not measured "
                             "(no incremental evaluator in this checkout) | open | |")
    if memory:
        spec = memory_spec(args.quick)
        lines += ["## Memory of a ~100M-parameter sweep", "",
                  (f"MLP 784-{'-'.join(str(h) for h in spec.kwargs['hidden'])}-10, the standard "
                   f"sweep on {spec.train} + {spec.test} examples, batch {spec.batch}. "
                   f"{MEMORY_NOTE}"),
                  "", MEMORY_HEADER, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in memory:
            if "seconds" not in r:
                lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | |")
                continue
            params = r["param_bytes"]
            acts = spec.batch * (sum(spec.kwargs["hidden"]) + 10) * 4
            budget = 3 * params + acts
            peak = (r["peak_kib"] - r["rss_import_kib"]) * 1024
            held = (r["rss_setup_kib"] - r["rss_import_kib"]) * 1024
            ok = peak <= budget
            lines.append(f"| {r['method']} | {params // 4 / 1e6:.1f}M | {params / 2**20:.0f} | "
                         f"{held / 2**20:.0f} | {(peak - held) / 2**20:.0f} | "
                         f"{peak / 2**20:.0f} | {peak / params:.2f} | {budget / 2**20:.0f} | "
                         f"{'yes' if ok else 'NO'} |")
            if r is memory[0]:
                limit = "" if ok else (
                    f"a and b hold {held / params:.2f}×; the sweep adds "
                    f"{(peak - held) / params:.2f}×: the full midpoint is a new tensor for every "
                    "key (1×), plus the runtime's "
                    f"own {(peak - held - params - acts) / 2**20:.0f} MiB")
                goals.append(f"| peak memory of a ~100M-parameter sweep < 3× parameter bytes + "
                             f"activations | {peak / params:.2f}× ({r['method']}) | "
                             f"{'met' if ok else 'missed'} | {limit} |")
        lines += [""]
    if goals:
        lines += ["## Goals (issue 7)", "", "| goal | measured | | what limits it |",
                  "|---|---|---|---|", *goals, ""]
    return "\n".join(lines)


MEMORY_NOTE = (
    "Peak = the process's peak RSS during the sweep minus its RSS after the imports, the data and "
    "a first torch operation, so it counts the endpoints `a` and `b` (\"held\"; the model shares "
    "`a`'s tensors) and everything the sweep allocates on top (\"sweep\"). Budget = 3 × "
    "parameter bytes + one batch of activations (every layer's output for one batch, float32)."
)
MEMORY_HEADER = ("| method | parameters | parameter bytes (MiB) | held (MiB) | sweep (MiB) | "
                 "peak (MiB) | peak / parameter bytes | budget (MiB) | within |")


def profile_misses(all_specs, results, threads: int, device: str = "cpu") -> list[str]:
    """cProfile of the fastest layerlmc evaluator wherever a speed goal was missed."""
    out = []
    for name, runs in results.items():
        tops = {m: best(v) for m, v in runs.items()}
        evaluated = [t for m, t in tops.items() if m.startswith("layerlmc:") and t]
        base, floor = tops.get("baseline"), tops.get("floor")
        if not evaluated:
            continue
        fastest = min(evaluated, key=lambda t: t["seconds"])
        missed = (name in ("mlp", "cnn") and base and base["seconds"] / fastest["seconds"] < 10)
        missed = missed or (name in ("cnn", "resnet18") and floor
                            and fastest["seconds"] / floor["seconds"] > 0.6)
        if not missed:
            continue
        result = measure(all_specs[name], fastest["method"], threads, profile=True, device=device)
        if "profile" in result:
            out.append(f"\n### Profile: {fastest['method']} on {name} (top 12 by own time)\n\n"
                       f"```\n{result['profile']}\n```\n")
    return out


if __name__ == "__main__":
    main()
