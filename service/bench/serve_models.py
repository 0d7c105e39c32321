"""The models under test of `imgzoo bench serve`, and the same networks for the naive servers.

Either trained models from a model repository (`--repository DIR --model dataset/name[@version]`)
or, by default, randomly initialised networks exported here with the real export path
(`export.api.export_checkpoint`): throughput and latency do not depend on the weights, so a
benchmark needs no training run. Each chosen version is copied into a repository of the run's
own, so the service loads exactly the models under test and nothing else.

The naive PyTorch server gets the very same network: the checkpoint that was exported, or, for
a repository model, its manifest's architecture rebuilt with the weights read back from the
version's TorchScript file (`model.ts`, the export's traced wrapper of the same network).
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from imgzoo.errors import UserError
from imgzoo.manifest import (
    CONFIG_FILENAME,
    ONNX_FILENAME,
    TORCHSCRIPT_FILENAME,
    Manifest,
    load_manifest,
)

DEFAULT_ARCHITECTURES = ("fastnet", "resnet18")
RANDOM_DATASET = "cifar10"
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_MODEL_SPEC = re.compile(
    r"^([a-z0-9][a-z0-9_]{0,63})/([a-z0-9][a-z0-9_]{0,63})(?:@([1-9][0-9]*))?$"
)
_WRAPPED = "network."  # the export wrapper's attribute holding the network


@dataclass(frozen=True)
class BenchModel:
    """One model under test, in the run's repository."""

    manifest: Manifest
    version_dir: Path  # <run repository>/<dataset>/<model>/<version>
    checkpoint: Path | None  # the same network for the naive PyTorch server
    no_checkpoint_reason: str | None
    random_init: bool

    @property
    def key(self) -> str:
        return f"{self.manifest.dataset}/{self.manifest.model}"

    @property
    def architecture(self) -> str:
        return self.manifest.training.architecture

    def describe(self) -> dict[str, object]:
        """What the JSON report says about the model."""
        manifest = self.manifest
        return {
            "key": self.key,
            "version": manifest.version,
            "architecture": self.architecture,
            "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
            "classes": manifest.num_classes,
            "parameters": manifest.metrics.parameters,
            "flops": manifest.metrics.flops,
            "onnx_bytes": manifest.metrics.file_sizes.get(ONNX_FILENAME),
            "weights": "random initialisation" if self.random_init else "trained",
            "val_accuracy": manifest.metrics.val_accuracy,
        }


def parse_model_spec(text: str) -> tuple[str, str, int | None]:
    """`dataset/name[@version]` -> (dataset, name, version or None)."""
    match = _MODEL_SPEC.match(text)
    if match is None:
        raise UserError(f"--model {text!r}: expected dataset/name or dataset/name@version")
    dataset, model, version = match.groups()
    return dataset, model, int(version) if version else None


def repository_models(repository: Path, specs: list[str], workdir: Path) -> list[BenchModel]:
    """The `--model` versions of `repository`, copied into `workdir/repository`."""
    if not repository.is_dir():
        raise UserError(f"--repository {repository}: not a directory")
    chosen: list[BenchModel] = []
    seen: set[tuple[str, str]] = set()
    for text in specs:
        dataset, model, version = parse_model_spec(text)
        if (dataset, model) in seen:
            raise UserError(f"--model {text}: {dataset}/{model} is given twice")
        seen.add((dataset, model))
        model_dir = repository / dataset / model
        versions = sorted(
            int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()
        )
        if not versions:
            raise UserError(f"--model {text}: no version of {dataset}/{model} in {repository}")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise UserError(f"--model {text}: no version {version} (there are {versions})")
        source = model_dir / str(version)
        manifest = load_manifest(source)
        if not (source / ONNX_FILENAME).is_file():
            raise UserError(f"--model {text}: {source} has no {ONNX_FILENAME}")
        target = workdir / "repository" / dataset / model / str(version)
        shutil.copytree(source, target)
        if (model_dir / CONFIG_FILENAME).is_file():  # the model's own serving overrides
            shutil.copyfile(model_dir / CONFIG_FILENAME, target.parent / CONFIG_FILENAME)
        checkpoint, reason = _checkpoint_from_version(source, manifest, workdir)
        chosen.append(BenchModel(manifest, target, checkpoint, reason, random_init=False))
    return chosen


def _checkpoint_from_version(
    version_dir: Path, manifest: Manifest, workdir: Path
) -> tuple[Path | None, str | None]:
    """A checkpoint of the version's network for the naive server, or why there is none."""
    from models import list_models

    architecture = manifest.training.architecture
    if architecture not in list_models():
        return None, f"architecture {architecture!r} is not a registered network"
    if not (version_dir / TORCHSCRIPT_FILENAME).is_file():
        return None, f"no {TORCHSCRIPT_FILENAME} to read the weights from"
    import torch

    from training.checkpoint import Checkpoint, CheckpointError, DataInfo

    traced_file = str(version_dir / TORCHSCRIPT_FILENAME)
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is what export writes
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.load(traced_file, map_location="cpu")  # type: ignore[no-untyped-call]
    weights = {
        name.removeprefix(_WRAPPED): tensor
        for name, tensor in traced.state_dict().items()
        if name.startswith(_WRAPPED)
    }
    spec = manifest.input
    checkpoint = Checkpoint(
        architecture=architecture,
        model_kwargs={
            "num_classes": manifest.num_classes,
            "in_channels": spec.channels,
            "image_size": spec.height,
        },
        state_dict=weights,
        data=DataInfo(
            dataset=manifest.dataset,
            labels=list(manifest.labels),
            height=spec.height,
            width=spec.width,
            channels=spec.channels,
            mean=list(spec.mean),
            std=list(spec.std),
            resize=spec.resize,
            interpolation=spec.interpolation,
        ),
        recipe=manifest.training.recipe,
        hyperparameters={},
        seed=manifest.training.seed,
        device="cpu",
        epoch=manifest.training.epochs,
        epochs=manifest.training.epochs,
        train_seconds=manifest.training.seconds,
    )
    try:
        checkpoint.build_model()  # the weights must fit the architecture exactly
    except CheckpointError as exc:
        return None, f"the weights of {TORCHSCRIPT_FILENAME} do not fit: {exc}"
    path = workdir / "checkpoints" / f"{manifest.dataset}-{manifest.model}.pt"
    checkpoint.save(path)
    return path, None


def random_models(
    architectures: list[str], workdir: Path, image_size: int = 32
) -> list[BenchModel]:
    """Randomly initialised CIFAR-10 networks, exported into `workdir/repository`."""
    from models import list_models

    unknown = [a for a in architectures if a not in list_models()]
    if unknown:
        raise UserError(
            f"--architectures: unknown network {unknown[0]!r} (known: {', '.join(list_models())})"
        )
    import torch

    from export.api import export_checkpoint
    from models import get_model
    from training.checkpoint import Checkpoint, DataInfo

    repository = workdir / "repository"
    chosen: list[BenchModel] = []
    for architecture in architectures:
        torch.manual_seed(0)
        kwargs = {"num_classes": len(CIFAR10_LABELS), "in_channels": 3, "image_size": image_size}
        network = get_model(
            architecture, num_classes=len(CIFAR10_LABELS), in_channels=3, image_size=image_size
        )
        checkpoint = Checkpoint(
            architecture=architecture,
            model_kwargs=kwargs,
            state_dict=network.state_dict(),
            data=DataInfo(
                dataset=RANDOM_DATASET,
                labels=list(CIFAR10_LABELS),
                height=image_size,
                width=image_size,
                channels=3,
                mean=list(CIFAR10_MEAN),
                std=list(CIFAR10_STD),
            ),
            recipe="random_init",
            hyperparameters={},
            seed=0,
            device="cpu",
            epoch=0,
            epochs=0,
            train_seconds=0.0,
        )
        path = workdir / "checkpoints" / f"{architecture}.pt"
        checkpoint.save(path)
        exported = export_checkpoint(
            path,
            repository,
            dataset=RANDOM_DATASET,
            model=architecture,
            parity_images=8,
            batch_sizes=(1, 8),
            progress=False,
        )
        chosen.append(BenchModel(exported.manifest, exported.version_dir, path, None, True))
    return chosen
