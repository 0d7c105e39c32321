"""The checkpoint format: the contract between `training` (writer) and `export` (reader).

A checkpoint is one `torch.save` dict holding everything needed to rebuild the network, feed
it the way it was trained, and describe it in a manifest, without the training code's state:

    format             "imgzoo-checkpoint"       format_version  1
    architecture       registered builder name
    model_kwargs       {num_classes, in_channels, image_size}
    state_dict         weights to export (the EMA weights when EMA was on)
    data               DataInfo as a dict: dataset name, root, labels, input spec, split seed
    recipe / hyperparameters / seed / device / epoch / epochs / train_seconds
    metrics            {"val_accuracy": float | None, "test_accuracy": float | None}
    resume             optional: optimizer / scheduler / EMA / RNG state (only in last.pt)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgzoo.errors import UserError
from models.preprocess import InputPreprocess

CHECKPOINT_FORMAT = "imgzoo-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not fit the architecture it names."""


@dataclass(frozen=True)
class DataInfo:
    """What the network was trained on, and how its input is prepared.

    mean / std are per channel in [0, 1] units; the exported graph applies them, and the
    chroma low-pass of `chroma_subsampling` (`models.preprocess.InputPreprocess`) before them.
    """

    dataset: str
    labels: list[str]
    height: int
    width: int
    channels: int
    mean: list[float]
    std: list[float]
    root: str | None = None
    resize: str = "center_crop"
    interpolation: str = "bilinear"
    val_fraction: float = 0.1
    split_seed: int = 0
    chroma_subsampling: int = 1

    def input_preprocess(self) -> InputPreprocess:
        """uint8 NCHW -> the network's input, as in training and in the exported graph."""
        return InputPreprocess(self.mean, self.std, chroma_subsampling=self.chroma_subsampling)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        return cls(**data)


@dataclass
class Checkpoint:
    """An in-memory checkpoint; `save` / `load_checkpoint` move it to and from disk."""

    architecture: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    data: DataInfo
    recipe: str
    hyperparameters: dict[str, Any]
    seed: int
    device: str
    epoch: int
    epochs: int
    train_seconds: float
    metrics: dict[str, float | None] = field(default_factory=dict)
    resume: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = self.data.to_dict()
        out["state_dict"] = self.state_dict
        out["format"] = CHECKPOINT_FORMAT
        out["format_version"] = CHECKPOINT_VERSION
        return out

    def save(self, path: Path) -> None:
        """Write atomically so a crash mid-save never leaves a truncated best.pt."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(), tmp)
        tmp.replace(path)

    def build_model(self) -> nn.Module:
        """Rebuild the registered architecture and load the weights strictly."""
        from models import get_model

        model = get_model(self.architecture, **self.model_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint weights do not fit architecture {self.architecture!r}: {first}"
            ) from None
        return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `Checkpoint.save`, with one-line errors for bad files."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an imgzoo checkpoint")
    if raw.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {raw.get('format_version')} unsupported"
        )
    try:
        return Checkpoint(
            architecture=raw["architecture"],
            model_kwargs=dict(raw["model_kwargs"]),
            state_dict=raw["state_dict"],
            data=DataInfo.from_dict(raw["data"]),
            recipe=raw["recipe"],
            hyperparameters=dict(raw["hyperparameters"]),
            seed=int(raw["seed"]),
            device=str(raw["device"]),
            epoch=int(raw["epoch"]),
            epochs=int(raw["epochs"]),
            train_seconds=float(raw["train_seconds"]),
            metrics=dict(raw.get("metrics", {})),
            resume=raw.get("resume"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint is missing or has a bad field ({exc})") from None
