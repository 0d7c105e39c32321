"""The dynamic batcher on its own, with a fake model (fast, no ONNX)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher, RunBatchSync
from service.errors import DeadlineExceeded, InferenceFailed, QueueFull, ShuttingDown
from service.runtime import Logits, UInt8Batch


def _image(value: int) -> np.ndarray:
    return np.full((2, 2, 1), value, dtype=np.uint8)


class FakeModel:
    """Logits row = the image's first pixel repeated; records each batch size."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.alone: list[bool] = []
        self.fail_next = False

    async def __call__(self, batch: UInt8Batch, alone: bool) -> tuple[Logits, float]:
        self.batches.append(len(batch))
        self.alone.append(alone)
        await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        logits = np.repeat(batch[:, 0, 0, :].astype(np.float32), 3, axis=1)
        return logits, self.delay


def _batcher(
    model: FakeModel,
    *,
    run_inline: RunBatchSync | None = None,
    inline_max_s: float = 0.0,
    **kwargs: float,
) -> Batcher:
    options: dict[str, float] = {
        "workers": 1,
        "max_batch_size": 4,
        "max_queue_delay_s": 0.01,
        "max_queue_size": 100,
        "timeout_s": 5.0,
    }
    options.update(kwargs)
    return Batcher(
        model,
        workers=int(options["workers"]),
        max_batch_size=int(options["max_batch_size"]),
        max_queue_delay_s=options["max_queue_delay_s"],
        max_queue_size=int(options["max_queue_size"]),
        timeout_s=options["timeout_s"],
        name="test",
        run_inline=run_inline,
        inline_max_s=inline_max_s,
    )


def test_rows_go_back_to_their_callers_in_batches_up_to_the_maximum() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.02)
        batcher = _batcher(model)
        batcher.start()
        results = await asyncio.gather(*(batcher.infer([_image(i)]) for i in range(10)))
        for i, (row,) in enumerate(results):
            assert row.logits.tolist() == [i, i, i]
            assert 1 <= row.batch_size <= 4
        assert max(model.batches) == 4 and sum(model.batches) == 10
        assert batcher.stats.images == 10 and batcher.stats.batches == len(model.batches)
        await batcher.close()

    asyncio.run(main())


def test_multi_image_submission_keeps_order() -> None:
    async def main() -> None:
        batcher = _batcher(FakeModel())
        batcher.start()
        rows = await batcher.infer([_image(7), _image(3), _image(5)])
        assert [int(r.logits[0]) for r in rows] == [7, 3, 5]
        await batcher.close()

    asyncio.run(main())


def test_full_queue_is_refused_with_retry_after() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.2)
        batcher = _batcher(model, max_queue_size=2, max_batch_size=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.infer([_image(1)]))
        await asyncio.sleep(0.05)  # the worker holds the first; the queue is empty again
        batcher.submit([_image(2), _image(3)])
        with pytest.raises(QueueFull) as caught:
            batcher.submit([_image(4)])
        assert int(caught.value.headers["Retry-After"]) >= 1
        assert batcher.stats.rejected == 1
        await first
        await batcher.close()

    asyncio.run(main())


def test_images_queued_in_one_step_for_an_idle_worker_are_not_refused() -> None:
    """Two requests decoded in the same loop step, one place in the queue, one idle session:
    the first is still counted in the queue until the woken worker runs, yet both fit (the
    worker takes one at once). Only a third, with the session busy and the place taken, is
    refused."""

    async def main() -> None:
        model = FakeModel(delay=0.2)
        batcher = _batcher(model, max_queue_size=1, max_batch_size=1)
        batcher.start()
        await asyncio.sleep(0)  # the worker is waiting for its first image
        first, second = batcher.submit([_image(1)]), batcher.submit([_image(2)])
        await asyncio.sleep(0.05)  # the worker runs the first; the second waits
        with pytest.raises(QueueFull):
            batcher.submit([_image(3)])
        rows = [await future for future in (*first, *second)]
        assert [int(row.logits[0]) for row in rows] == [1, 2]
        assert model.batches == [1, 1] and batcher.stats.rejected == 1
        await batcher.close()

    asyncio.run(main())


def test_deadline_passed_in_the_queue_drops_the_work() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.3)
        batcher = _batcher(model, max_batch_size=1, timeout_s=0.2)
        batcher.start()
        outcomes = await asyncio.gather(
            *(batcher.infer([_image(i)]) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, DeadlineExceeded) for o in outcomes)
        await asyncio.sleep(0.4)
        # Only the first was run; the others expired unrun.
        assert model.batches == [1]
        model.delay = 0.0
        (row,) = await batcher.infer([_image(9)])
        assert row.logits[0] == 9
        await batcher.close()

    asyncio.run(main())


def test_a_failing_batch_fails_only_its_own_images() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = _batcher(model)
        batcher.start()
        model.fail_next = True
        with pytest.raises(InferenceFailed):
            await batcher.infer([_image(1), _image(2)])
        (row,) = await batcher.infer([_image(3)])
        assert row.logits[0] == 3
        assert batcher.stats.failed_batches == 1
        await batcher.close()

    asyncio.run(main())


def test_close_drains_the_queue_then_refuses() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.01)
        batcher = _batcher(model, max_batch_size=2)
        batcher.start()
        futures = batcher.submit([_image(i) for i in range(6)])
        await batcher.close()
        assert [int(f.result().logits[0]) for f in futures] == list(range(6))
        with pytest.raises(ShuttingDown):
            batcher.submit([_image(0)])

    asyncio.run(main())


def test_several_workers_run_batches_in_parallel() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.1)
        batcher = _batcher(model, workers=2, max_batch_size=1, max_queue_delay_s=0)
        batcher.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(batcher.infer([_image(i)]) for i in range(4)))
        assert loop.time() - start < 0.35  # 4 x 0.1 s on two workers, not four in a row
        await batcher.close()

    asyncio.run(main())


def test_a_lone_image_never_waits_for_the_batching_window() -> None:
    async def main() -> None:
        model = FakeModel()
        # A window of 2 s: waiting for it would show in queue_s.
        batcher = _batcher(model, max_queue_delay_s=2.0)
        batcher.start()
        for _ in range(3):
            (row,) = await batcher.infer([_image(7)])
            assert row.batch_size == 1
            assert row.queue_s < 0.2, row
        await batcher.close()
        assert model.batches == [1, 1, 1]

    asyncio.run(main())


def test_a_partial_batch_waits_for_announced_arrivals_only() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = _batcher(model, max_queue_delay_s=2.0, max_batch_size=8)
        batcher.start()
        with batcher.arriving() as late:
            first = asyncio.ensure_future(batcher.infer([_image(1)]))
            await asyncio.sleep(0.1)  # the worker holds [1] and waits: `late` is announced
            assert model.batches == []
            assert batcher.arriving_requests == 1
            rows = await batcher.infer([_image(2), _image(3)], late)
            assert batcher.arriving_requests == 0
        (row,) = await first
        assert model.batches == [3]
        assert [r.batch_size for r in [row, *rows]] == [3, 3, 3]
        assert [float(r.logits[0]) for r in [row, *rows]] == [1.0, 2.0, 3.0]
        await batcher.close()

    asyncio.run(main())


def test_an_arrival_that_never_submits_releases_the_wait() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = _batcher(model, max_queue_delay_s=0.3)
        batcher.start()
        with batcher.arriving():
            pending = asyncio.ensure_future(batcher.infer([_image(5)]))
            await asyncio.sleep(0.05)
        # The announced request failed before submitting (bad body): nothing to wait for.
        assert batcher.arriving_requests == 0
        (row,) = await pending
        assert row.batch_size == 1
        assert row.queue_s < 0.3
        await batcher.close()

    asyncio.run(main())


def test_batches_form_from_what_queued_while_the_session_was_busy() -> None:
    async def main() -> None:
        model = FakeModel(delay=0.1)
        batcher = _batcher(model, max_queue_delay_s=0.0, max_batch_size=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.infer([_image(0)]))
        await asyncio.sleep(0.02)  # the first batch runs alone
        rest = [asyncio.ensure_future(batcher.infer([_image(i)])) for i in range(1, 6)]
        await asyncio.gather(first, *rest)
        assert model.batches == [1, 5]
        await batcher.close()

    asyncio.run(main())


def test_a_batch_is_alone_only_when_nothing_else_is_queued_arriving_or_running() -> None:
    """`alone` lets the session pool give a batch every core (the solo session)."""

    async def main() -> None:
        model = FakeModel(delay=0.05)
        batcher = _batcher(model, workers=2, max_queue_delay_s=0.0, max_batch_size=2)
        batcher.start()
        await batcher.infer([_image(0), _image(1)])  # one request, nothing else: alone
        # Five images at once: the first batch starts with more queued, the second while the
        # first runs, the third while the second runs.
        await asyncio.gather(*(batcher.infer([_image(i)]) for i in range(5)))
        with batcher.arriving():  # another request is on its way
            await batcher.infer([_image(7)])
        await batcher.infer([_image(8)])  # alone again
        assert model.batches == [2, 2, 2, 1, 1, 1]
        assert model.alone == [True, False, False, False, False, True]
        await batcher.close()

    asyncio.run(main())


class InlineModel:
    """A synchronous run that records the thread it ran on and reports `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []

    def __call__(self, batch: UInt8Batch, alone: bool) -> tuple[Logits, float]:
        assert alone  # only a batch that is all the model has to do runs inline
        self.threads.append(threading.current_thread().name)
        return np.repeat(batch[:, 0, 0, :].astype(np.float32), 3, axis=1), self.seconds


def test_a_lone_image_of_a_fast_model_runs_on_the_event_loop_once_measured() -> None:
    async def main() -> None:
        model, inline = FakeModel(delay=0.001), InlineModel(seconds=0.001)
        batcher = _batcher(model, run_inline=inline, inline_max_s=0.005)
        batcher.start()
        # The first lone image is unmeasured: it goes to the threads (the async run).
        (first,) = await batcher.infer([_image(1)])
        assert first.logits.tolist() == [1, 1, 1]
        assert model.batches == [1] and inline.threads == []
        for value in (2, 3, 4):
            (row,) = await batcher.infer([_image(value)])
            assert row.logits.tolist() == [value] * 3
        assert model.batches == [1]
        assert inline.threads == ["MainThread"] * 3  # asyncio.run's loop thread
        assert batcher.stats.inline_batches == 3 and batcher.stats.batches == 4
        await batcher.close()

    asyncio.run(main())


def test_a_slow_model_or_a_busy_batcher_never_runs_inline() -> None:
    async def main() -> None:
        # Single-image runs of 20 ms are over the 5 ms bound: always the threads.
        slow, slow_inline = FakeModel(delay=0.02), InlineModel(seconds=0.02)
        batcher = _batcher(slow, run_inline=slow_inline, inline_max_s=0.005)
        batcher.start()
        for value in range(3):
            await batcher.infer([_image(value)])
        assert slow.batches == [1, 1, 1] and slow_inline.threads == []
        await batcher.close()

        # A fast model under concurrent load: the batches that form (more than one image, or
        # one image while others queue) go to the threads; only lone images may run inline.
        fast, fast_inline = FakeModel(delay=0.001), InlineModel(seconds=0.001)
        batcher = _batcher(fast, run_inline=fast_inline, inline_max_s=0.005)
        batcher.start()
        await batcher.infer([_image(0)])  # measured
        results = await asyncio.gather(*(batcher.infer([_image(i)]) for i in range(12)))
        assert [int(r.logits[0]) for (r,) in results] == list(range(12))
        assert sum(fast.batches) + len(fast_inline.threads) == 13
        assert max(fast.batches) > 1
        await batcher.close()

    asyncio.run(main())


def test_inline_runs_are_off_at_zero() -> None:
    async def main() -> None:
        model, inline = FakeModel(), InlineModel(seconds=0.0)
        batcher = _batcher(model, run_inline=inline, inline_max_s=0.0)
        batcher.start()
        for value in range(3):
            await batcher.infer([_image(value)])
        assert model.batches == [1, 1, 1] and inline.threads == []
        await batcher.close()

    asyncio.run(main())


def test_a_lone_image_reaches_the_session_as_a_contiguous_batch_of_one() -> None:
    """Without the stack copy: its own memory when contiguous, a contiguous copy otherwise."""

    seen: list[np.ndarray] = []

    class Recording(FakeModel):
        async def __call__(self, batch: UInt8Batch, alone: bool) -> tuple[Logits, float]:
            seen.append(batch)
            return await super().__call__(batch, alone)

    async def main() -> None:
        batcher = _batcher(Recording())
        batcher.start()
        image = _image(9)
        image.flags.writeable = False  # as decode_image gives it
        (row,) = await batcher.infer([image])
        strided = np.full((2, 4, 1), 4, dtype=np.uint8)[:, ::2]  # a view that is not contiguous
        (strided_row,) = await batcher.infer([strided])
        two = await batcher.infer([_image(1), _image(2)])
        await batcher.close()
        assert row.logits.tolist() == [9, 9, 9] and strided_row.logits.tolist() == [4, 4, 4]
        assert [r.logits[0] for r in two] == [1, 2]
        assert [b.shape for b in seen] == [(1, 2, 2, 1), (1, 2, 2, 1), (2, 2, 2, 1)]
        assert all(b.flags.c_contiguous for b in seen)
        assert np.shares_memory(seen[0], image)
        assert not np.shares_memory(seen[1], strided)

    asyncio.run(main())
