"""`hey` as the load generator of `imgzoo bench serve` (`--client hey`): issue 7's own client.

`hey -c C -z S` is the closed loop the built-in client imitates, written in Go: it costs the
CPU the server shares less per request than a Python client does, and it is what issue 7's
table was measured with. Each measurement runs `hey -o csv` for the warm-up plus the measured
window and keeps the answers that end inside the window, as the built-in client does; the CSV
gives every answer's latency, status and start offset.

What differs from the built-in client, and is said in the report:

- hey sends one body over and over, so every request carries the workload's first request
  (one image: the issue's method), not a rotation through the image set;
- failed connections are not in hey's CSV: a server that drops connections shows as lost
  throughput, and `resets` counts only the one check request sent after the run (the built-in
  client counts every failed connection).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imgzoo.errors import UserError
from service.bench.serve_load import LoadResult, LoadSpec

HEY = "hey"
# Headers hey writes itself (or that describe the connection rather than the request).
_OWN_HEADERS = {b"host", b"content-length", b"connection", b"content-type", b"user-agent"}


@dataclass(frozen=True)
class HttpRequest:
    """One pre-built HTTP/1.1 request taken apart for hey's command line."""

    method: str
    path: str
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    body: bytes


def split_request(raw: bytes) -> HttpRequest:
    """The parts of a whole HTTP/1.1 request (request line, headers, body)."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("not an HTTP request: no blank line after the headers")
    lines = head.split(b"\r\n")
    method, path, _version = lines[0].decode("latin-1").split(" ", 2)
    content_type = None
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        text = value.strip().decode("latin-1")
        if key == b"content-type":
            content_type = text
        elif key not in _OWN_HEADERS:
            headers.append((name.strip().decode("latin-1"), text))
    return HttpRequest(method, path, content_type, tuple(headers), body)


def hey_command(
    request: HttpRequest, body_file: Path, url: str, *, concurrency: int, seconds: float,
    timeout_s: float,
) -> list[str]:  # fmt: skip
    """The hey command line for one closed-loop run with CSV output."""
    command = [HEY, "-c", str(concurrency), "-z", f"{seconds:g}s", "-m", request.method]
    command += ["-t", str(max(1, round(timeout_s))), "-o", "csv"]
    if request.content_type is not None:
        command += ["-T", request.content_type]
    for name, value in request.headers:
        command += ["-H", f"{name}: {value}"]
    if request.body:
        command += ["-D", str(body_file)]
    return [*command, url]


def parse_csv(
    text: str, *, concurrency: int, images_per_request: int, warmup_s: float, duration_s: float
) -> LoadResult:
    """hey's CSV answers, the ones ending inside [warmup_s, warmup_s + duration_s), as a result.

    Columns: response-time, DNS+dialup, DNS, Request-write, Response-delay, Response-read,
    status-code, offset (seconds; offset = when the request started, from hey's start).
    """
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("response-time,"):
        raise ValueError("hey printed no CSV (is it too old for -o csv?)")
    columns = lines[0].split(",")
    try:
        at_status, at_offset = columns.index("status-code"), columns.index("offset")
    except ValueError:
        raise ValueError("hey's CSV has no status-code / offset columns") from None
    result = LoadResult(concurrency, images_per_request, duration_s)
    end = warmup_s + duration_s
    for line in lines[1:]:
        fields = line.split(",")
        seconds, status = float(fields[0]), int(fields[at_status])
        ended = float(fields[at_offset]) + seconds
        if not warmup_s <= ended < end:
            continue
        if 200 <= status < 300:
            result.ok += 1
            result.latencies_ms.append(seconds * 1000.0)
        else:
            result.statuses[status] += 1
    return result


def hey_version() -> str:
    """hey has no --version; the Debian package's version where dpkg knows it."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", HEY],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "(version unknown)"
    return done.stdout.strip() if done.returncode == 0 and done.stdout else "(version unknown)"


def check_hey() -> None:
    """A one-line error when hey is not installed."""
    if shutil.which(HEY) is None:
        raise UserError("--client hey: the hey binary is not on PATH (Debian: apt-get install hey)")


class HeyLoadGenerator:
    """Runs each measurement with the `hey` binary; the same interface as `LoadGenerator`."""

    def __init__(self, executable: str | None = None) -> None:
        if executable is None:
            check_hey()
        self.executable = executable or HEY
        self._workdir = tempfile.TemporaryDirectory(prefix="imgzoo-bench-hey-")

    def run(self, spec: LoadSpec) -> LoadResult:
        """Measure `spec` with hey; blocking."""
        if not spec.requests:
            raise ValueError("a load needs at least one request")
        raw = spec.requests[0]
        request = split_request(raw)
        body_file = Path(self._workdir.name) / "body"
        body_file.write_bytes(request.body)
        command = hey_command(
            request,
            body_file,
            f"http://{spec.host}:{spec.port}{request.path}",
            concurrency=spec.concurrency,
            seconds=spec.warmup_s + spec.duration_s,
            timeout_s=spec.timeout_s,
        )
        command[0] = self.executable
        limit = spec.warmup_s + spec.duration_s + spec.timeout_s + 30
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"hey exited with {done.returncode}: {done.stderr.strip()[:500]}")
        result = parse_csv(
            done.stdout,
            concurrency=spec.concurrency,
            images_per_request=spec.images_per_request,
            warmup_s=spec.warmup_s,
            duration_s=spec.duration_s,
        )
        # hey keeps no bodies, and the check of a 2xx answer needs one: ask once more. That
        # request failing is the one sign of a server that refuses connections.
        try:
            result.sample_ok = _one_answer(spec.host, spec.port, raw, spec.timeout_s)
        except (OSError, TimeoutError, ValueError):
            result.resets += 1
        return result

    def close(self) -> None:
        self._workdir.cleanup()

    def __enter__(self) -> HeyLoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_answer(host: str, port: int, raw: bytes, timeout_s: float) -> bytes | None:
    """The whole answer to one request sent on a fresh connection (None if it is not 2xx)."""
    import asyncio

    from service.bench.serve_load import read_answer

    async def ask() -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(raw)
            status, answer, _ = await read_answer(reader)
        finally:
            writer.close()
        return answer if 200 <= status < 300 else None

    return asyncio.run(asyncio.wait_for(ask(), timeout_s))
