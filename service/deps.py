"""FastAPI dependencies: the app's `Service` parts, typed, for the routers.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop on every request for what is an attribute lookup. Each reads the request directly
rather than through `ServiceDep`: one dependency level less to solve on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.core import Service
from service.dataplane import DataPlane
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry
from service.settings import Settings


def service_of(request: Request) -> Service:
    """The app's `Service` (a plain function: the dependencies below call it)."""
    service = request.app.state.service
    if not isinstance(service, Service):  # pragma: no cover - wiring bug
        raise RuntimeError("the app has no imgzoo Service")
    return service


async def get_service(request: Request) -> Service:
    return service_of(request)


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_dataplane(request: Request) -> DataPlane:
    return service_of(request).dataplane


async def get_registry(request: Request) -> ModelRegistry:
    return service_of(request).registry


async def get_metrics(request: Request) -> ServiceMetrics:
    return service_of(request).metrics


async def get_settings(request: Request) -> Settings:
    return service_of(request).settings


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
