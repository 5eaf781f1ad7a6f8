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
    shared_fraction,
    sweep_states,
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


def run_layerlmc(spec: Spec, model, a, b, data: dict, evaluator: str, device,
                 precision: str = "fp32") -> dict[str, list[float]]:
    import layerlmc

    try:
        from layerlmc.analyses import pairwise as lmc
    except ImportError:  # a checkout from before the move to layerlmc.analyses
        from layerlmc import lmc

    captured: list[dict] = []
    original = lmc.evaluate_paths
    # the module whose globals the analysis looks evaluate_paths up in: the analysis's own in
    # older checkouts, its cells' (layerlmc.analyses.cells.evaluate_steps) since those
    modules = [lmc]
    try:
        from layerlmc.analyses import cells

        if getattr(cells, "evaluate_paths", None) is original:
            modules.append(cells)
    except ImportError:
        pass

    def capture(*args, **kwargs):
        records = original(*args, **kwargs)
        captured.extend(records)
        return records

    # barriers() returns barriers; the points are kept for checks
    for module in modules:
        module.evaluate_paths = capture
    options: dict[str, Any] = {}
    if has_evaluator_option():
        options["evaluator"] = evaluator
    if precision != "fp32":
        options["precision"] = precision
    try:
        layerlmc.barriers(model, a, b, data, layerwise=True, bases=("a", "b"), alphas="0.5",
                          batch_size=spec.batch, device=str(device), plots=False, progress=False,
                          **options)
    finally:
        for module in modules:
            module.evaluate_paths = original
    return {point_key(r["kind"], r["group"], r["base"], r["alpha"], r["split"]):
            [r["loss"], r["accuracy"], r["loss"]] for r in captured}


def sweep_groups(a) -> list[str]:
    """The groups the sweep moves: the logic layers with floating-point tensors."""
    return [g for g, keys in logic_layers(a).items() if any(a[k].is_floating_point() for k in keys)]


def sharing_bound(spec: Spec, model, a, data: dict, repeats: int = 3) -> float | None:
    """:func:`~bench.cases.shared_fraction` of the sweep's states: the model traced with
    torch.fx, each node's dependence on the groups read off the graph and its cost timed on the
    first batch of the first split (best of ``repeats``). None where the model does not trace
    or a group's weights are read nowhere in the graph."""
    import torch
    import torch.fx

    groups = sweep_groups(a)
    position = {g: i for i, g in enumerate(groups)}
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any model that does not trace has no bound here
        return None
    x = next(iter(data.values()))[0][: spec.batch]
    # a GPU queues kernels: a node's time is only its own once the queue is drained
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    costs: dict[str, float] = {}

    class Timed(torch.fx.Interpreter):
        def run_node(self, node):
            sync()
            start = time.perf_counter()
            result = super().run_node(node)
            sync()
            elapsed = time.perf_counter() - start
            costs[node.name] = min(costs.get(node.name, elapsed), elapsed)
            return result

    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first run pays one-time costs; the minimum drops it
            Timed(traced).run(x)
    depends: dict[str, frozenset[int]] = {}
    for node in traced.graph.nodes:
        own = set()
        if node.op == "call_module" and node.target in position:
            own.add(position[node.target])
        elif node.op == "get_attr" and str(node.target).rsplit(".", 1)[0] in position:
            own.add(position[str(node.target).rsplit(".", 1)[0]])
        depends[node.name] = frozenset(own).union(*(depends[n.name] for n in node.all_input_nodes))
    if set().union(*depends.values()) != set(range(len(groups))):
        return None
    states = sweep_states(len(groups), spec.cli)
    return shared_fraction(states, [(costs[name], depends[name]) for name in depends])


def run_floor(spec: Spec, model, a, data: dict) -> dict[str, list[float]]:
    import torch

    # the distinct states of the standard sweep: a, b, the full midpoint, 2 per group (α=½ for
    # both bases); the CLI case's α ∈ {0, ½, 1} adds a with b's group and b with a's: 4 per group
    states = len(sweep_states(len(sweep_groups(a)), spec.cli))
    with torch.inference_mode():
        for _ in range(states):
            for x, _y in data.values():
                for start in range(0, len(x), spec.batch):
                    model(x[start : start + spec.batch])
    return {}


def run_cli(spec: Spec, evaluator: str, folder: Path) -> tuple[dict[str, list[float]], int]:
    """``layerlmc barriers`` as a user types it, in a subprocess of its own: checkpoints in, the
    table, records and figures out. Returns the records of points.jsonl and the command's peak
    RSS (KiB)."""
    import layerlmc

    paths = {name: folder / f"{name}.pt" for name in ("a", "b")}  # saved before the clock starts
    out = folder / "run"
    hidden = ",".join(str(h) for h in spec.kwargs["hidden"])
    command = [sys.executable, "-m", "layerlmc.cli.main", "barriers", str(paths["a"]),
               str(paths["b"]), "--model", spec.model, "--model-arg", f"hidden=[{hidden}]",
               "--data", "fashion-mnist", "--out", str(out), "--alphas", "0,0.5,1",
               "--layer-alphas", "0,0.5,1", "--bases", "a,b", "--evaluator", evaluator]
    if spec.train < 60000:
        command += ["--data-arg", f"train_examples={spec.train}"]
    # the layerlmc this worker imported, installed or not
    src = str(Path(layerlmc.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"layerlmc barriers exited {proc.returncode}: {tail}")
    records = {}
    for line in (out / "points.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[point_key(r["kind"], r["group"], r["base"], r["alpha"], r["split"])] = [
            r["loss"], r["accuracy"], r["loss"]]
    return records, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


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
    data = {} if method == "baseline" or method.startswith("cli:") else {
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
    # the floor's process also times the nodes of one forward pass, before its clock
    bound = sharing_bound(spec, model, a, data) if method == "floor" else None
    # one-time costs (oneDNN primitives, first allocations) are nobody's: warm up before timing
    with torch.inference_mode():
        sample = torch.zeros(min(spec.batch, 8), 1, 28 + 2 * spec.pad, 28 + 2 * spec.pad)
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
    scratch = None
    if method.startswith("cli:"):
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="layerlmc-bench-")
        for name, state in (("a", a), ("b", b)):  # the user's checkpoints exist before the command
            torch.save(state, Path(scratch.name) / f"{name}.pt")
    if profiler:
        profiler.enable()
    child_peak = None
    if method == "baseline":
        records = run_baseline(spec, a, b, raw, device)
    elif method == "floor":
        records = run_floor(spec, model, a, data)
    elif method.startswith("cli:"):
        records, child_peak = run_cli(spec, method.split(":", 1)[1], Path(scratch.name))
        scratch.cleanup()
    else:
        evaluator, _, precision = method.split(":", 1)[1].partition("@")
        records = run_layerlmc(spec, model, a, b, data, evaluator, device, precision or "fp32")
    if profiler:
        profiler.disable()
    if cuda:
        torch.cuda.synchronize()  # the floor queues kernels without waiting for them
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        peak = torch.cuda.max_memory_allocated() // 1024
        rss_import = 0  # device memory: nothing of it is the runtime's own
    if child_peak is not None:  # the command's own process, whole: "peak extra" is all of it
        peak, rss_import, rss_setup = child_peak, 0, 0
    result = {"method": method, "seconds": seconds, "rss_import_kib": rss_import,
              "rss_setup_kib": rss_setup, "peak_kib": peak, "records": records,
              "param_bytes": sum(t.numel() * t.element_size() for t in a.values()),
              "groups": len(logic_layers(a)), "sharing_bound": bound}
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
        # fp32 API runs: a profile of the command would be of its subprocess's parent
        evaluated = [t for m, t in tops.items() if m.startswith("layerlmc:") and t and "@" not in m]
        base, floor = tops.get("baseline"), tops.get("floor")
        if not evaluated:
            continue
        fastest = min(evaluated, key=lambda t: t["seconds"])
        target = 6 if name == "cnn" else 10
        missed = (name in ("mlp", "cnn") and base and base["seconds"] / fastest["seconds"] < target)
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
