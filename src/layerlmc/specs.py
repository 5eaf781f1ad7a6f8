"""Models and data named on the command line: a registered name, ``FILE.py:FUNC`` or
``package.module:FUNC``, with ``key=value`` keyword arguments; models also ``hf:PATH``, a
Hugging Face model folder (:mod:`layerlmc.hf`)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import yaml

from . import data as _builtin_data  # noqa: F401  (registers the built-in datasets)
from . import hf as _hf  # registers hf-text; imports transformers only when used
from . import models as _builtin_models  # noqa: F401
from .errors import LayerLMCError, did_you_mean, first_line
from .registry import Registry, Splits, datasets, models


def parse_kwargs(pairs: Sequence[str], what: str = "argument") -> dict[str, object]:
    """``["width=32", "hidden=[64,64]"]`` → ``{"width": 32, "hidden": [64, 64]}`` (YAML values)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LayerLMCError(f"{what} '{pair}' is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def resolve_callable(spec: str, registry: Registry) -> Callable:
    """A registered name, ``path/to/file.py:func`` or ``package.module:func``."""
    if ":" not in spec:
        return registry.get(spec)
    target, _, name = spec.rpartition(":")
    if not name:
        raise LayerLMCError(f"'{spec}' names no function after ':'")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(Path(target))
    else:
        # like `python -m`, modules in the current folder are importable
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise LayerLMCError(f"cannot import module '{target}': {first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - any error in user code is reported as one line
            raise LayerLMCError(f"importing {target} failed: {type(err).__name__}: {first_line(err)}") from None
    func = getattr(module, name, None)
    if not callable(func):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise LayerLMCError(f"'{target}' has no function '{name}'{did_you_mean(name, names)}")
    return func


def _import_file(path: Path):
    if not path.is_file():
        raise LayerLMCError(f"file not found: {path}")
    module_name = f"layerlmc_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LayerLMCError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # the user's folder stays importable, so their code can import its neighbours, also later
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error in user code is reported as one line
        raise LayerLMCError(f"importing {path} failed: {type(err).__name__}: {first_line(err)}") from None
    return module



def _call(func: Callable, kwargs: Mapping[str, object], spec: str):
    try:
        inspect.signature(func).bind(**kwargs)
    except TypeError as err:
        raise LayerLMCError(f"bad arguments for '{spec}': {err}") from None
    except ValueError:
        pass  # builtins without a signature: let the call itself complain
    try:
        return func(**kwargs)
    except LayerLMCError:
        raise
    except Exception as err:  # noqa: BLE001
        raise LayerLMCError(f"'{spec}' failed: {type(err).__name__}: {first_line(err)}") from None


def build_model(spec: str, kwargs: Mapping[str, object] | None = None) -> torch.nn.Module:
    if spec.startswith(_hf.SPEC_PREFIX):
        folder = spec[len(_hf.SPEC_PREFIX):]
        if not folder:
            raise LayerLMCError("'hf:' names no folder; give hf:PATH, a Hugging Face model folder")
        factory = functools.partial(_hf.build_model, folder)
    else:
        factory = resolve_callable(spec, models)
    model = _call(factory, kwargs or {}, spec)
    if not isinstance(model, torch.nn.Module):
        raise LayerLMCError(f"'{spec}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_data(spec: str, kwargs: Mapping[str, object] | None = None) -> Splits:
    data = _call(resolve_callable(spec, datasets), kwargs or {}, spec)
    if not isinstance(data, Mapping) or not data:
        raise LayerLMCError(
            f"'{spec}' returned a {type(data).__name__}; it must return a dict of splits, "
            "e.g. {'train': (x, y), 'test': (x, y)}"
        )
    return Splits(data, getattr(data, "files", None))
