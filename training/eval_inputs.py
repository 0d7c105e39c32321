"""The images `imgzoo evaluate` runs on: a split of the checkpoint's data set, or a folder.

A split is reloaded with the checkpoint's own input size, channels, validation fraction and
split seed, so "val" is exactly the split the checkpoint was selected on. A folder's class
folders are matched to the checkpoint's labels by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoint import DataInfo
from training.data_errors import DataError

FOLDER_LAYOUT = "DIR/<class>/<image> or DIR/train|val|test/<class>/<image>"


def split_images(
    info: DataInfo,
    split: str,
    *,
    data_root: Path | None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images uint8 NCHW, labels, description) of `split` of the checkpoint's data set."""
    from training.datasets import load_data_like

    root = data_root if data_root is not None else (Path(info.root) if info.root else None)
    bundle = load_data_like(info, root, cache_dir=cache_dir, progress=progress)
    if list(bundle.info.labels) != list(info.labels):
        raise DataError(
            f"the {info.dataset} data at {root} has classes {bundle.info.labels}, "
            f"but the checkpoint was trained on {info.labels}"
        )
    chosen = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if chosen is None or len(chosen) == 0:
        raise DataError(f"the {info.dataset} data at {root} has no {split} split")
    return chosen.images, chosen.labels, f"{info.dataset} {split} ({len(chosen)} images)"


def folder_images(
    folder: Path, info: DataInfo, *, split: str = "val", progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Every image of a flat folder (or of its `split` sub-folder), labelled by folder name."""
    from training.imagefolder import decode_files, find_layout

    layout = find_layout(folder, expected=FOLDER_LAYOUT, allow_flat=True)
    if layout.train.directory == folder:
        files = layout.train
    else:
        picked = {"train": layout.train, "val": layout.val, "test": layout.test}[split]
        if picked is None:
            raise DataError(f"{folder}: no {split} folder (expected {FOLDER_LAYOUT})")
        files = picked
    unknown = sorted(set(layout.classes) - set(info.labels))
    if unknown:
        raise DataError(
            f"{folder}: class folders {unknown} are not among the checkpoint's labels {info.labels}"
        )
    remap = torch.tensor([info.labels.index(c) for c in layout.classes], dtype=torch.int64)
    decoded = decode_files(
        files.files,
        height=info.height,
        width=info.width,
        channels=info.channels,
        policy=info.resize,
        interpolation=info.interpolation,
        progress=progress,
        description=f"decoding {folder.name}",
    )
    if len(decoded.labels) == 0:
        raise DataError(f"{folder}: no readable images (expected {FOLDER_LAYOUT})")
    images = torch.from_numpy(decoded.images).permute(0, 3, 1, 2).contiguous()
    labels = remap[torch.from_numpy(decoded.labels)]
    skipped = f", {len(decoded.skipped)} unreadable skipped" if decoded.skipped else ""
    return images, labels, f"{folder} ({len(labels)} images{skipped})"
