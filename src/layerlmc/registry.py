"""One registry pattern for models, datasets and group schemes; drives ``layerlmc ls``.

A name is found however it is spelt (:func:`~layerlmc.errors.spelling`: ``FashionMNIST``,
``fashion_mnist``) and under its aliases (``fmnist``); an unknown one gets one error line with
the closest name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import spelling, unknown

T = TypeVar("T", bound=Callable)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    summary: str
    aliases: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Named factories with "did you mean" errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._spellings: dict[str, str] = {}  # spelling of a name or alias → the name

    def register(self, name: str, summary: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorate(factory: T) -> T:
            for key in (name, *aliases):
                if spelling(key) in self._spellings:
                    raise ValueError(f"{self.kind} '{key}' is registered twice "
                                     f"(as '{self._spellings[spelling(key)]}')")
            doc = summary or (factory.__doc__ or "").strip().splitlines()[0:1]
            self._entries[name] = Entry(name, factory, doc if isinstance(doc, str) else "".join(doc),
                                        tuple(aliases))
            for key in (name, *aliases):
                self._spellings[spelling(key)] = name
            return factory

        return decorate

    def resolve(self, name: str) -> str:
        """The registered name that ``name`` (any spelling, or an alias) stands for."""
        if name in self._entries:
            return name
        try:
            return self._spellings[spelling(name)]
        except KeyError:
            names = [key for entry in self._entries.values() for key in (entry.name, *entry.aliases)]
            raise unknown(self.kind, name, names) from None

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)].factory

    def __contains__(self, name: str) -> bool:
        return name in self._entries or spelling(name) in self._spellings

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
