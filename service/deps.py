"""FastAPI dependencies: the app's `Service` parts, typed, for the routers.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop on every request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.core import Service
from service.dataplane import DataPlane
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry
from service.settings import Settings


async def get_service(request: Request) -> Service:
    service = request.app.state.service
    if not isinstance(service, Service):  # pragma: no cover - wiring bug
        raise RuntimeError("the app has no imgzoo Service")
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_dataplane(service: ServiceDep) -> DataPlane:
    return service.dataplane


async def get_registry(service: ServiceDep) -> ModelRegistry:
    return service.registry


async def get_metrics(service: ServiceDep) -> ServiceMetrics:
    return service.metrics


async def get_settings(service: ServiceDep) -> Settings:
    return service.settings


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
