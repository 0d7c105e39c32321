"""The FastAPI app factory. Importing this module does nothing; `create_app` builds an app whose
lifespan loads and warms every model on start-up and drains and releases them on shutdown.

    uvicorn --factory service.app:create_app      # settings from IMGZOO_* variables
    imgzoo serve --repository model_repository    # the same, with flags over the variables
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from imgzoo import __version__
from service import handlers, v2
from service.core import Service
from service.middleware import RequestContextMiddleware
from service.responses import OrjsonResponse
from service.routers import admin, health, metrics, models, predict, web
from service.runtime import SessionFactory, create_ort_session
from service.security import API_KEY_HEADER
from service.settings import Settings

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Image classification with the models of an imgzoo model repository, run by ONNX Runtime with
dynamic batching. Errors share one shape: `{"error": {"code", "message", "details"}}`.

When the service has API keys, `/predict` needs one (`Authorization: Bearer <key>` or
`X-API-Key`); `/admin/...` needs the admin token and is disabled (403) without one.
"""


def create_app(
    settings: Settings | None = None, *, session_factory: SessionFactory = create_ort_session
) -> FastAPI:
    """A new app with its own settings, metrics and model registry.

    `settings` defaults to `Settings()` (the `IMGZOO_` environment). `session_factory` creates
    the runtime sessions (a seam for other runtimes and for tests).
    """
    settings = settings if settings is not None else Settings()
    service = Service(settings, session_factory=session_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
        except BaseException:
            await service.stop()
            raise
        try:
            yield
        finally:
            logger.info("shutting down: draining queues")
            await service.stop()

    app = FastAPI(
        title="imgzoo",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.service = service
    handlers.install(app)
    app.add_middleware(RequestContextMiddleware)
    if settings.cors_origins:  # added last: outermost, so preflights never reach auth
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", API_KEY_HEADER, "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Server-Timing", "Retry-After"],
            max_age=600,
        )
    for router in (predict.router, models.router, health.router, metrics.router, admin.router):
        app.include_router(router)
    app.include_router(v2.router)  # the Open Inference Protocol under /v2
    if settings.web_ui:
        app.include_router(web.router)
        app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    return app
