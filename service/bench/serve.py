"""`imgzoo bench serve`: imgzoo against the in-process ceiling and the naive servers.

    imgzoo bench serve --images ../shared/data/cifar10-train-a.tar.gz --out runs/bench-serve

1. models: `--repository DIR [--model dataset/name[@version] ...]`, or by default a fast net
   and a CIFAR ResNet-18 at 32 px, randomly initialised and exported with the real export path
   (speed does not depend on the weights); the naive PyTorch server runs the same network;
2. images: `--images` (a directory or a .tar(.gz) of image files, e.g. CIFAR-10 PNGs), else
   the embedded demo set; encoded once, rotated through pre-built requests;
3. the ceiling: the same graph in this process, decode + run in batches of 64 (no HTTP);
4. each server in turn, alone on the machine: `imgzoo serve` (a subprocess on 127.0.0.1, a
   free port, ready when /readyz says so), then the tutorial-style FastAPI servers (PyTorch
   eager, and ONNX Runtime, one forward per request); for each model a burst check (c=1 fresh,
   a burst, c=1 again), then every request kind at every concurrency, `--repeats` times;
5. the load comes from closed-loop keep-alive clients in a process of their own
   (`service.bench.serve_load`); errors (non-2xx, resets, timeouts) are counted, not fatal;
6. `--out` gets bench-serve.json, bench-serve.md (printed too) and bench-serve.png.

Exit status 0, or 1 when a server's 2xx answers were not full predictions (its figures would
not measure what they claim).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgzoo.errors import UserError
from service.bench.serve_requests import DEFAULT_KINDS, KINDS, NAIVE_KINDS

if TYPE_CHECKING:
    from service.bench.serve_load import Load, LoadSpec
    from service.bench.serve_models import BenchModel
    from service.bench.serve_requests import ImageSet
    from service.bench.serve_stats import PointSummary

SERVERS = ("imgzoo", "torch-naive", "ort-naive")
CLIENTS = ("builtin", "hey")
HOST = "127.0.0.1"
JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "bench-serve.json", "bench-serve.md", "bench-serve.png"
_READY_TIMEOUT_S = 600.0  # ResNet warm-up on a busy 2-core machine takes a while
_STOP_TIMEOUT_S = 60.0
_PACKAGES = ("onnxruntime", "torch", "numpy", "fastapi", "starlette", "uvicorn", "uvloop", "pillow")


@dataclass(frozen=True)
class Options:
    """The resolved options of one run (quick-mode defaults applied)."""

    repository: Path | None
    models: tuple[str, ...]
    architectures: tuple[str, ...]
    images: Path | None
    image_count: int
    kinds: tuple[str, ...]
    multi_images: int
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    repeats: int
    burst: bool
    burst_s: float
    burst_concurrency: int
    servers: tuple[str, ...]
    ceiling: bool
    ceiling_batch: int
    naive_threads: int
    server_args: tuple[str, ...]
    timeout_s: float
    out: Path
    quick: bool
    client: str = "builtin"

    def command_line(self) -> str:
        """The exact `imgzoo bench serve` command that repeats this run."""
        words = ["imgzoo", "bench", "serve"]
        if self.quick:
            words.append("--quick")
        if self.repository is not None:
            words += ["--repository", str(self.repository)]
            for model in self.models:
                words += ["--model", model]
        else:
            words += ["--architectures", ",".join(self.architectures)]
        if self.images is not None:
            words += ["--images", str(self.images)]
        words += [
            "--image-count",
            str(self.image_count),
            "--kinds",
            ",".join(self.kinds),
            "--multi-images",
            str(self.multi_images),
            "--concurrency",
            ",".join(map(str, self.concurrency)),
            "--duration",
            f"{self.duration_s:g}",
            "--warmup",
            f"{self.warmup_s:g}",
            "--repeats",
            str(self.repeats),
        ]
        if self.burst:
            words += [
                "--burst-s",
                f"{self.burst_s:g}",
                "--burst-concurrency",
                str(self.burst_concurrency),
            ]
        else:
            words.append("--no-burst")
        words += ["--servers", ",".join(self.servers)]
        words += ["--ceiling-batch", str(self.ceiling_batch)] if self.ceiling else ["--no-ceiling"]
        words += ["--naive-threads", str(self.naive_threads), "--timeout-s", f"{self.timeout_s:g}"]
        words += [f"--server-arg={arg}" for arg in self.server_args]
        if self.client != "builtin":
            words += ["--client", self.client]
        words += ["--out", str(self.out)]
        return shlex.join(words)

    def estimate_s(self, models: int) -> float:
        """Seconds the measurements take (start-ups and exports not included)."""
        point = self.warmup_s + self.duration_s
        total = 0.0
        for server in self.servers:
            kinds = [k for k in self.kinds if server == "imgzoo" or k in NAIVE_KINDS]
            total += len(kinds) * len(self.concurrency) * self.repeats * point
            if self.burst:
                total += 2 * self.duration_s + self.warmup_s + self.burst_s
        if self.ceiling:
            total += 2 * self.repeats * self.duration_s
        return total * models


# --------------------------------------------------------------------------- options


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `imgzoo bench serve`."""
    add = parser.add_argument
    add(
        "--repository",
        type=Path,
        metavar="DIR",
        help="benchmark trained models of this repository (default: export random-init ones)",
    )
    add(
        "--model",
        action="append",
        default=[],
        metavar="DATASET/NAME[@VERSION]",
        help="with --repository: a model to benchmark (repeat; default: every model)",
    )
    add(
        "--architectures",
        metavar="A,B",
        help="without --repository: networks to export at random init "
        "(default fastnet,resnet18; --quick: fastnet)",
    )
    add(
        "--images",
        type=Path,
        metavar="PATH",
        help="a directory or .tar(.gz) of image files, e.g. the CIFAR-10 PNGs "
        "(default: the embedded demo set)",
    )
    add("--image-count", type=int, metavar="N", help="distinct images to rotate (default 256)")
    add(
        "--kinds",
        metavar="K,K",
        help=f"request kinds among {', '.join(KINDS)} (default {','.join(DEFAULT_KINDS)}; "
        "--quick: single)",
    )
    add(
        "--multi-images",
        type=int,
        default=8,
        metavar="N",
        help="images per request of the `multi` kind (default 8)",
    )
    add("--concurrency", metavar="C,C", help="connections per point (default 1,8,32,64)")
    add("--duration", type=float, metavar="S", help="measured seconds per point (default 10)")
    add("--warmup", type=float, metavar="S", help="warm-up seconds before each point (default 2)")
    add("--repeats", type=int, metavar="N", help="repeats per point, median reported (default 3)")
    add("--burst-s", type=float, metavar="S", help="length of the burst check's burst (default 10)")
    add("--burst-concurrency", type=int, metavar="C", help="connections of the burst (default 32)")
    add("--no-burst", dest="burst", action="store_false", help="skip the burst check")
    add(
        "--servers",
        metavar="S,S",
        help=f"servers to measure among {', '.join(SERVERS)} (default all)",
    )
    add(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the in-process ONNX Runtime ceiling",
    )
    add(
        "--ceiling-batch", type=int, default=64, metavar="N", help="ceiling batch size (default 64)"
    )
    add(
        "--naive-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch / ORT threads of the naive servers (default 0: the CPUs available)",
    )
    add(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `imgzoo serve` argument (repeat; e.g. --server-arg=--max-batch-size=64)",
    )
    add(
        "--client",
        choices=CLIENTS,
        default="builtin",
        help="load generator: builtin (a Python asyncio client in its own process, rotating "
        "the images) or hey (issue 7's Go client, one image; needs the hey binary)",
    )
    add(
        "--timeout-s",
        type=float,
        default=30.0,
        metavar="S",
        help="a request still open this long after its point is counted as a timeout",
    )
    add(
        "--out",
        type=Path,
        default=Path("runs/bench-serve"),
        metavar="DIR",
        help="where bench-serve.json / .md / .png go (default runs/bench-serve)",
    )
    add(
        "--quick",
        action="store_true",
        help="a smoke run: c=1,4, 1 s points, 1 repeat, single-image requests, fast net only",
    )


def _csv(
    text: str | None, default: Sequence[str], what: str, allowed: Sequence[str] | None
) -> tuple[str, ...]:
    if text is None:
        return tuple(default)
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise UserError(f"--{what}: give at least one value")
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise UserError(f"--{what}: unknown {bad[0]!r} (choose among {', '.join(allowed)})")
    return items


def _concurrency(text: str | None, quick: bool) -> tuple[int, ...]:
    default = ("1", "4") if quick else ("1", "8", "32", "64")
    values: list[int] = []
    for item in _csv(text, default, "concurrency", None):
        if not item.isdigit() or not 1 <= int(item) <= 4096:
            raise UserError(f"--concurrency: {item!r} is not an integer within 1..4096")
        values.append(int(item))
    return tuple(sorted(set(values)))


def resolve(args: argparse.Namespace) -> Options:
    """Check the arguments (one-line UserErrors) and apply the defaults of the mode."""
    from service.bench.serve_models import parse_model_spec

    quick: bool = args.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    if args.model and args.repository is None:
        raise UserError("--model needs --repository")
    if args.repository is not None and args.architectures is not None:
        raise UserError("--architectures is for exported random-init models, not --repository")
    options = Options(
        repository=args.repository,
        models=tuple(args.model),
        architectures=_csv(
            args.architectures,
            ("fastnet",) if quick else ("fastnet", "resnet18"),
            "architectures",
            None,
        ),
        images=args.images,
        image_count=pick(args.image_count, 256, 64),
        kinds=_csv(args.kinds, ("single",) if quick else DEFAULT_KINDS, "kinds", KINDS),
        multi_images=args.multi_images,
        concurrency=_concurrency(args.concurrency, quick),
        duration_s=pick(args.duration, 10.0, 1.0),
        warmup_s=pick(args.warmup, 2.0, 0.25),
        repeats=pick(args.repeats, 3, 1),
        burst=args.burst,
        burst_s=pick(args.burst_s, 10.0, 1.0),
        burst_concurrency=pick(args.burst_concurrency, 32, 4),
        servers=_csv(args.servers, SERVERS, "servers", SERVERS),
        ceiling=args.ceiling,
        ceiling_batch=args.ceiling_batch,
        naive_threads=args.naive_threads,
        server_args=tuple(args.server_arg),
        timeout_s=args.timeout_s,
        out=args.out,
        quick=quick,
        client=args.client,
    )
    if options.client == "hey":
        from service.bench.serve_hey import check_hey

        check_hey()
    checks = [
        (options.image_count >= 1, f"--image-count must be at least 1, got {options.image_count}"),
        (
            options.multi_images >= 2,
            f"--multi-images must be 2 or more, got {options.multi_images}",
        ),
        (options.duration_s > 0, f"--duration must be positive, got {options.duration_s:g}"),
        (options.warmup_s >= 0, f"--warmup must not be negative, got {options.warmup_s:g}"),
        (options.repeats >= 1, f"--repeats must be at least 1, got {options.repeats}"),
        (options.burst_s > 0, f"--burst-s must be positive, got {options.burst_s:g}"),
        (options.burst_concurrency >= 1, "--burst-concurrency must be at least 1"),
        (
            options.ceiling_batch >= 1,
            f"--ceiling-batch must be positive, got {options.ceiling_batch}",
        ),
        (options.naive_threads >= 0, f"--naive-threads must be >= 0, got {options.naive_threads}"),
        (options.timeout_s > 0, f"--timeout-s must be positive, got {options.timeout_s:g}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if options.repository is not None and not options.repository.is_dir():
        raise UserError(f"--repository {options.repository}: not a directory")
    for model in options.models:
        parse_model_spec(model)
    if options.images is not None and not options.images.exists():
        raise UserError(f"--images {options.images}: no such file or directory")
    if options.out.exists() and not options.out.is_dir():
        raise UserError(f"--out {options.out}: exists and is not a directory")
    return options


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(port: int, path: str, timeout_s: float = 2.0) -> int | None:
    """The status of `GET path`, or None when nothing answers."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass
class Server:
    """A server process under test."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    startup_s: float


@contextmanager
def running(
    name: str, command: list[str], port: int, ready_path: str, log: Path
) -> Iterator[Server]:
    """Start `command`, wait until `GET ready_path` is 200, stop it (SIGTERM) afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        while http_status(port, ready_path) != 200:
            if process.poll() is not None:
                raise UserError(f"the {name} server exited during start-up (log: {log})")
            if time.monotonic() - started > _READY_TIMEOUT_S:
                raise UserError(f"the {name} server was not ready in {_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        yield Server(name, port, process, log, time.monotonic() - started)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_command(
    name: str, options: Options, repository: Path, models: Sequence[BenchModel], port: int
) -> tuple[list[str], str]:
    """The command line of server `name` and its readiness path."""
    from service.runtime import available_cpus

    if name == "imgzoo":
        command = [
            sys.executable,
            "-m",
            "imgzoo",
            "serve",
            "--repository",
            str(repository),
            "--host",
            HOST,
            "--port",
            str(port),
            "--providers",
            "cpu",
            *options.server_args,
        ]
        return command, "/readyz"
    backend = "torch" if name == "torch-naive" else "ort"
    threads = options.naive_threads or available_cpus()
    command = [
        sys.executable,
        "-m",
        "service.bench.serve_naive",
        "--backend",
        backend,
        "--host",
        HOST,
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    for model in models:
        path = model.checkpoint if backend == "torch" else model.version_dir
        command += ["--model", f"{model.key}={path}"]
    return command, "/healthz"


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Workload:
    """The requests of one model and kind, ready for the load generator."""

    kind: str
    requests: tuple[bytes, ...]
    images_per_request: int
    num_classes: int


def _spec(
    workload: Workload,
    port: int,
    options: Options,
    c: int,
    *,
    duration_s: float | None = None,
    warmup_s: float | None = None,
) -> LoadSpec:
    from service.bench.serve_load import LoadSpec

    return LoadSpec(
        host=HOST,
        port=port,
        requests=workload.requests,
        images_per_request=workload.images_per_request,
        concurrency=c,
        duration_s=options.duration_s if duration_s is None else duration_s,
        warmup_s=options.warmup_s if warmup_s is None else warmup_s,
        timeout_s=options.timeout_s,
    )


def _measure(load: Load, spec: LoadSpec, workload: Workload) -> tuple[PointSummary, str | None]:
    """One measurement: its summary, and why its 2xx answer is not a prediction (or None)."""
    from service.bench.serve_requests import check_answer
    from service.bench.serve_stats import summarize

    result = load.run(spec)
    problem = None
    if result.sample_ok is not None:
        problem = check_answer(
            workload.kind, result.sample_ok, workload.images_per_request, workload.num_classes
        )
    return summarize(result), problem


def _say(text: str) -> None:
    print(text, flush=True)


def _line(server: str, key: str, kind: str, p: PointSummary) -> str:
    errors = f", {p.errors} errors {p.error_kinds}" if p.errors else ""
    return (
        f"  {server:<11} {key:<18} {kind:<8} c={p.concurrency:<3} {p.images_per_s:8.1f} img/s "
        f"{p.requests_per_s:8.1f} req/s  p50 {p.p50_ms:7.2f}  p95 {p.p95_ms:7.2f}  "
        f"p99 {p.p99_ms:7.2f} ms{errors}"
    )


def burst_check(
    load: Load, server: Server, key: str, workload: Workload, options: Options
) -> dict[str, Any]:
    """c=1 on the fresh server, a burst at `burst_concurrency`, then c=1 again at once."""
    from service.bench.serve_stats import ratio

    fresh, _ = _measure(load, _spec(workload, server.port, options, 1), workload)
    burst, _ = _measure(
        load,
        _spec(
            workload,
            server.port,
            options,
            options.burst_concurrency,
            duration_s=options.burst_s,
            warmup_s=0.0,
        ),
        workload,
    )
    after, _ = _measure(load, _spec(workload, server.port, options, 1, warmup_s=0.0), workload)
    after_over_fresh = ratio(after.requests_per_s, fresh.requests_per_s)
    _say(
        f"  {server.name:<11} {key:<18} burst    c=1 fresh {fresh.requests_per_s:.1f} req/s, "
        f"c={options.burst_concurrency} {burst.requests_per_s:.1f} req/s, c=1 after "
        f"{after.requests_per_s:.1f} req/s"
        + (f" ({after_over_fresh:.2f}x)" if after_over_fresh is not None else "")
    )
    return {
        "fresh": fresh.to_dict(),
        "burst": burst.to_dict(),
        "after": after.to_dict(),
        "after_over_fresh": None if after_over_fresh is None else round(after_over_fresh, 3),
    }


def sweep(
    load: Load, server: Server, key: str, workload: Workload, options: Options
) -> dict[str, Any]:
    """Every concurrency `repeats` times; the median of each figure per concurrency."""
    from service.bench.serve_stats import median_of

    points = []
    problems: list[str] = []
    for c in options.concurrency:
        repeats = []
        for _ in range(options.repeats):
            summary, problem = _measure(load, _spec(workload, server.port, options, c), workload)
            repeats.append(summary)
            if problem is not None:
                problems.append(problem)
        median = median_of(repeats)
        _say(_line(server.name, key, workload.kind, median))
        points.append(median.to_dict())
    return {
        "images_per_request": workload.images_per_request,
        "answer_check": problems[0] if problems else "ok",
        "points": points,
    }


# --------------------------------------------------------------------------- context


def machine() -> dict[str, Any]:
    """CPU model, CPU counts and affinity, memory, OS."""
    from service.runtime import available_cpus

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = list(range(os.cpu_count() or 1))
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "available_cpus": available_cpus(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    """Python, imgzoo (and its git commit) and the packages the figures depend on."""
    from imgzoo import __version__

    found = {"python": platform.python_version(), "imgzoo": __version__}
    for package in _PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    if commit:
        found["git_commit"] = commit
    return found


def _client_description(client: str) -> str:
    if client == "hey":
        from service.bench.serve_hey import hey_version

        return f"hey {hey_version()}: the first request of the set, repeated"
    try:
        uvloop = importlib.metadata.version("uvloop")
        return f"asyncio streams on uvloop {uvloop}, rotating through the request set"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio streams, rotating through the request set"


# --------------------------------------------------------------------------- the run


def _models(options: Options, workdir: Path) -> list[BenchModel]:
    from service.bench.serve_models import random_models, repository_models

    if options.repository is None:
        _say(f"exporting randomly initialised {', '.join(options.architectures)} (32 px) ...")
        return random_models(list(options.architectures), workdir)
    specs = list(options.models)
    if not specs:
        specs = sorted(
            f"{d.name}/{m.name}"
            for d in options.repository.iterdir()
            if d.is_dir() and not d.name.startswith(".")
            for m in d.iterdir()
            if m.is_dir() and any(v.name.isdigit() for v in m.iterdir())
        )
        if not specs:
            raise UserError(f"--repository {options.repository}: no model in it")
    return repository_models(options.repository, specs, workdir)


def _workloads(
    model: BenchModel, images: ImageSet, options: Options, port: int
) -> dict[str, Workload]:
    from service.bench.serve_ceiling import decode_all
    from service.bench.serve_requests import Target, build_requests

    spec = model.manifest.input
    target = Target(
        model.manifest.dataset, model.manifest.model, spec.height, spec.width, spec.channels
    )
    pixels: list[bytes] = []
    if "v2-uint8" in options.kinds:
        pixels = [
            a.tobytes() for a in decode_all(model.version_dir, [i.data for i in images.images])
        ]
    workloads = {}
    for kind in options.kinds:
        requests, per_request = build_requests(
            kind, f"{HOST}:{port}", target, images.images, pixels=pixels, multi=options.multi_images
        )
        workloads[kind] = Workload(kind, requests, per_request, model.manifest.num_classes)
    return workloads


def run(options: Options) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-ready report."""
    from service.bench.serve_ceiling import measure_ceiling
    from service.bench.serve_hey import HeyLoadGenerator
    from service.bench.serve_load import LoadGenerator
    from service.bench.serve_report import ratios, targets
    from service.bench.serve_requests import load_images

    started = time.monotonic()
    context = {"machine": machine(), "versions": versions()}
    _say(f"command: {options.command_line()}")
    _say(f"machine: {json.dumps(context['machine'])}")
    _say(f"versions: {json.dumps(context['versions'])}")
    images = load_images(options.images, options.image_count)
    _say(f"images: {images.source}, {len(images.images)} used")
    with tempfile.TemporaryDirectory(prefix="imgzoo-bench-serve-") as tmp:
        workdir = Path(tmp)
        models = _models(options, workdir)
        repository = workdir / "repository"
        weights_note = (
            "The networks are randomly initialised (exported by the benchmark itself): "
            "throughput and latency do not depend on the weights."
            if all(m.random_init for m in models)
            else "The networks are the repository's trained ones."
        )
        _say(weights_note)
        _say(
            f"models: {', '.join(m.key for m in models)}; measurements take about "
            f"{options.estimate_s(len(models)) / 60:.0f} min"
        )

        ceiling: dict[str, Any] = {}
        if options.ceiling:
            for model in models:
                found = measure_ceiling(
                    model.version_dir,
                    [i.data for i in images.images],
                    batch_size=options.ceiling_batch,
                    seconds=options.duration_s,
                    repeats=options.repeats,
                )
                ceiling[model.key] = found.to_dict()
                _say(
                    f"  ceiling     {model.key:<18} batch {found.batch_size}, {found.threads} "
                    f"threads: decode + run {found.decode_and_run:.1f} img/s, run only "
                    f"{found.run_only:.1f} img/s"
                )

        servers: list[dict[str, Any]] = []
        with HeyLoadGenerator() if options.client == "hey" else LoadGenerator() as load:
            for name in options.servers:
                servers.append(
                    _bench_server(
                        name,
                        options,
                        repository=repository,
                        models=models,
                        images=images,
                        load=load,
                    )
                )
        context["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    report: dict[str, Any] = {
        "benchmark": "imgzoo bench serve",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": options.command_line(),
        **context,
        "settings": {
            "client": _client_description(options.client),
            "concurrency": list(options.concurrency),
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "repeats": options.repeats,
            "kinds": list(options.kinds),
            "multi_images": options.multi_images,
            "images": {"source": images.source, "count": len(images.images)},
            "burst": {"seconds": options.burst_s, "concurrency": options.burst_concurrency}
            if options.burst
            else None,
            "servers": list(options.servers),
            "server_args": list(options.server_args),
            "naive_threads": options.naive_threads or context["machine"]["available_cpus"],
            "quick": options.quick,
        },
        "weights_note": weights_note,
        "models": [m.describe() for m in models],
        "ceiling": ceiling,
        "servers": servers,
    }
    report["ratios"] = ratios(report)
    report["targets_issue_7"] = targets(report)
    report["duration_s"] = round(time.monotonic() - started, 1)
    return report


def _bench_server(
    name: str,
    options: Options,
    *,
    repository: Path,
    models: list[BenchModel],
    images: ImageSet,
    load: Load,
) -> dict[str, Any]:
    """Start server `name`, measure every model on it, stop it; its part of the report."""
    from service.bench.serve_report import SERVER_LABELS

    served = models
    skipped: dict[str, str] = {}
    if name == "torch-naive":
        served = [m for m in models if m.checkpoint is not None]
        skipped = {m.key: m.no_checkpoint_reason or "" for m in models if m.checkpoint is None}
        for key, reason in skipped.items():
            _say(f"  {name}: skipping {key}: {reason}")
    entry: dict[str, Any] = {"name": name, "label": SERVER_LABELS[name], "models": {}}
    if skipped:
        entry["skipped"] = skipped
    if not served:
        return entry
    port = free_port()
    command, ready = server_command(name, options, repository, served, port)
    entry["command"] = shlex.join(command)
    log = options.out / "logs" / f"{name}.log"
    _say(f"starting {name}: {entry['command']}")
    with running(name, command, port, ready, log) as server:
        entry["startup_s"] = round(server.startup_s, 1)
        _say(f"  {name} ready in {server.startup_s:.1f} s")
        for model in served:
            workloads = _workloads(model, images, options, port)
            kinds = [k for k in options.kinds if name == "imgzoo" or k in NAIVE_KINDS]
            result: dict[str, Any] = {"kinds": {}}
            if options.burst and "single" in workloads:
                result["burst"] = burst_check(load, server, model.key, workloads["single"], options)
            for kind in kinds:
                result["kinds"][kind] = sweep(load, server, model.key, workloads[kind], options)
            entry["models"][model.key] = result
    return entry


def write_outputs(report: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """bench-serve.json, bench-serve.md and bench-serve.png in `out`."""
    from service.bench.serve_report import markdown, plot

    out.mkdir(parents=True, exist_ok=True)
    paths = (out / JSON_NAME, out / MARKDOWN_NAME, out / PLOT_NAME)
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report) + "\n")
    plot(report, paths[2])
    return paths


def bad_answers(report: dict[str, Any]) -> list[str]:
    """`server model kind: why` for every sweep whose 2xx answers were not predictions."""
    return [
        f"{entry['name']} {key} {kind}: {data['answer_check']}"
        for entry in report["servers"]
        for key, model in entry["models"].items()
        for kind, data in model["kinds"].items()
        if data["answer_check"] != "ok"
    ]


def command(args: argparse.Namespace) -> int:
    """`imgzoo bench serve`: run, write the outputs, print the tables."""
    from service.bench.serve_report import markdown

    options = resolve(args)
    report = run(options)
    json_path, md_path, png_path = write_outputs(report, options.out)
    _say("")
    _say(markdown(report))
    _say(f"wrote {json_path}, {md_path}, {png_path} ({report['duration_s']:.0f} s)")
    problems = bad_answers(report)
    for problem in problems:
        print(f"imgzoo bench serve: answers are not predictions: {problem}", file=sys.stderr)
    return 1 if problems else 0
