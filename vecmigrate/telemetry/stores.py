"""A tracing and metrics proxy around a store handle.

:func:`vecmigrate.stores.open_store` wraps what it opens when telemetry is on, so every adapter
(built-in, pgvector, Qdrant, Milvus, and those to come) gets the same spans and metrics without
touching its code: one span per batch read or write, search, count or checksum, with the store
kind, scope, shard, records and bytes as attributes; durations, records and bytes as metrics;
bytes added to the current work (so a shard's task knows what it read and wrote). The proxy is
transparent: ``isinstance`` sees the adapter's class and every other attribute passes through.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

import wrapt
from opentelemetry.trace import Span, Status, StatusCode

from vecmigrate.telemetry import names
from vecmigrate.telemetry.context import current_work
from vecmigrate.telemetry.setup import Telemetry, current

S = TypeVar("S")
P = ParamSpec("P")

# Calls whose result is records read from the store (ids and vectors).
_READS = frozenset({"scan", "fetch", "sample"})


def _nbytes(value: Any) -> int:
    """Bytes of ids and vectors in a batch, a (ids, vectors) pair or one array."""
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size
    return sum(_nbytes(getattr(value, part)) for part in ("ids", "vectors") if hasattr(value, part))


def _records(value: Any) -> int:
    if isinstance(value, tuple):
        value = value[0]
    try:
        return len(value)
    except TypeError:
        return 0


def traced(store: S) -> S:
    """``store`` behind the proxy when telemetry records anything, else ``store`` itself."""
    t = current()
    if not (t.tracing or t.metering) or isinstance(store, TracedStore):
        return store
    return TracedStore(store, t)  # type: ignore[return-value]


def instrumented(opener: Callable[P, S]) -> Callable[P, S]:
    """Decorate a function that opens store handles so that each handle is :func:`traced`."""

    @functools.wraps(opener)
    def open_traced(*args: P.args, **kwargs: P.kwargs) -> S:
        return traced(opener(*args, **kwargs))

    return open_traced


class TracedStore(wrapt.ObjectProxy[Any]):
    """Spans and metrics around each call of a store handle."""

    def __init__(self, store: Any, telemetry: Telemetry) -> None:
        super().__init__(store)
        self._self_telemetry = telemetry
        kind = str(getattr(store, "kind", type(store).__name__))
        scope = getattr(store, "scope", None)
        self._self_kind = kind
        self._self_attrs: dict[str, str] = {names.ATTR_STORE: kind}
        if scope is not None:
            self._self_attrs.update(
                {
                    names.ATTR_TENANT: str(getattr(scope, "tenant", "")),
                    names.ATTR_COLLECTION: str(getattr(scope, "collection", "")),
                    names.ATTR_VERSION: str(getattr(scope, "version", "")),
                }
            )

    # -- the instrumented calls ----------------------------------------------------------------

    def _call(
        self,
        operation: str,
        fn: Callable[..., Any],
        *args: Any,
        shard: Any = None,
        written: Any = None,
        **kwargs: Any,
    ) -> Any:
        with self._span(operation, shard) as span:
            began = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                _failed(span, exc)
                raise
            seconds = time.perf_counter() - began
            if written is not None:
                self._note(span, operation, _records(written), written=_nbytes(written))
            elif operation in _READS:
                self._note(span, operation, _records(result), read=_nbytes(result))
            self._timed(operation, seconds)
            return result

    def _span(self, operation: str, shard: Any) -> AbstractContextManager[Span]:
        """The span of one call or batch (a failure is recorded once, by :func:`_failed`)."""
        return self._self_telemetry.tracer.start_as_current_span(
            names.SPAN_STORE.format(operation=operation),
            attributes=self._span_attrs(shard),
            record_exception=False,
        )

    def _span_attrs(self, shard: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = dict(self._self_attrs)
        work = current_work()
        if work is not None and work.migration_id is not None:
            attrs[names.ATTR_MIGRATION] = work.migration_id
        index = getattr(shard, "index", None)
        if index is None and work is not None:
            index = work.shard  # a write knows no shard; the task writing it does
        if index is not None:
            attrs[names.ATTR_SHARD] = int(index)
        return attrs

    def _note(
        self, span: Span, operation: str, records: int, read: int = 0, written: int = 0
    ) -> None:
        span.set_attribute(names.ATTR_RECORDS, records)
        span.set_attribute(names.ATTR_BYTES, read or written)
        m = self._self_telemetry.metrics
        kind = {names.STORE: self._self_kind}
        m.add(names.STORE_RECORDS, records, {**kind, names.OPERATION: operation})
        work = current_work()
        if read:
            m.add(names.STORE_READ, read, kind)
            if work is not None:
                work.read_bytes += read
        if written:
            m.add(names.STORE_WRITTEN, written, kind)
            if work is not None:
                work.written_bytes += written

    def _timed(self, operation: str, seconds: float) -> None:
        self._self_telemetry.metrics.record(
            names.STORE_DURATION,
            seconds,
            {names.STORE: self._self_kind, names.OPERATION: operation},
        )

    def _batches(self, operation: str, batches: Iterator[Any], shard: Any) -> Iterator[Any]:
        """One span per batch, around the wait for it (a read-ahead's wait is what remains)."""
        while True:
            with self._span(operation, shard) as span:
                began = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except Exception as exc:
                    _failed(span, exc)
                    raise
                self._note(span, operation, _records(batch), read=_nbytes(batch))
                self._timed(operation, time.perf_counter() - began)
            yield batch

    def scan(self, shard: Any, cursor: Any, limit: int) -> Any:
        return self._call("scan", self.__wrapped__.scan, shard, cursor, limit, shard=shard)

    def iter_shard(self, shard: Any, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        inner = self.__wrapped__.iter_shard(shard, batch_size, **kwargs)
        return self._batches("read_batch", inner, shard)

    def iter_ids(self, shard: Any, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        inner = self.__wrapped__.iter_ids(shard, batch_size, **kwargs)
        return self._batches("read_ids", inner, shard)

    def upsert(self, ids: Any, vectors: Any, *args: Any, **kwargs: Any) -> Any:
        return self._call(
            "upsert", self.__wrapped__.upsert, ids, vectors, *args, written=(ids, vectors), **kwargs
        )

    def write(self, records: Any, *args: Any, **kwargs: Any) -> Any:
        # Whole records are upserted by id too: one operation name for dashboards and alerts.
        return self._call(
            "upsert", self.__wrapped__.write, records, *args, written=records, **kwargs
        )

    def delete(self, ids: Any, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete", self.__wrapped__.delete, ids, *args, written=ids, **kwargs)

    def count(self, shard: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self._call("count", self.__wrapped__.count, shard, *args, shard=shard, **kwargs)

    def checksum(self, shard: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self._call(
            "checksum", self.__wrapped__.checksum, shard, *args, shard=shard, **kwargs
        )

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("search", self.__wrapped__.search, *args, **kwargs)

    def search_native(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("search_native", self.__wrapped__.search_native, *args, **kwargs)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("sample", self.__wrapped__.sample, *args, **kwargs)

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("fetch", self.__wrapped__.fetch, *args, **kwargs)

    def create_index(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("create_index", self.__wrapped__.create_index, *args, **kwargs)


def _failed(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute("error.type", type(exc).__name__)
