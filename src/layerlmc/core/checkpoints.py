"""Load and save state dicts safely, and check that two of them fit one model.

Loading never unpickles arbitrary objects: safetensors files are read as they are and
``.pt/.pth/.bin`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import LayerLMCError, first_line
from .groups import layer_groups

StateDict = dict[str, torch.Tensor]

#: Keys under which training scripts commonly nest the weights, tried in this order.
NESTED_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "model_state",
    "weights",
    "params",
    "last",
    "ema",
)
#: How many mappings deep :func:`unwrap_state_dict` looks for the weights.
MAX_NESTING = 8
#: Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ORDER_METADATA = "layerlmc.key_order"
log = logging.getLogger("layerlmc")


@dataclass(frozen=True)
class Origin:
    """Where a state dict was loaded from, when the files say more than the tensors do (a
    Hugging Face folder's config): lets :func:`check_pair` name the architectures."""

    path: str
    architecture: str
    summary: str = ""
    #: the settings that decide what the model computes, as sorted JSON
    settings: str = ""

    def __str__(self) -> str:
        return f"{self.architecture} ({self.summary})" if self.summary else self.architecture


#: id(tensor) → (a weak reference to it, its Origin), see :func:`tag_origin`
_ORIGINS: dict[int, tuple[weakref.ref, object]] = {}
#: id(tensor) → (a weak reference to it, the file it was read from), see :func:`load_state_dict`
_SOURCES: dict[int, tuple[weakref.ref, object]] = {}
#: id(tensor) → (a weak reference to it, True): non-finite tensors already reported by
#: :func:`check_pair`, so that checking a pair again (every step of a trajectory starts from
#: the first pair) does not repeat the warning
_REPORTED: dict[int, tuple[weakref.ref, object]] = {}


def _tag(registry: dict, tensors, value: object) -> None:
    for tensor in tensors:
        key = id(tensor)

        def forget(ref: weakref.ref, key: int = key, registry: dict = registry) -> None:
            # an id is reused only after its tensor is gone: drop the entry of this tensor only
            if registry.get(key, (None,))[0] is ref:
                del registry[key]

        registry[key] = (weakref.ref(tensor, forget), value)


def _tagged(registry: dict, tensor: torch.Tensor) -> object | None:
    entry = registry.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None


def tag_origin(state: Mapping[str, torch.Tensor], origin: Origin) -> None:
    """Remember that the tensors of ``state`` come from ``origin``.

    Kept by tensor rather than on a dict subclass, since callers copy state dicts into plain
    dicts (``dict(a)``, :func:`reorder_like`) that keep the tensor objects; and beside the
    tensors rather than as an attribute, which ``torch.save`` would pickle into the file.
    """
    _tag(_ORIGINS, state.values(), origin)


def origin_of(state: Mapping[str, torch.Tensor]) -> Origin | None:
    """The :class:`Origin` of a state dict loaded by :func:`load_state_dict`, if it has one."""
    for tensor in state.values():
        origin = _tagged(_ORIGINS, tensor)
        if origin is not None:
            return origin  # type: ignore[return-value]
    return None


def source_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """The file or folder a state dict was read from by :func:`load_state_dict`, if known."""
    origin = origin_of(state)
    if origin is not None:
        return origin.path
    for tensor in state.values():
        source = _tagged(_SOURCES, tensor)
        if source is not None:
            return source  # type: ignore[return-value]
    return None


#: Readers of checkpoint folders (a Hugging Face model folder is one checkpoint), in the order
#: they are tried: each is ``(accepts(folder) -> bool, load(folder) -> state dict, check)``,
#: where ``check(folder)`` (or None) raises a :class:`LayerLMCError` saying what the folder
#: lacks without reading its weights. Adapters register theirs (:mod:`layerlmc.hf` on import),
#: so the core never imports an adapter.
FOLDER_LOADERS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], StateDict],
                                Callable[[Path], object] | None]] = {}


def register_folder_loader(name: str, accepts: Callable[[Path], bool],
                           load: Callable[[Path], StateDict],
                           check: Callable[[Path], object] | None = None) -> None:
    FOLDER_LOADERS[name] = (accepts, load, check)


def _folder_loader(path: Path) -> tuple[Callable[[Path], StateDict], Callable[[Path], object] | None]:
    for accepts, load, check in FOLDER_LOADERS.values():
        if accepts(path):
            return load, check
    raise LayerLMCError(f"checkpoint {path} is a folder, and no checkpoint format reads folders "
                        "here (Hugging Face folders need layerlmc.hf)")


def _load_folder(path: Path) -> StateDict:
    return _folder_loader(path)[0](path)


def folder_problem(path: str | Path) -> str | None:
    """Why folder ``path`` is no checkpoint a registered loader reads (a Hugging Face model
    folder needs ``config.json`` and its weights), or None when it is one. Only the loader's
    cheap check runs: the weights are not read."""
    try:
        _, check = _folder_loader(Path(path))
        if check is not None:
            check(Path(path))
    except LayerLMCError as err:
        return str(err)
    return None


def load_state_dict(path: str | Path) -> StateDict:
    """Read a state dict from a safetensors or a weights-only torch file, or from a folder that
    a registered folder loader reads (:data:`FOLDER_LOADERS`; a Hugging Face model folder, with
    ``config.json`` and its weights, needs ``layerlmc[hf]``: :func:`layerlmc.hf.load_folder`).

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``, ...) are unwrapped and the
    ``module.`` / ``_orig_mod.`` prefixes stripped. Raises :class:`LayerLMCError` naming the file
    for anything that is missing, unreadable, truncated or would need code to unpickle.
    """
    path = Path(path)
    if not path.exists():
        raise LayerLMCError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise LayerLMCError(f"checkpoint is not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise LayerLMCError(f"cannot read safetensors checkpoint {path}: {first_line(err)}") from None
        raw = _restore_order(raw, metadata.get(ORDER_METADATA))
    else:
        raw = _load_weights_only(path)
    state = strip_wrapper_prefixes(unwrap_state_dict(raw, path))
    _tag(_SOURCES, state.values(), str(path))
    return state


def _restore_order(state: StateDict, order: str | None) -> StateDict:
    # safetensors stores keys sorted; layer groups are ordered input → output, so we keep the
    # original order in the file's metadata when we write it.
    try:
        keys = json.loads(order) if order else []
    except (ValueError, RecursionError):
        keys = []
    # anything but the list of the file's own keys (a damaged or foreign header) is ignored
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or sorted(keys) != sorted(state):
        return state
    return {k: state[k] for k in keys}


def reorder_like(state: StateDict, reference: Mapping[str, object]) -> StateDict:
    """``state`` with its keys in ``reference``'s order (a model's ``state_dict()``), extra keys last."""
    ordered = {k: state[k] for k in reference if k in state}
    ordered.update((k, v) for k, v in state.items() if k not in ordered)
    return ordered


def _load_weights_only(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        needed = re.search(r"GLOBAL ([\w.]+)", text)
        if needed:
            # weights_only refuses any global that is not a tensor or a plain container
            raise LayerLMCError(
                f"refused to load {path}: it is a pickle that needs code to load (it asks for {needed.group(1)}); "
                "re-save its state_dict with torch.save(model.state_dict(), ...) or as safetensors"
            ) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported" in line), lines[-1] if lines else "")
        raise LayerLMCError(f"cannot read checkpoint {path}: corrupt or not a torch checkpoint ({detail})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (KeyError, EOFError, ...)
        raise LayerLMCError(
            f"cannot read checkpoint {path}: truncated or not a torch file ({type(err).__name__}: {first_line(err)})"
        ) from None


def unwrap_state_dict(obj: object, where: str | Path = "checkpoint", _seen: frozenset = frozenset()) -> StateDict:
    """Find the tensor mapping inside a (possibly nested) checkpoint object."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        # a pickle may hold a mapping that contains itself, or thousands nested: never descend
        # into one twice, nor deeper than any training script nests its weights
        seen = _seen | {id(obj)}
        for key in NESTED_KEYS if len(seen) <= MAX_NESTING else ():
            inner = obj.get(key)
            if isinstance(inner, Mapping) and id(inner) not in seen:
                try:
                    return unwrap_state_dict(inner, where, seen)
                except LayerLMCError:
                    continue
        # A training checkpoint mixing tensors with counters ("epoch": 3) keeps its tensors.
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(map(str, list(obj)[:8]))
        raise LayerLMCError(f"no state dict found in {where} (top-level keys: {keys or 'none'})")
    raise LayerLMCError(f"no state dict found in {where}: it holds a {type(obj).__name__}")


def strip_wrapper_prefixes(state: StateDict) -> StateDict:
    """Drop ``module.`` / ``_orig_mod.`` when every key carries it (a wrapper's prefix, not a
    submodule that happens to be called ``module``)."""
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped = True
    return state


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Save as safetensors (the default format); tied tensors are stored once per key."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata={ORDER_METADATA: json.dumps(list(tensors))})
        else:
            torch.save(tensors, str(tmp))
        tmp.replace(path)  # never leave a half-written checkpoint under the real name
    except (OSError, SafetensorError, RuntimeError) as err:
        # a full disk or a read-only folder; torch reports a failed write as a RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
        raise LayerLMCError(f"cannot write checkpoint {path}: {reason}") from None
    return path


def check_pair(a: StateDict, b: StateDict, expected: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise a :class:`LayerLMCError` naming every key that does not fit.

    ``expected`` is the model's own ``state_dict()``; when given, both checkpoints must have
    exactly its keys, shapes and dtypes.
    """
    problems: list[str] = []
    problems += _compare("a", a, "b", b)
    if expected is not None:
        for name, state in (("a", a), ("b", b)):
            problems += _compare(name, state, "the model", expected)
    origin_a, origin_b = origin_of(a), origin_of(b)
    if origin_a and origin_b and origin_a.architecture != origin_b.architecture:
        first = f"; first difference: {problems[0]}" if problems else ""
        raise LayerLMCError(f"checkpoints are different architectures: a is {origin_a} from "
                            f"{origin_a.path}, b is {origin_b} from {origin_b.path}{first}")
    if problems:
        # de-duplicate while keeping order: the same key often differs from both sides
        seen = dict.fromkeys(problems)
        shown = list(seen)[:6]
        more = f"; and {len(seen) - 6} more" if len(seen) > 6 else ""
        models = ""
        if origin_a and origin_b and str(origin_a) != str(origin_b):
            models = f" (a is {origin_a}, b is {origin_b})"
        raise LayerLMCError(f"checkpoints do not match{models}: " + "; ".join(shown) + more)
    if origin_a and origin_b and origin_a.settings != origin_b.settings:
        log.warning("a (%s) and b (%s) have different configs: %s; the model is built from one of "
                    "them", origin_a.path, origin_b.path,
                    _config_difference(origin_a.settings, origin_b.settings))
    for name, state in (("a", a), ("b", b)):
        _warn_non_finite(name, state)


def non_finite_groups(state: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """``(group, non-finite values, floating-point values)`` for every module group (see
    :func:`layerlmc.core.groups.layer_groups`) of ``state`` holding a NaN or an infinity."""
    return _group_counts(state, _non_finite_counts(state))


def _group_counts(state: Mapping[str, torch.Tensor], bad: Mapping[str, int]) -> list[tuple[str, int, int]]:
    if not bad:
        return []
    rows = []
    for group in layer_groups(state, "module"):
        count = sum(bad.get(key, 0) for key in group.keys)
        if count:
            total = sum(state[k].numel() for k in group.keys if _can_be_non_finite(state[k]))
            rows.append((group.name, count, total))
    return rows


def _can_be_non_finite(tensor: object) -> bool:
    return (isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex())
            and tensor.layout == torch.strided and tensor.device.type != "meta")


#: elements checked at a time: a mask of a whole large tensor would be a quarter of its bytes
#: again, allocated and freed per tensor, which the allocator keeps as resident memory
_FINITE_CHUNK = 1 << 20


def _non_finite_counts(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    counts = {}
    for key, tensor in state.items():
        if _can_be_non_finite(tensor):
            flat = tensor.detach().reshape(-1)
            bad = 0
            for start in range(0, flat.numel(), _FINITE_CHUNK):
                finite = torch.isfinite(flat[start : start + _FINITE_CHUNK])
                if not bool(finite.all()):
                    bad += int(finite.numel() - finite.sum())
            if bad:
                counts[key] = bad
    return counts


def _warn_non_finite(name: str, state: Mapping[str, torch.Tensor]) -> None:
    """One warning naming the groups of checkpoint ``name`` that hold NaN/Inf: the run goes on
    (its points come out nan, flagged in the table), but the cause is named once, up front."""
    counts = _non_finite_counts(state)
    bad = [state[key] for key in counts]
    if all(_tagged(_REPORTED, tensor) for tensor in bad):
        return  # nothing, or these very tensors were reported already (a pair checked again)
    _tag(_REPORTED, bad, True)
    rows = _group_counts(state, counts)
    source = source_of(state)
    origin = origin_of(state)
    where = f" ({origin} from {source})" if origin else f" ({source})" if source else ""
    shown = ", ".join(f"{group} ({count} of {total} NaN/Inf)" for group, count, total in rows[:8])
    more = f" and {len(rows) - 8} more groups" if len(rows) > 8 else ""
    log.warning("checkpoint %s%s has non-finite values in %s%s; points that use them will be nan",
                name, where, shown, more)


def _compare(name: str, state: Mapping, other_name: str, other: Mapping) -> list[str]:
    problems = []
    missing = [k for k in other if k not in state]
    extra = [k for k in state if k not in other]
    if missing:
        problems.append(f"{name} lacks {_keys(missing)} that {other_name} has")
    if extra:
        problems.append(f"{name} has {_keys(extra)} that {other_name} lacks")
    for key in state:
        if key in other:
            x, y = state[key], other[key]
            if tuple(x.shape) != tuple(y.shape):
                problems.append(
                    f"{key}: shape {list(x.shape)} in {name} vs {list(y.shape)} in {other_name}"
                )
            elif x.dtype != y.dtype:
                problems.append(f"{key}: dtype {x.dtype} in {name} vs {y.dtype} in {other_name}")
    return problems


def _config_difference(a: str, b: str) -> str:
    try:
        left, right = json.loads(a), json.loads(b)
    except ValueError:
        return "(unreadable)"
    fields = [k for k in dict.fromkeys([*left, *right]) if left.get(k) != right.get(k)]
    shown = [f"{k} {left.get(k)!r} vs {right.get(k)!r}" for k in fields[:4]]
    return ", ".join(shown) + (f" (+{len(fields) - 4} more)" if len(fields) > 4 else "")


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
    return ("key " if len(keys) == 1 else "keys ") + shown


def state_digest(state: StateDict) -> str:
    """A digest of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # the tensor's own bytes (a memoryview), not a copy of them
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()[:16]
