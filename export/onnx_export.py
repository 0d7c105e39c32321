"""ONNX export of an `ExportWrapper` with the dynamo exporter, and checks on the saved graph."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from export.errors import ExportError
from imgzoo.manifest import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

DEFAULT_OPSET = 21
"""ONNX opset 21 (ONNX 1.16): run by every onnxruntime the serving extra allows (>= 1.18)."""

MIN_OPSET = 18
BATCH_DIM = "batch"


# The exporter's optimiser logs every pass at INFO ("Removed 56 unused nodes"): noise for a
# user running `imgzoo export -v` or not.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir")


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass(frozen=True)
class GraphStats:
    """Size of a saved ONNX graph, to judge whether a rewrite helped."""

    nodes: int
    file_bytes: int
    op_counts: dict[str, int]

    @classmethod
    def of(cls, path: Path) -> GraphStats:
        model = onnx.load(str(path), load_external_data=False)
        counts = Counter(node.op_type for node in model.graph.node)
        return cls(len(model.graph.node), path.stat().st_size, dict(counts))


def export_onnx(wrapper: torch.nn.Module, sample: torch.Tensor, path: Path, *, opset: int) -> None:
    """Export `wrapper` (uint8 NHWC in, logits out) to one self-contained `.onnx` file.

    The batch dimension is exported as the symbolic `batch`. `sample` must have a batch of
    at least 2, or torch.export would specialise the dimension to the sample's size.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the exporter needs at least {MIN_OPSET}")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ExportError(
            f"opset {opset} is newer than this onnx {onnx.__version__} knows ({newest})"
        )
    if sample.shape[0] < 2:
        raise ValueError("the sample batch must have at least 2 images to keep the batch dynamic")
    batch = torch.export.Dim(BATCH_DIM, min=1)
    with warnings.catch_warnings(), _quiet_loggers(*_CHATTY_LOGGERS):
        # The exporter warns about its own internals (deprecated torch APIs it calls); not ours.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        program = torch.onnx.export(
            wrapper,
            (sample,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: batch}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:  # only the legacy exporter writes straight to a file
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    # One file, weights inside: the repository lists and hashes every file of a version.
    program.save(str(path), external_data=False)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        dims.append(dim.dim_param if dim.HasField("dim_param") else dim.dim_value)
    return dims


def check_onnx(path: Path, *, height: int, width: int, channels: int, num_classes: int) -> int:
    """Full `onnx.checker` pass plus the repository contract on the graph's signature.

    Returns the graph's default-domain opset. Raises ExportError naming what is wrong.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{path.name} fails onnx.checker: {first}") from None
    model = onnx.load(str(path))
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in model.graph.output] != [
        OUTPUT_NAME
    ]:
        raise ExportError(
            f"{path.name}: graph signature is {[i.name for i in inputs]} -> "
            f"{[o.name for o in model.graph.output]}, expected ['image'] -> ['logits']"
        )
    image, logits = inputs[0], model.graph.output[0]
    if image.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ExportError(f"{path.name}: input 'image' is not uint8")
    if logits.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{path.name}: output 'logits' is not float32")
    in_dims, out_dims = _dims(image), _dims(logits)
    # A symbolic first dimension is what makes the batch dynamic; a number there would pin
    # every request to the sample's batch size.
    if len(in_dims) != 4 or not isinstance(in_dims[0], str) or not in_dims[0]:
        raise ExportError(f"{path.name}: input batch dimension is not dynamic: {in_dims}")
    if in_dims[1:] != [height, width, channels]:
        raise ExportError(
            f"{path.name}: input shape {in_dims} is not [N, {height}, {width}, {channels}]"
        )
    if len(out_dims) != 2 or out_dims[0] != in_dims[0] or out_dims[1] != num_classes:
        raise ExportError(f"{path.name}: output shape {out_dims} is not [N, {num_classes}]")
    opsets = {str(o.domain): int(o.version) for o in model.opset_import}
    return opsets.get("", opsets.get("ai.onnx", 0))


@dataclass(frozen=True)
class Simplification:
    """What graph simplification did to one file."""

    applied: bool
    description: str


def _op_delta(before: dict[str, int], after: dict[str, int]) -> str:
    changes = []
    for op in sorted(set(before) | set(after)):
        delta = after.get(op, 0) - before.get(op, 0)
        if delta:
            changes.append(f"{op} {delta:+d}")
    return ", ".join(changes)


MAX_SIMPLIFIED_GROWTH = 1.05
"""A simplified graph may be at most this much larger than the exporter's (metadata, layout)."""


def simplify_onnx(path: Path) -> Simplification:
    """Run onnxslim on `path`; keep its graph only with fewer nodes and no bigger file (5%).

    The dynamo exporter already folds constants, batch norms into convolutions and drops
    dead code, so on most graphs there is nothing left; then the exporter's file is kept
    unchanged (onnxslim would only strip metadata). The description says which happened.
    A graph that runs one network several times (TTA, `export.composite`) shares its
    weights between the calls; folding a batch norm into each call's convolution gives every
    call its own copy, so the file grows by the number of calls: that graph is refused.
    """
    try:
        import onnxslim  # type: ignore[import-untyped]
    except ImportError:
        return Simplification(False, "skipped: onnxslim is not installed")
    before = GraphStats.of(path)
    model = onnx.load(str(path))
    with warnings.catch_warnings(), _quiet_loggers("onnxslim", *_CHATTY_LOGGERS):
        warnings.simplefilter("ignore")
        slimmed = onnxslim.slim(model)
    version = getattr(onnxslim, "__version__", "?")
    if slimmed is None or len(slimmed.graph.node) >= before.nodes:
        after_nodes = before.nodes if slimmed is None else len(slimmed.graph.node)
        return Simplification(
            False,
            f"onnxslim {version}: nodes {before.nodes} -> {after_nodes}, nothing to remove; "
            "kept the exporter's graph",
        )
    candidate = path.with_name(path.stem + ".slim.onnx")
    try:
        onnx.save(slimmed, str(candidate))
        after = GraphStats.of(candidate)
        if after.file_bytes > before.file_bytes * MAX_SIMPLIFIED_GROWTH:
            return Simplification(
                False,
                f"onnxslim {version}: nodes {before.nodes} -> {after.nodes} but bytes "
                f"{before.file_bytes} -> {after.file_bytes} (shared weights copied per use); "
                "kept the exporter's graph",
            )
        candidate.replace(path)
    finally:
        candidate.unlink(missing_ok=True)
    return Simplification(
        True,
        f"onnxslim {version}: nodes {before.nodes} -> {after.nodes} "
        f"({_op_delta(before.op_counts, after.op_counts)}), "
        f"bytes {before.file_bytes} -> {after.file_bytes}",
    )
