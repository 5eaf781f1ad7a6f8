"""Where an analysis over checkpoints takes its two runs from: a training run folder, two folders
or globs of checkpoints (files or model folders), or two checkpoint files (``SOURCE`` and the
options of :func:`~layerlmc.cli.options.source_options`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..analyses.trajectory import find_checkpoints
from ..core.checkpoints import folder_problem
from ..errors import LayerLMCError
from ..hf import SPEC_PREFIX, is_hf_folder
from ..specs import parse_kwargs


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma-separated lists: ``--bases a,b``."""
    return list(dict.fromkeys(item.strip() for value in values for item in value.split(",") if item.strip()))


UNITS = ("epoch", "round", "iter", "step")
#: model folder names whose prefix is no unit: the Hugging Face Trainer's ``checkpoint-500``
#: counts optimizer steps
FOLDER_PREFIXES = {"checkpoint": "step"}


def is_training_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


@dataclass
class Source:
    """The checkpoints (step → file, or one file each for a single pair), model, data and output
    folder of an analysis, resolved from SOURCE and the options of :func:`source_options`."""

    a: dict[int, Path] | Path
    b: dict[int, Path] | Path
    model_spec: str
    model_kwargs: dict
    data_spec: str
    data_kwargs: dict
    out: Path
    steps: list[int] | None

    @property
    def single_pair(self) -> bool:
        return not isinstance(self.a, dict)

    @property
    def unit(self) -> str:
        """The unit the checkpoint names share (``round_0003.safetensors`` → ``round``; model
        folders ``step-100`` and the Trainer's ``checkpoint-500`` → ``step``), else ``epoch``."""
        if self.single_pair:
            return "epoch"
        prefixes = {_unit_prefix(p) for p in self.a.values()}
        found = prefixes.pop() if len(prefixes) == 1 else ""
        return found if found in UNITS else "epoch"


def _unit_prefix(path: Path) -> str:
    if not path.is_dir():
        return re.match(r"[a-z]*", path.stem.lower()).group()
    prefix = re.match(r"[a-z]*", path.name.lower()).group()
    return FOLDER_PREFIXES.get(prefix, prefix)


def _one_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a model folder (a Hugging Face folder), rather than a folder or
    glob of checkpoints."""
    return path.is_file() or (path.is_dir() and folder_problem(path) is None)


def resolve_source(
    source: str, source_b: str | None, pair: str, model_spec: str | None,
    model_args: tuple[str, ...], data_spec: str | None, data_args: tuple[str, ...],
    out: Path | None, steps: str | None, *, default_out: str, files: bool = False,
) -> Source:
    """SOURCE is a training run folder (runs chosen with --pair; model and data from its
    config.yaml unless given; --out defaults to SOURCE/``default_out``), or a folder or glob of
    a's checkpoints with --b for b's (then --data and --out are needed, and --model unless a's
    checkpoints are Hugging Face model folders: then it is hf:FIRST, a's first). With ``files``,
    SOURCE and --b may be two checkpoint files (or model folders)."""
    folder = Path(source)
    if is_training_run(folder):
        if source_b is not None:
            raise LayerLMCError(f"{source} is a training run; choose its runs with --pair, not --b")
        trained = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        roles = split_list((pair,))
        if len(roles) != 2:
            raise LayerLMCError(f"--pair needs two run names such as a,b; got '{pair}'")
        dirs = [folder / "checkpoints" / role for role in roles]
        for role, directory in zip(roles, dirs):
            if not directory.is_dir():
                present = sorted(p.name for p in (folder / "checkpoints").iterdir())
                raise LayerLMCError(f"{folder} has no run '{role}' (runs: {', '.join(present)})")
        a, b = (find_checkpoints(d) for d in dirs)
        trained_model, trained_data = trained.get("model", {}), trained.get("data", {})
        model_spec = model_spec or trained_model.get("name")
        model_kwargs = parse_kwargs(model_args) if model_args else trained_model.get("args", {})
        data_spec = data_spec or trained_data.get("name")
        data_kwargs = parse_kwargs(data_args) if data_args else trained_data.get("args", {})
        out = out or folder / default_out
    else:
        if source_b is None:
            raise LayerLMCError(
                f"{source} is not a training run folder; give b's checkpoints with --b")
        for flag, value in (("--data", data_spec), ("--out", out)):
            if value is None:
                raise LayerLMCError(
                    f"{flag} is needed when SOURCE is a folder or glob of checkpoints")
        if files and (_one_checkpoint(folder) or _one_checkpoint(Path(source_b))):
            for name, path in (("SOURCE", source), ("--b", source_b)):
                if not _one_checkpoint(Path(path)):
                    raise LayerLMCError(
                        f"{name} {path} is not a checkpoint file or model folder; give two for "
                        "a single pair")
            if steps:
                raise LayerLMCError(
                    "--steps selects steps of checkpoint folders; a pair of files has none")
            a, b = Path(source), Path(source_b)
        else:
            a, b = find_checkpoints(source), find_checkpoints(source_b)
        if model_spec is None:
            # as for `layerlmc barriers`: a's (first) model folder names the architecture
            first = a if isinstance(a, Path) else next(iter(a.values()))
            if not is_hf_folder(first):
                raise LayerLMCError("--model is needed when SOURCE is a folder or glob of "
                                    "checkpoint files (it defaults to hf:FOLDER for model folders)")
            model_spec = f"{SPEC_PREFIX}{first}"
        model_kwargs, data_kwargs = parse_kwargs(model_args), parse_kwargs(data_args)
    try:
        chosen_steps = [int(s) for s in split_list((steps,))] if steps else None
    except ValueError:
        raise LayerLMCError(f"--steps takes integers, e.g. 0,10,20; got '{steps}'") from None
    return Source(a, b, model_spec, model_kwargs, data_spec, data_kwargs, Path(out), chosen_steps)
