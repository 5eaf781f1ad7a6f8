"""Measurements: each method's sweep timed in a fresh subprocess, with its peak memory.

Methods other than the baseline (bench/paper.py): ``layerlmc:<evaluator>``, one
``layerlmc.barriers`` call for the standard sweep, and ``floor``, ``model(x)`` on preloaded
tensors once per distinct state of the sweep and split. A fresh process per measurement, so
that its peak memory is its own and no allocator state or cache carries over.
"""

from __future__ import annotations

import cProfile
import gc
import inspect
import io
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.cases import (
    Spec,
    fashion_mnist_subset,
    logic_layers,
    model_constructor,
    point_key,
    preloaded_tensors,
)
from bench.paper import run_baseline

# the measuring subprocess is the entry point again (its hidden --worker option), run as a file
ENTRY = Path(__file__).resolve().with_name("sweep.py")

# ---------------------------------------------------------------------------------------------
# in the (fresh) measuring process


def _status_kib(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS: now; VmHWM: peak since the last reset)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the peak is that of what follows only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_layerlmc(spec: Spec, model, a, b, data: dict, evaluator: str, device) -> dict[str, list[float]]:
    import layerlmc

    try:
        from layerlmc.analyses import pairwise as lmc
    except ImportError:  # a checkout from before the move to layerlmc.analyses
        from layerlmc import lmc

    captured: list[dict] = []
    original = lmc.evaluate_paths

    def capture(*args, **kwargs):
        records = original(*args, **kwargs)
        captured.extend(records)
        return records

    # barriers() returns barriers; the points are kept for checks. The public layerlmc.barriers
    # may wrap the analysis (e.g. to add plots=), which looks evaluate_paths up in its own
    # module's globals: that module is the one patched
    lmc.evaluate_paths = capture
    options: dict[str, Any] = {}
    if has_evaluator_option():
        options["evaluator"] = evaluator
    try:
        layerlmc.barriers(model, a, b, data, layerwise=True, bases=("a", "b"), alphas="0.5",
                          batch_size=spec.batch, device=str(device), plots=False, progress=False,
                          **options)
    finally:
        lmc.evaluate_paths = original
    return {point_key(r["kind"], r["group"], r["base"], r["alpha"], r["split"]):
            [r["loss"], r["accuracy"], r["loss"]] for r in captured}


def run_floor(spec: Spec, model, a, data: dict) -> dict[str, list[float]]:
    import torch

    # the distinct states of the standard sweep: a, b, the full midpoint, 2 per group
    groups = [g for g, keys in logic_layers(a).items()
              if any(a[k].is_floating_point() for k in keys)]
    states = 3 + 2 * len(groups)
    with torch.inference_mode():
        for _ in range(states):
            for x, _y in data.values():
                for start in range(0, len(x), spec.batch):
                    model(x[start : start + spec.batch])
    return {}


def has_evaluator_option() -> bool:
    """Whether ``layerlmc.barriers`` takes ``evaluator=``: a parameter of its own in older
    checkouts, a field of its ``EvalOptions`` (taken as a keyword too) since the option objects."""
    import dataclasses

    import layerlmc

    if "evaluator" in inspect.signature(layerlmc.barriers).parameters:
        return True
    options = getattr(layerlmc, "EvalOptions", None)
    return options is not None and "evaluator" in {f.name for f in dataclasses.fields(options)}


def measure_in_this_process(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    device = torch.device(job.get("device", "cpu"))
    cuda = device.type == "cuda"
    spec = Spec(**job["spec"])
    method = job["method"]
    raw = {"train": fashion_mnist_subset("train", spec.train, spec.pad),
           "test": fashion_mnist_subset("test", spec.test, spec.pad)}
    data = {} if method == "baseline" else {
        s: tuple(t.to(device) for t in preloaded_tensors(*raw[s])) for s in raw}
    if method != "baseline":
        raw = {}
    # the runtime's own one-time allocations (thread pool, allocator) belong to no method: the
    # reference RSS ("after imports") is taken once torch has run something
    torch.nn.functional.linear(torch.ones(8, 8), torch.ones(8, 8))
    gc.collect()
    rss_import = _status_kib("VmRSS")
    make, kwargs = model_constructor(spec)
    torch.manual_seed(0)
    model = make(**kwargs).to(device).eval()
    # a shares the model's tensors (no copy): the model, a and b hold 2× the parameter bytes
    a = model.state_dict()
    torch.manual_seed(1)
    b = make(**kwargs).to(device).state_dict()
    # one-time costs (oneDNN primitives, first allocations) are nobody's: warm up before timing
    with torch.inference_mode():
        # a whole batch: BLAS allocates its one-time buffers by the batch size it first sees
        sample = torch.zeros(spec.batch, 1, 28 + 2 * spec.pad, 28 + 2 * spec.pad)
        model(sample.to(device))
    gc.collect()
    reset = _reset_peak_rss()
    rss_setup = _status_kib("VmRSS")
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
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        peak = torch.cuda.max_memory_allocated() // 1024
        rss_import = 0  # device memory: nothing of it is the runtime's own
    result = {"method": method, "seconds": seconds, "rss_import_kib": rss_import,
              "rss_setup_kib": rss_setup, "peak_kib": peak, "records": records,
              "param_bytes": sum(t.numel() * t.element_size() for t in a.values()),
              "groups": len(logic_layers(a))}
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
# in the driving process


def measure_in_subprocess(spec: Spec, method: str, threads: int, profile: bool = False,
                          device: str = "cpu") -> dict:
    job = {"spec": asdict(spec), "method": method, "threads": threads, "profile": profile,
           "device": device}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, str(ENTRY), "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"method": method, "error": tail}


def best_round(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return None
    top = dict(min(ok, key=lambda r: r["seconds"]))
    top["peak_kib"] = max(r["peak_kib"] for r in ok)  # the worst peak of the method
    return top


def profile_missed_goals(all_specs, results, threads: int, device: str = "cpu") -> list[str]:
    """cProfile of the fastest layerlmc evaluator wherever a speed goal was missed."""
    out = []
    for name, runs in results.items():
        tops = {m: best_round(v) for m, v in runs.items()}
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
        result = measure_in_subprocess(all_specs[name], fastest["method"], threads, profile=True,
                                       device=device)
        if "profile" in result:
            out.append(f"\n### Profile: {fastest['method']} on {name} (top 12 by own time)\n\n"
                       f"```\n{result['profile']}\n```\n")
    return out
