"""The web page: `GET /` and its static files (`service/static/`, package data, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from imgzoo import __version__
from service.deps import SettingsDep
from service.responses import OrjsonResponse
from service.schemas import WebConfig

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["web"])


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The model zoo page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/ui/config", response_model=WebConfig, summary="Web page configuration")
async def ui_config(settings: SettingsDep) -> Response:
    """Whether prediction needs an API key, and the defaults the page starts from."""
    return OrjsonResponse(
        {
            "version": __version__,
            "api_key_required": bool(settings.api_keys),
            "default_top_k": settings.default_top_k,
        }
    )
