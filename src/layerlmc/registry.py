"""One registry pattern for models, datasets and group schemes; drives ``layerlmc ls``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import unknown

T = TypeVar("T", bound=Callable)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    summary: str


class Registry(Generic[T]):
    """Named factories with "did you mean" errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = summary or (factory.__doc__ or "").strip().splitlines()[0:1]
            self._entries[name] = Entry(name, factory, doc if isinstance(doc, str) else "".join(doc))
            return factory

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name].factory
        except KeyError:
            raise unknown(self.kind, name, self._entries) from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]


class Splits(dict):
    """A dataset's splits, plus ``files``: name → text that a training run keeps beside its
    checkpoints (a text dataset's vocabulary, for instance)."""

    def __init__(self, splits: Mapping[str, object], files: Mapping[str, str] | None = None):
        super().__init__(splits)
        self.files = dict(files or {})


models: Registry = Registry("model")
datasets: Registry = Registry("dataset")
