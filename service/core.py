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

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.registry.close()
        self.dataplane.close()
        self.started = False
