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
- ``floor``: ``model(x)`` on preloaded tensors, once per distinct state of the sweep and split;
- ``layerlmc:plain@bf16``: the plain evaluator under bf16 autocast, reported as its speed-up and
  its barrier error against fp32;
- ``cli:<evaluator>`` (the ``mlp-cli`` case): ``layerlmc barriers`` end to end as a subprocess on
  all 70k Fashion-MNIST images, α ∈ {0, ½, 1} for both bases.

The cases are in bench/cases.py, the baseline in bench/paper.py, the measurements in
bench/measure.py and the markdown in bench/report.py; this file is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (make bench, gpu.sh, every measuring subprocess)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ROOT
from bench.cases import cli_spec, memory_spec, specs
from bench.measure import (
    has_evaluator_option,
    measure_in_subprocess,
    measure_in_this_process,
    profile_missed_goals,
)
from bench.report import benchmarks_markdown, machine_info, mib

EVALUATORS = ("plain", "incremental", "vmap")


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
    parser.add_argument("--no-cli", action="store_true",
                        help="skip the CLI case (layerlmc barriers end to end on all 70k images)")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the bf16 runs (layerlmc:plain@bf16, its barrier error vs fp32)")
    parser.add_argument("--no-profile", action="store_true", help="no profile of missed goals")
    parser.add_argument("--out",
                        help="markdown file (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure_in_this_process(json.loads(args.worker))))
        return
    out = args.out or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    began = time.perf_counter()
    gpu = args.device.startswith("cuda")
    if gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA GPU here")
    width = args.resnet_width or (64 if gpu else 8)
    info = machine_info(args.threads, args.device)
    all_specs = specs(args.quick, width, gpu=gpu, batch=args.batch_size)
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.no_cli and not any(m.strip() == "mlp-cli" for m in chosen):
        chosen.append("mlp-cli")
    all_specs["mlp-cli"] = cli_spec(args.quick)
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
    if not args.no_bf16 and not gpu:
        # issue 14: bf16 autocast on the CPU, timed beside fp32 with the same evaluator
        methods.insert(-1, "layerlmc:plain@bf16")
    # the CLI case: the command end to end, every evaluator (vmap stacks 70k-image batches of
    # every state: not what a user of this case picks)
    cli_methods = ["baseline", *[f"cli:{e}" for e in evaluators if e != "vmap"], "floor"]
    print(" · ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    if "mlp-cli" in chosen:
        notes.append(prepare_data_cache())

    results: dict[str, dict[str, list[dict]]] = {}
    for name in chosen:
        spec = all_specs[name]
        rounds = args.rounds or spec.rounds
        model_methods = cli_methods if spec.cli else methods
        runs: dict[str, list[dict]] = {m: [] for m in model_methods}
        for r in range(rounds):
            # rotate the order so that no method always runs first (or last) in a round
            order = model_methods[r % len(model_methods):] + model_methods[: r % len(model_methods)]
            for method in order:
                result = measure_in_subprocess(spec, method, args.threads, device=args.device)
                runs[method].append(result)
                shown = f"{result['seconds']:.2f} s" if "seconds" in result else result["error"]
                print(f"  {name} round {r + 1}/{rounds} {method}: {shown}", flush=True)
        results[name] = runs

    memory: list[dict] = []
    if not args.no_memory:
        spec = memory_spec(args.quick)
        for method in [f"layerlmc:{e}" for e in evaluators]:
            result = measure_in_subprocess(spec, method, args.threads, device=args.device)
            memory.append(result)
            shown = (f"{result['seconds']:.1f} s, peak {mib(result['peak_kib'])} MiB"
                     if "seconds" in result else result["error"])
            print(f"  memory {method}: {shown}", flush=True)

    text = benchmarks_markdown(info, all_specs, chosen, results, memory, notes, args.quick)
    profiles = []
    if not args.no_profile:
        profiles = profile_missed_goals(all_specs, results, args.threads, args.device)
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


def prepare_data_cache() -> str:
    """The CLI case reads its data through the command, as a user does: the decoded-dataset
    cache is filled first (in a private folder, removed at exit), so every round measures the
    steady state; the note says what the first, decoding run costs on top."""
    import atexit
    import os
    import shutil
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="layerlmc-bench-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["LAYERLMC_DATA_CACHE"] = folder  # inherited by every measuring subprocess
    code = ("import time; from layerlmc.data.fashion_mnist import fashion_mnist as f; "
            "t = time.perf_counter(); f(); a = time.perf_counter() - t; "
            "t = time.perf_counter(); f(); print(a, time.perf_counter() - t)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=False)
    try:
        cold, warm = (float(v) for v in proc.stdout.split())
    except ValueError:
        return f"The decoded-dataset cache could not be filled ({proc.stderr.strip()[-200:]})."
    return (f"CLI case: Fashion-MNIST's 70k images take {cold:.2f} s to decode from the idx "
            f"files and {warm:.3f} s to map from the decoded-dataset cache "
            "(`layerlmc.data.cache`), filled before the rounds; a user's very first run pays "
            "the difference once.")


if __name__ == "__main__":
    main()
