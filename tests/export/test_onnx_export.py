"""The ONNX graph checks and the simplification rule, on small graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from export.errors import ExportError
from export.onnx_export import GraphStats, check_onnx, export_onnx, simplify_onnx
from export.wrapper import build_wrapper
from imgzoo.manifest import sha256_file
from tests.export.helpers import random_images


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        logits: torch.Tensor = self.head(features)
        return logits


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = Tiny()
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 8, 8) + 1)
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    wrapper = build_wrapper(net.eval(), [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    export_onnx(wrapper, torch.from_numpy(random_images(2, 8, 3)), path, opset=21)
    return path


def test_exported_graph_passes_and_is_dynamic(tiny_onnx: Path) -> None:
    assert check_onnx(tiny_onnx, height=8, width=8, channels=3, num_classes=5) == 21
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    for n in (1, 3, 17):
        assert session.run(["logits"], {"image": random_images(n, 8, 3)})[0].shape == (n, 5)


def test_signature_mismatches_are_reported(tiny_onnx: Path) -> None:
    with pytest.raises(ExportError, match=r"not \[N, 9, 8, 3\]"):
        check_onnx(tiny_onnx, height=9, width=8, channels=3, num_classes=5)
    with pytest.raises(ExportError, match=r"not \[N, 6\]"):
        check_onnx(tiny_onnx, height=8, width=8, channels=3, num_classes=6)


def test_a_fixed_batch_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2  # pin the batch, as a static export would
    pinned = tmp_path / "pinned.onnx"
    onnx.save(model, str(pinned))
    with pytest.raises(ExportError, match="batch dimension is not dynamic"):
        check_onnx(pinned, height=8, width=8, channels=3, num_classes=5)


@pytest.mark.parametrize(
    ("opset", "message"), [(13, "opset 13 is too old"), (999, "opset 999 is newer")]
)
def test_unsupported_opsets_are_refused(tmp_path: Path, opset: int, message: str) -> None:
    sample = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ExportError, match=message):
        export_onnx(Tiny(), sample, tmp_path / "x.onnx", opset=opset)
    assert not (tmp_path / "x.onnx").exists()


def test_simplification_keeps_an_already_optimal_graph(tiny_onnx: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    outcome = simplify_onnx(copy)
    assert not outcome.applied
    assert "nothing to remove; kept the exporter's graph" in outcome.description
    assert sha256_file(copy) == sha256_file(tiny_onnx)  # byte for byte


def test_simplification_applies_where_it_removes_nodes(tmp_path: Path) -> None:
    pytest.importorskip("onnxslim")
    # x -> Identity -> Identity -> Mul(1.0) -> Add(0) -> y : all four are removable.
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Mul", ["b", "one"], ["c"]),
        helper.make_node("Add", ["c", "zero"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "redundant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[one, zero],
    )
    path = tmp_path / "redundant.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    x = np.array([[-1.0, 0.5, 2.0, -0.1]], dtype=np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    outcome = simplify_onnx(path)
    assert outcome.applied, outcome.description
    assert GraphStats.of(path).nodes < 5
    assert "nodes 5 -> " in outcome.description
    np.testing.assert_array_equal(ort.InferenceSession(str(path)).run(None, {"x": x})[0], before)
    assert not list(tmp_path.glob("*.slim.onnx"))


class Twice(nn.Module):
    """One convolution + batch norm called on the image and on its mirror, as TTA does.

    Wide enough (77 KB of weights) that the weights, not the file's metadata, set its size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 5)
        self.bn = nn.BatchNorm2d(256)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._block(x) + self._block(x.flip(3))


def test_simplification_that_copies_shared_weights_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxslim")
    torch.manual_seed(0)
    net = Twice()
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 8, 8) + 1)
    path = tmp_path / "twice.onnx"
    wrapper = build_wrapper(net.eval(), [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    export_onnx(wrapper, torch.from_numpy(random_images(2, 8, 3)), path, opset=21)
    exported = sha256_file(path)

    outcome = simplify_onnx(path)
    assert not outcome.applied, outcome.description
    assert "(shared weights copied per use); kept the exporter's graph" in outcome.description
    assert sha256_file(path) == exported  # byte for byte
    assert not list(tmp_path.glob("*.slim.onnx"))
