"""Option objects: what travels together (how to evaluate, which paths) is one typed object.

An analysis takes its options as frozen dataclasses (:class:`~layerlmc.core.plan.PathOptions`,
:class:`~layerlmc.evaluate.options.EvalOptions`, ...), each a keyword parameter whose default
is an instance. :func:`flat_options` lets the same function take every field of those objects
as a keyword of its own, so ``barriers(..., max_examples=100)`` is
``barriers(..., evaluation=EvalOptions(max_examples=100))``: a new option is one new field,
and every analysis that takes the object, the command line that builds it and the flat
keywords follow.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable


def option_groups(signature: inspect.Signature) -> dict[str, object]:
    """Parameter name → default option object, for each parameter whose default is a dataclass."""
    return {name: parameter.default for name, parameter in signature.parameters.items()
            if dataclasses.is_dataclass(parameter.default)
            and not isinstance(parameter.default, type)}


def fields_of(option: object) -> set[str]:
    return {field.name for field in dataclasses.fields(option)}


def merge_flat(name: str, signature: inspect.Signature, kwargs: dict) -> dict:
    """``kwargs`` with each keyword that is no parameter of ``signature`` moved into every
    option object that has a field of that name (a shared field such as ``seed`` goes into
    each, and a keyword wins over the same field of an object also given); an object given as
    None is the default one; a keyword that fits nowhere is a ``TypeError``, as for any
    function."""
    groups = option_groups(signature)
    flat = {key: kwargs.pop(key) for key in list(kwargs) if key not in signature.parameters}
    known: set[str] = set()
    for group, default in groups.items():
        fields = fields_of(default)
        known |= fields
        chosen = {key: value for key, value in flat.items() if key in fields}
        given = kwargs.get(group)
        if chosen:
            kwargs[group] = dataclasses.replace(default if given is None else given, **chosen)
        elif group in kwargs and given is None:
            kwargs[group] = default
    unknown = sorted(set(flat) - known)
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument '{unknown[0]}'")
    return kwargs


def flat_options(func: Callable) -> Callable:
    """``func`` also taking the fields of its option objects as keywords (see the module
    docstring). ``func.resolve(*args, **kwargs)`` gives the bound arguments it is called with."""
    signature = inspect.signature(func)
    positional = [name for name, p in signature.parameters.items()
                  if name in option_groups(signature) and p.kind is not p.KEYWORD_ONLY]
    if positional:  # an object passed by position would escape the merge of its flat fields
        raise TypeError(f"{func.__name__}: option objects must be keyword-only: {positional}")

    def resolve(*args, **kwargs) -> inspect.BoundArguments:
        bound = signature.bind(*args, **merge_flat(func.__name__, signature, dict(kwargs)))
        bound.apply_defaults()
        return bound

    @functools.wraps(func)
    def call(*args, **kwargs):
        bound = resolve(*args, **kwargs)
        return func(*bound.args, **bound.kwargs)

    flat = inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)
    call.__signature__ = signature.replace(parameters=[*signature.parameters.values(), flat])
    call.resolve = resolve
    return call


def settings_of(*options: object) -> dict[str, object]:
    """The fields of option objects as plain values for ``config.yaml`` (tuples as lists)."""
    settings: dict[str, object] = {}
    for option in options:
        for key, value in dataclasses.asdict(option).items():
            settings[key] = list(value) if isinstance(value, tuple) else value
    return settings
