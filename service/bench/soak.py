"""Soak benchmark: overload a real `imgzoo serve` for minutes and count how every request ends.

    python -m service.bench.soak --repository model_repository --model cifar10/fastnet \\
        --images ../shared/data/cifar10-train-a.tar.gz --duration-s 300 --output soak.json

1. starts `imgzoo serve` on 127.0.0.1 in a process of its own (or targets `--url`);
2. computes, offline with ONNX Runtime and the service's own decoding, the expected answer
   of every image;
3. measures the saturating rate: the 200s per second of `--concurrency` closed-loop clients;
4. sends, open-loop (on a fixed schedule, whatever the answers), `--overload` times that rate:
   first `--warmup-s` of warm-up, then `--duration-s` of soak;
5. counts every outcome: a 200 whose top-1 matches its image, a mismatch, a 503 with or
   without Retry-After, a 504, any other status, and dropped connections; samples the
   server's RSS and queue depth every second.

It passes when nothing but right answers, 503 with Retry-After and 504 came back, no
connection dropped, the queue never passed its bound and RSS grew by less than 5% from the
end of the warm-up to the end. Bounded: it stops by itself after calibration + warm-up +
duration + one request timeout. The HTTP client is a small keep-alive HTTP/1.1 client on
asyncio streams, so that on a small machine the load generator costs less than the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from imgzoo.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
RSS_GROWTH_LIMIT = 0.05
_STALE_AFTER_S = 2.0  # idle keep-alive connections older than this are not reused (uvicorn: 5 s)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Sample:
    """One image and what the model gives for it offline."""

    name: str
    body: bytes
    content_type: str
    probabilities: npt.NDArray[np.float64]

    @property
    def top1(self) -> int:
        return int(np.argmax(self.probabilities))


def load_images(source: Path, count: int) -> list[tuple[str, bytes]]:
    """Up to `count` image files from a directory (sorted) or a .tar(.gz) (in archive order)."""
    found: list[tuple[str, bytes]] = []
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append((path.name, path.read_bytes()))
                if len(found) >= count:
                    break
    elif source.is_file():
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found.append((Path(member.name).name, handle.read()))
                    if len(found) >= count:
                        break
    if not found:
        raise UserError(f"no images found in {source}")
    return found


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    return "image/" + {"jpg": "jpeg"}.get(suffix, suffix)


def reference_samples(version_dir: Path, images: Sequence[tuple[str, bytes]]) -> list[Sample]:
    """The offline answer of every image: the service's decoding, one ONNX Runtime session."""
    import onnxruntime as ort

    from imgzoo.manifest import INPUT_NAME, ONNX_FILENAME, OUTPUT_NAME, load_manifest
    from service.imaging import DecodeLimits, decode_image

    manifest = load_manifest(version_dir)
    session = ort.InferenceSession(
        str(version_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"]
    )
    samples: list[Sample] = []
    for name, body in images:
        array = decode_image(body, manifest.input, DecodeLimits())
        logits = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: array[None]})[0][0])
        z = logits.astype(np.float64) - float(logits.max())
        probabilities = np.exp(z) / np.exp(z).sum()
        samples.append(Sample(name, body, _content_type(name), probabilities))
    return samples


# --------------------------------------------------------------------------- HTTP client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class DroppedError(Exception):
    """The connection failed before a whole answer arrived."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0


class Client:
    """Keep-alive HTTP/1.1 over asyncio streams, at most `limit` connections at a time."""

    def __init__(self, host: str, port: int, limit: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            connection = await self._connection()
            try:
                connection.writer.write(raw)
                reply = await asyncio.wait_for(_read_reply(connection.reader), self.timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                connection.writer.close()
                raise DroppedError(type(exc).__name__) from None
            except BaseException:
                connection.writer.close()
                raise
            if reply.headers.get("connection", "").lower() == "close":
                connection.writer.close()
            else:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            return reply

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < _STALE_AFTER_S:
                return connection
            connection.writer.close()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise DroppedError(f"connect: {type(exc).__name__}") from None
        return _Connection(reader, writer)

    def close(self) -> None:
        for connection in self._idle:
            connection.writer.close()
        self._idle.clear()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise asyncio.IncompleteReadError(b"", None)  # the service never answers chunked
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(status, headers, body)


# --------------------------------------------------------------------------- outcomes


@dataclass
class Tally:
    """How the requests of one phase ended."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    late_sends: int = 0  # requests that left more than 100 ms behind their schedule

    def summary(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms or [0.0])
        return {
            "sent": self.sent,
            "outcomes": dict(sorted(self.outcomes.items())),
            "dropped_connections": dict(self.dropped),
            "late_sends": self.late_sends,
            "latency_ms_200": {
                q: round(float(np.percentile(latencies, p)), 1)
                for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
        }


def classify(reply: Reply, sample: Sample) -> str:
    """`ok`, `mismatch`, `503` (with Retry-After), `503_no_retry_after`, `504`, `other_<n>`."""
    if reply.status == 200:
        best = orjson.loads(reply.body)["predictions"][0]
        index, probability = int(best["index"]), float(best["probability"])
        expected = sample.probabilities
        tie = abs(expected[index] - expected[sample.top1]) < 1e-5
        if (index == sample.top1 or tie) and abs(probability - expected[index]) < 1e-4:
            return "ok"
        return "mismatch"
    if reply.status == 503:
        return "503" if reply.headers.get("retry-after", "").isdigit() else "503_no_retry_after"
    if reply.status == 504:
        return "504"
    return f"other_{reply.status}"


async def _one(client: Client, target: str, sample: Sample, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        reply = await client.request(
            "POST", target, sample.body, {"Content-Type": sample.content_type}
        )
    except DroppedError as exc:
        tally.dropped[str(exc)] += 1
        return
    except TimeoutError:
        tally.dropped["client_timeout"] += 1
        return
    outcome = classify(reply, sample)
    tally.outcomes[outcome] += 1
    if reply.status == 200:
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)


async def closed_loop(
    client: Client, target: str, samples: Sequence[Sample], concurrency: int, seconds: float
) -> tuple[float, Tally]:
    """`concurrency` clients back to back for `seconds`: the rate of answered requests."""
    tally = Tally()
    stop = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        index = offset
        while time.monotonic() < stop:
            tally.sent += 1
            await _one(client, target, samples[index % len(samples)], tally)
            index += concurrency

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally.outcomes["ok"] / (time.monotonic() - started), tally


async def open_loop(
    client: Client, target: str, samples: Sequence[Sample], rate: float, seconds: float
) -> Tally:
    """Requests at `rate` per second for `seconds`, sent on schedule whatever the answers."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    start = loop.time()
    index = 0
    while True:
        due = start + index / rate
        if due >= start + seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.1:
            tally.late_sends += 1
        task = asyncio.create_task(_one(client, target, samples[index % len(samples)], tally))
        pending.add(task)
        task.add_done_callback(pending.discard)
        tally.sent += 1
        index += 1
    if pending:
        await asyncio.gather(*pending)
    return tally


# --------------------------------------------------------------------------- server state


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def queue_depth(metrics_text: str) -> float:
    """The deepest batching queue in a /metrics exposition."""
    depths = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("imgzoo_queue_depth{")
    ]
    return max(depths, default=0.0)


@dataclass
class Watch:
    """Once-a-second samples of the server during the soak."""

    rss: list[int] = field(default_factory=list)
    depth: list[float] = field(default_factory=list)
    failed_scrapes: int = 0


async def watch(client: Client, pid: int | None, until: asyncio.Event, into: Watch) -> None:
    while not until.is_set():
        if pid is not None:
            into.rss.append(rss_bytes(pid))
        try:
            reply = await client.request("GET", "/metrics")
            into.depth.append(queue_depth(reply.body.decode()))
        except (DroppedError, TimeoutError):
            into.failed_scrapes += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 1.0)


# --------------------------------------------------------------------------- the run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    repository: Path, port: int, extra: Sequence[str], log_path: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "imgzoo", "serve", "--repository", str(repository),
        "--host", "127.0.0.1", "--port", str(port), *extra,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


async def _wait_ready(client: Client, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError("the server exited during start-up (see its log)")
        try:
            if (await client.request("GET", "/readyz")).status == 200:
                return
        except (DroppedError, TimeoutError):
            pass
        await asyncio.sleep(0.5)
    raise UserError("the server did not become ready within 300 s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process: subprocess.Popen[bytes] | None = None
    if args.url:
        host, port = args.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        pid = args.pid
    else:
        host, port, pid = "127.0.0.1", str(args.port or _free_port()), None
        process = start_server(args.repository, int(port), args.server_arg, args.server_log)
        pid = process.pid
    client = Client(host, int(port), args.max_connections, args.timeout_s)
    control = Client(host, int(port), 4, 10.0)
    try:
        await _wait_ready(control, process)
        models = orjson.loads((await control.request("GET", "/models")).body)["models"]
        if not models:
            raise UserError("the server has no model loaded")
        chosen = next(
            (m for m in models if f"{m['dataset']}/{m['model']}" == args.model), None
        ) if args.model else models[0]  # fmt: skip
        if chosen is None:
            raise UserError(f"the server has no model {args.model}")
        dataset, model = chosen["dataset"], chosen["model"]
        version = chosen["default_version"]
        bound = next(v for v in chosen["versions"] if v["version"] == version)["batching"]
        repository = args.repository or Path(args.reference_repository)
        images = load_images(args.images, args.count)
        samples = reference_samples(repository / dataset / model / str(version), images)
        target = f"/predict/{dataset}/{model}?version={version}"
        print(f"soak: {len(samples)} images, {dataset}/{model} v{version}", flush=True)

        load_before = os.getloadavg()
        saturating, calibration = await closed_loop(
            client, target, samples, args.concurrency, args.calibrate_s
        )
        if saturating <= 0:
            raise UserError(f"calibration answered nothing: {calibration.summary()}")
        rate = saturating * args.overload
        print(f"soak: saturating {saturating:.1f} req/s, sending {rate:.1f} req/s", flush=True)
        warmup = await open_loop(client, target, samples, rate, args.warmup_s)
        rss_after_warmup = rss_bytes(pid) if pid is not None else None

        watched = Watch()
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(control, pid, stop, watched))
        started = time.monotonic()
        soak = await open_loop(client, target, samples, rate, args.duration_s)
        soak_seconds = time.monotonic() - started
        stop.set()
        await watcher
        rss_end = rss_bytes(pid) if pid is not None else None
        load_after = os.getloadavg()
    finally:
        client.close()
        control.close()
        exit_code = _stop_server(process)

    growth = (
        (rss_end - rss_after_warmup) / rss_after_warmup
        if rss_end is not None and rss_after_warmup
        else None
    )
    outcomes = soak.outcomes
    bad = sum(n for k, n in outcomes.items() if k not in ("ok", "503", "504"))
    max_depth = max(watched.depth, default=0.0)
    checks = {
        "only_right_answers_503_504": bad == 0,
        "no_dropped_connection": not soak.dropped,
        "queue_within_bound": max_depth <= bound["max_queue_size"],
        "rss_growth_below_5_percent": growth is not None and growth < RSS_GROWTH_LIMIT,
        "server_exit_clean": exit_code in (None, 0),
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "server": {
            "model": f"{dataset}/{model}/{version}",
            "batching": bound,
            "extra_args": list(args.server_arg),
        },
        "images": len(samples),
        "saturating_rate_rps": round(saturating, 1),
        "calibration": calibration.summary(),
        "target_rate_rps": round(rate, 1),
        "warmup": {"seconds": args.warmup_s, **warmup.summary()},
        "soak": {"seconds": round(soak_seconds, 1), **soak.summary()},
        "queue_depth": {"max": max_depth, "bound": bound["max_queue_size"]},
        "rss_mb": {
            "after_warmup": _mb(rss_after_warmup),
            "end": _mb(rss_end),
            "max": _mb(max(watched.rss, default=0)),
            "growth_percent": None if growth is None else round(growth * 100, 2),
        },
        "failed_metric_scrapes": watched.failed_scrapes,
        "server_exit_code": exit_code,
        "checks": checks,
        "passed": all(checks.values()),
    }


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _stop_server(process: subprocess.Popen[bytes] | None) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -signal.SIGKILL
    return process.returncode


def configure(parser: argparse.ArgumentParser) -> None:
    """The soak's options (also usable to hook it into another command line)."""
    add = parser.add_argument
    add("--repository", type=Path, help="model repository to serve (and to compute answers from)")
    add("--url", help="soak an already running server (http://host:port) instead of starting one")
    add("--pid", type=int, help="with --url: the server's process id, for RSS")
    add("--reference-repository", help="with --url: the repository the server serves")
    add("--model", help="dataset/model to load (default: the first listed by /models)")
    add("--images", type=Path, required=True, help="image directory, or a .tar(.gz) of images")
    add("--count", type=int, default=256, help="distinct images to cycle through")
    add("--calibrate-s", type=float, default=20.0, help="closed-loop calibration time")
    add("--concurrency", type=int, default=32, help="closed-loop clients for calibration")
    add("--overload", type=float, default=2.0, help="open-loop rate / saturating rate")
    add("--warmup-s", type=float, default=30.0, help="open-loop warm-up before measuring")
    add("--duration-s", type=float, default=300.0, help="open-loop soak time")
    add("--max-connections", type=int, default=512, help="client connections at most")
    add("--timeout-s", type=float, default=60.0, help="client timeout per request")
    add("--port", type=int, default=0, help="port of the started server (0: a free one)")
    add(
        "--server-arg",
        action="append",
        default=[],
        help="extra `imgzoo serve` argument (repeat; e.g. --server-arg=--max-batch-size=32)",
    )
    add("--server-log", type=Path, help="where the started server logs (default: a temp file)")
    add("--output", type=Path, help="write the JSON report here")


def command(args: argparse.Namespace) -> int:
    """Run the soak for parsed `configure` options: 0 when it passed, 1 when not."""
    if not args.url and not args.repository:
        raise UserError("give --repository (start a server) or --url")
    if args.url and not (args.repository or args.reference_repository):
        raise UserError("with --url, give --reference-repository for the answers")
    if args.server_log is None:
        args.server_log = Path(tempfile.mkstemp(prefix="imgzoo-soak-", suffix=".log")[1])
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    print(f"soak: server log in {args.server_log}", file=sys.stderr)
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.bench.soak", description=__doc__.split("\n\n")[0]
    )
    configure(parser)
    try:
        return command(parser.parse_args(argv))
    except UserError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
