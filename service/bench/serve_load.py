"""The load generator of `imgzoo bench serve`: closed-loop keep-alive HTTP/1.1 clients.

`concurrency` connections, each sending a request, reading the whole answer, and sending the
next one at once (a closed loop, like `hey -c`). Requests are pre-built bytes (request line,
headers and body), rotated through; an answer is read as far as HTTP/1.1 framing needs (the
status line, `Content-Length`, the body) and never parsed further, so that on a small machine
the client costs the CPU it shares with the server as little as possible. uvloop runs the event
loop when it is installed (it comes with `uvicorn[standard]`).

It runs in a process of its own (`LoadGenerator`, multiprocessing "spawn"), so it never
competes with the benchmark's own Python for the GIL. Standard library only: the spawned
process imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from types import TracebackType
from typing import Protocol

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CONNECTION_CLOSE = b"\r\nconnection: close"
_STREAM_LIMIT = 1 << 20  # longest header block the reader accepts


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: who to call, with what, how hard and for how long."""

    host: str
    port: int
    requests: tuple[bytes, ...]  # whole HTTP/1.1 requests, rotated through
    images_per_request: int
    concurrency: int
    duration_s: float
    warmup_s: float = 0.0
    timeout_s: float = 30.0


@dataclass
class LoadResult:
    """What came back in the measured window (after the warm-up).

    Only answers that end inside the window count; their latency is from the first byte
    written to the last byte read. `statuses` counts non-2xx answers by status, `resets`
    failed connections (refused, reset, closed mid-answer), `timeouts` requests still open
    when the run was cut off (`timeout_s` after the window).
    """

    concurrency: int
    images_per_request: int
    window_s: float
    ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    resets: int = 0
    timeouts: int = 0
    sample_ok: bytes | None = None  # the first 2xx answer (head and body), to check
    sample_error: bytes | None = None  # the first non-2xx answer

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) + self.resets + self.timeouts

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request


class ProtocolError(Exception):
    """An answer this client cannot frame (chunked, no Content-Length)."""


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: (status, head + body, whether the server closes the connection)."""
    head = await reader.readuntil(_HEAD_END)
    status = int(head[9:12])
    lowered = head.lower()
    start = lowered.find(_CONTENT_LENGTH)
    if start < 0:
        if status in (204, 304) or 100 <= status < 200:
            return status, head, _CONNECTION_CLOSE in lowered
        raise ProtocolError("an answer without Content-Length")
    start += len(_CONTENT_LENGTH)
    length = int(lowered[start : lowered.index(b"\r\n", start)])
    body = await reader.readexactly(length) if length else b""
    return status, head + body, _CONNECTION_CLOSE in lowered


class _Run:
    """The state shared by the connections of one measurement."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        now = perf_counter()
        self.window_start = now + spec.warmup_s
        self.window_end = self.window_start + spec.duration_s
        self.result = LoadResult(spec.concurrency, spec.images_per_request, spec.duration_s)

    async def connection(self, index: int) -> None:
        spec = self.spec
        requests = spec.requests
        count = len(requests)
        result = self.result
        latencies = result.latencies_ms
        # Connections start at spread-out images, so concurrent requests carry different ones.
        position = (index * max(1, count // max(1, spec.concurrency))) % count
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                started = perf_counter()
                if started >= self.window_end:
                    return
                try:
                    if writer is None or reader is None:
                        reader, writer = await asyncio.open_connection(
                            spec.host, spec.port, limit=_STREAM_LIMIT
                        )
                    writer.write(requests[position])
                    status, answer, close = await read_answer(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ProtocolError, ValueError):  # fmt: skip
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if self.window_start <= perf_counter() < self.window_end:
                        result.resets += 1
                    await asyncio.sleep(0.01)  # a refusing server is not hammered in a tight loop
                    continue
                position = (position + 1) % count
                ended = perf_counter()
                if close and writer is not None:
                    writer.close()
                    reader = writer = None
                if not self.window_start <= ended < self.window_end:
                    continue
                if 200 <= status < 300:
                    result.ok += 1
                    latencies.append((ended - started) * 1000.0)
                    if result.sample_ok is None:
                        result.sample_ok = answer
                else:
                    result.statuses[status] += 1
                    if result.sample_error is None:
                        result.sample_error = answer
        finally:
            if writer is not None:
                writer.close()


async def run_load(spec: LoadSpec) -> LoadResult:
    """Measure `spec` on the running event loop (see `LoadResult` for what counts)."""
    if not spec.requests:
        raise ValueError("a load needs at least one request")
    run = _Run(spec)
    tasks = [asyncio.ensure_future(run.connection(i)) for i in range(spec.concurrency)]
    limit = spec.warmup_s + spec.duration_s + spec.timeout_s
    _, pending = await asyncio.wait(tasks, timeout=limit)
    if pending:
        run.result.timeouts += len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug, not a measured failure
    return run.result


def measure(spec: LoadSpec) -> LoadResult:
    """Run `spec` on a fresh event loop (uvloop when installed); blocking."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(spec))
    return uvloop.run(run_load(spec))


class Load(Protocol):
    """What the benchmark measures with: this module's `LoadGenerator`, or `hey`."""

    def run(self, spec: LoadSpec) -> LoadResult: ...


# --------------------------------------------------------------------------- process


def _serve(connection: multiprocessing.connection.Connection) -> None:
    """The spawned process: measure every spec received until None arrives."""
    while True:
        spec = connection.recv()
        if spec is None:
            return
        try:
            connection.send(measure(spec))
        except Exception as exc:  # reported to the parent, which raises it
            connection.send(exc)


class LoadGenerator:
    """A load-generating process of its own, reused for every measurement of a run."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child,), name="imgzoo-bench-load", daemon=True
        )
        self._process.start()
        child.close()

    def run(self, spec: LoadSpec) -> LoadResult:
        """Measure `spec` in the load process; blocking."""
        self._connection.send(spec)
        answer: LoadResult | Exception = self._connection.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def run_all(self, specs: Sequence[LoadSpec]) -> list[LoadResult]:
        return [self.run(spec) for spec in specs]

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
