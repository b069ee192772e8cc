"""The router's side of search-parameter tuning: candidate values tried on mirrored reads, and
indexes served with the value a migration chose.

While a migration's trial is open (``vecmigrate.validation.tuning``), each shadow read of its
candidate that carries one unfiltered query is also searched with every candidate value (on
the shadow thread, off the response path), and the query with what each value found and how
long it took is kept in the catalog, up to the trial's sample. Trials run only while no read
is served by the candidate (no ramp yet): the value of an index built by vecmigrate is changed
in place for a trial, under the index's ``params_lock``, which every shadow read of it takes.
A database's own index takes the value with each search.

The planner serves an index with the value chosen for it (``TuningLog.tuned``) from the first
plan made after the choice: the ramp's reads and, after the cut-over, all of them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from vecmigrate.indexes.build import NativeIndex
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.spec import SEARCH_PARAMETERS
from vecmigrate.records.vectors import Ids, Vectors
from vecmigrate.serving.plan import Side
from vecmigrate.validation.tuning import Trial, TuningLog

log = logging.getLogger("vecmigrate.router")

# How often a router re-reads which trials are open (and how many queries each has kept).
TRIALS_REFRESH_SECONDS = 1.0


def with_params(
    searcher: LiveIndex | NativeIndex, params: dict[str, int]
) -> LiveIndex | NativeIndex:
    """``searcher`` searching with ``params``: a database's index as a new handle, an index of
    vecmigrate's changed in place (under its ``params_lock``)."""
    if isinstance(searcher, NativeIndex):
        if all(getattr(searcher.spec, k, None) == v for k, v in params.items()):
            return searcher
        spec = searcher.spec.model_copy(update=params)
        return NativeIndex(searcher.store, spec, searcher.metric)
    names = tuple(params)
    with searcher.params_lock:
        if searcher.search_params(names) != params:
            searcher.set_search_params(params)
    return searcher


class Tuned:
    """Indexes served with the search parameters a migration chose for them."""

    def __init__(self, log: TuningLog) -> None:
        self.log = log

    def apply(self, index_id: str, searcher: LiveIndex | NativeIndex) -> LiveIndex | NativeIndex:
        """``searcher`` with the parameters chosen for ``index_id`` (as it is when none was)."""
        params = self.log.tuned(index_id)
        return searcher if not params else with_params(searcher, params)


class Trials:
    """The open trials one router takes part in (see the module's doc)."""

    def __init__(self, log: TuningLog) -> None:
        self.log = log
        self._lock = threading.Lock()
        # (tenant, collection, candidate) -> (read at, the trial or None, queries kept)
        self._open: dict[tuple[str, str, str], tuple[float, Trial | None, int]] = {}
        self._turns = 0

    def guard(self, candidate: Side) -> contextlib.AbstractContextManager[object]:
        """Held around a shadow read of ``candidate``: a trial never changes its index's
        parameters under it."""
        searcher = candidate.searcher
        if isinstance(searcher, LiveIndex):
            return searcher.params_lock
        return contextlib.nullcontext()

    def _trial(self, candidate: Side) -> Trial | None:
        scope = candidate.store.scope
        key = (scope.tenant, scope.collection, candidate.version)
        now = time.monotonic()
        with self._lock:
            cached = self._open.get(key)
        if cached is not None and now - cached[0] < TRIALS_REFRESH_SECONDS:
            trial, kept = cached[1], cached[2]
        else:
            trial = self.log.active(*key)
            kept = self.log.count(trial) if trial is not None else 0
            with self._lock:
                self._open[key] = (now, trial, kept)
        if trial is None or kept >= trial.sample or trial.index_id != candidate.index:
            return None
        return trial

    def _kept(self, candidate: Side) -> None:
        scope = candidate.store.scope
        key = (scope.tenant, scope.collection, candidate.version)
        with self._lock:
            cached = self._open.get(key)
            if cached is not None:
                self._open[key] = (cached[0], cached[1], cached[2] + 1)

    def run(self, candidate: Side, queries: Vectors, ramp_percent: float) -> None:
        """Try every candidate value of an open trial on this mirrored read (one query, no
        filter, no ramp yet), and keep the query and the answers. A trial that fails costs
        its sample, never the shadow read's: the error's type is logged (its message could
        hold the query)."""
        try:
            self._run(candidate, queries, ramp_percent)
        except Exception as exc:
            log.warning(
                "a tuning trial on %s failed (%s); the next mirrored read tries again",
                candidate.version,
                type(exc).__name__,
            )

    def _run(self, candidate: Side, queries: Vectors, ramp_percent: float) -> None:
        if ramp_percent > 0 or queries.shape[0] != 1 or candidate.searcher is None:
            return
        trial = self._trial(candidate)
        if trial is None:
            return
        kind = _kind(candidate.searcher)
        if SEARCH_PARAMETERS.get(kind) != trial.parameter:
            return
        found: dict[int, tuple[list[int], float]] = {}
        values = list(trial.candidates)
        # A different first value for each query: none is always searched with cold caches.
        self._turns += 1
        turn = self._turns % len(values)
        for value in values[turn:] + values[:turn]:
            ids, ms = _search_with(candidate.searcher, trial.parameter, value, queries, trial.k)
            found[value] = ([int(x) for x in ids[0] if x != -1], ms)
        self.log.add(trial, queries[0], found)
        self._kept(candidate)


def _kind(searcher: LiveIndex | NativeIndex) -> str:
    if isinstance(searcher, NativeIndex):
        return searcher.spec.kind
    return searcher.shards[0].kind


def _search_with(
    searcher: LiveIndex | NativeIndex, parameter: str, value: int, queries: Vectors, k: int
) -> tuple[Ids, float]:
    """``searcher``'s answer with ``parameter`` set to ``value``, and its milliseconds."""
    if isinstance(searcher, NativeIndex):
        trial = with_params(searcher, {parameter: value})
        began = time.perf_counter()
        _, ids = trial.search(queries, k)
        return ids, (time.perf_counter() - began) * 1000
    with searcher.params_lock:
        before = searcher.search_params((parameter,))
        searcher.set_search_params({parameter: value})
        try:
            began = time.perf_counter()
            _, ids = searcher.search(queries, k)
            ms = (time.perf_counter() - began) * 1000
        finally:
            searcher.set_search_params(before)
    return ids, ms
