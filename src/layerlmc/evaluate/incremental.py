"""The incremental evaluator: re-run only the part of the network a changed group feeds.

A layer-wise study evaluates points that equal an endpoint (the *base*) except in one group
or a few. Everything upstream of the first changed layer, and every branch no changed tensor
reaches, computes exactly what it computed for the base. The model is traced once into a
``torch.fx`` graph; per batch the base is run once through the graph, the values later points
need are kept, and for each point only the nodes that depend on a changed key are run again,
reading the kept values for the rest. Batches are the outer loop and points the inner one, so
the cache holds one batch's activations at a time.

Across calls (the chunks of a sweep, both bases, the full path) the values of the *first
layer* (the nodes whose inputs are the data and the first layer's own tensors: a network's
stem, an MLP's ``fc1``, a GPT's embeddings) are also kept per split, keyed by the values of
those tensors, within a memory budget (``cache_mb``): a point that changes only the first
group with base ``a``, the same point with base ``b`` and the full midpoint all start from
the same first layer, which is then computed once per batch for the three of them.

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
from ..core.paths import LazyState
from ..errors import LayerLMCError
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
#: the default budget (MiB) of first-layer values kept across calls, per evaluator
CACHE_MB = 256.0
#: elementwise activations that may overwrite an input no later node reads (the same kernel
#: in place: the same numbers, without allocating, and faulting in, a fresh tensor)
IN_PLACE = {torch.relu: torch.relu_, torch.nn.functional.relu: torch.relu_,
            torch.sigmoid: torch.sigmoid_, torch.tanh: torch.tanh_}
IN_PLACE_METHODS = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_}
IN_PLACE_MODULES = {torch.nn.ReLU: torch.relu_, torch.nn.Sigmoid: torch.sigmoid_,
                    torch.nn.Tanh: torch.tanh_}


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
class _Schedule:
    """One run through the graph: ``nodes`` computed in order, ``release[i]`` the values freed
    after the i-th, ``reads`` the nodes whose values come from the first-layer memo and
    ``writes`` the computed ones stored in it (with their memo keys)."""

    nodes: tuple[int, ...]
    release: tuple[tuple[int, ...], ...]
    reads: tuple[tuple[int, tuple], ...]
    writes: tuple[tuple[int, tuple], ...]
    #: positions whose activation may overwrite its input (read by no later node)
    donated: frozenset[int] = frozenset()


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
                 *, cache_mb: float = CACHE_MB, **kwargs) -> None:
        super().__init__(model, splits, batch_size, **kwargs)
        self.graph: torch.fx.Graph | None = None
        self._plans: dict[frozenset[str], _Plan] = {}
        if cache_mb < 0:
            raise LayerLMCError(f"the cache budget must not be negative, got {cache_mb} MiB")
        #: bytes the first-layer memo may hold (its values and its copies of the first layer)
        self.cache_bytes = int(cache_mb * 2**20)
        self.memo = _Memo()
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

    @property
    def reads_lazily(self) -> bool:  # type: ignore[override]
        """Node by node, a job's tensors are read only as its modules run: where the model
        traced, a sweep need not build whole states for it."""
        return self.incremental

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
        self._in_place = [_in_place(node, named) for node in self.nodes]
        self._last_use = [0] * len(self.nodes)
        for i, inputs in enumerate(self._inputs):
            for j in inputs:
                self._last_use[j] = i
        self._setup_memo()

    def _setup_memo(self) -> None:
        """Find the first layer: the keys that meet the data first, and the nodes whose values
        depend on those keys only and feed something that depends on more (its outputs)."""
        n = len(self.nodes)
        #: every key a node's value depends on
        cone: list[frozenset[str]] = []
        for i in range(n):
            cone.append(self._own[i].union(*(cone[j] for j in self._inputs[i])))
        attrs = {i for i, node in enumerate(self.nodes) if node.op == "get_attr"}
        first: set[str] = set()
        for i in range(n):
            if i in attrs:
                continue
            if all(not cone[j] for j in self._inputs[i] if j not in attrs):
                first |= self._own[i].union(*(cone[j] for j in self._inputs[i] if j in attrs))
        # tied tensors are one tensor: a first-layer key tied to another is not worth the risk
        first = {k for k in first if not (self._partners.get(k, frozenset({k})) - {k})}
        consumers: list[list[int]] = [[] for _ in range(n)]
        for i, inputs in enumerate(self._inputs):
            for j in inputs:
                consumers[j].append(i)
        self._cone_keys = [tuple(sorted(c)) for c in cone]
        self._first_keys = tuple(sorted(first))
        self._memo_nodes = frozenset(
            i for i in range(n)
            if i not in attrs and i != self._output and cone[i] and cone[i] <= first
            and any(not cone[j] <= first or j == self._output for j in consumers[i]))

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

    def _schedule(self, run: set[int] | range, targets: set[int], known: set[int],
                  memo_keys: Mapping[int, tuple], available: set, store: set) -> _Schedule:
        """The nodes of ``run`` needed for ``targets``, in graph order: a node whose memo key
        is ``available`` is read from the memo (and what only it needs is not run), one not in
        ``run`` is read from the ``known`` values (the base's cache). ``store``: the memo keys
        of computed values to write."""
        needed: set[int] = set()
        reads: set[int] = set()
        stack = list(targets)
        seen: set[int] = set()
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            key = memo_keys.get(i)
            if key is not None and key in available and i not in known:
                reads.add(i)
            elif i in run:
                needed.add(i)
                stack.extend(self._inputs[i])
        nodes = tuple(sorted(needed))
        last: dict[int, int] = {}
        for position, i in enumerate(nodes):
            for j in self._inputs[i]:
                if j in needed or j in reads:
                    last[j] = position
        release: list[list[int]] = [[] for _ in nodes]
        for j, position in last.items():
            if j not in targets:
                release[position].append(j)
        writes = tuple((i, memo_keys[i]) for i in nodes if memo_keys.get(i) in store)
        written = {i for i, _ in writes}
        donated = frozenset(
            position for position, i in enumerate(nodes)
            if self._in_place[i] is not None and (j := self._inputs[i][0]) in needed
            and last.get(j) == position and j not in targets and j not in written
            and self.nodes[j].op not in ("placeholder", "get_attr"))
        return _Schedule(nodes, tuple(tuple(r) for r in release),
                         tuple((i, memo_keys[i]) for i in sorted(reads)), writes, donated)

    def _execute(self, schedule: _Schedule, state: Mapping[str, torch.Tensor],
                 inputs: torch.Tensor, cache: Mapping[int, object],
                 memo: Mapping[tuple, object] | None) -> _Overlay:
        """Run ``schedule`` on ``state``: values it does not compute come from the memo (this
        batch's entries) or the base's ``cache``; returned: the values still held."""
        env = _Overlay(cache)
        for i, key in schedule.reads:
            env[i] = memo[key]  # type: ignore[index]
        writes = dict(schedule.writes)
        protected: set[int] | None = None
        for position, i in enumerate(schedule.nodes):
            done = False
            if position in schedule.donated:
                j = self._inputs[i][0]
                value = env[j]
                if protected is None:
                    # a lazy state's own values are computed per read: protect its sources
                    values = state.sources() if isinstance(state, LazyState) else state.values()
                    protected = _storages(values, cache.values(), (inputs,),
                                          (dict.get(env, n) for n, _ in schedule.reads))
                if _owned(value, j, env, protected):
                    env[i] = self._in_place[i](value)
                    done = True
            if not done:
                env[i] = self._run_node(i, env, state, inputs)
            if i in writes:
                memo[writes[i]] = env[i]  # type: ignore[index]
            for j in schedule.release[position]:
                env.drop(j)
        return env

    def _run_base(self, state: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                  keep: set[int]) -> dict[int, object]:
        """Every node on the base state; the values in ``keep`` (and the output) are returned,
        the others freed as soon as no later node reads them."""
        schedule = self._schedule(range(len(self.nodes)), keep | {self._output}, set(), {},
                                  set(), set())
        return dict(self._execute(schedule, state, inputs, {}, None))

    def _memo_keys(self, tokens: Mapping[str, int]) -> dict[int, tuple]:
        """The memo key of each first-layer output node for a state with these tokens."""
        return {i: (i, tuple(tokens[k] for k in self._cone_keys[i])) for i in self._memo_nodes}

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
        cached values, batch by batch, and every job its first layer's values with any state
        (of this call or an earlier one) whose first layer is the same."""
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
            for p, metrics in zip(positions, self._evaluate_on(chosen, self.splits[split],
                                                               memo=True)):
                results[p] = metrics
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _evaluate_on(self, jobs: Sequence[Job], data: Split, memo: bool = False) -> list[Metrics]:
        """``jobs`` (one base) on ``data``; with ``memo``, ``data`` is the evaluator's split of
        that name, and first-layer values are shared through :attr:`memo` with other calls."""
        base = jobs[0].base
        plans = [self._plan(frozenset(job.changed)) for job in jobs]
        keep = set().union(*(plan.frontier for plan in plans))
        store: _Batch | None = None
        if memo and self._memo_nodes and self.cache_bytes > 0:
            self.memo.begin(self.cache_bytes)
            base_tokens = self.memo.tokens(base, self._first_keys)
            base_keys = self._memo_keys(base_tokens)
            job_keys = [self._memo_keys(self.memo.tokens(job.state, self._first_keys, base,
                                                          base_tokens)) for job in jobs]
        else:
            memo, base_keys, job_keys = False, {}, [{} for _ in jobs]
        batches = -(-len(data) // self.batch_size)
        # a base nobody reads from (every job re-runs every node) is not run at all
        run_base = bool(keep - self._placeholders)
        base_schedule: _Schedule | None = None
        schedules: list[_Schedule] = []
        totals = self._totals(len(jobs))
        for start in range(0, len(data), self.batch_size):
            inputs = data.inputs[start : start + self.batch_size]
            labels = data.labels[start : start + self.batch_size]
            first = start == 0
            if memo:
                store = self.memo.batch(data.name, start)
            try:
                # the first batch decides, state by state, what is read from the memo and
                # what is written to it; the other batches repeat those decisions
                if first and run_base:
                    # only what the jobs read (the output too where a job is the base
                    # itself): the rest of the base is not run
                    base_schedule = self._memo_schedule(
                        range(len(self.nodes)), keep, set(), base_keys, data.name, memo)
                if run_base:
                    cache: Mapping[int, object] = dict(
                        self._execute(base_schedule, base, inputs, {}, store))
                    if first and memo:
                        self.memo.sized(data.name, store, batches)
                else:
                    cache = {i: inputs for i in self._placeholders}
                outputs = []
                for n, (plan, job) in enumerate(zip(plans, jobs)):
                    if not plan.nodes:  # the base itself (an endpoint)
                        if first:
                            schedules.append(_Schedule((), (), (), ()))
                        outputs.append(cache[self._output])
                        continue
                    if first:
                        known = set(cache) - set(plan.nodes)
                        schedules.append(self._memo_schedule(
                            set(plan.nodes), {self._output}, known, job_keys[n], data.name, memo))
                    env = self._execute(schedules[n], job.state, inputs, cache, store)
                    outputs.append(env[self._output])
                    if first and memo:
                        self.memo.sized(data.name, store, batches)
                    del env
            except Exception:
                if memo:
                    self.memo.abandon()
                self._forward(base, inputs, data.name)
                raise
            del cache
            self._add_scores(totals, outputs, data, labels)
        if memo:
            self.memo.finish()
        return [self._metrics(total) for total in totals]

    def _memo_schedule(self, run, targets: set[int], known: set[int], memo_keys: dict,
                       split: str, memo: bool) -> _Schedule:
        """A schedule that reads the memo's entries of ``split`` that exist (complete, or
        being written in this call) and writes the new ones the budget still admits."""
        if not memo:
            return self._schedule(run, targets, known, {}, set(), set())
        available = self.memo.available(split)
        schedule = self._schedule(run, targets, known, memo_keys, available, set())
        self.memo.read(split, (key for _, key in schedule.reads))
        wanted = {memo_keys[i] for i in schedule.nodes if i in memo_keys} - available
        admitted = self.memo.admit(split, wanted)
        if admitted:
            schedule = self._schedule(run, targets, known, memo_keys, available, admitted)
        return schedule


class _Memo:
    """First-layer values kept across calls, per split and batch, keyed by the node and the
    values of the first layer's tensors: each distinct value of a first-layer key gets a
    token, and a copy of it is kept to recognise it (by value: a caller may build the next
    state in the same tensors; a float64 sum picks the candidates, ``torch.equal`` decides).

    The budget covers the copies and the entries. An entry is admitted when its first batch is
    written and charged that batch's size times the split's batches; what does not fit makes
    room by dropping what no state of the current call used, oldest first (a study over many
    checkpoints keeps the entries of its current endpoints), or is not kept."""

    def __init__(self) -> None:
        #: split → batch start → memo key → value
        self.values: dict[str, dict[int, dict[tuple, torch.Tensor]]] = {}
        #: split → memo keys written for every batch by an earlier call
        self.complete: dict[str, set[tuple]] = {}
        #: split → memo keys admitted in the current call, written batch by batch
        self.filling: dict[str, set[tuple]] = {}
        #: split → memo keys admitted whose first batch has not been charged yet
        self.unsized: dict[str, set[tuple]] = {}
        #: (split, memo key) → [bytes charged, the call that last used it]
        self.entries: dict[tuple[str, tuple], list[int]] = {}
        #: key → (shape, dtype, float64 sum) → [[copy, token, the call that last used it]]
        self.copies: dict[str, dict[tuple, list[list]]] = {}
        self.used = 0
        self.budget = 0
        self.call = 0
        self._last_token = 0
        #: first-layer values read from the memo instead of computed (one per node and batch)
        self.hits = 0

    def begin(self, budget: int) -> None:
        self.budget = budget
        self.call += 1
        self.abandon()

    def tokens(self, state: Mapping[str, torch.Tensor], keys: Sequence[str],
               base: Mapping[str, torch.Tensor] | None = None,
               base_tokens: Mapping[str, int] | None = None) -> dict[str, int]:
        """A token per key of ``state``: equal tokens, equal values. A tensor that is the
        base's own takes the base's token without a comparison."""
        out = {}
        for key in keys:
            tensor = state[key]
            if base is not None and base_tokens is not None and tensor is base[key]:
                out[key] = base_tokens[key]
            else:
                out[key] = self._token(key, tensor)
        return out

    def _token(self, key: str, tensor: torch.Tensor) -> int:
        sum_ = tensor.sum(dtype=torch.float64).item() if tensor.is_floating_point() else 0.0
        where = (tuple(tensor.shape), tensor.dtype, sum_)
        seen = self.copies.setdefault(key, {}).setdefault(where, [])
        for entry in seen:
            if torch.equal(entry[0], tensor):
                entry[2] = self.call
                return entry[1]
        self._last_token += 1
        size = tensor.numel() * tensor.element_size()
        if self._make_room(size):  # else: a token nothing will ever match again
            # a copy, not the tensor: a caller may reuse its tensors for the next state
            seen.append([tensor.detach().clone(), self._last_token, self.call])
            self.used += size
        return self._last_token

    def available(self, split: str) -> set[tuple]:
        return self.complete.get(split, set()) | self.filling.get(split, set())

    def read(self, split: str, keys) -> None:
        """Mark the entries a state of this call reads as used now."""
        for key in keys:
            entry = self.entries.get((split, key))
            if entry is not None:
                entry[1] = self.call

    def admit(self, split: str, wanted: set[tuple]) -> set[tuple]:
        """Admit ``wanted`` for writing; :meth:`sized` charges (or drops) each once its first
        batch is written."""
        if not wanted or self.budget <= 0:
            return set()
        self.filling.setdefault(split, set()).update(wanted)
        self.unsized.setdefault(split, set()).update(wanted)
        return wanted

    def sized(self, split: str, store: _Batch | None, batches: int) -> None:
        """After a state's first batch: charge each entry it wrote its whole split's size, and
        drop those that do not fit (they are not written again)."""
        for key in sorted(self.unsized.pop(split, set())):
            value = store.entries.get(key) if store is not None else None
            size = (value.numel() * value.element_size() * batches
                    if isinstance(value, torch.Tensor) else None)
            if size is None or not self._make_room(size):
                self.filling[split].discard(key)
                if store is not None:
                    store.entries.pop(key, None)
            else:
                self.used += size
                self.entries[(split, key)] = [size, self.call]

    def _make_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit, after dropping, oldest first, entries and copies
        no state of the current call used."""
        if self.used + size <= self.budget:
            return True
        if size > self.budget:
            return False
        old = sorted(((used, 0, split_key) for split_key, (_, used) in self.entries.items()
                      if used < self.call and split_key[1] in self.complete.get(split_key[0], ())),
                     key=lambda item: item[:2])
        copies = [(entry[2], 1, key, where, entry)
                  for key, by in self.copies.items() for where, entries in by.items()
                  for entry in entries if entry[2] < self.call]
        for item in sorted([*old, *copies], key=lambda item: item[:2]):
            if self.used + size <= self.budget:
                break
            if item[1] == 0:
                self._drop_entry(*item[2])
            else:
                _, _, key, where, entry = item
                kept = self.copies[key][where]
                kept[:] = [other for other in kept if other is not entry]
                self.used -= entry[0].numel() * entry[0].element_size()
                token = entry[1]
                # the entries computed from that value can no longer be found: drop them too
                for split, memo_key in [k for k in self.entries if token in k[1][1]]:
                    self._drop_entry(split, memo_key)
        return self.used + size <= self.budget

    def _drop_entry(self, split: str, key: tuple) -> None:
        charged = self.entries.pop((split, key), None)
        if charged is None:
            return
        self.used -= charged[0]
        self.complete.get(split, set()).discard(key)
        for values in self.values.get(split, {}).values():
            values.pop(key, None)

    def batch(self, split: str, start: int) -> _Batch:
        return _Batch(self, split, self.values.setdefault(split, {}).setdefault(start, {}))

    def finish(self) -> None:
        for split, keys in self.filling.items():
            self.complete.setdefault(split, set()).update(keys)
        self.filling.clear()
        self.unsized.clear()

    def abandon(self) -> None:
        """Forget the entries a failed call left half-written."""
        for split, keys in self.filling.items():
            for key in keys:
                self._drop_entry(split, key)
                for values in self.values.get(split, {}).values():
                    values.pop(key, None)
        self.filling.clear()
        self.unsized.clear()


class _Batch:
    """One batch's memo entries: reads are counted, writes kept only for admitted keys."""

    def __init__(self, memo: _Memo, split: str, entries: dict[tuple, torch.Tensor]) -> None:
        self.memo, self.split, self.entries = memo, split, entries

    def __getitem__(self, key: tuple) -> torch.Tensor:
        self.memo.hits += 1
        return self.entries[key]

    def __setitem__(self, key: tuple, value: torch.Tensor) -> None:
        if key in self.memo.filling.get(self.split, ()) and isinstance(value, torch.Tensor):
            self.entries[key] = value


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


def _in_place(node: torch.fx.Node, modules: Mapping[str, torch.nn.Module]):
    """The in-place form of ``node``'s elementwise activation, when it is one applied to its
    single argument; else None."""
    if len(node.args) != 1 or not isinstance(node.args[0], torch.fx.Node):
        return None
    if node.op == "call_function" and not node.kwargs.get("inplace", False):
        if {k: v for k, v in node.kwargs.items() if k != "inplace"}:
            return None
        return IN_PLACE.get(node.target)
    if node.op == "call_method" and not node.kwargs:
        return IN_PLACE_METHODS.get(node.target)
    if node.op == "call_module" and not node.kwargs:
        module = modules[node.target]
        if getattr(module, "inplace", False):
            return None  # it changes its input itself (and the graph copies it first)
        return IN_PLACE_MODULES.get(type(module))
    return None


def _storages(*groups) -> set[int]:
    """The storage addresses of the tensors in ``groups``: what must never be overwritten."""
    out = set()
    for group in groups:
        for value in group:
            if isinstance(value, torch.Tensor):
                out.add(value.untyped_storage().data_ptr())
    return out


def _owned(value: object, node: int, env: dict, protected: set[int]) -> bool:
    """Whether ``value`` (node ``node``'s, read by no later node) is a tensor nothing else
    holds: not a view, and its storage neither protected nor shared by another live value."""
    if not isinstance(value, torch.Tensor) or value._base is not None:
        return False
    pointer = value.untyped_storage().data_ptr()
    if pointer in protected:
        return False
    return not any(isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == pointer
                   for k, v in dict.items(env) if k != node)


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
