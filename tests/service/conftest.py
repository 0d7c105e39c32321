"""Fixtures of the service tests: real exported models, real images, real uvicorn servers.

The model repository is built once per session:

- `cifar10/fastnet/1` by the real export path (`export.api.export_checkpoint`) from a
  random-init fastnet checkpoint; `cifar10/fastnet/2` is the same files re-versioned, so
  version selection is tested without a second export.
- `gray/tiny/1`: a tiny 1-channel 24x20 network exported here with `torch.onnx.export(dynamo=True)`
  behind `models.preprocess` (NHWC -> normalise), with a hand-written manifest; it exercises
  grayscale conversion and stretch resizing of the service.

Servers are real uvicorn instances on 127.0.0.1 (a free port), running in a thread of the
test process with the app's lifespan, so tests can hand the app a controllable session.
"""

from __future__ import annotations

import io
import itertools
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from PIL import Image

from imgzoo.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    ExportInfo,
    InputSpec,
    Manifest,
    Metrics,
    ParityResult,
    TrainingInfo,
    load_manifest,
    sha256_file,
)
from service.app import create_app
from service.imaging import DecodeLimits, decode_image
from service.runtime import Session, SessionFactory, SessionSpec, create_ort_session
from service.settings import Settings
from tests.conftest import SHARED_DATA, SubsetFactory

CIFAR_LABELS = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip
GRAY_LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


# --------------------------------------------------------------------------- repository


def _export_fastnet(repository: Path, workdir: Path) -> None:
    import torch  # noqa: F401  (the export path needs it; the service never does)

    from export.api import export_checkpoint
    from models import get_model
    from training.checkpoint import Checkpoint, DataInfo

    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    network = get_model("fastnet", num_classes=10, in_channels=3, image_size=32)
    checkpoint = Checkpoint(
        architecture="fastnet",
        model_kwargs=kwargs,
        state_dict=network.state_dict(),
        data=DataInfo(
            dataset="cifar10",
            labels=CIFAR_LABELS,
            height=32,
            width=32,
            channels=3,
            mean=[0.4914, 0.4822, 0.4465],
            std=[0.247, 0.243, 0.261],
        ),
        recipe="random_init",
        hyperparameters={},
        seed=0,
        device="cpu",
        epoch=0,
        epochs=0,
        train_seconds=0.0,
        metrics={"val_accuracy": 0.1, "test_accuracy": None},
    )
    path = workdir / "fastnet.pt"
    checkpoint.save(path)
    export_checkpoint(
        path,
        repository,
        parity_images=4,
        batch_sizes=(1, 2),
        simplify=False,
        progress=False,
    )


def _export_tiny_gray(repository: Path) -> None:
    import torch
    from torch import nn

    from models.preprocess import NHWCToNCHW, Normalize

    torch.manual_seed(0)
    height, width = 24, 20
    mean, std = (0.5,), (0.25,)
    head = nn.Linear(16, len(GRAY_LABELS))
    with torch.no_grad():  # spread the logits so top-k orders are clear
        head.weight.mul_(20)
    network = nn.Sequential(
        NHWCToNCHW(),
        Normalize(mean, std),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        head,
    ).eval()
    version_dir = repository / "gray" / "tiny" / "1"
    version_dir.mkdir(parents=True)
    sample = torch.zeros(2, height, width, 1, dtype=torch.uint8)
    torch.onnx.export(
        network,
        (sample,),
        str(version_dir / ONNX_FILENAME),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        external_data=False,
    )
    onnx_path = version_dir / ONNX_FILENAME
    manifest = Manifest(
        dataset="gray",
        model="tiny",
        version=1,
        labels=GRAY_LABELS,
        input=InputSpec(
            height=height,
            width=width,
            channels=1,
            resize="stretch",
            interpolation="bilinear",
            mean=mean,
            std=std,
        ),
        metrics=Metrics(
            val_accuracy=None,
            parameters=sum(p.numel() for p in network.parameters()),
            flops=0,
            file_sizes={ONNX_FILENAME: onnx_path.stat().st_size},
        ),
        training=TrainingInfo(
            recipe="random_init", architecture="tiny", epochs=0, seconds=0, device="cpu", seed=0
        ),
        export=ExportInfo(
            opset=18,
            torch_version=torch.__version__,
            onnx_version="n/a",
            onnxruntime_version=ort.__version__,
            parity=[
                ParityResult(
                    runtime="onnxruntime",
                    images=1,
                    image_source="zeros",
                    batch_sizes=[2],
                    max_abs_diff=0.0,
                    tolerance=1e-4,
                    top1_agreement=1.0,
                    passed=True,
                )
            ],
        ),
        sha256={ONNX_FILENAME: sha256_file(onnx_path)},
        created_at=datetime.now(UTC),
    )
    (version_dir / MANIFEST_FILENAME).write_text(manifest.to_json())


def copy_version(
    repository: Path,
    source: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    version: int | None = None,
) -> Path:
    """Copy a version directory under a new name, rewriting its manifest to match."""
    manifest = load_manifest(source)
    names = (dataset or manifest.dataset, model or manifest.model, version or manifest.version)
    update: dict[str, Any] = dict(zip(("dataset", "model", "version"), names, strict=True))
    target = repository / names[0] / names[1] / str(names[2])
    shutil.copytree(source, target)
    (target / MANIFEST_FILENAME).write_text(manifest.model_copy(update=update).to_json())
    return target


@dataclass(frozen=True)
class Repository:
    root: Path
    fastnet: Path  # cifar10/fastnet/1
    gray: Path  # gray/tiny/1


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """A clean repository: cifar10/fastnet versions 1 and 2, gray/tiny version 1."""
    root = tmp_path_factory.mktemp("repository")
    _export_fastnet(root, tmp_path_factory.mktemp("checkpoint"))
    _export_tiny_gray(root)
    fastnet = root / "cifar10" / "fastnet" / "1"
    copy_version(root, fastnet, version=2)
    return Repository(root, fastnet, root / "gray" / "tiny" / "1")


# --------------------------------------------------------------------------- images


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sample_images(shared_subset: SubsetFactory) -> list[bytes]:
    """40 distinct encoded images: real CIFAR-10 PNGs when ../shared/data has them, else
    deterministic synthetic ones; every fifth is re-encoded as JPEG / WebP / BMP / GIF."""
    if (SHARED_DATA / "cifar10-train-a.tar.gz").is_file():
        root = shared_subset("cifar10-train-a.tar.gz", 4, ("train",))
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(root.rglob("*.png"))]
    else:
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(40)]
    formats = ["PNG", "PNG", "JPEG", "WEBP", "BMP", "GIF"]
    return [_encode(a, formats[i % len(formats)]) for i, a in enumerate(arrays[:40])]


# --------------------------------------------------------------------------- references


def offline_probabilities(version_dir: Path, image: bytes) -> np.ndarray:
    """What ONNX Runtime gives for `image` run alone, outside the service (float64 softmax)."""
    manifest = load_manifest(version_dir)
    array = decode_image(image, manifest.input, DecodeLimits())
    session = _offline_session(str(version_dir / ONNX_FILENAME))
    logits = session.run(["logits"], {"image": array[None]})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    probabilities: np.ndarray = e / e.sum()
    return probabilities


_SESSIONS: dict[str, ort.InferenceSession] = {}


def _offline_session(path: str) -> ort.InferenceSession:
    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def assert_matches(predictions: Sequence[dict[str, Any]], reference: np.ndarray, k: int) -> None:
    """Top-k equal to the reference's: same indices best first, probabilities within 1e-6.

    Only where two reference probabilities are within 1e-6 of each other may their order
    differ (a tie at float precision).
    """
    assert len(predictions) == min(k, len(reference))
    order = np.argsort(-reference, kind="stable")
    for rank, prediction in enumerate(predictions):
        index = prediction["index"]
        assert abs(prediction["probability"] - reference[index]) < 1e-6
        if index != order[rank]:
            assert abs(reference[index] - reference[order[rank]]) < 1e-6
    for earlier, later in itertools.pairwise(predictions):
        assert earlier["probability"] >= later["probability"]


# --------------------------------------------------------------------------- servers


class LiveServer:
    """A real uvicorn serving `app` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, timeout: float = 120) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)
        self._socket.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


ServerFactory = Callable[..., Any]


@contextmanager
def serve(
    repository: Path, session_factory: SessionFactory = create_ort_session, **overrides: Any
) -> Iterator[LiveServer]:
    """Start a live server on `repository` with settings `overrides`; stop it afterwards."""
    defaults: dict[str, Any] = {
        "max_batch_size": 8,
        "max_queue_delay_ms": 5.0,
        "intra_op_threads": 1,
        "decode_threads": 2,
        "providers": "cpu",
    }
    settings = Settings(repository=repository, **{**defaults, **overrides})
    server = LiveServer(create_app(settings, session_factory=session_factory))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(model_repository: Repository) -> Iterator[LiveServer]:
    """The shared server on the clean repository (1 MB uploads, 4 images per request)."""
    with serve(
        model_repository.root,
        max_upload_bytes=1_000_000,
        max_images_per_request=4,
        default_top_k=3,
    ) as live:
        yield live


# --------------------------------------------------------------------------- fault injection


class Controls:
    """Knobs of `ControlledSession`s, set by a test: extra seconds per batch, or fail."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.fail = False
        self.batch_sizes: list[int] = []


class ControlledSession:
    """A real session whose runs can be slowed down or made to fail."""

    def __init__(self, inner: Session, controls: Controls) -> None:
        self._inner = inner
        self._controls = controls

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> Sequence[Any]:
        if self._controls.fail:
            raise RuntimeError("injected failure")
        if self._controls.delay_s:
            time.sleep(self._controls.delay_s)
        self._controls.batch_sizes.append(len(input_feed["image"]))
        return self._inner.run(output_names, input_feed)

    def get_providers(self) -> list[str]:
        return self._inner.get_providers()

    def get_inputs(self) -> list[Any]:
        return self._inner.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self._inner.get_outputs()


def controlled_factory(controls: Controls) -> SessionFactory:
    def factory(model: bytes, spec: SessionSpec) -> Session:
        return ControlledSession(create_ort_session(model, spec), controls)

    return factory
