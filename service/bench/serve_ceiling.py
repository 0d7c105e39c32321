"""The in-process ONNX Runtime ceiling of `imgzoo bench serve`.

What one Python process gets from the same graph with no HTTP at all: decode the encoded images
with the service's own decoder, stack them into batches of 64, run each batch on one session
built as the service builds its sessions (`service.runtime.create_ort_session`, as many
intra-op threads as the CPUs the process may use). Images per second over a fixed time; a
second figure runs pre-decoded batches only (the graph's own limit).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt

from imgzoo.manifest import INPUT_NAME, ONNX_FILENAME, OUTPUT_NAME, load_manifest


@dataclass(frozen=True)
class Ceiling:
    """Images per second of decode + run and of run alone (medians over repeats)."""

    batch_size: int
    threads: int
    decode_and_run: float
    run_only: float
    decode_and_run_repeats: tuple[float, ...]
    run_only_repeats: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "decode_and_run_images_per_s": round(self.decode_and_run, 1),
            "run_only_images_per_s": round(self.run_only, 1),
            "decode_and_run_repeats": [round(x, 1) for x in self.decode_and_run_repeats],
            "run_only_repeats": [round(x, 1) for x in self.run_only_repeats],
        }


def decode_all(version_dir: Path, images: Sequence[bytes]) -> list[npt.NDArray[np.uint8]]:
    """Every image decoded to the model's input, as the service decodes an upload."""
    from service.imaging import DecodeLimits, decode_image

    spec = load_manifest(version_dir).input
    limits = DecodeLimits()
    return [decode_image(data, spec, limits) for data in images]


def _rate(seconds: float, step: Any, batch_size: int) -> float:
    """Images per second of `step()` (one batch each) repeated for `seconds`."""
    done = 0
    started = perf_counter()
    while True:
        step()
        done += batch_size
        elapsed = perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def measure_ceiling(
    version_dir: Path,
    images: Sequence[bytes],
    *,
    batch_size: int = 64,
    seconds: float = 10.0,
    repeats: int = 3,
    threads: int = 0,
) -> Ceiling:
    """The ceiling of the version's graph on `images` (see the module docstring); blocking."""
    from service.imaging import DecodeLimits, decode_image
    from service.runtime import CPU, SessionSpec, create_ort_session, threads_per_session

    spec = load_manifest(version_dir).input
    limits = DecodeLimits()
    threads = threads_per_session(threads, 1)
    session = create_ort_session(
        (version_dir / ONNX_FILENAME).read_bytes(),
        SessionSpec(providers=(CPU,), intra_op_threads=threads, spinning=False),
    )
    position = 0

    def decode_and_run() -> None:
        nonlocal position
        batch = np.stack(
            [
                decode_image(images[(position + i) % len(images)], spec, limits)
                for i in range(batch_size)
            ]
        )
        position = (position + batch_size) % len(images)
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})

    decoded = np.stack(
        [decode_image(images[i % len(images)], spec, limits) for i in range(batch_size)]
    )

    def run_only() -> None:
        session.run([OUTPUT_NAME], {INPUT_NAME: decoded})

    run_only()  # the first run allocates; not timed
    full = tuple(_rate(seconds, decode_and_run, batch_size) for _ in range(repeats))
    graph = tuple(_rate(seconds, run_only, batch_size) for _ in range(repeats))
    return Ceiling(
        batch_size=batch_size,
        threads=threads,
        decode_and_run=statistics.median(full),
        run_only=statistics.median(graph),
        decode_and_run_repeats=full,
        run_only_repeats=graph,
    )
