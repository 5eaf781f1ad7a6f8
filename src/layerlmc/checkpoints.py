"""Load and save state dicts safely, and check that two of them fit one model.

Loading never unpickles arbitrary objects: safetensors files are read as they are and
``.pt/.pth/.bin`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import LayerLMCError

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
_ORIGINS: dict[int, tuple[weakref.ref, Origin]] = {}


def tag_origin(state: Mapping[str, torch.Tensor], origin: Origin) -> None:
    """Remember that the tensors of ``state`` come from ``origin``.

    Kept by tensor rather than on a dict subclass, since callers copy state dicts into plain
    dicts (``dict(a)``, :func:`reorder_like`) that keep the tensor objects; and beside the
    tensors rather than as an attribute, which ``torch.save`` would pickle into the file.
    """
    for tensor in state.values():
        key = id(tensor)

        def forget(ref: weakref.ref, key: int = key, origins: dict = _ORIGINS) -> None:
            # an id is reused only after its tensor is gone: drop the entry of this tensor only
            if origins.get(key, (None,))[0] is ref:
                del origins[key]

        _ORIGINS[key] = (weakref.ref(tensor, forget), origin)


def origin_of(state: Mapping[str, torch.Tensor]) -> Origin | None:
    """The :class:`Origin` of a state dict loaded by :func:`load_state_dict`, if it has one."""
    for tensor in state.values():
        entry = _ORIGINS.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
    return None


def load_state_dict(path: str | Path) -> StateDict:
    """Read a state dict from a safetensors or a weights-only torch file, or from a Hugging
    Face model folder (``config.json`` and its weights; needs ``layerlmc[hf]``, see
    :func:`layerlmc.hf.load_folder`).

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``, ...) are unwrapped and the
    ``module.`` / ``_orig_mod.`` prefixes stripped. Raises :class:`LayerLMCError` naming the file
    for anything that is missing, unreadable, truncated or would need code to unpickle.
    """
    path = Path(path)
    if not path.exists():
        raise LayerLMCError(f"checkpoint not found: {path}")
    if path.is_dir():
        from .hf import load_folder  # transformers only when a folder is given

        return load_folder(path)
    if not path.is_file():
        raise LayerLMCError(f"checkpoint is not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise LayerLMCError(f"cannot read safetensors checkpoint {path}: {_first_line(err)}") from None
        raw = _restore_order(raw, metadata.get(ORDER_METADATA))
    else:
        raw = _load_weights_only(path)
    return strip_wrapper_prefixes(unwrap_state_dict(raw, path))


def _restore_order(state: StateDict, order: str | None) -> StateDict:
    # safetensors stores keys sorted; layer groups are ordered input → output, so we keep the
    # original order in the file's metadata when we write it.
    try:
        keys = json.loads(order) if order else []
    except ValueError:
        keys = []
    if sorted(keys) != sorted(state):
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
            f"cannot read checkpoint {path}: truncated or not a torch file ({type(err).__name__}: {_first_line(err)})"
        ) from None


def unwrap_state_dict(obj: object, where: str | Path = "checkpoint") -> StateDict:
    """Find the tensor mapping inside a (possibly nested) checkpoint object."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                try:
                    return unwrap_state_dict(obj[key], where)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file(tensors, str(tmp), metadata={ORDER_METADATA: json.dumps(list(tensors))})
    else:
        torch.save(tensors, str(tmp))
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
