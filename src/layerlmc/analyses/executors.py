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
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
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


class _Said(logging.Filter):
    """Remembers the warnings this process logged (the last few hundred), so that a worker's
    copy of a message the driver already gave (an evaluator's fall back, built on both) is not
    given twice."""

    KEEP = 500

    def __init__(self):
        super().__init__()
        self.messages: collections.OrderedDict[str, None] = collections.OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.remember(record.getMessage())
        return True

    def remember(self, message: str) -> None:
        self.messages[message] = None
        self.messages.move_to_end(message)
        while len(self.messages) > self.KEEP:
            self.messages.popitem(last=False)


_SAID = _Said()
log.addFilter(_SAID)  # every module logs to "layerlmc" itself, so the filter sees them all


class _Collect(logging.Handler):
    """In a worker: the ``layerlmc`` warnings of one task, to travel back with its result."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def _run_task(fn, task, threads):
    """Runs in a Ray worker: ``fn(task)`` with as many torch threads as the task was given,
    the warnings it gave (``layerlmc``'s and Python's), which a worker's hidden log would
    otherwise swallow, and the node it ran on."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    collect = _Collect()
    log.addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            result = fn(task)
    finally:
        log.removeHandler(collect)
    said = collect.messages + [(logging.WARNING, f"{w.category.__name__}: {w.message}") for w in caught]
    return result, said, ray.get_runtime_context().get_node_id()


class RayExecutor:
    """Runs tasks as Ray tasks on the cluster at ``address``, or on a private Ray node started
    for this process when there is none (``num_cpus`` workers; all CPUs by default), which
    goes down with the process however it ends (:class:`PrivateNode`).

    A task whose worker process dies (killed, out of memory, a lost node) is submitted again
    up to ``max_retries`` times, counted in :attr:`retries`; the first retry is logged, the
    count at :meth:`close`. An error raised by the task itself is not retried but raised here,
    as it would be locally. The warnings a task gives (``layerlmc``'s and Python's) come back
    with its result and are logged here once each, as the workers' own output stays hidden.
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
        self.node: PrivateNode | None = None
        if not ray.is_initialized():
            # log_to_driver off: Ray's own chatter stays in its logs; what the user needs of
            # a worker's output comes back with the task's result
            options = {"include_dashboard": False, "log_to_driver": False,
                       "configure_logging": False}
            # the CPUs this process may use, not the machine's
            cpus = num_cpus or len(os.sched_getaffinity(0))
            try:
                if address:
                    _check_reachable(address)
                    ray.init(address=address, **options)
                elif PrivateNode.supported():
                    self.node = PrivateNode(cpus)
                    ray.init(address=self.node.address, **options)
                else:
                    # "local": a new instance even where RAY_ADDRESS or `ray start` names a
                    # cluster
                    ray.init(address="local", num_cpus=cpus, **options)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
                if self.node is not None:
                    self.node.stop()
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
            if self.started:  # what this started does not outlive the refusal
                ray.shutdown()
            if self.node is not None:
                self.node.stop()
            raise LayerLMCError(f"the Ray cluster has {gpus:g} GPUs, and every task of a CUDA "
                                "run needs one; use --device cpu or a cluster with GPUs")
        self.max_retries = max_retries
        self.window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.tasks = 0  # tasks run, retries not counted
        self.retries = 0
        self._forwarded: set[str] = set()  # the workers' messages already logged here
        self.nodes: collections.Counter[str] = collections.Counter()  # node id → tasks run
        self._closed = False
        self.cpus_per_task = cpus_per_task
        # Ray's own retries are off: ours are counted and logged
        self._remote = ray.remote(max_retries=0)(_run_task).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task)
        _pickle_user_code_by_value(ray)
        _quiet_worker_deaths(ray)

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
                        result, said, node = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        cause = getattr(err, "cause", None)
                        # a lost input fetched inside the task is the cluster's fault: retried
                        if isinstance(cause, lost_kinds) or not isinstance(cause, Exception):
                            raise cause if isinstance(cause, lost_kinds) else err from None
                        if isinstance(cause, ModuleNotFoundError):
                            raise _not_installed(cause.name) from None
                        raise cause from None
                except lost_kinds as err:
                    if attempt >= self.max_retries:
                        raise LayerLMCError(
                            f"task {index} failed {attempt + 1} times on Ray workers that died "
                            f"({type(err).__name__}); rerun the command to continue from the "
                            "records already written") from None
                    self.retries += 1
                    if self.retries == 1:  # one line, not one per retry: close() gives the count
                        log.warning("a Ray worker died running task %d (%s); running it again "
                                    "(each task up to %d more times)", index, type(err).__name__,
                                    self.max_retries)
                    submit(index, task, attempt + 1)
                    continue
                except ray.exceptions.RayError as err:  # the cluster itself failed
                    # a worker that cannot import the task's own module (layerlmc, torch) fails
                    # before the task runs: Ray reports it as a system error with the text only
                    missing = re.search(r"No module named '([\w.]+)'", str(err))
                    if missing:
                        raise _not_installed(missing.group(1)) from None
                    raise LayerLMCError(f"task {index} failed on Ray ({type(err).__name__}): "
                                        f"{first_line(err)}; rerun the command to continue from "
                                        "the records already written") from None
                self._forward(said)
                self.nodes[node] += 1
                yield index, result
        finally:
            # When the caller stops early (an error, Ctrl-C), the tasks still in flight (at most
            # `window`) are left to finish and their results dropped: force-cancelling them
            # races with their completion and aborts the driver inside Ray 2.60 ("Tried to
            # complete task that was not pending"). A Ray instance this executor started goes
            # down with close(), and its tasks with it.
            pending.clear()

    def _forward(self, said: list[tuple[int, str]]) -> None:
        """A task's warnings, each logged once per executor, and not when this process gave
        the same message itself."""
        for level, message in said:
            if message not in self._forwarded and message not in _SAID.messages:
                self._forwarded.add(message)
                log.log(level, "%s", message)

    def close(self) -> None:
        if self.nodes and not self._closed:
            log.info("Ray: %d tasks ran on %d node%s (%s)", sum(self.nodes.values()), len(self.nodes),
                     "s" * (len(self.nodes) > 1), " + ".join(str(n) for n in self.nodes.values()))
        if self.retries > 1 and not self._closed:
            log.warning("Ray: %d tasks ran again after their workers died", self.retries)
        self._closed = True
        if self.started and self._ray.is_initialized():
            self._ray.shutdown()
        self.started = False
        if self.node is not None:
            self.node.stop()
            self.node = None


def _has_ray_client() -> bool:
    try:
        from ray._private.utils import get_ray_client_dependency_error
    except ImportError:  # another Ray version: its default port, as ray.init would
        return False
    return get_ray_client_dependency_error() is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateNode:
    """A Ray head node on this machine for this process alone, under a supervisor
    (``supervisor.py``) that ends every process of the node when this process ends: at
    :meth:`stop`, or when it dies, even of ``kill -9``. ``ray.init(address="local")`` instead
    leaves the node's dashboard and runtime-env agents running after a ``kill -9``.

    The node keeps its files (logs, sockets, the address file other drivers would find) in a
    temporary folder of its own, removed with it. It listens where ``ray.init``'s instance
    did: Ray binds every interface, and turns a node address of 127.0.0.1 into the machine's.
    Linux only (the supervisor adopts the orphans of the tree as a subreaper).
    """

    #: how long the node may take to come up before the executor gives up
    START_S = 120.0

    @staticmethod
    def supported() -> bool:
        return sys.platform.startswith("linux") and os.path.isdir("/proc")

    def __init__(self, num_cpus: int):
        # short: Ray's socket paths under it must fit in 107 bytes
        self.folder = tempfile.mkdtemp(prefix="layerlmc-ray-", dir="/tmp")
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                   f"--port={port}", f"--num-cpus={num_cpus}",
                   "--include-dashboard=false", "--disable-usage-stats",
                   f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={self.folder}"]
        if _has_ray_client():  # it would take the fixed port 10001, which another node may hold
            command.append(f"--ray-client-server-port={_free_port()}")
        supervisor = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")
        # as ray.init's own instance: no token, unless this process asks for one
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        self.log = os.path.join(self.folder, "node.log")
        with open(self.log, "wb") as output:
            # -I: the supervisor needs only the standard library and must not import from
            # its own folder; a session of its own: Ctrl-C is the driver's, not the node's
            self.process = subprocess.Popen(
                [sys.executable, "-I", supervisor, str(os.getpid()), self.folder, *command],
                stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        self._wait(port)

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + self.START_S
        while True:
            if self.process.poll() is not None:
                why = self._last_line()
                self.stop()
                raise LayerLMCError(f"cannot start a local Ray instance: {why}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise LayerLMCError(f"a local Ray instance did not start within {self.START_S:.0f} s")
            time.sleep(0.1)

    def _last_line(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
            return lines[-1] if lines else "it exited at once"
        return "it exited at once"

    def stop(self) -> None:
        """Ends the node, its supervisor and its folder."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the supervisor's signal to end the node
        # and SIGTERM, the same signal to it: a process forked from this one (and not exec'd)
        # holds our end of the pipe open too
        with contextlib.suppress(OSError):
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _not_installed(module: str) -> LayerLMCError:
    return LayerLMCError(f"a Ray worker cannot import {module}: install layerlmc (and the same "
                         "torch and Python) on every node of the cluster")


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


#: the start of the notice the raylet sends a driver for every worker that dies mid-task
WORKER_DIED = "A worker died or was killed while executing a task"


def _quiet_worker_deaths(ray) -> None:
    """Drop the raylet's notice of a dead worker, which Ray prints on the driver's stdout
    whatever ``log_to_driver`` says (a paragraph per death, amid the command's tables): the
    retry that follows is said once here, and counted. Ray's other notices pass. Ray has no
    setting for it, so this wraps its printer (where this Ray version has one)."""
    module = ray._private.worker
    printer = getattr(module, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_layerlmc", False):
        return

    def quiet(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if not str(line).startswith(WORKER_DIED)]
        if lines or not data.get("lines"):
            printer({**data, "lines": lines}, *args, **kwargs)

    quiet._layerlmc = True
    module.print_to_stdstream = quiet


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
