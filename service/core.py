"""The service object one app owns: settings, metrics, model registry, data plane.

`create_app` builds it (cheap, nothing loaded); the app's lifespan calls `start` (scan, load and
warm every model) and `stop` (drain the queues, release sessions and threads). No module-level
state: two apps in one process share nothing.
"""

from __future__ import annotations

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

    async def start(self) -> None:
        logger.info(
            "imgzoo service: repository %s, providers %s, %d CPU(s) available",
            self.settings.repository,
            self.settings.providers,
            available_cpus(),
        )
        await self.registry.load()
        self.started = True

    async def stop(self) -> None:
        await self.registry.close()
        self.dataplane.close()
        self.started = False
