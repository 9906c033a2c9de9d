"""What every upload shares: the report, the error a failed upload raises, requests in flight
(threads) and retries of transient failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from csr_index.validation import check_positive

__all__ = ["ExportReport", "QdrantExportError", "check_upload_options", "run_all", "retrying"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class QdrantExportError(RuntimeError):
    """An upload to Qdrant failed after its retries; re-running the export resumes it."""


@dataclass
class ExportReport:
    """What an export did. ``points_count`` is the target's count afterwards."""

    target: str
    total: int
    uploaded: int
    skipped: int
    points_count: int
    seconds: float

    @property
    def rate(self) -> float:
        """Uploaded points per second."""
        return self.uploaded / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.target}: {self.total} points ({self.uploaded} uploaded, {self.skipped} already there) in "
            f"{self.seconds:.1f}s ({self.rate:,.0f} points/s); it holds {self.points_count} points"
        )


def check_upload_options(batch_size: Any, parallel: Any, max_retries: Any, *cluster: tuple[str, Any]) -> tuple[int, int]:
    """(batch_size, parallel) checked positive; max_retries >= 0; the optional ``(name, value)``
    cluster settings positive when given."""
    batch_size = check_positive(batch_size, "batch_size")
    parallel = check_positive(parallel, "parallel")
    if isinstance(max_retries, bool) or not isinstance(max_retries, (int, np.integer)) or max_retries < 0:
        raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
    for what, value in cluster:
        if value is not None:
            check_positive(value, what)
    return batch_size, parallel


def run_all(fn: Callable[[int], T], starts: Iterable[int], parallel: int) -> Iterator[T]:
    """``fn(start)`` for every start (in completion order), in ``parallel`` threads with at most
    ``2 * parallel`` batches queued; the first error cancels the queued ones and is raised."""
    if parallel == 1:
        yield from map(fn, starts)
        return
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="csr-qdrant") as pool:
        pending: set[Future] = set()
        try:
            for start in starts:
                pending.add(pool.submit(fn, start))
                if len(pending) >= 2 * parallel:
                    done, pending = wait_futures(pending, return_when=FIRST_COMPLETED)
                    yield from (fut.result() for fut in done)
            for fut in pending:
                yield fut.result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _transient(exc: BaseException) -> bool:
    """Whether retrying a failed request may help (network errors, 5xx, 429, gRPC UNAVAILABLE)."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code in (408, 429, 500, 502, 503, 504)
    if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    try:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
            )
    except ImportError:  # pragma: no cover
        pass
    return False


def retrying(fn: Callable[[], T], max_retries: int, what: str, where: str) -> T:
    """``fn()``, retried with exponential backoff on transient errors; QdrantExportError otherwise."""
    delay = 0.5
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt < max_retries and _transient(exc):
                log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, max_retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            raise QdrantExportError(
                f"{what} to {where} failed after {attempt + 1} attempt(s): {exc}. "
                "Points already uploaded are kept: run the export again to resume."
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover
