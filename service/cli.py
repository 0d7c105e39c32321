"""`imgzoo serve`: run the HTTP service on a model repository.

Flags override the `IMGZOO_*` environment variables, which override the defaults. Nothing
heavy is imported until the command runs, so `imgzoo --help` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from imgzoo.errors import UserError

logger = logging.getLogger(__name__)

_STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up fails

# flag destination -> Settings field
_FLAGS = {
    "repository": "repository",
    "host": "host",
    "port": "port",
    "providers": "providers",
    "sessions": "sessions",
    "threads": "intra_op_threads",
    "decode_threads": "decode_threads",
    "max_batch_size": "max_batch_size",
    "max_queue_delay_ms": "max_queue_delay_ms",
    "max_queue_size": "max_queue_size",
    "timeout_ms": "request_timeout_ms",
    "max_upload_bytes": "max_upload_bytes",
    "max_images_per_request": "max_images_per_request",
    "top_k": "default_top_k",
    "warmup": "warmup",
    "access_log": "access_log",
    "log_level": "log_level",
    "reload_interval_s": "reload_interval_s",
    "web_ui": "web_ui",
    "graceful_shutdown_s": "graceful_shutdown_s",
    "shutdown_delay_s": "shutdown_delay_s",
}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `imgzoo serve`."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over HTTP (FastAPI + ONNX Runtime)",
        description="Serve every model of a model repository at /predict/<dataset>/<model>. "
        "Unset flags fall back to the IMGZOO_* environment variables, then to the defaults "
        "(see docs/service.md). API keys and the admin token are read from "
        "IMGZOO_API_KEYS / IMGZOO_ADMIN_TOKEN only, never from flags (process lists show flags).",
    )
    add = parser.add_argument
    add("--repository", type=Path, metavar="DIR", help="model repository (IMGZOO_REPOSITORY)")
    add("--host", help="bind address (default 127.0.0.1)")
    add("--port", type=int, help="TCP port (default 8000)")
    add("--providers", choices=["auto", "cpu", "cuda", "tensorrt"], help="execution providers")
    add("--sessions", type=int, metavar="N", help="ONNX Runtime sessions per model")
    add("--threads", type=int, metavar="N", help="threads per session (0: derive from CPUs)")
    add("--decode-threads", type=int, metavar="N", help="image decoding threads (0: CPUs)")
    add("--max-batch-size", type=int, metavar="N", help="most images per batch")
    add("--max-queue-delay-ms", type=float, metavar="MS", help="longest wait to fill a batch")
    add("--max-queue-size", type=int, metavar="N", help="queued images per model before 503")
    add("--timeout-ms", type=float, metavar="MS", help="deadline per image before 504")
    add("--max-upload-bytes", type=int, metavar="BYTES", help="largest request body")
    add("--max-images-per-request", type=int, metavar="N", help="most images per request")
    add("--top-k", type=int, metavar="K", help="default number of predictions")
    add("--no-warmup", dest="warmup", action="store_false", default=None, help="skip warm-up")
    add("--access-log", action="store_true", default=None, help="log every request")
    add(
        "--reload-interval-s",
        type=float,
        metavar="S",
        help="re-scan the repository every S seconds and hot-load changes (0: off)",
    )
    add("--no-web-ui", dest="web_ui", action="store_false", default=None, help="no page at /")
    add(
        "--graceful-shutdown-s",
        type=float,
        metavar="S",
        help="on SIGTERM, exit within S seconds; open requests finish (default 30)",
    )
    add(
        "--shutdown-delay-s",
        type=float,
        metavar="S",
        help="on SIGTERM, keep listening S seconds (answering 503) before closing (default 0)",
    )
    add(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="service log level",
    )
    parser.set_defaults(func=serve)


def _settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {
        field: getattr(args, flag)
        for flag, field in _FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise UserError(f"invalid setting {where}: {first['msg']}") from None


def serve(args: argparse.Namespace) -> int:
    """Run uvicorn with the app built from the settings; returns when the server stops."""
    import uvicorn

    from service.app import create_app
    from service.runtime import plan_providers
    from service.server import GracefulServer

    settings = _settings_from(args)
    if not settings.repository.is_dir():
        raise UserError(f"model repository {settings.repository} is not a directory")
    plan_providers(settings.providers)  # an impossible explicit choice fails here, in one line
    logging.getLogger("service").setLevel(settings.log_level.upper())
    app = create_app(settings)
    logger.info(
        "imgzoo serving %s on http://%s:%d (API docs at /docs)",
        settings.repository,
        settings.host,
        settings.port,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.floor(settings.graceful_shutdown_s),
        server_header=False,
    )
    server = GracefulServer(
        config,
        app.state.service,
        grace_s=settings.graceful_shutdown_s,
        delay_s=settings.shutdown_delay_s,
    )
    server.run()
    # As `uvicorn.run`: a start-up that failed (logged by uvicorn) exits non-zero.
    return 0 if server.started else _STARTUP_FAILURE


def register_bench(kinds: argparse._SubParsersAction[Any]) -> None:
    """Add `imgzoo bench soak` (reliability.md), `imgzoo bench serve` and `imgzoo bench app`
    (benchmarks.md)."""
    # stdlib, numpy and orjson only: cheap to import
    from service.bench import app_cpu, soak
    from service.bench import serve as serve_bench

    benches = (
        (soak, "soak", "overload a real server for minutes and count how every request ends"),
        (
            serve_bench,
            "serve",
            "imgzoo against the in-process ONNX Runtime ceiling and naive servers",
        ),
        (
            app_cpu,
            "app",
            "CPU the service's own code spends on a /predict request (in process, no model)",
        ),
    )
    for module, name, summary in benches:
        parser = kinds.add_parser(
            name, help=summary, description=(module.__doc__ or "").split("\n\n")[0]
        )
        module.configure(parser)
        parser.set_defaults(func=module.command)
