"""The service object one app owns: settings, metrics, model registry, data plane.

`create_app` builds it (cheap, nothing loaded); the app's lifespan calls `start` (scan, load and
warm every model, then poll the repository when `reload_interval_s` is set) and `stop` (stop
polling, drain the queues, release sessions and threads). No module-level state: two apps in
one process share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.dataplane import DataPlane
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry
from service.runtime import SessionFactory, available_cpus, create_ort_session
from service.settings import Settings

logger = logging.getLogger(__name__)


class Service:
    """Everything one running app needs, wired together."""

    def __init__(
        self, settings: Settings, *, session_factory: SessionFactory = create_ort_session
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.registry = ModelRegistry(settings, self.metrics, session_factory=session_factory)
        decode_threads = settings.decode_threads or available_cpus()
        self.dataplane = DataPlane(settings, self.registry, self.metrics, decode_threads)
        self.started = False
        self._poller: asyncio.Task[None] | None = None
        # `time.monotonic()` by which `stop` must be done; set when a shutdown begins.
        self._stop_by: float | None = None

    async def start(self) -> None:
        logger.info(
            "imgzoo service: repository %s, providers %s, %d CPU(s) available",
            self.settings.repository,
            self.settings.providers,
            available_cpus(),
        )
        await self.registry.load()
        self.started = True
        interval = self.settings.reload_interval_s
        if interval > 0:
            self._poller = asyncio.create_task(self._poll(interval), name="imgzoo-repository-poll")
            logger.info("polling the model repository every %g s", interval)

    async def _poll(self, interval: float) -> None:
        """Reload every `interval` seconds; a failing scan is logged and retried next time."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.reload()
            except Exception:  # the poller must outlive any one bad scan
                logger.exception("repository poll failed")

    def begin_shutdown(self, stop_by: float | None = None) -> None:
        """Readiness false and new predictions 503 `shutting_down` from now on; what is queued
        or running goes on. `stop_by` (`time.monotonic()`) bounds the draining in `stop`.

        Only sets flags, so a signal handler may call it.
        """
        self._stop_by = stop_by
        self.registry.begin_shutdown()

    def abort_queued(self) -> None:
        """Answer every image still waiting in a queue with 503 `shutting_down` (shutdown is
        running out of time); images already in a batch still get their result."""
        aborted = self.registry.abort_queued()
        if aborted:
            logger.warning("shutdown: %d queued image(s) answered 503 before they ran", aborted)

    async def stop(self) -> None:
        """Stop polling, drain the queues (until the shutdown deadline, when one is set) and
        release sessions and threads."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        remaining = None if self._stop_by is None else max(0.0, self._stop_by - time.monotonic())
        try:
            await asyncio.wait_for(self.registry.close(), remaining)
        except TimeoutError:
            # The process is about to exit: it must not outlive its grace period.
            logger.error("shutdown: the queues did not drain within the grace period")
        self.dataplane.close()
        self.started = False
