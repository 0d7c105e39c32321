"""Training-throughput benchmark: images per second of a full training step per model.

A step is what the engine does per batch: gather, augment (crop + flip), normalise, forward,
cross-entropy, backward, SGD step. Inputs are random uint8 images at a data set's input size
(no data needed), so the figure is the network's and the machine's, not the disk's.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from models.preprocess import InputPreprocess
from training.augment import augment_batch
from training.host import host_report

# Per data set: (channels, input size, classes) of its native input.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "demo": (3, 32, 8),
    "cifar10": (3, 32, 10),
    "fer2013": (1, 48, 7),
    "butterfly": (3, 64, 100),
}
LARGE_MODELS = frozenset({"resnet50", "vgg19"})
DEFAULT_BATCH = 128
LARGE_BATCH = 32  # big networks: keep one step's memory and time reasonable on a CPU


@dataclass(frozen=True)
class BenchResult:
    model: str
    dataset: str
    image_size: int
    channels: int
    batch_size: int
    steps: int
    seconds: float
    images_per_s: float
    parameters: int
    compiled: bool
    warmup_seconds: float
    """The untimed first steps: with `compiled`, torch.compile's compilation is in them."""
    gemm_weight_grad_side: int = 0
    """The recipe field of that name the steps ran with (0 = oneDNN's weight gradients)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(device: str = "auto") -> dict[str, Any]:
    """Where the figures were measured: CPU, threads, GPU, library versions."""
    from training.distributed import resolve_device

    dev = resolve_device(device)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(dev),
        **host_report(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _train_step_time(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: InputPreprocess,
    *,
    steps: int,
    warmup: int,
    amp: torch.dtype | None,
    channels_last: bool,
    compile_model: bool,
) -> tuple[float, float]:
    """Seconds of the `warmup` steps and of the `steps` timed after them."""
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    device = images.device
    model.train()

    def step() -> None:
        x = preprocess(
            augment_batch(images, crop_padding=2, flip=True, cutout_size=0, generator=generator)
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = criterion(forward(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warmup_seconds = timed(warmup)
    return warmup_seconds, timed(steps)


def benchmark_training(
    *,
    models: list[str] | None = None,
    dataset: str = "cifar10",
    image_size: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    batch_size: int | None = None,
    amp: str = "off",
    channels_last: bool = False,
    compile_model: bool = False,
    gemm_weight_grad_side: int = 0,
    device: str = "auto",
) -> list[BenchResult]:
    """Images/s of training steps for each model (registered order when `models` is None).

    `compile_model` runs the steps through torch.compile, as the recipe field `compile` does;
    the compilation happens in the warmup steps, so give it at least one.
    `gemm_weight_grad_side` is the recipe field of that name (`training.gemm_conv`).
    """
    from models import count_parameters, get_model, list_models
    from training.distributed import resolve_device
    from training.engine import autocast_dtype
    from training.errors import TrainingError
    from training.gemm_conv import gemm_weight_grads

    if dataset not in DATASET_SHAPES:
        raise TrainingError(
            f"unknown data set {dataset!r} for the benchmark (known: {', '.join(DATASET_SHAPES)})"
        )
    if compile_model and warmup < 1:
        raise TrainingError("a compiled benchmark needs --warmup >= 1: the first step compiles")
    if gemm_weight_grad_side < 0:
        raise TrainingError("--gemm-weight-grad-side must be >= 0 (0 = off)")
    if gemm_weight_grad_side and compile_model:
        raise TrainingError("--gemm-weight-grad-side does not combine with --compile")
    channels, native, classes = DATASET_SHAPES[dataset]
    size = image_size or native
    dev = resolve_device(device)
    amp_dtype = autocast_dtype(amp, dev)
    names = models or list_models()
    results: list[BenchResult] = []
    for name in names:
        torch.manual_seed(0)
        model = get_model(name, num_classes=classes, in_channels=channels, image_size=size).to(dev)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        batch = batch_size or (LARGE_BATCH if name in LARGE_MODELS else DEFAULT_BATCH)
        gen = torch.Generator().manual_seed(1)
        images = torch.randint(
            0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen
        ).to(dev)
        labels = torch.randint(0, classes, (batch,), generator=gen).to(dev)
        preprocess = InputPreprocess([0.5] * channels, [0.25] * channels).to(dev)
        with gemm_weight_grads(model, gemm_weight_grad_side):
            warmup_seconds, seconds = _train_step_time(
                model,
                images,
                labels,
                preprocess,
                steps=steps,
                warmup=warmup,
                amp=amp_dtype,
                channels_last=channels_last,
                compile_model=compile_model,
            )
        results.append(
            BenchResult(
                model=name,
                dataset=dataset,
                image_size=size,
                channels=channels,
                batch_size=batch,
                steps=steps,
                seconds=seconds,
                images_per_s=batch * steps / seconds,
                parameters=count_parameters(model),
                compiled=compile_model,
                warmup_seconds=warmup_seconds,
                gemm_weight_grad_side=gemm_weight_grad_side,
            )
        )
    return results


def format_results(results: list[BenchResult], info: dict[str, Any]) -> str:
    """A plain table plus the machine description."""
    lines = [
        f"{'model':<14}{'input':>10}{'batch':>7}{'params':>9}{'images/s':>11}{'s/step':>9}"
        f"{'warmup s':>10}"
    ]
    for r in results:
        shape = f"{r.channels}x{r.image_size}"
        lines.append(
            f"{r.model:<14}{shape:>10}{r.batch_size:>7}{r.parameters / 1e6:>8.2f}M"
            f"{r.images_per_s:>11.1f}{r.seconds / r.steps:>9.3f}{r.warmup_seconds:>10.1f}"
        )
    if any(r.compiled for r in results):
        lines.append("(torch.compile: its compilation is in the warmup seconds)")
    side = max((r.gemm_weight_grad_side for r in results), default=0)
    if side:
        lines.append(f"(weight gradients as one GEMM for convolution outputs up to {side} px)")
    lines.append("")
    lines.extend(f"{k}: {v}" for k, v in info.items())
    return "\n".join(lines)
