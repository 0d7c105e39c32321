"""Dynamic batching: images queue per model version, workers run them as batches.

One worker per session of the pool takes the first waiting image and everything else already
queued, up to `max_batch_size`, stacks the rows into one uint8 array and runs it off the event
loop. Each caller's future gets its own row of logits.

A worker never waits when nothing else is on its way: an idle session runs a lone image at once,
and batches form from what queued while the sessions were busy. A lone image of a model whose
single-image runs are short (`inline_max_s`) runs on the event loop itself when nothing else is
queued, arriving or running: the loop has nothing else to do meanwhile, and the two thread
hand-offs of an executor run cost more than a small network's run takes. Every batch tells the
run whether it is alone (nothing else queued, arriving or running), so the session pool gives
every core only to a batch that will not share them. A worker waits (at most
`max_queue_delay`) only while images it was told about are still arriving — requests admitted
whose bodies are being read or decoded (`Batcher.arriving`) — so a burst of concurrent requests
fills one batch instead of several small ones, and a single client pays no window. The policy
keeps no learned state, so the latency after a burst is the latency before it.

The queue is bounded (`QueueFull`, 503 with Retry-After): at most `max_queue_size` images wait
beyond what idle workers take at once. Every image has a deadline
(`DeadlineExceeded`, 504): an image whose deadline passed before its batch started is dropped
unrun. A runtime error fails only the batch it happened in (`InferenceFailed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ServiceError,
    ShuttingDown,
)
from service.runtime import Logits, UInt8Batch

logger = logging.getLogger(__name__)

# (batch, alone) -> (logits, seconds). `alone`: nothing else of the model is queued, on its way
# or running, so the batch may use every core (the session pool's solo session).
RunBatch = Callable[[UInt8Batch, bool], Awaitable[tuple[Logits, float]]]
RunBatchSync = Callable[[UInt8Batch, bool], tuple[Logits, float]]
BatchObserver = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class RowResult:
    """One image's answer from the batcher."""

    logits: npt.NDArray[np.float32]
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(slots=True)
class _Item:
    image: npt.NDArray[np.uint8]
    future: asyncio.Future[RowResult]
    enqueued: float
    deadline: float


class Arrival:
    """A request on its way to the queue (see `Batcher.arriving`); `done` is idempotent."""

    __slots__ = ("_batcher",)

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher

    def done(self) -> None:
        if self._batcher is not None:
            self._batcher._arrival_ended()
            self._batcher = None


@dataclass
class BatcherStats:
    """Live counters of one batcher (shown by /models)."""

    images: int = 0
    batches: int = 0
    inline_batches: int = 0
    failed_batches: int = 0
    expired: int = 0
    rejected: int = 0
    inference_seconds: float = field(default=0.0)


class Batcher:
    """The queue and workers of one model version."""

    def __init__(
        self,
        run: RunBatch,
        *,
        workers: int,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        timeout_s: float,
        name: str,
        on_batch: BatchObserver | None = None,
        run_inline: RunBatchSync | None = None,
        inline_max_s: float = 0.0,
    ) -> None:
        self._run = run
        self._run_inline = run_inline if inline_max_s > 0 else None
        self.inline_max_s = inline_max_s
        # Recent single-image run time (an exponential average); None until one has run.
        self._lone_run_s: float | None = None
        self._workers_wanted = workers
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.timeout_s = timeout_s
        self.name = name
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._running_batches = 0
        # Workers waiting for a first image: what they take at once is not kept waiting, so it
        # does not count against `max_queue_size` (see `submit`).
        self._idle_workers = 0
        self._arriving = 0
        # Set by a worker waiting for arrivals; resolved when the last one ends unsubmitted.
        self._wake: asyncio.Future[None] | None = None
        self._closing = False
        self.stats = BatcherStats()

    # ------------------------------------------------------------------ public

    @property
    def queue_depth(self) -> int:
        """Images waiting (not yet taken into a batch)."""
        return self._queue.qsize()

    @property
    def busy_workers(self) -> int:
        return self._running_batches

    @property
    def arriving_requests(self) -> int:
        """Requests announced by `arriving` whose images are not queued yet."""
        return self._arriving

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a request whose images will be submitted soon (body read, decode).

        While any is announced, a worker holding a partial batch waits up to `max_queue_delay`
        for them. Pass the `Arrival` to `submit` / `infer`, which ends it as the images queue;
        leaving the block ends it in any case (an error, a disconnect).
        """
        arrival = Arrival(self)
        self._arriving += 1
        try:
            yield arrival
        finally:
            arrival.done()

    def _arrival_ended(self) -> None:
        self._arriving -= 1
        if self._arriving == 0 and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def start(self) -> None:
        """Start the workers on the running loop."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"batcher-{self.name}-{i}")
            for i in range(self._workers_wanted)
        ]

    def submit(
        self, images: Sequence[npt.NDArray[np.uint8]], arrival: Arrival | None = None
    ) -> list[asyncio.Future[RowResult]]:
        """Queue images (each H, W, C uint8), all or none; each future resolves with its row."""
        if arrival is not None:
            arrival.done()  # in the same step as the images queue: no worker sees neither
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        # An image put in the queue stays counted there until the woken worker's task runs, so
        # two requests decoded in the same loop step would find a one-place queue "full" while a
        # session sits idle. Room held by idle workers is therefore added to the bound.
        room = self.max_queue_size + self.max_batch_size * self._idle_workers
        if self._queue.qsize() + len(images) > room:
            raise self.refuse(len(images))
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.timeout_s
        futures: list[asyncio.Future[RowResult]] = []
        for image in images:
            future: asyncio.Future[RowResult] = loop.create_future()
            self._queue.put_nowait(_Item(image, future, now, deadline))
            futures.append(future)
        return futures

    def refuse(self, images: int) -> QueueFull:
        """The 503 for `images` that find no room (counted as rejected), with Retry-After."""
        self.stats.rejected += images
        return QueueFull(
            "the model's queue is full, retry later",
            details={"max_queue_size": self.max_queue_size},
            headers={"Retry-After": str(self._retry_after_s())},
        )

    def _retry_after_s(self) -> int:
        """Whole seconds until the queue has likely drained (at least 1)."""
        per_batch = self.stats.inference_seconds / self.stats.batches if self.stats.batches else 0
        batches = self._queue.qsize() / self.max_batch_size / max(1, self._workers_wanted)
        return max(1, math.ceil(batches * per_batch))

    async def infer(
        self, images: Sequence[npt.NDArray[np.uint8]], arrival: Arrival | None = None
    ) -> list[RowResult]:
        """Queue images and wait for their rows, at most until their common deadline."""
        futures = self.submit(images, arrival)
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path.
            async with asyncio.timeout(self.timeout_s):
                if len(futures) == 1:
                    return [await futures[0]]
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            self.stats.expired += sum(1 for f in futures if f.cancelled())
            raise DeadlineExceeded(
                "the image was not processed before its deadline",
                details={"timeout_ms": round(self.timeout_s * 1000, 3)},
            ) from None

    def abort_queued(self, make_error: Callable[[], ServiceError]) -> int:
        """Refuse new images and fail the queued ones with `make_error()`; returns how many.

        Images already taken into a batch still run. Used when a shutdown runs out of time, so
        that every waiting caller gets an answer rather than a dropped connection.
        """
        self._closing = True
        aborted = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return aborted
            if not item.future.done():
                item.future.set_exception(make_error())
                aborted += 1
            self._queue.task_done()

    async def close(self) -> None:
        """Refuse new images, let the queued ones run, then stop the workers."""
        self._closing = True
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ------------------------------------------------------------------ worker

    async def _collect(self) -> list[_Item]:
        """The next batch: the first image, what is queued, and what arrives within the delay."""
        self._idle_workers += 1
        try:
            first = await self._queue.get()
        finally:
            self._idle_workers -= 1
        batch = [first]
        self._take_queued(batch)
        if self.max_queue_delay_s <= 0 or len(batch) >= self.max_batch_size:
            return batch
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_queue_delay_s
        # Wait only for images that are known to be on their way; nobody else is coming.
        while len(batch) < self.max_batch_size and self._arriving > 0:
            remaining = until - loop.time()
            if remaining <= 0:
                break
            item = await self._next_arrival(loop, remaining)
            if item is None:
                break
            batch.append(item)
            self._take_queued(batch)
        return batch

    async def _next_arrival(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Item | None:
        """The next queued image, or None at the timeout or once no arrival is announced."""
        self._wake = loop.create_future()
        getter = asyncio.ensure_future(self._queue.get())
        try:
            await asyncio.wait(
                (getter, self._wake), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # the worker is cancelled: the getter must not outlive it
            getter.cancel()
            raise
        finally:
            self._wake = None
        if getter.done():
            return getter.result()
        getter.cancel()  # an image it was about to take stays in the queue
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return getter.result() if not getter.cancelled() else None

    def _take_queued(self, batch: list[_Item]) -> None:
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                await self._process(batch, loop)
            except Exception:  # never let one batch kill the worker
                logger.exception("batcher %s: unexpected error", self.name)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _alone(self) -> bool:
        """Whether a batch starting now is all the model has to do: no other batch running,
        nothing queued or on its way."""
        return self._running_batches == 0 and self._arriving == 0 and self._queue.empty()

    def _runs_inline(self, size: int, alone: bool) -> bool:
        """Whether a batch of `size` runs on the event loop (see the module docstring).

        Only a lone image, running `alone`, whose model's recent single-image runs took at
        most `inline_max_s` (so the loop is never blocked for long, and the first run of a
        model, unmeasured, goes to a thread).
        """
        return (
            self._run_inline is not None
            and size == 1
            and alone
            and self._lone_run_s is not None
            and self._lone_run_s <= self.inline_max_s
        )

    async def _process(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up (deadline or disconnect)
                continue
            if item.deadline <= now:
                self.stats.expired += 1
                item.future.set_exception(DeadlineExceeded("the image expired in the queue"))
                continue
            live.append(item)
        if not live:
            return
        # A lone image needs no copy: a new leading axis on its (C-contiguous) array will do.
        if len(live) == 1:
            images = np.ascontiguousarray(live[0].image)[np.newaxis]
        else:
            images = np.stack([item.image for item in live])
        size = len(live)
        alone = self._alone()
        run_inline = self._run_inline if self._runs_inline(size, alone) else None
        self._running_batches += 1
        try:
            if run_inline is not None:
                logits, seconds = run_inline(images, alone)
            else:
                logits, seconds = await self._run(images, alone)
            if logits.shape[0] != size:
                raise RuntimeError(f"a batch of {size} gave {logits.shape[0]} rows")
        except Exception as exc:
            self.stats.failed_batches += 1
            logger.error("batcher %s: batch of %d failed: %s", self.name, size, exc)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(
                        InferenceFailed("the model failed on the batch this image was in")
                    )
            return
        finally:
            self._running_batches -= 1
        self.stats.images += size
        self.stats.batches += 1
        self.stats.inline_batches += run_inline is not None
        self.stats.inference_seconds += seconds
        if size == 1:
            previous = self._lone_run_s
            self._lone_run_s = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        if self._on_batch is not None:
            self._on_batch(size)
        for row, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(RowResult(logits[row], size, now - item.enqueued, seconds))
