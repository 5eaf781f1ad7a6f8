"""Typed, validated configs: YAML files plus dotted ``key=value`` overrides.

A mistake (unknown key, wrong type, value out of range) is one line naming the key and, for
an unknown key, the closest valid one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from .errors import LayerLMCError, did_you_mean

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    # a NaN or an infinity in a config is always a typo or a bug (`lr: .inf`), never a setting
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: A seed: what torch's and numpy's generators both accept.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: An Adam beta: a decay rate in [0, 1).
Beta = Annotated[float, Field(ge=0, lt=1)]


class ModelSpec(Strict):
    """A built-in model name (``layerlmc ls models``), ``FILE.py:FUNC`` or ``package.module:FUNC``."""

    name: str = "cnn"
    args: dict[str, Any] = Field(default_factory=dict)


class DataSpec(Strict):
    """A built-in dataset name or ``FILE.py:FUNC``; which splits train and evaluate."""

    name: str = "fashion-mnist"
    args: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    test_split: str = "test"
    run_splits: list[str] | None = Field(
        None, description="the train split of each run, e.g. two halves of the data; default train_split for all")


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)


class ScheduleConfig(Strict):
    """Learning-rate schedule, a pure function of the iteration (so a resumed run matches).

    ``constant``; ``cosine`` (per epoch to ``min_lr``, T_max = epochs); ``warmup-cosine``
    (linear warmup per iteration from ``warmup_start_lr`` over ``warmup_iters`` into the cosine,
    the paper's no-norm ResNet); ``step`` (×``gamma`` every ``step_size`` epochs);
    ``multistep`` (×``gamma`` at each milestone: epochs, or fractions of the run when all are
    at most 1 and one is not whole, e.g. [0.5, 0.75]);
    ``onecycle`` (per iteration: up from lr/``div_factor`` for ``pct_start`` of the run, then
    cosine down to lr/(``div_factor``·``final_div_factor``)).
    """

    name: Literal["constant", "cosine", "warmup-cosine", "step", "multistep", "onecycle"] = "constant"
    min_lr: float = Field(0.0, ge=0)
    warmup_iters: int = Field(100, ge=0)
    warmup_start_lr: float = Field(1e-4, ge=0)
    step_size: int = Field(30, ge=1)
    gamma: float = Field(0.1, gt=0)
    milestones: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: [0.5, 0.75])
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0)
    final_div_factor: float = Field(1e4, gt=0)


class AugmentConfig(Strict):
    """Image augmentation on tensors: random crop after zero padding, horizontal flip."""

    crop_padding: int = Field(0, ge=0)
    flip: bool = False


#: A run's name; YAML reads `name: 2024` as a number.
RunName = Annotated[str, StringConstraints(min_length=1),
                    BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) else v)]


class Training(Strict):
    """What every training command shares: where, what model on what data, how it learns."""

    name: RunName = "run"
    out: str | None = Field(None, description="run folder; default runs/<name>")
    init_seed: Seed = 0
    batch_size: int = Field(64, ge=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval_batch_size: int = Field(1024, ge=1)
    device: str = "auto"


class TrainConfig(Training):
    """N runs (a pair by default) of one model on one dataset, a checkpoint every epoch."""

    name: RunName = "pair"
    runs: int = Field(2, ge=1, le=26)
    init: Literal["same", "different"] = "same"
    order_seeds: list[Seed] | None = Field(None, description="data-order seed per run; default 1..runs")
    epochs: int = Field(10, ge=1)
    eval_max_examples: int | None = Field(10000, ge=1, description="train examples evaluated per epoch")

    def seeds(self) -> list[int]:
        seeds = self.order_seeds or list(range(1, self.runs + 1))
        if len(seeds) != self.runs:
            raise LayerLMCError(f"order_seeds has {len(seeds)} seeds for {self.runs} runs")
        return seeds

    def train_splits(self) -> list[str]:
        splits = self.data.run_splits or [self.data.train_split] * self.runs
        if len(splits) != self.runs:
            raise LayerLMCError(f"data.run_splits has {len(splits)} splits for {self.runs} runs")
        return splits


def _as_list(value: object) -> object:
    # `aggregate.include='conv*'` on the command line is one string; a YAML list stays a list
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Patterns = Annotated[list[str], BeforeValidator(_as_list)]


class PartitionConfig(Strict):
    """How the train split is dealt to clients (``layerlmc.data.partition``), each client's share
    then split into its own local train and test part."""

    scheme: Literal["iid", "halves", "shards", "dirichlet"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = strong label skew")
    classes_per_client: int = Field(2, ge=1, description="shards: classes each client sees")
    min_size: int = Field(10, ge=1, description="dirichlet: fewest examples a client may get")
    test_fraction: float = Field(0.25, ge=0, lt=1, description="share of each client's data kept for its local test")
    max_examples: int | None = Field(None, ge=1, description="a seeded subset of the train split, dealt out instead of all of it")
    seed: Seed = 0


class AggregateConfig(Strict):
    """Which keys are averaged each round; the rest stay local (personalization).

    ``fedavg`` averages every selected key each round; ``round-robin`` one selected group per
    round, in order; ``none`` never averages (clients train alone: the paper's two-client
    barrier setting). ``include``/``exclude`` are glob patterns over group names or keys.
    """

    strategy: Literal["fedavg", "round-robin", "none"] = "fedavg"
    include: Patterns = Field(default_factory=list)
    exclude: Patterns = Field(default_factory=list)
    weights: Literal["examples", "batches", "uniform"] = Field(
        "examples", description="client weights: local train examples, local batches (the paper's code) or equal")
    groups: Literal["module", "block", "param", "all"] = "module"


class MultiModelConfig(Strict):
    """The barrier of the K-client average (full and per group) against the clients' mean."""

    every: int = Field(0, ge=0, description="analyse every N-th round; 0 = the last round only")
    max_examples: int | None = Field(2000, ge=1)
    enabled: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of the analysis's forward passes (fp32: none)")


class FederatedConfig(Training):
    """K clients from one initialization, local training, (partial) averaging each round."""

    name: RunName = "federated"
    clients: int = Field(10, ge=1, le=10000)
    rounds: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1, description="batches per round instead of local_epochs epochs")
    fraction: float = Field(1.0, gt=0, le=1, description="share of clients that train in a round")
    seed: Seed = Field(0, description="client sampling and data order")
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    multimodel: MultiModelConfig = Field(default_factory=MultiModelConfig)
    eval_max_examples: int | None = Field(10000, ge=1, description="global test examples evaluated per round")
    executor: Literal["local", "ray"] = Field(
        "local", description="where clients train: this process, or Ray tasks in parallel")
    address: str | None = Field(
        None, description="the Ray cluster's address (executor ray); none starts a local Ray instance")


def load_config(cls: type[C], source: str | Path | Mapping | None, overrides: Sequence[str] = ()) -> C:
    """``cls`` validated from a YAML file (or a mapping) with dotted ``key=value`` overrides.

    Any mistake in the file or the overrides raises a :class:`LayerLMCError` naming the key.
    """
    if source is None:
        raw: dict = {}
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise LayerLMCError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LayerLMCError(f"{path} is not a YAML config: it is not UTF-8 text") from None
        except OSError as err:
            raise LayerLMCError(f"cannot read config file {path}: {err.strerror or err}") from None
        raw = _parse_yaml(text, str(path))
        raw = {} if raw is None else raw  # an empty file; `[]`, `0` or `false` are not configs
        if not isinstance(raw, dict):
            raise LayerLMCError(f"{path} must hold a mapping of config keys, not a {type(raw).__name__}")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise LayerLMCError(f"override '{override}' is not of the form key=value (e.g. optimizer.lr=0.1)")
        try:
            parsed = _parse_yaml(value, f"override '{override}'") if value else ""
        except LayerLMCError:
            parsed = value  # not YAML: the text itself, which validation may still accept
        _set_dotted(raw, key.strip().split("."), parsed, override)
    return validate(cls, raw)


def _parse_yaml(text: str, where: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LayerLMCError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise LayerLMCError(f"{where} is not a usable config: it is nested too deeply") from None


def validate(cls: type[C], raw: Mapping) -> C:
    _check_shape(raw)
    try:
        config = cls.model_validate(raw)
    except ValidationError as err:
        raise LayerLMCError(_describe(cls, err)) from None
    except RecursionError:  # a YAML alias that contains itself, or absurd nesting
        raise LayerLMCError("the config is not usable: it is nested too deeply or refers to itself") from None
    _check_storable(config)
    return config


#: The most values (scalars and containers, aliases expanded) a config may hold, and its depth.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def _check_shape(raw: object) -> None:
    """YAML aliases can make a few lines hold themselves or expand to billions of values (the
    "billion laughs"): refuse both, naming the key, before anything walks the whole tree."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(node: object, path: str) -> int:
        if not isinstance(node, (Mapping, list, tuple, set, frozenset)):
            return 1
        where = f"config key '{path}'" if path else "the config"
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_ids:
            raise LayerLMCError(f"{where} contains itself (a YAML alias inside its own anchor)")
        if len(open_ids) >= MAX_DEPTH:
            raise LayerLMCError(f"{where} is nested too deeply (more than {MAX_DEPTH} levels)")
        open_ids.add(id(node))
        total = 1
        for key, value in node.items() if isinstance(node, Mapping) else enumerate(node):
            total += size(value, f"{path}.{key}" if path else str(key))
            if total > MAX_VALUES:
                raise LayerLMCError(f"{where} expands to more than {MAX_VALUES:,} values "
                                    "(YAML aliases repeating each other?)")
        open_ids.discard(id(node))
        sizes[id(node)] = total
        return total

    size(raw, "")


def _check_storable(config: BaseModel, prefix: str = "") -> None:
    """Every run writes its config to ``config.yaml``: a value that cannot be written there
    (free-form ``args`` holding non-UTF-8 ``!!binary`` bytes, a YAML alias that contains
    itself) is refused now, naming its key, rather than failing the run later."""
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            _check_storable(value, f"{prefix}{name}.")
            continue
        try:
            yaml.safe_dump(config.model_dump(mode="json", include={name}))
        except Exception as err:  # noqa: BLE001 - pydantic, UnicodeDecodeError, RecursionError, ...
            raise LayerLMCError(f"config key '{prefix}{name}' holds a value that cannot be written to "
                                f"config.yaml ({type(err).__name__})") from None


def _set_dotted(raw: dict, keys: list[str], value: object, override: str) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise LayerLMCError(f"override '{override}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _describe(cls: type[BaseModel], err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        fields = _fields_at(cls, loc[:-1])
        return f"unknown config key '{key}'{did_you_mean(loc[-1], fields)}"
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    got = repr(first.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    return f"config key '{key}': {first['msg']} (got {got}){more}"


def _fields_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def to_dict(config: BaseModel) -> dict:
    return config.model_dump(mode="json")


def differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = list(dict.fromkeys([*old, *new]))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out
