"""Where independent pieces of work run: in this process (default) or on a Ray cluster.

An algorithm hands an executor a pure function and a list of tasks and gets the results back;
it never knows where they ran. Large inputs that many tasks read (the evaluation data, a
step's endpoint weights, a client's local data) are shared once with :meth:`Executor.share`
and travel inside tasks as small handles; a task reads them with :meth:`Shared.get`.

The driver, the process that called the executor, stays the only writer of results: tasks
return records and never touch the output folder, so a worker dying mid-task loses nothing
but that task, which is run again (at most ``max_retries`` more times).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from ..errors import LayerLMCError, first_line, unknown

log = logging.getLogger("layerlmc")

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")

#: how often a task whose worker died is run again before the command gives up
MAX_RETRIES = 3


class Shared(Generic[V]):
    """A value shared with the tasks of an executor; in this process, the value itself."""

    def __init__(self, value: V):
        self._value = value

    def get(self) -> V:
        return self._value


class Executor(Protocol):
    name: str

    def share(self, value: V) -> Shared[V]:
        """``value`` made readable by every task, stored once."""
        ...

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """``fn`` applied to every task; results come back in task order."""
        ...

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        """``(index, fn(task))`` for every task, as tasks finish."""
        ...

    def close(self) -> None:
        ...


class LocalExecutor:
    """Runs the tasks one after another in this process (the data is shared, nothing is copied)."""

    name = "local"
    retries = 0

    def share(self, value: V) -> Shared[V]:
        return Shared(value)

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        for index, task in enumerate(tasks):
            yield index, fn(task)

    def close(self) -> None:
        pass


# -- Ray ----------------------------------------------------------------------------------

#: what a worker process keeps of shared values and of things built from them (an evaluator
#: from its specification), so that the tasks of one analysis that land on the same worker
#: fetch and build them once; the oldest entries go first
_WORKER_CACHE: collections.OrderedDict = collections.OrderedDict()
WORKER_CACHE_ENTRIES = 5  # an evaluator and two steps' endpoints


def worker_cached(key: str, make: Callable[[], V]) -> V:
    """``make()``, computed once per worker process for ``key`` (a few entries are kept)."""
    if key in _WORKER_CACHE:
        _WORKER_CACHE.move_to_end(key)
        return _WORKER_CACHE[key]
    value = make()
    _WORKER_CACHE[key] = value
    while len(_WORKER_CACHE) > WORKER_CACHE_ENTRIES:
        _WORKER_CACHE.popitem(last=False)
    return value


class RayShared(Shared[V]):
    """A value in Ray's object store: put there once, fetched once per worker process."""

    def __init__(self, ref):
        self.ref = ref

    @property
    def key(self) -> str:
        return self.ref.hex()

    def get(self) -> V:
        import ray

        return worker_cached(self.key, lambda: ray.get(self.ref))


def _lost_kinds() -> tuple[type[BaseException], ...]:
    import ray.exceptions as errors

    return (errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError,
            errors.OutOfMemoryError, errors.ObjectLostError, errors.OwnerDiedError)


def _run_task(fn, task, threads):
    """Runs in a Ray worker: ``fn(task)`` with as many torch threads as the task was given."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(task)


class RayExecutor:
    """Runs tasks as Ray tasks on the cluster at ``address``, or on a Ray instance started in
    this process when there is none (``num_cpus`` workers; all CPUs by default).

    A task whose worker process dies (killed, out of memory, a lost node) is submitted again
    up to ``max_retries`` times, each retry logged and counted in :attr:`retries`; an error
    raised by the task itself is not retried but raised here, as it would be locally.
    ``window`` bounds the tasks in flight (default: twice the cluster's CPUs), so a long task
    list does not fill the object store with inputs at once.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES, window: int | None = None,
                 cpus_per_task: int = 1, gpus_per_task: float = 0):
        try:
            import ray
        except ImportError:
            raise LayerLMCError("--executor ray needs Ray: pip install 'layerlmc[ray]'") from None
        if max_retries < 0:
            raise LayerLMCError(f"max_retries must be at least 0, got {max_retries}")
        self._ray = ray
        self.started = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False,
                       "configure_logging": False}
            try:
                if address:
                    _check_reachable(address)
                    ray.init(address=address, **options)
                else:
                    # "local": a new instance even where RAY_ADDRESS or `ray start` names a
                    # cluster; the CPUs this process may use, not the machine's
                    ray.init(address="local", num_cpus=num_cpus or len(os.sched_getaffinity(0)),
                             **options)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                hint = ""
                if address and "auth" in str(err).lower() and os.environ.get("RAY_AUTH_MODE") != "token":
                    hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token "
                            "and give its token (~/.ray/auth_token or RAY_AUTH_TOKEN)")
                raise LayerLMCError(f"cannot start or reach {where}: {first_line(err)}{hint}") from None
            self.started = True
            log.info("Ray: %s with %d CPUs", f"cluster at {address}" if address else "local instance",
                     int(ray.cluster_resources().get("CPU", 0)))
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_task and gpus < gpus_per_task:
            # tasks asking for a GPU would wait for one forever
            raise LayerLMCError(f"the Ray cluster has {gpus:g} GPUs, and every task of a CUDA "
                                "run needs one; use --device cpu or a cluster with GPUs")
        self.max_retries = max_retries
        self.window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.tasks = 0  # tasks run, retries not counted
        self.retries = 0
        self.cpus_per_task = cpus_per_task
        # Ray's own retries are off: ours are counted and logged
        self._remote = ray.remote(max_retries=0)(_run_task).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task)
        _pickle_user_code_by_value(ray)

    def share(self, value: V) -> RayShared[V]:
        return RayShared(self._ray.put(value))

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        done: dict[int, R] = {}
        following = 0
        for index, result in self.map_unordered(fn, tasks):
            done[index] = result
            while following in done:
                yield done.pop(following)
                following += 1

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
        ray = self._ray
        lost_kinds = _lost_kinds()  # a worker, node or input gone: the task is run again
        fn_ref = ray.put(fn)  # the function (and what it holds) travels once
        pending: dict = {}  # object ref → (index, task, attempt)
        queue = enumerate(tasks)
        exhausted = False

        def submit(index, task, attempt):
            pending[self._remote.remote(fn_ref, task, self.cpus_per_task)] = (index, task, attempt)

        try:
            while True:
                while not exhausted and len(pending) < self.window:
                    item = next(queue, None)
                    if item is None:
                        exhausted = True
                    else:
                        self.tasks += 1
                        submit(*item, 0)
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                index, task, attempt = pending.pop(ref)
                try:
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        # a lost input fetched inside the task is the cluster's fault: retried
                        if isinstance(cause, lost_kinds) or not isinstance(cause, Exception):
                            raise cause if isinstance(cause, lost_kinds) else err from None
                        if isinstance(cause, ModuleNotFoundError):
                            raise LayerLMCError(
                                f"a Ray worker cannot import {cause.name}: install layerlmc (and "
                                "the same torch and Python) on every node of the cluster") from None
                        raise cause from None
                except lost_kinds as err:
                    if attempt >= self.max_retries:
                        raise LayerLMCError(
                            f"task {index} failed {attempt + 1} times on Ray workers that died "
                            f"({type(err).__name__}); rerun the command to continue from the "
                            "records already written") from None
                    self.retries += 1
                    log.warning("a Ray worker died running task %d (%s); running it again "
                                "(retry %d of %d)", index, type(err).__name__, attempt + 1,
                                self.max_retries)
                    submit(index, task, attempt + 1)
                    continue
                except ray.exceptions.RayError as err:  # the cluster itself failed
                    raise LayerLMCError(f"task {index} failed on Ray ({type(err).__name__}): "
                                        f"{first_line(err)}; rerun the command to continue from "
                                        "the records already written") from None
                yield index, result
        finally:
            # When the caller stops early (an error, Ctrl-C), the tasks still in flight (at most
            # `window`) are left to finish and their results dropped: force-cancelling them
            # races with their completion and aborts the driver inside Ray 2.60 ("Tried to
            # complete task that was not pending"). A Ray instance this executor started goes
            # down with close(), and its tasks with it.
            pending.clear()

    def close(self) -> None:
        if self.started and self._ray.is_initialized():
            self._ray.shutdown()
            self.started = False


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, not after Ray's minute of retries, when nothing listens at HOST:PORT."""
    if address == "auto" or "://" in address or ":" not in address:
        return  # Ray finds the cluster itself, or a client address it checks itself
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except ValueError:
        raise LayerLMCError(f"--address {address}: the port must be a number") from None
    except OSError as err:
        raise LayerLMCError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}; "
                            "is `ray start --head` running there?") from None


def _pickle_user_code_by_value(ray) -> None:
    """Models and datasets from the user's own files (``file.py:Class``) are imported under
    generated module names that workers cannot import: ship their code with the task."""
    for name, module in list(sys.modules.items()):
        if name.startswith("layerlmc_user_"):
            ray.cloudpickle.register_pickle_by_value(module)



EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


@contextlib.contextmanager
def using_executor(executor: str | Executor = "local", address: str | None = None,
                   **options) -> Iterator[Executor]:
    """``executor`` itself, or the executor it names, opened here and closed after (a Ray
    instance this started is shut down; one it joined keeps running)."""
    if not isinstance(executor, str):
        yield executor
        return
    opened = get_executor(executor, address=address, **options)
    try:
        yield opened
    finally:
        opened.close()


def get_executor(name: str = "local", *, address: str | None = None, device=None,
                 **options) -> Executor:
    """The executor named ``name`` (``local`` or ``ray``); ``address`` is a Ray cluster's
    (``ray://host:10001`` or ``host:6379``), ``options`` go to :class:`RayExecutor`. With a
    CUDA ``device``, each Ray task asks for one GPU."""
    if name not in EXECUTORS:
        raise unknown("executor", name, EXECUTORS)
    if name == "local":
        if address:
            raise LayerLMCError("--address is the address of a Ray cluster: use it with --executor ray")
        return LocalExecutor()
    if device is not None and str(device).startswith("cuda"):
        options.setdefault("gpus_per_task", 1)
    return RayExecutor(address, **options)
