"""`imgzoo bench app`: the CPU the service's own code spends on one `/predict` request.

`imgzoo bench serve` measures what a client sees, sockets and model included. On a shared VM
its run-to-run spread (5-8%) hides a change of a few percent in the request path. This
benchmark drives the ASGI app in process, one request at a time, through a session that answers
zeros at once. It reads the event-loop thread's CPU time (`time.thread_time`), which leaves out
uvicorn's socket layer, the load generator and the model, and which other processes sharing the
cores barely move. What remains is the app's own path: routing, middleware, admission, body
parsing, decode, batcher, metrics and the JSON answer. `--profile N` adds cProfile's N most
expensive functions.

The network is a randomly initialised `fastnet`, exported with the real export path, so the
manifest, the input checks and the decode are the service's own. Its weights never run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgzoo.errors import UserError

KINDS = ("multipart", "raw")
_MODEL = "fastnet"


@dataclass(frozen=True)
class AppCpu:
    """Per-request cost of one kind of request, over `requests` requests."""

    kind: str
    requests: int
    cpu_us: float
    """Event-loop thread CPU time a request (µs)."""
    wall_us: float
    """Wall time a request (µs): above `cpu_us` when the request waited for another thread
    (a decode or run handed off) or for the CPU."""


class ZeroSession:
    """A session whose run costs nothing: zeros of the right shape, at once."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._classes = int(inner.get_outputs()[0].shape[-1])

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        batch = len(next(iter(input_feed.values())))
        return [np.zeros((batch, self._classes), dtype=np.float32)]

    def get_providers(self) -> list[str]:
        providers: list[str] = self._inner.get_providers()
        return providers

    def get_inputs(self) -> list[Any]:
        inputs: list[Any] = self._inner.get_inputs()
        return inputs

    def get_outputs(self) -> list[Any]:
        outputs: list[Any] = self._inner.get_outputs()
        return outputs


def _request(kind: str, path: str, image: Any) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of one request of `kind` carrying `image`."""
    from service.bench.serve_requests import BOUNDARY, multipart_body

    if kind == "multipart":
        body = multipart_body([image])
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    else:
        body = image.data
        content_type = image.content_type
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    return scope, body


async def _call(app: Any, scope: dict[str, Any], body: bytes) -> int:
    """Run one request through the app; its status."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the answer
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(dict(scope), receive, send)
    status: int = sent[0]["status"]
    return status


async def _measure(
    app: Any,
    requests: Sequence[tuple[dict[str, Any], bytes]],
    kinds: Sequence[str],
    *,
    count: int,
    warmup: int,
    profile: cProfile.Profile | None,
) -> list[AppCpu]:
    results: list[AppCpu] = []
    async with app.router.lifespan_context(app):
        for kind, (scope, body) in zip(kinds, requests, strict=True):
            for _ in range(warmup):
                await _call(app, scope, body)
            if profile is not None:
                profile.enable()
            cpu, wall = time.thread_time(), time.perf_counter()
            statuses = [await _call(app, scope, body) for _ in range(count)]
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            if profile is not None:
                profile.disable()
            failed = [s for s in statuses if s != 200]
            if failed:
                raise UserError(f"{kind} requests answered {failed[0]} ({len(failed)} of {count})")
            results.append(AppCpu(kind, count, 1e6 * cpu / count, 1e6 * wall / count))
    return results


def measure_app_cpu(
    *,
    images: Path | None,
    kinds: Sequence[str] = KINDS,
    requests: int = 2000,
    warmup: int = 200,
    profile: cProfile.Profile | None = None,
) -> tuple[list[AppCpu], str]:
    """CPU a request of each kind costs the app; and where the image came from."""
    import uvloop

    from service.app import create_app
    from service.bench.serve_models import random_models
    from service.bench.serve_requests import load_images
    from service.runtime import SessionSpec, create_ort_session
    from service.settings import Settings

    if requests < 1 or warmup < 0:
        raise UserError("--requests must be >= 1 and --warmup >= 0")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"--kinds: unknown kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    image_set = load_images(images, 1)
    with tempfile.TemporaryDirectory(prefix="imgzoo-bench-app-") as tmp:
        (model,) = random_models([_MODEL], Path(tmp))

        def factory(onnx: bytes, spec: SessionSpec) -> ZeroSession:
            return ZeroSession(create_ort_session(onnx, spec))

        settings = Settings(repository=Path(tmp) / "repository", providers="cpu", warmup=False)
        app = create_app(settings, session_factory=factory)
        path = f"/predict/{model.key}"
        built = [_request(kind, path, image_set.images[0]) for kind in kinds]
        results = uvloop.run(
            _measure(app, built, kinds, count=requests, warmup=warmup, profile=profile)
        )
    return results, image_set.source


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        type=Path,
        metavar="PATH",
        help="a directory or .tar(.gz) of images; the first one is sent (default: a demo PNG)",
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help="multipart, raw (default both)")
    parser.add_argument("--requests", type=int, default=2000, metavar="N", help="timed requests")
    parser.add_argument("--warmup", type=int, default=200, metavar="N", help="untimed first")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print cProfile's N costliest functions"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def command(args: argparse.Namespace) -> int:
    profile = cProfile.Profile() if args.profile > 0 else None
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results, source = measure_app_cpu(
        images=args.images,
        kinds=kinds,
        requests=args.requests,
        warmup=args.warmup,
        profile=profile,
    )
    if args.json:
        print(json.dumps({"image": source, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"image: {source}; a zero-cost session; one request at a time, in process")
        print(f"{'kind':<12}{'requests':>10}{'CPU µs / request':>18}{'wall µs / request':>19}")
        for r in results:
            print(f"{r.kind:<12}{r.requests:>10}{r.cpu_us:>18.1f}{r.wall_us:>19.1f}")
        if profile is not None:
            print("\n(under cProfile, which itself roughly doubles the times above)")
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue(), end="")
    return 0
