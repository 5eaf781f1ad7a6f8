"""The incremental evaluator: re-run only the part of the network a changed group feeds.

A layer-wise study evaluates points that equal an endpoint (the *base*) except in one group
or a few. Everything upstream of the first changed layer, and every branch no changed tensor
reaches, computes exactly what it computed for the base. The model is traced once into a
``torch.fx`` graph; per batch the base is run once through the graph, the values later points
need are kept, and for each point only the nodes that depend on a changed key are run again,
reading the kept values for the rest. Batches are the outer loop and points the inner one, so
the cache holds one batch's activations at a time.

Models ``torch.fx`` cannot trace (data-dependent control flow, checks on input shapes), and
the BatchNorm policies ``recompute`` and ``batch-stats`` (every state's statistics change, so
nothing can be reused), use the plain evaluator's path, with a one-line notice.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch.func import functional_call

from ..core.groups import tied_keys
from .data import Split
from .plain import Evaluator, Job, Metrics, in_precision

log = logging.getLogger("layerlmc")

#: Python's in-place operators, as ``torch.fx`` records ``x += y``
INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift, operator.imatmul,
}
#: BatchNorm policies whose states can be evaluated incrementally: the statistics are part of
#: the state (``interpolate``, ``keep-base``); the other two change them for every state
INCREMENTAL_BN = ("interpolate", "keep-base")


def trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    """``model`` as a ``torch.fx`` graph; arguments after the first are fixed at their defaults
    (e.g. ``targets=None``), since an evaluator passes the inputs only."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    concrete = {
        p.name: p.default for p in parameters[1:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return torch.fx.symbolic_trace(model, concrete_args=concrete or None)


@dataclass(frozen=True)
class _Plan:
    """What a point with one set of changed keys re-runs: ``nodes`` in graph order, ``frontier``
    the unchanged nodes whose base values they read, ``release[i]`` the re-run values no node
    after the i-th needs."""

    nodes: tuple[int, ...]
    frontier: frozenset[int]
    release: tuple[tuple[int, ...], ...]


class IncrementalEvaluator(Evaluator):
    """An :class:`Evaluator` whose :meth:`evaluate_many` re-runs, for each job, only the nodes
    of the traced model that depend on the job's ``changed`` keys, from values kept of its
    ``base`` (one batch at a time). :meth:`evaluate` and jobs without a base take the plain
    path. Its metrics equal the plain evaluator's (the same operations on the same tensors)."""

    kind = "incremental"

    def __init__(self, model: torch.nn.Module, splits: Mapping[str, Split], batch_size: int = 1024,
                 **kwargs) -> None:
        super().__init__(model, splits, batch_size, **kwargs)
        self.graph: torch.fx.Graph | None = None
        self._plans: dict[frozenset[str], _Plan] = {}
        if self.bn not in INCREMENTAL_BN and self.bn_modules:
            log.warning("incremental evaluator: --bn %s changes the statistics of every state; "
                        "using the plain evaluator", self.bn)
            return
        try:
            traced = trace(self.model)
        except Exception as err:  # noqa: BLE001 - whatever stops fx, the plain path still works
            self._fall_back(err)
            return
        self._setup(traced)

    @property
    def incremental(self) -> bool:
        """Whether points are evaluated incrementally (the model traced and was verified)."""
        return self.graph is not None

    def _fall_back(self, err: BaseException | str) -> None:
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        line = (str(text).strip().splitlines() or [""])[0]
        log.warning("incremental evaluator: the model cannot be traced with torch.fx (%s); "
                    "using the plain evaluator", line)
        self.graph = None

    def _setup(self, traced: torch.fx.GraphModule) -> None:
        self.graph = traced.graph
        self.nodes: list[torch.fx.Node] = list(traced.graph.nodes)
        index = self._position = {node: i for i, node in enumerate(self.nodes)}
        # tied tensors are one tensor: a change to either name changes both
        self._partners = {k: frozenset(tie) for tie in tied_keys(self.model) for k in tie}
        self._inputs = [tuple(index[n] for n in node.all_input_nodes) for node in self.nodes]
        self._output = next(i for i, n in enumerate(self.nodes) if n.op == "output")
        keys = list(self.model.state_dict(keep_vars=True))
        named = dict(self.model.named_modules())
        self._constants: dict[int, object] = {}
        self._modules: dict[int, tuple[torch.nn.Module, list[tuple[str, str]]]] = {}
        #: the state keys each node reads itself
        self._own: list[frozenset[str]] = []
        for i, node in enumerate(self.nodes):
            own: set[str] = set()
            if node.op == "get_attr":
                own = {k for k in keys if k == node.target or k.startswith(f"{node.target}.")}
                if node.target not in keys:
                    self._constants[i] = _attribute(traced, node.target)
            elif node.op == "call_module":
                module = named[node.target]
                prefix = f"{node.target}."
                own = {k for k in keys if k.startswith(prefix)}
                # one value per tied tensor, as functional_call wants, when a module holds both
                local = [(k[len(prefix):], k) for k in sorted(own)
                         if k not in self._tied_aliases or not (self._partners[k] - {k}) & own]
                self._modules[i] = (module, local)
            self._own.append(frozenset(own))
        self._placeholders = {i for i, n in enumerate(self.nodes) if n.op == "placeholder"}
        self._mutates = [_mutates(node, named) for node in self.nodes]
        self._last_use = [0] * len(self.nodes)
        for i, inputs in enumerate(self._inputs):
            for j in inputs:
                self._last_use[j] = i

    # the graph, run by hand ------------------------------------------------------------------

    def _plan(self, changed: frozenset[str]) -> _Plan:
        plan = self._plans.get(changed)
        if plan is None:
            key = changed
            changed = changed.union(*(self._partners.get(k, ()) for k in changed))
            dirty = [False] * len(self.nodes)
            for i in range(len(self.nodes)):
                dirty[i] = bool(self._own[i] & changed) or any(dirty[j] for j in self._inputs[i])
            nodes = tuple(i for i, d in enumerate(dirty) if d)
            frontier = {j for i in nodes for j in self._inputs[i] if not dirty[j]}
            if not dirty[self._output]:
                frontier.add(self._output)
            last = {}
            for position, i in enumerate(nodes):
                for j in self._inputs[i]:
                    if dirty[j]:
                        last[j] = position
            release = [[] for _ in nodes]
            for j, position in last.items():
                if j != self._output:
                    release[position].append(j)
            plan = _Plan(nodes, frozenset(frontier), tuple(tuple(r) for r in release))
            self._plans[key] = plan
        return plan

    def _run_node(self, i: int, env: Mapping[int, object], state: Mapping[str, torch.Tensor],
                  inputs: torch.Tensor) -> object:
        node = self.nodes[i]
        if node.op == "placeholder":
            return inputs
        if node.op == "get_attr":
            return self._constants[i] if i in self._constants else state[node.target]
        args = torch.fx.node.map_arg(node.args, lambda n: env[self._position[n]])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[self._position[n]])
        if self._mutates[i] and args and isinstance(args[0], torch.Tensor):
            # an in-place operation must not change a value the cache holds for later points
            args = (args[0].clone(), *args[1:])
        if node.op == "output":
            return args[0]
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        module, local = self._modules[i]
        if not local:
            return module(*args, **kwargs)
        return functional_call(module, {name: state[key] for name, key in local}, args, kwargs)

    def _run_base(self, state: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                  keep: set[int]) -> dict[int, object]:
        """Every node on the base state; the values in ``keep`` (and the output) are returned,
        the others freed as soon as no later node reads them."""
        env: dict[int, object] = {}
        for i in range(len(self.nodes)):
            env[i] = self._run_node(i, env, state, inputs)
            for j in self._inputs[i]:
                if self._last_use[j] == i and j not in keep:
                    del env[j]
        return env

    def _run_plan(self, plan: _Plan, state: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                  cache: Mapping[int, object]) -> torch.Tensor:
        if not plan.nodes:
            return cache[self._output]
        env = _Overlay(cache)
        for position, i in enumerate(plan.nodes):
            env[i] = self._run_node(i, env, state, inputs)
            for j in plan.release[position]:
                env.drop(j)
        return env[self._output]

    # the evaluator's interface ---------------------------------------------------------------

    @in_precision
    @torch.inference_mode()
    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """The plain checks, then the traced graph against the model itself on a few inputs:
        a graph that differs (a trace that fixed a shape, an alias it missed) is not used."""
        super().check(state)
        if self.graph is None:
            return
        for name, data in self.splits.items():
            inputs = data.inputs[:2]
            expected = self._forward(state, inputs, name)
            try:
                got = self._run_base(state, inputs, set())[self._output]
            except Exception as err:  # noqa: BLE001
                self._fall_back(err)
                return
            if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
                    got.float(), expected.float(), rtol=1e-5, atol=1e-6):
                self._fall_back("the traced graph computes other outputs than the model")
                return

    @in_precision
    def evaluate_many(self, jobs: Sequence[Job], split: str) -> list[Metrics]:
        """The metrics of every job on ``split``, in order; jobs that share a base share its
        cached values, batch by batch."""
        if self.graph is None:
            return super().evaluate_many(jobs, split)
        results: list[Metrics | None] = [None] * len(jobs)
        by_base: dict[int, list[int]] = {}
        for position, job in enumerate(jobs):
            if job.base is None:
                results[position] = self.evaluate(job.state, split)
            else:
                by_base.setdefault(id(job.base), []).append(position)
        for positions in by_base.values():
            chosen = [jobs[p] for p in positions]
            for p, metrics in zip(positions, self._evaluate_on(chosen, self.splits[split])):
                results[p] = metrics
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _evaluate_on(self, jobs: Sequence[Job], data: Split) -> list[Metrics]:
        base = jobs[0].base
        plans = [self._plan(frozenset(job.changed)) for job in jobs]
        keep = set().union(*(plan.frontier for plan in plans))
        totals = self._totals(len(jobs))
        for start in range(0, len(data), self.batch_size):
            inputs = data.inputs[start : start + self.batch_size]
            labels = data.labels[start : start + self.batch_size]
            try:
                # a base nobody reads from (every job re-runs every node) is not run at all
                cache = (self._run_base(base, inputs, keep) if keep - self._placeholders
                         else {i: inputs for i in self._placeholders})
                outputs = [self._run_plan(plan, job.state, inputs, cache)
                           for plan, job in zip(plans, jobs)]
            except Exception:
                self._forward(base, inputs, data.name)
                raise
            del cache
            self._add_scores(totals, outputs, data, labels)
        return [self._metrics(total) for total in totals]


class _Overlay(dict):
    """A point's re-run values over the base's kept ones: a read falls through to the cache."""

    def __init__(self, cache: Mapping[int, object]) -> None:
        super().__init__()
        self.cache = cache

    def __missing__(self, key: int) -> object:
        return self.cache[key]

    def drop(self, key: int) -> None:
        self.pop(key, None)


def _attribute(root: torch.nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _mutates(node: torch.fx.Node, modules: Mapping[str, torch.nn.Module]) -> bool:
    """Whether ``node`` may change its first argument in place (``x += y``, ``x.add_(y)``,
    ``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``)."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in INPLACE_OPERATORS or bool(node.kwargs.get("inplace"))
                or (name.endswith("_") and not name.startswith("__")))
    return False
