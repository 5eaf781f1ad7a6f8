"""``layerlmc train``: N runs of one config, a checkpoint every epoch, resumable to the same weights.

Every epoch is a pure function of (weights, optimizer state, config, run seed, epoch): the data
order, the augmentation and any other randomness are drawn from generators seeded by the run's
data-order seed and the epoch, and the learning rate is a function of the iteration. So a run
killed at any moment resumes from its last complete epoch and ends with the weights an
uninterrupted run has (on CPU, where kernels are deterministic).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from ..config import TrainConfig, differences, to_dict
from ..core.checkpoints import load_state_dict, save_state_dict
from ..core.records import RunDir, append_jsonl
from ..core.runs import checkpoint_path, optimizer_path
from ..errors import LayerLMCError, first_line
from ..evaluate import Evaluator, prepare_splits, resolve_device
from ..specs import build_data, build_model
from .augment import augment
from .schedules import learning_rate

log = logging.getLogger("layerlmc")
ROLES = "abcdefghijklmnopqrstuvwxyz"


def run_folder(config: TrainConfig, out: str | Path | None = None) -> Path:
    return Path(out or config.out or Path("runs") / config.name)


def train_runs(config: TrainConfig, out: str | Path | None = None, progress: bool | None = None) -> Path:
    """Train ``config.runs`` runs into ``out`` (default ``runs/<name>``); returns the folder.

    Layout: ``config.yaml``, ``run.json``, ``history.jsonl`` (one line per run and epoch:
    ``role, epoch, lr, train_loss, train_accuracy, test_loss, test_accuracy, seconds``) and
    ``checkpoints/<role>/epoch_NNNN.safetensors`` with epoch 0 = the initialization. Rerunning
    continues an interrupted run; a folder trained with another config is refused.
    """
    folder = run_folder(config, out)
    resolved = to_dict(config)
    resolved["out"] = str(folder)
    run = RunDir(folder)
    claim_training(run, resolved)
    device = resolve_device(config.device)
    data = build_data(config.data.name, config.data.args)
    for name, text in data.files.items():  # e.g. a text dataset's vocabulary
        run.write_file(name, text)
    test_name = config.data.test_split
    seeds, train_names = config.seeds(), config.train_splits()
    test = prepare_splits(data, [test_name], device=device)
    with run.status_on_error():
        for index, (role, seed, train_name) in enumerate(zip(ROLES, seeds, train_names)):
            train = prepare_splits(data, [train_name], device=device)[train_name]
            evaluation = {
                **prepare_splits(data, [train_name], max_examples=config.eval_max_examples, seed=0, device=device),
                **test,
            }
            torch.manual_seed(config.init_seed if config.init == "same" else config.init_seed + index)
            model = build_model(config.model.name, config.model.args).to(device)
            _train_one(config, folder, role, seed, model, train, evaluation, progress)
    run.finish("complete")
    return folder


#: Config fields that do not change the weights a run produces.
NOT_WEIGHTS = ("out", "device", "eval_batch_size")


def claim_training(run: RunDir, resolved: dict, unit: str = "epoch", not_weights: tuple[str, ...] = NOT_WEIGHTS) -> None:
    """Start or resume training in ``run``; refuse a folder trained with another config.

    Keys in ``not_weights`` may change between runs (they do not change the weights).
    """
    config_file = run.path / "config.yaml"
    if config_file.exists():
        old = yaml.safe_load(config_file.read_text()) or {}
        changed = [key for key in differences(old, resolved) if key.split(".")[0] not in not_weights]
        trained = any(p.stem != f"{unit}_0000" for p in run.path.glob(f"checkpoints/*/{unit}_*.safetensors"))
        if changed and trained:
            raise LayerLMCError(
                f"{run.path} was trained with another config ({', '.join(changed[:6])} differ); "
                "resume it with the same config or train into another folder"
            )
        if changed:
            # nothing was trained yet (a failed or diverged start): begin again with the new config
            log.info("%s: nothing trained yet; starting over with the new config", run.path)
            for stale in [*run.path.glob("checkpoints/*/*"), *run.path.glob("checkpoints/*.pt"),
                          run.path / "history.jsonl"]:
                stale.unlink(missing_ok=True)
    run.config = resolved
    run.write_config()
    previous = run.read_run() or {}
    run.write_run({
        **previous, "status": "running", "started": previous.get("started") or _now(),
        "resumed": _now() if previous else None, "ended": None,
    })


def resume_epoch(folder: Path, role: str) -> int | None:
    """The last epoch whose weights and optimizer state are both saved (0 needs no optimizer)."""
    ckpts = folder / "checkpoints" / role
    epochs = sorted(int(p.stem.split("_")[1]) for p in ckpts.glob("epoch_*.safetensors")) if ckpts.is_dir() else []
    for epoch in reversed(epochs):
        if epoch == 0 or optimizer_path(folder, role, epoch).exists():
            return epoch
    return None


def read_history(folder: Path, key: tuple[str, ...] = ("role", "epoch")) -> list[dict]:
    """``history.jsonl``: the last record per ``key``, sorted by it."""
    path = Path(folder) / "history.jsonl"
    if not path.exists():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
            latest[tuple(record[k] for k in key)] = record
        except (ValueError, KeyError, TypeError, RecursionError):
            continue  # a torn last line of a killed run; that epoch is evaluated again
    return sorted(latest.values(), key=lambda r: tuple(r[k] for k in key))


def _train_one(config, folder, role, seed, model, train, evaluation, progress) -> None:
    epochs = config.epochs
    start = resume_epoch(folder, role)
    if start is None:
        start = 0
        save_state_dict(model.state_dict(), checkpoint_path(folder, role, 0))
    else:
        model.load_state_dict(load_state_dict(checkpoint_path(folder, role, start)))
    optimizer = make_optimizer(config, model)
    if start > 0:
        optimizer.load_state_dict(torch.load(optimizer_path(folder, role, start), map_location=train.labels.device,
                                             weights_only=True))
    if start == epochs:
        log.info("run %s: already trained (%d epochs)", role, epochs)
    elif start:
        log.info("run %s: resuming after epoch %d of %d", role, start, epochs)
    evaluator = Evaluator(model, evaluation, config.eval_batch_size)
    done = {r["epoch"] for r in read_history(folder) if r["role"] == role}
    iters = -(-len(train) // config.batch_size)
    if start not in done:
        # an epoch whose record was lost in a kill is evaluated again (its duration is unknown)
        lr = learning_rate(config.schedule, config.optimizer.lr, start * iters - 1, epochs, iters) if start else None
        _log_epoch(folder, role, start, evaluator, model, lr=lr, seconds=None)
    initial = next((r for r in read_history(folder) if r["role"] == role and r["epoch"] == 0), None)
    bar = tqdm(range(start + 1, epochs + 1), desc=f"run {role}", unit="epoch", disable=None if progress is None else not progress)
    for epoch in bar:
        began = time.perf_counter()
        lr, _ = train_epoch(model, optimizer, train, config, seed, epoch, epochs,
                         where=f"run {role} at epoch {epoch}")
        # weights, then optimizer state: an epoch counts as done only when both are on disk
        save_state_dict(model.state_dict(), checkpoint_path(folder, role, epoch))
        save_optimizer(optimizer.state_dict(), optimizer_path(folder, role, epoch))
        optimizer_path(folder, role, epoch - 1).unlink(missing_ok=True)
        record = _log_epoch(folder, role, epoch, evaluator, model, lr, time.perf_counter() - began)
        bar.set_postfix(test_acc=f"{record['test_accuracy']:.3f}")
        if initial and epoch >= 2 and record["train_accuracy"] <= initial["train_accuracy"] + 0.01:
            # a run that never leaves its initial accuracy (a dead network) makes every barrier meaningless
            log.warning("run %s has not learned after %d epochs (train accuracy %.3f, at init %.3f); "
                        "lower optimizer.lr or add a warmup", role, epoch, record["train_accuracy"],
                        initial["train_accuracy"])
        log.info("run %s epoch %d/%d: train loss %.4f, test loss %.4f, test accuracy %.4f (%.0f s)",
                 role, epoch, epochs, record["train_loss"], record["test_loss"], record["test_accuracy"],
                 record["seconds"] or 0.0)


def train_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, train, config, seed: int, epoch: int,
    epochs: int, where: str, batches: int | None = None,
) -> tuple[float, float]:
    """One epoch (1-based ``epoch`` of ``epochs``) over ``train``: returns the last learning rate
    and the mean training loss of its batches.

    ``config`` has ``batch_size``, ``optimizer.lr``, ``schedule`` and ``augment``. Data order,
    augmentation and module randomness come from generators seeded by (``seed``, ``epoch``),
    so an epoch is a pure function of its inputs and a resumed run repeats it exactly. With
    ``batches``, the "epoch" is that many batches (fresh permutations when it needs more).
    """
    model.train()
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    torch.manual_seed(_mix(seed, epoch) + 1)  # dropout and other module randomness
    full = -(-len(train) // config.batch_size)
    iters = batches or full
    order = torch.cat([torch.randperm(len(train), generator=generator) for _ in range(-(-iters // full))])
    order = order.to(train.labels.device)
    lr = config.optimizer.lr
    total = 0.0
    for batch in range(iters):
        lr = learning_rate(config.schedule, config.optimizer.lr, (epoch - 1) * iters + batch, epochs, iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # with `batches`, a batch never straddles two permutations
        start = (batch // full) * len(train) + (batch % full) * config.batch_size
        index = order[start : min(start + config.batch_size, (batch // full + 1) * len(train))]
        inputs = augment(train.inputs[index], config.augment, generator)
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        # sequence models give logits [batch, ..., classes] for labels [batch, ...]: one loss per label
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), train.labels[index].reshape(-1))
        if not torch.isfinite(loss):
            raise LayerLMCError(
                f"{where} diverged at batch {batch} (loss {loss.item()}); "
                "lower optimizer.lr or change the schedule"
            )
        loss.backward()
        optimizer.step()
        total += loss.item()
    return lr, total / iters


def make_optimizer(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def save_optimizer(state: dict, path: Path) -> None:
    """An optimizer's state dict, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)  # tensors, numbers and lists only: loads with weights_only
        tmp.replace(path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise LayerLMCError(f"cannot write {path}: {first_line(err)}") from None


def _log_epoch(folder, role, epoch, evaluator, model, lr, seconds) -> dict:
    state = dict(model.state_dict())
    names = list(evaluator.splits)
    train_metrics, test_metrics = (evaluator.evaluate(state, name) for name in names)
    record = {
        "role": role, "epoch": epoch, "lr": lr,
        "train_loss": train_metrics.loss, "train_accuracy": train_metrics.accuracy,
        "test_loss": test_metrics.loss, "test_accuracy": test_metrics.accuracy,
        "seconds": None if seconds is None else round(seconds, 3),
    }
    append_jsonl(Path(folder) / "history.jsonl", [record])
    return record


def _mix(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
