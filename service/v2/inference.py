"""One v2 inference: the images through the model's batcher, the logits as the outputs asked for.

Pixels go straight to the batcher; encoded images go through the data plane's decoding (the
same thread pool, limits and resizing as `/predict`). The one output is `logits` FP32 `[N, K]`;
with the classification extension (`"classification": k` on the output) it becomes BYTES
`[N, k]` of `"<logit>:<index>:<label>"`, best first, as Triton answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter

import numpy as np
import numpy.typing as npt

from imgzoo.manifest import OUTPUT_NAME
from service.batcher import Arrival
from service.dataplane import DataPlane
from service.errors import BadRequest
from service.registry import ModelVersion
from service.v2.codec import OutputTensor
from service.v2.schemas import InferenceRequest, ParameterValue
from service.v2.tensors import BYTES, FP32, ImageInput

BINARY_DATA_OUTPUT = "binary_data_output"
BINARY_DATA = "binary_data"
CLASSIFICATION = "classification"


@dataclass(frozen=True)
class OutputRequest:
    """An output a request asks for, and how."""

    name: str
    binary: bool
    classification: int  # 0: the tensor itself; k > 0: the top k as strings


def requested_outputs(request: InferenceRequest) -> list[OutputRequest]:
    """The outputs to answer with; every output (`logits`) when the request names none."""
    default_binary = _flag(request.parameters, BINARY_DATA_OUTPUT, False, "request")
    if not request.outputs:
        return [OutputRequest(OUTPUT_NAME, default_binary, 0)]
    wanted: list[OutputRequest] = []
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise BadRequest(
                f"unknown output '{output.name[:64]}': the model has one output '{OUTPUT_NAME}'"
            )
        if any(w.name == output.name for w in wanted):
            raise BadRequest(f"output '{output.name}' is requested twice")
        where = f"output '{output.name}'"
        binary = _flag(output.parameters, BINARY_DATA, default_binary, where)
        classification = output.parameters.get(CLASSIFICATION, 0)
        if (
            isinstance(classification, bool)
            or not isinstance(classification, int)
            or classification < 0
        ):
            raise BadRequest(f"{where}: '{CLASSIFICATION}' must be an integer >= 0")
        wanted.append(OutputRequest(output.name, binary, classification))
    return wanted


def _flag(parameters: dict[str, ParameterValue], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter '{key}' must be true or false")
    return value


@dataclass(frozen=True)
class InferenceResult:
    entry: ModelVersion  # the version that ran the images
    outputs: list[OutputTensor]
    stages: dict[str, float]


async def run(
    plane: DataPlane,
    entry: ModelVersion,
    images: ImageInput,
    outputs: Sequence[OutputRequest],
    *,
    started: float,
    pinned: bool,
    arrival: Arrival | None = None,
) -> InferenceResult:
    """Queue the images on the version's batcher and shape its logits into `outputs`.

    The data plane leases the version while its batcher works (hot reload waits for it);
    the answer names the version that really ran, the replacement when `entry` was retired
    (`pinned`: the request named its version number).
    """
    decode_start = perf_counter()
    if images.pixels is not None:
        # One (H, W, C) view per image; the batcher stacks them with other requests'.
        arrays: Sequence[npt.NDArray[np.uint8]] = list(images.pixels)
    else:
        # The /predict decoding path: its thread pool, limits, conversion and resizing.
        arrays = await plane.decode_all(entry, images.encoded or [])
    decode_s = perf_counter() - decode_start
    entry, rows = await plane.infer(entry, arrays, arrival, pinned=pinned)
    logits = np.stack([row.logits for row in rows]).astype(np.float32, copy=False)
    labels = entry.manifest.labels
    tensors = [_output(logits, labels, wanted) for wanted in outputs]
    stages = {
        "decode": decode_s,
        "queue": max(row.queue_s for row in rows),
        "inference": max(row.inference_s for row in rows),
        "total": perf_counter() - started,
    }
    return InferenceResult(entry, tensors, stages)


def _output(
    logits: npt.NDArray[np.float32], labels: Sequence[str], wanted: OutputRequest
) -> OutputTensor:
    if wanted.classification == 0:
        return OutputTensor(wanted.name, FP32, logits.shape, wanted.binary, values=logits)
    k = min(wanted.classification, logits.shape[1])
    elements = [item for row in logits for item in classify(row, labels, k)]
    return OutputTensor(wanted.name, BYTES, (logits.shape[0], k), wanted.binary, elements=elements)


def classify(row: npt.NDArray[np.float32], labels: Sequence[str], k: int) -> list[bytes]:
    """The k largest values of one row as `"<value>:<index>:<label>"`, best first.

    Ties keep the lower index first. The value is written in the shortest form that reads back
    as the same float32.
    """
    order = np.argsort(-row, kind="stable")[:k]
    return [
        f"{np.format_float_positional(row[i], unique=True, trim='-')}:{i}:{labels[i]}".encode()
        for i in order
    ]
