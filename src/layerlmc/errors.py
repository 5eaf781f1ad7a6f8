"""User-facing errors: one clear line, no traceback (the CLI prints ``str(error)``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LayerLMCError(Exception):
    """A mistake in the user's input (file, name, option, data) rather than a bug."""


def spelling(name: str) -> str:
    """``name`` as it is compared when looked up: case, ``-``, ``_``, spaces and dots ignored
    (``FashionMNIST``, ``fashion_mnist`` and ``fashion-mnist`` are one name)."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _contains_in_order(text: str, letters: str) -> bool:
    remaining = iter(text)
    return all(letter in remaining for letter in letters)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or the list of choices when none is close.

    A choice that holds what was typed, letter by letter in order (``fmnist`` in
    ``fashion-mnist``), comes before one that is merely similar (``mnist``): a user abbreviates
    a name far more often than they mistype another one."""
    choices = sorted(set(choices))
    typed = spelling(name)
    holding = [c for c in choices if typed and _contains_in_order(spelling(c), typed)]
    close = difflib.get_close_matches(name, holding, n=1, cutoff=0.0) if holding else []
    close = close or difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f" (choices: {shown})" if choices else ""


def unknown(what: str, name: str, choices: Iterable[str]) -> LayerLMCError:
    return LayerLMCError(f"unknown {what} '{name}'{did_you_mean(name, choices)}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
