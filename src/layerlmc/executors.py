"""Where independent pieces of work run: in this process (default), later on a cluster.

An algorithm hands an executor a pure function and a list of tasks and gets the results back
in task order; it never knows where they ran. That is what lets a distributed backend plug in
without changing the federated simulation or the analyses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from .errors import unknown

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        """``fn`` applied to every task; results come back in task order."""
        ...


class LocalExecutor:
    """Runs the tasks one after another in this process (the data is shared, nothing is copied)."""

    name = "local"

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)


EXECUTORS: dict[str, Callable[[], Executor]] = {"local": LocalExecutor}


def get_executor(name: str = "local") -> Executor:
    if name not in EXECUTORS:
        raise unknown("executor", name, EXECUTORS)
    return EXECUTORS[name]()
